//! Logging in and out, changing a password, and asking who you are, over HTTP; the work is
//! `operations::sessions`, which the web pages use too.

use actix_web::{HttpRequest, HttpResponse, get, post, web};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Principal;
use crate::domain::{ActorKind, DonorId, MachineId, Role};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{Json, client_address};
use crate::operations::sessions;
pub use crate::operations::sessions::{LoginRequest, LoginResponse, PasswordChange, check_new_password};
use crate::state::AppState;

#[utoipa::path(
    tag = "auth",
    request_body = LoginRequest,
    security(()),
    responses(
        (status = 200, body = LoginResponse),
        (status = 401, description = "Wrong email or password, or a disabled account", body = ErrorBody),
        (status = 422, body = ErrorBody),
        (status = 429, description = "Too many failed logins for this account or from this address; `Retry-After` says when to try again", body = ErrorBody),
        (status = 503, description = "Too many logins at once; `Retry-After` says when to try again", body = ErrorBody),
    ),
)]
#[post("/auth/login")]
/// Exchange an email and password for a session token. Failed logins are counted per account
/// and per source address; past the limits, logins are refused for a while (429).
pub async fn login(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: Json<LoginRequest>,
) -> Result<web::Json<LoginResponse>, ApiError> {
    let address = client_address(&req, &state.config.auth.trusted_proxies);
    sessions::log_in(&state, &address, body.into_inner()).await.map(web::Json)
}

#[utoipa::path(
    tag = "auth",
    responses(
        (status = 204, description = "Every session of this user has ended"),
        (status = 401, body = ErrorBody), (status = 403, description = "Not a user's session", body = ErrorBody),
    ),
)]
#[post("/auth/logout")]
/// Log out: ends every session of the calling user, on every replica, this one included.
pub async fn logout(state: web::Data<AppState>, caller: Principal) -> Result<HttpResponse, ApiError> {
    sessions::log_out(&state, &caller).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[utoipa::path(
    tag = "auth",
    request_body = PasswordChange,
    responses(
        (status = 200, description = "Changed; earlier sessions have ended and this is a new one", body = LoginResponse),
        (status = 401, description = "Not logged in, or the current password is wrong", body = ErrorBody),
        (status = 403, description = "Not a user's session", body = ErrorBody),
        (status = 422, body = ErrorBody),
        (status = 429, body = ErrorBody), (status = 503, body = ErrorBody),
    ),
)]
#[post("/auth/password")]
/// Change your password. Needs the current one; ends every earlier session of yours and
/// answers with a new one. Wrong current passwords count as failed logins.
pub async fn change_password(
    state: web::Data<AppState>,
    caller: Principal,
    req: HttpRequest,
    body: Json<PasswordChange>,
) -> Result<web::Json<LoginResponse>, ApiError> {
    let address = client_address(&req, &state.config.auth.trusted_proxies);
    sessions::change_password(&state, &caller, &address, body.into_inner()).await.map(web::Json)
}

/// The caller, as the server sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct WhoAmI {
    pub role: Role,
    pub kind: ActorKind,
    /// The user or token id.
    pub id: Uuid,
    /// Email of a user, name of a service token.
    pub name: String,
    pub donor_id: Option<DonorId>,
    pub machine_id: Option<MachineId>,
}

#[utoipa::path(
    tag = "auth",
    responses((status = 200, body = WhoAmI), (status = 401, body = ErrorBody)),
)]
#[get("/auth/me")]
/// Who the bearer token belongs to.
pub async fn me(caller: Principal) -> web::Json<WhoAmI> {
    let actor = caller.actor();
    let (donor_id, machine_id) = match &caller {
        Principal::Donor { donor_id, .. } => (Some(*donor_id), None),
        Principal::Agent { machine_id, .. } => (None, Some(*machine_id)),
        _ => (None, None),
    };
    web::Json(WhoAmI {
        role: caller.role(),
        kind: actor.kind,
        id: actor.id.unwrap_or_default(),
        name: actor.name,
        donor_id,
        machine_id,
    })
}
