//! The audit log over HTTP: `operations::audit` reads it for the API and the web pages.

use actix_web::{get, web};

use crate::auth::Principal;
use crate::error::{ApiError, ErrorBody};
use crate::extract::Query;
use crate::operations::audit;
pub use crate::operations::audit::{AuditPage, AuditQuery};
use crate::state::AppState;

#[utoipa::path(
    tag = "audit",
    params(AuditQuery),
    responses(
        (status = 200, body = AuditPage),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody),
    ),
)]
#[get("/audit")]
/// The audit log, newest first. Ops read all of it; a donor reads the entries about its own data.
pub async fn list_audit(
    state: web::Data<AppState>,
    caller: Principal,
    query: Query<AuditQuery>,
) -> Result<web::Json<AuditPage>, ApiError> {
    audit::list_audit(&state, &caller, query.into_inner()).await.map(web::Json)
}
