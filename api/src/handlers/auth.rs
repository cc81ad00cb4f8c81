//! Logging in, and asking who you are.

use actix_web::{get, post, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::users::UserView;
use crate::auth::{Principal, verify_password};
use crate::db;
use crate::domain::{ActorKind, DonorId, MachineId, Role};
use crate::error::{ApiError, ErrorBody};
use crate::extract::Json;
use crate::state::AppState;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub email: String,
    pub password: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LoginResponse {
    /// Send as `Authorization: Bearer <token>`.
    pub token: String,
    #[schema(example = "Bearer")]
    pub token_type: String,
    pub expires_at: DateTime<Utc>,
    pub user: UserView,
}

#[utoipa::path(
    tag = "auth",
    request_body = LoginRequest,
    security(()),
    responses(
        (status = 200, body = LoginResponse),
        (status = 401, description = "Wrong email or password, or a disabled account", body = ErrorBody),
        (status = 422, body = ErrorBody),
    ),
)]
#[post("/auth/login")]
/// Exchange an email and password for a session token.
pub async fn login(state: web::Data<AppState>, body: Json<LoginRequest>) -> Result<web::Json<LoginResponse>, ApiError> {
    let request = body.into_inner();
    if request.password.len() > 1024 {
        return Err(ApiError::invalid_field("password", "must be at most 1024 bytes"));
    }
    let mut conn = state.db().await?;
    let user = db::users::find_by_email(&mut conn, request.email.trim()).await?;
    drop(conn);
    let hash = user.as_ref().map(|u| u.password_hash.clone());
    let matched = verify_password(request.password, hash).await;
    let user = match user {
        Some(user) if matched && user.disabled_at.is_none() => user,
        _ => {
            return Err(ApiError::new(
                actix_web::http::StatusCode::UNAUTHORIZED,
                "invalid-credentials",
                "wrong email or password",
            ));
        }
    };
    let issued = state.tokens.issue_session(user.id.0).map_err(ApiError::internal)?;
    tracing::info!(user = %user.id, "login");
    Ok(web::Json(LoginResponse {
        token: issued.token,
        token_type: "Bearer".into(),
        expires_at: issued.expires_at,
        user: user.into(),
    }))
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
