//! Logging in and out, changing a password, and asking who you are.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, get, post, web};
use chrono::{DateTime, Utc};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use uuid::Uuid;

use super::users::UserView;
use crate::auth::{MIN_PASSWORD_CHARS, Principal};
use crate::config::auth::AuthConfig;
use crate::db;
use crate::db::audit::{self, Actor, Change};
use crate::domain::FieldErrors;
use crate::domain::validation::check_text;
use crate::domain::{ActorKind, DonorId, MachineId, Role};
use crate::error::{ApiError, ErrorBody};
use crate::extract::Json;
use crate::state::AppState;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    #[schema(max_length = 254, example = "ops@fleetyard.example")]
    pub email: String,
    #[schema(max_length = 1024)]
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
    let request = body.into_inner();
    let mut errors = FieldErrors::new();
    check_text(&mut errors, "email", &request.email, 254);
    if request.password.len() > 1024 {
        errors.add("password", "must be at most 1024 bytes");
    }
    errors.into_result()?;
    let email = request.email.trim().to_lowercase();
    let address = client_address(&req, &state.config.auth.trusted_proxies);
    let throttle = Throttle::new(&state.config.auth, &email, &address);

    let mut conn = state.db().await?;
    if let Some(wait) = db::login_failures::blocked_for(&mut conn, &throttle.limits, throttle.window_secs).await? {
        return Err(ApiError::too_many(
            "too-many-login-failures",
            "too many failed logins for this account or from this address; try again later",
            wait.unsigned_abs(),
        ));
    }
    let user = db::users::find_by_email(&mut conn, &email).await?;
    drop(conn);
    let hash = user.as_ref().map(|u| u.password_hash.clone());
    let matched = state.passwords.verify(request.password, hash).await.map_err(|_| busy())?;
    let mut conn = state.db().await?;
    let user = match user {
        Some(user) if matched && user.disabled_at.is_none() => user,
        user => {
            throttle.record_failure(&mut conn, user.as_ref(), &email, &address).await?;
            return Err(invalid_credentials());
        }
    };
    db::login_failures::clear(&mut conn, &throttle.limits[0].key).await?;
    let issued = state.tokens.issue_session(user.id.0, user.session_generation).map_err(ApiError::internal)?;
    tracing::info!(user = %user.id, "login");
    Ok(web::Json(LoginResponse {
        token: issued.token,
        token_type: "Bearer".into(),
        expires_at: issued.expires_at,
        user: user.into(),
    }))
}

/// The address a request came from: the peer's, or, when the peer is a trusted proxy, the
/// nearest address in `X-Forwarded-For` that is not one (proxies append what they saw).
fn client_address(req: &HttpRequest, trusted: &[ipnet::IpNet]) -> String {
    let Some(peer) = req.peer_addr().map(|a| a.ip()) else { return "unknown".to_owned() };
    let forwarded = req.headers().get("x-forwarded-for").and_then(|v| v.to_str().ok()).unwrap_or_default();
    nearest_untrusted(peer, forwarded, trusted).to_string()
}

fn nearest_untrusted(peer: std::net::IpAddr, forwarded: &str, trusted: &[ipnet::IpNet]) -> std::net::IpAddr {
    let is_trusted = |ip: &std::net::IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut nearest = peer;
    for hop in forwarded.split(',').rev().map_while(|hop| hop.trim().parse::<std::net::IpAddr>().ok()) {
        nearest = hop;
        if !is_trusted(&hop) {
            break;
        }
    }
    nearest
}

fn invalid_credentials() -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "invalid-credentials", "wrong email or password")
}

fn busy() -> ApiError {
    ApiError::unavailable("login-busy", "too many logins are being checked at once; try again in a moment")
        .retry_after(1)
}

/// The limits on failed logins that apply to one attempt: its account's, then its address's.
struct Throttle {
    limits: [db::login_failures::Limit; 2],
    window_secs: i64,
}

impl Throttle {
    fn new(config: &AuthConfig, email: &str, address: &str) -> Self {
        Self {
            limits: [
                db::login_failures::Limit {
                    key: format!("account:{email}"),
                    failures: config.login_failures_per_account,
                },
                db::login_failures::Limit {
                    key: format!("address:{address}"),
                    failures: config.login_failures_per_address,
                },
            ],
            window_secs: config.login_window_secs,
        }
    }

