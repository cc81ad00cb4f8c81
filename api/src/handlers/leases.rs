//! Leases over HTTP: each handler hands its caller and input to `operations::leases`, which
//! the web pages call too, and answers with the statuses and headers the API documents.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, get, post, web};

use crate::auth::Principal;
use crate::domain::{LeaseId, LeaseState, Problem};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{Json, Query};
use crate::operations::leases;
pub use crate::operations::leases::{
    ExtendRequest, LeaseCloud, LeaseHolder, LeaseListQuery, LeasePage, LeaseRequest, LeaseView, QueueStanding,
    WaitQuery, WaitingLease,
};
use crate::state::AppState;

pub(crate) fn idempotency_key(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    let Some(value) = req.headers().get("idempotency-key") else { return Ok(None) };
    let key = value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|k| (1..=200).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()));
    key.map(|k| Some(k.to_owned()))
        .ok_or_else(|| ApiError::invalid_field("Idempotency-Key", Problem::VisibleAscii { min: 1, max: 200 }))
}

fn respond(view: LeaseView, replayed: bool) -> HttpResponse {
    let status = match view.state {
        LeaseState::Queued => StatusCode::ACCEPTED,
        LeaseState::Granted if !replayed => StatusCode::CREATED,
        // A retry's answer, or a request that ended at once (it would not wait).
        _ => StatusCode::OK,
    };
    let mut response = HttpResponse::build(status);
    response.insert_header(("location", format!("/api/v1/leases/{}", view.id)));
    if replayed {
        response.insert_header(("idempotent-replayed", "true"));
    }
    response.json(view)
}

#[utoipa::path(
    tag = "leases",
    request_body = LeaseRequest,
    params(
        WaitQuery,
        ("Idempotency-Key" = Option<String>, Header, pattern = r"^[\x21-\x7e]{1,200}$", description = "Makes a retry return the lease the first attempt made instead of a second one."),
    ),
    responses(
        (status = 201, description = "Granted: the machine is the caller's until `expires_at`.", body = LeaseView),
        (status = 202, description = "Queued, with its place and an estimate.", body = LeaseView),
        (status = 200, description = "A retry with a known Idempotency-Key (the lease it made, as it stands now), or a request that would not wait and failed.", body = LeaseView),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, description = "The same Idempotency-Key is being handled by another replica; retry.", body = ErrorBody),
        (status = 422, description = "Invalid, or no machine in the inventory could ever take it (`unsatisfiable`, with the reason).", body = ErrorBody),
        (status = 429, description = "The service token has as many leases queued as it may (`queue-cap-reached`); `Retry-After` says when to try again.", body = ErrorBody),
        (status = 503, description = "Too many requests waiting for placement; retry with the same key.", body = ErrorBody),
    ),
)]
#[post("/leases")]
/// Ask for a machine: granted at once when one is free, queued when one could be, refused with
/// the reason when none ever could. CI service accounts and ops.
pub async fn create_lease(
    state: web::Data<AppState>,
    caller: Principal,
    req: HttpRequest,
    query: Query<WaitQuery>,
    body: Json<LeaseRequest>,
) -> Result<HttpResponse, ApiError> {
    let key = idempotency_key(&req)?;
    let (view, replayed) =
        leases::create_lease(&state, &caller, key, query.into_inner().wait, body.into_inner()).await?;
    Ok(respond(view, replayed))
}

#[utoipa::path(
    tag = "leases",
    params(LeaseListQuery),
    responses((status = 200, body = LeasePage), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)),
)]
#[get("/leases")]
/// List leases, newest first: ops see all, a service account its own, a donor those granted on
/// its machines.
pub async fn list_leases(
    state: web::Data<AppState>,
    caller: Principal,
    query: Query<LeaseListQuery>,
) -> Result<web::Json<LeasePage>, ApiError> {
    leases::list_leases(&state, &caller, query.into_inner()).await.map(web::Json)
}

#[utoipa::path(
    tag = "leases",
    params(("id" = LeaseId, Path), WaitQuery),
    responses((status = 200, body = LeaseView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
)]
#[get("/leases/{id}")]
/// One lease; with `wait`, a queued lease is answered once granted or when the wait is over.
pub async fn get_lease(
    state: web::Data<AppState>,
    caller: Principal,
    path: web::Path<LeaseId>,
    query: Query<WaitQuery>,
) -> Result<web::Json<LeaseView>, ApiError> {
    leases::get_lease(&state, &caller, path.into_inner(), query.into_inner().wait).await.map(web::Json)
}

#[utoipa::path(
    tag = "leases",
    params(("id" = LeaseId, Path)),
    request_body = ExtendRequest,
    responses(
        (status = 200, body = LeaseView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Not granted, or past the donor's or the platform's limit (`lease-limit`, naming the latest end allowed).", body = ErrorBody),
        (status = 422, body = ErrorBody),
    ),
)]
#[post("/leases/{id}/extend")]
/// Extend a granted lease, within the donor's maximum lease length and the platform's.
/// Its holder or ops.
pub async fn extend_lease(
    state: web::Data<AppState>,
    caller: Principal,
    path: web::Path<LeaseId>,
    body: Json<ExtendRequest>,
) -> Result<web::Json<LeaseView>, ApiError> {
    leases::extend_lease(&state, &caller, path.into_inner(), body.into_inner()).await.map(web::Json)
}

#[utoipa::path(
    tag = "leases",
    params(("id" = LeaseId, Path)),
    responses(
        (status = 200, body = LeaseView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, description = "The lease has already ended.", body = ErrorBody),
    ),
)]
#[post("/leases/{id}/release")]
/// Give a lease back: a granted one frees its machine at once, a queued one leaves the queue.
/// Its holder or ops.
pub async fn release_lease(
    state: web::Data<AppState>,
    caller: Principal,
    path: web::Path<LeaseId>,
) -> Result<web::Json<LeaseView>, ApiError> {
    leases::release_lease(&state, &caller, path.into_inner()).await.map(web::Json)
}

/// How much of the queue to show.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct QueueQuery {
    /// 1 to 500, default 100: the oldest queued leases first.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
}

#[utoipa::path(
    tag = "leases",
    params(QueueQuery),
    responses(
        (status = 200, body = Vec<WaitingLease>),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody),
    ),
)]
#[get("/queue")]
/// The lease queue, oldest first: each queued lease with its place, its estimated start and why
/// it waits (no machine fits, all that fit are busy, donors' windows closed, donations at their
/// caps, or due at the next round). Ops. The queue page shows the same.
pub async fn lease_queue(
    state: web::Data<AppState>,
    caller: Principal,
    query: Query<QueueQuery>,
) -> Result<web::Json<Vec<WaitingLease>>, ApiError> {
    let limit = query.into_inner().limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::invalid_field("limit", Problem::Between { min: 1, max: 500 }));
    }
    leases::waiting(&state, &caller, limit).await.map(web::Json)
}
