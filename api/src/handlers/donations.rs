//! Donations over HTTP: each handler hands its caller and input to `operations::donations`,
//! which the web pages call too, and turns the answer into JSON.

use actix_web::{HttpResponse, get, post, put, web};

use crate::auth::Principal;
use crate::domain::{DonationId, UsagePolicy};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{Json, Query};
use crate::operations::donations;
pub use crate::operations::donations::{
    DonationActionRequest, DonationDetail, DonationForm, DonationListQuery, DonationPage, MachineInput,
    SshEndpointInput,
};
use crate::state::AppState;
pub use crate::views::DonationView;

#[utoipa::path(
    tag = "donations",
    request_body = DonationForm,
    responses(
        (status = 201, body = DonationDetail),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, description = "An asset tag or agreement reference is taken", body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
    ),
)]
#[post("/donations")]
/// Register a donation and its machines in one request. The donation starts `submitted`
/// and its machines `pending_review`.
pub async fn create_donation(
    state: web::Data<AppState>,
    caller: Principal,
    body: Json<DonationForm>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Created().json(donations::create_donation(&state, &caller, body.into_inner()).await?))
}

#[utoipa::path(
    tag = "donations",
    params(DonationListQuery),
    responses(
        (status = 200, body = DonationPage),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody),
    ),
)]
#[get("/donations")]
/// List donations: all of them for ops, its own for a donor.
pub async fn list_donations(
    state: web::Data<AppState>,
    caller: Principal,
    query: Query<DonationListQuery>,
) -> Result<web::Json<DonationPage>, ApiError> {
    donations::list_donations(&state, &caller, query.into_inner()).await.map(web::Json)
}

#[utoipa::path(
    tag = "donations",
    params(("id" = DonationId, Path, description = "Donation id")),
    responses(
        (status = 200, body = DonationDetail),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
    ),
)]
#[get("/donations/{id}")]
/// One donation with its machines.
pub async fn get_donation(
    state: web::Data<AppState>,
    caller: Principal,
    id: web::Path<DonationId>,
) -> Result<web::Json<DonationDetail>, ApiError> {
    donations::get_donation(&state, &caller, id.into_inner()).await.map(web::Json)
}

#[utoipa::path(
    tag = "donations",
    params(("id" = DonationId, Path, description = "Donation id")),
    request_body = DonationActionRequest,
    responses(
        (status = 200, body = DonationDetail),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "Not allowed now; `details.allowed` lists what is", body = ErrorBody),
        (status = 422, body = ErrorBody),
    ),
)]
#[post("/donations/{id}/actions")]
/// Act on a donation as a whole: ops `approve` or `reject` (with a reason) a submission and
/// `return` a loan; a usage-right donor may `pause`, `resume` and `withdraw`. Its machines
/// move with it wherever the lifecycle table allows.
pub async fn act_on_donation(
    state: web::Data<AppState>,
    caller: Principal,
    id: web::Path<DonationId>,
    body: Json<DonationActionRequest>,
) -> Result<web::Json<DonationDetail>, ApiError> {
    donations::act_on_donation(&state, &caller, id.into_inner(), body.into_inner()).await.map(web::Json)
}

#[utoipa::path(
    tag = "donations",
    params(("id" = DonationId, Path, description = "Donation id")),
    request_body = UsagePolicy,
    responses(
        (status = 200, body = DonationView),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody),
    ),
)]
#[put("/donations/{id}/usage-policy")]
/// Replace a usage-right donation's usage policy. Ops, or the donor.
pub async fn put_usage_policy(
    state: web::Data<AppState>,
    caller: Principal,
    id: web::Path<DonationId>,
    body: Json<UsagePolicy>,
) -> Result<web::Json<DonationView>, ApiError> {
    donations::put_usage_policy(&state, &caller, id.into_inner(), body.into_inner()).await.map(web::Json)
}