    /// Counts a failed login against the account and the address, and audits it (for the
    /// donor too, when the account is a donor's).
    async fn record_failure(
        &self,
        conn: &mut AsyncPgConnection,
        user: Option<&db::users::User>,
        email: &str,
        address: &str,
    ) -> Result<(), ApiError> {
        let keys = [self.limits[0].key.as_str(), self.limits[1].key.as_str()];
        db::login_failures::record(conn, &keys, self.window_secs).await?;
        let entity = user.map_or(Uuid::nil(), |u| u.id.0);
        let attempt = json!({ "email": email, "address": address, "account_exists": user.is_some() });
        let entry =
            Change::new("user.login_failed", "user", entity).donor(user.and_then(|u| u.donor_id)).after(&attempt);
        audit::record(conn, &Actor::system("login"), &[entry]).await?;
        tracing::info!(%address, account_exists = user.is_some(), "failed login");
        Ok(())
    }
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
    let user = caller.user_id().ok_or_else(|| ApiError::forbidden("only a user's session can log out"))?;
    let actor = caller.actor();
    let mut conn = state.db().await?;
    conn.transaction::<_, ApiError, _>(async |conn| {
        let ended = db::users::end_sessions(conn, user).await?;
        audit::record(conn, &actor, &[Change::new("user.logged_out", "user", user).donor(ended.donor_id)]).await?;
        Ok(())
    })
    .await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    #[schema(max_length = 1024)]
    pub current_password: String,
    #[schema(min_length = 12, max_length = 1024)]
    pub new_password: String,
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
    let user_id = caller.user_id().ok_or_else(|| ApiError::forbidden("only a user's session can change a password"))?;
    let request = body.into_inner();
    let mut errors = FieldErrors::new();
    if request.current_password.len() > 1024 {
        errors.add("current_password", "must be at most 1024 bytes");
    }
    check_new_password(&mut errors, "new_password", &request.new_password);
    errors.into_result()?;
    let mut conn = state.db().await?;
    let user = db::users::find(&mut conn, user_id)
        .await?
        .ok_or_else(|| ApiError::unauthenticated("the account no longer exists"))?;
    let email = user.email.to_lowercase();
    let address = client_address(&req, &state.config.auth.trusted_proxies);
    let throttle = Throttle::new(&state.config.auth, &email, &address);
    if let Some(wait) = db::login_failures::blocked_for(&mut conn, &throttle.limits, throttle.window_secs).await? {
        return Err(ApiError::too_many(
            "too-many-login-failures",
            "too many failed password checks; try again later",
            wait.unsigned_abs(),
        ));
    }
    drop(conn);
    let matched =
        state.passwords.verify(request.current_password, Some(user.password_hash.clone())).await.map_err(|_| busy())?;
    if !matched {
        let mut conn = state.db().await?;
        throttle.record_failure(&mut conn, Some(&user), &email, &address).await?;
        return Err(invalid_credentials());
    }
    let hash = state.passwords.hash(request.new_password).await.map_err(|_| busy())?.map_err(ApiError::internal)?;
    let actor = caller.actor();
    let mut conn = state.db().await?;
    let changed = conn
        .transaction::<_, ApiError, _>(async |conn| {
            let changed = db::users::set_password(conn, user_id, &hash).await?;
            audit::record(
                conn,
                &actor,
                &[Change::new("user.password_changed", "user", user_id).donor(changed.donor_id)],
            )
            .await?;
            Ok(changed)
        })
        .await?;
    let issued = state.tokens.issue_session(changed.id.0, changed.session_generation).map_err(ApiError::internal)?;
    Ok(web::Json(LoginResponse {
        token: issued.token,
        token_type: "Bearer".into(),
        expires_at: issued.expires_at,
        user: changed.into(),
    }))
}

/// What a password being set must be.
pub(super) fn check_new_password(errors: &mut FieldErrors, field: &str, password: &str) {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        errors.add(field, format!("must be at least {MIN_PASSWORD_CHARS} characters"));
    } else if password.len() > 1024 {
        errors.add(field, "must be at most 1024 bytes");
    }
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

#[cfg(test)]
mod tests {
    use super::nearest_untrusted;

    #[test]
    fn the_client_address_is_read_through_trusted_proxies_only() {
        let trusted = ["10.0.0.0/8".parse().unwrap()];
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        // Straight from a client: its own address, whatever it claims.
        assert_eq!(nearest_untrusted(ip("203.0.113.7"), "198.51.100.1", &trusted), ip("203.0.113.7"));
        // Through the proxy: the nearest hop the proxies did not add themselves.
        assert_eq!(nearest_untrusted(ip("10.0.0.2"), "198.51.100.1, 203.0.113.9", &trusted), ip("203.0.113.9"));
        assert_eq!(nearest_untrusted(ip("10.0.0.2"), "203.0.113.9, 10.0.0.5", &trusted), ip("203.0.113.9"));
        // A proxy that sent nothing usable: the proxy's address.
        assert_eq!(nearest_untrusted(ip("10.0.0.2"), "", &trusted), ip("10.0.0.2"));
        assert_eq!(nearest_untrusted(ip("10.0.0.2"), "not an address", &trusted), ip("10.0.0.2"));
    }
}
