//! The fleet at a glance and a donor's usage per month, over HTTP (the same numbers the
//! dashboard and the donors' pages show; `operations::overview` computes them).

use actix_web::{get, web};

use crate::auth::Principal;
use crate::domain::DonorId;
use crate::error::{ApiError, ErrorBody};
use crate::extract::Query;
use crate::operations::overview;
pub use crate::operations::overview::{FleetOverview, UsageQuery, UsageReport};
use crate::state::AppState;

#[utoipa::path(
    tag = "overview",
    responses((status = 200, body = FleetOverview), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
)]
#[get("/overview")]
/// The fleet at a glance: machines by architecture, state, health, site and donation model;
/// utilisation per architecture over 30 days; machines unreachable; donations waiting for
/// review and agreements ending within 30 days; the lease queue; cloud instances and spend this
/// month. Ops. The dashboard shows these numbers.
pub async fn fleet_overview(
    state: web::Data<AppState>,
    caller: Principal,
) -> Result<web::Json<FleetOverview>, ApiError> {
    overview::fleet_overview(&state, &caller).await.map(web::Json)
}

#[utoipa::path(
    tag = "donors",
    params(("id" = DonorId, Path, description = "Donor id"), UsageQuery),
    responses(
        (status = 200, body = UsageReport),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody),
    ),
)]
#[get("/donors/{id}/usage")]
/// What a donor's machines gave in one month: machine-hours leased, leases and jobs run, per
/// architecture. Ops, or the donor itself.
pub async fn donor_usage(
    state: web::Data<AppState>,
    caller: Principal,
    id: web::Path<DonorId>,
    query: Query<UsageQuery>,
) -> Result<web::Json<UsageReport>, ApiError> {
    overview::donor_usage(&state, &caller, id.into_inner(), query.into_inner()).await.map(web::Json)
}
