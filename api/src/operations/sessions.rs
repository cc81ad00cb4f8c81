//! Sessions of people: logging in (with the failed-login throttle and the bound on password
//! hashing), logging out everywhere, and changing a password. The API and the web pages both
//! sign people in through here.

use actix_web::http::StatusCode;
use chrono::{DateTime, Utc};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::{MIN_PASSWORD_CHARS, Principal};
use crate::config::auth::AuthConfig;
use crate::db;
use crate::db::audit::{self, Actor, Change};
use crate::domain::FieldErrors;
use crate::domain::Problem;
use crate::domain::validation::check_text;
use crate::error::ApiError;
use crate::error_code::ErrorCode;
use crate::state::AppState;
use crate::views::UserView;

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

/// Exchanges an email and password for a session token, counting failures per account and per
/// `address` (the client's, as `extract::client_address` reads it).
pub async fn log_in(state: &AppState, address: &str, request: LoginRequest) -> Result<LoginResponse, ApiError> {
    let mut errors = FieldErrors::new();
    check_text(&mut errors, "email", &request.email, 254);
    if request.password.len() > 1024 {
        errors.add("password", Problem::TooManyBytes { max: 1024 });
    }
    errors.into_result()?;
    let email = request.email.trim().to_lowercase();
    let throttle = Throttle::new(&state.config.auth, &email, address);

    let mut conn = state.db().await?;
    if let Some(wait) = db::login_failures::blocked_for(&mut conn, &throttle.limits, throttle.window_secs).await? {
        return Err(ApiError::too_many(
            ErrorCode::TooManyLoginFailures,
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
            throttle.record_failure(&mut conn, user.as_ref(), &email, address).await?;
            return Err(invalid_credentials());
        }
    };
    db::login_failures::clear(&mut conn, &throttle.limits[0].key).await?;
    let issued = state.tokens.issue_session(user.id.0, user.session_generation).map_err(ApiError::internal)?;
    tracing::info!(user = %user.id, "login");
    Ok(LoginResponse {
        token: issued.token,
        token_type: "Bearer".into(),
        expires_at: issued.expires_at,
        user: user.into(),
    })
}

fn invalid_credentials() -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, ErrorCode::InvalidCredentials, "wrong email or password")
}

fn busy() -> ApiError {
    ApiError::unavailable(ErrorCode::LoginBusy, "too many logins are being checked at once; try again in a moment")
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

/// Ends every session of the calling user, on every replica.
pub async fn log_out(state: &AppState, caller: &Principal) -> Result<(), ApiError> {
    let user = caller.user_id().ok_or_else(|| ApiError::forbidden("only a user's session can log out"))?;
    let actor = caller.actor();
    let mut conn = state.db().await?;
    conn.transaction::<_, ApiError, _>(async |conn| {
        let ended = db::users::end_sessions(conn, user).await?;
        audit::record(conn, &actor, &[Change::new("user.logged_out", "user", user).donor(ended.donor_id)]).await?;
        Ok(())
    })
    .await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    #[schema(max_length = 1024)]
    pub current_password: String,
    #[schema(min_length = 12, max_length = 1024)]
    pub new_password: String,
}

/// Changes the caller's password after checking the current one (a wrong one counts as a failed
/// login), ending every earlier session; answers with a new session.
pub async fn change_password(
    state: &AppState,
    caller: &Principal,
    address: &str,
    request: PasswordChange,
) -> Result<LoginResponse, ApiError> {
    let user_id = caller.user_id().ok_or_else(|| ApiError::forbidden("only a user's session can change a password"))?;
    let mut errors = FieldErrors::new();
    if request.current_password.len() > 1024 {
        errors.add("current_password", Problem::TooManyBytes { max: 1024 });
    }
    check_new_password(&mut errors, "new_password", &request.new_password);
    errors.into_result()?;
    let mut conn = state.db().await?;
    let user = db::users::find(&mut conn, user_id)
        .await?
        .ok_or_else(|| ApiError::unauthenticated("the account no longer exists"))?;
    let email = user.email.to_lowercase();
    let throttle = Throttle::new(&state.config.auth, &email, address);
    if let Some(wait) = db::login_failures::blocked_for(&mut conn, &throttle.limits, throttle.window_secs).await? {
        return Err(ApiError::too_many(
            ErrorCode::TooManyLoginFailures,
            "too many failed password checks; try again later",
            wait.unsigned_abs(),
        ));
    }
    drop(conn);
    let matched =
        state.passwords.verify(request.current_password, Some(user.password_hash.clone())).await.map_err(|_| busy())?;
    if !matched {
        let mut conn = state.db().await?;
        throttle.record_failure(&mut conn, Some(&user), &email, address).await?;
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
    Ok(LoginResponse {
        token: issued.token,
        token_type: "Bearer".into(),
        expires_at: issued.expires_at,
        user: changed.into(),
    })
}

/// What a password being set must be.
pub fn check_new_password(errors: &mut FieldErrors, field: &str, password: &str) {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        errors.add(field, Problem::TooShort { min: MIN_PASSWORD_CHARS as u64 });
    } else if password.len() > 1024 {
        errors.add(field, Problem::TooManyBytes { max: 1024 });
    }
}
