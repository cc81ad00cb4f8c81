//! Who is calling. Every handler takes a [`Principal`] and states its rule with one of the
//! access methods below, so the rule is visible at the top of the handler.
//!
//! A token only points at a database row (a user or an `api_tokens` entry); that row decides
//! the role, and a disabled user or revoked token stops working at once.

mod agents;
mod password;
mod token;

use actix_web::dev::Payload;
use actix_web::http::header::AUTHORIZATION;
use actix_web::{FromRequest, HttpRequest, web};
use chrono::Utc;
use futures_util::future::LocalBoxFuture;

pub use self::agents::{AgentCaller, AgentCredentials, FactsSeen};
pub use self::password::{MIN_PASSWORD_CHARS, PasswordGate, hash_password, verify_password};
pub use self::token::{Claims, IssuedToken, TokenKeys, TokenKind};
use crate::db::{self, audit::Actor};
use crate::domain::{ActorKind, DonorId, MachineId, Requester, Role, TokenId, UserId};
use crate::error::ApiError;
use crate::state::AppState;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Admin { user_id: UserId, email: String },
    Donor { user_id: UserId, donor_id: DonorId, email: String },
    Service { token_id: TokenId, name: String, grant: ServiceGrant },
    Agent { token_id: TokenId, machine_id: MachineId },
}

/// What ops let a service token do (its `api_tokens` row says).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceGrant {
    /// Tenant names, or beginnings of names followed by `*`.
    pub tenants: Vec<String>,
    pub max_priority: i32,
    pub max_queued_leases: Option<i32>,
    pub max_queued_jobs: Option<i32>,
}

/// Which donors' data a caller may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DonorScope {
    All,
    Own(DonorId),
}

impl DonorScope {
    /// The donor to filter on, if any.
    pub fn only(self) -> Option<DonorId> {
        match self {
            DonorScope::All => None,
            DonorScope::Own(donor) => Some(donor),
        }
    }

    /// Whether the scope covers what belongs to `donor` (`None`: to no donor, such as a
    /// machine rented from a cloud, which only ops see).
    pub fn covers(self, donor: Option<DonorId>) -> bool {
        self.only().is_none_or(|own| Some(own) == donor)
    }
}

impl Principal {
    pub fn role(&self) -> Role {
        match self {
            Principal::Admin { .. } => Role::Admin,
            Principal::Donor { .. } => Role::Donor,
            Principal::Service { .. } => Role::Ci,
            Principal::Agent { .. } => Role::Agent,
        }
    }

    pub fn user_id(&self) -> Option<UserId> {
        match self {
            Principal::Admin { user_id, .. } | Principal::Donor { user_id, .. } => Some(*user_id),
            _ => None,
        }
    }

    /// How this caller appears in the audit log.
    pub fn actor(&self) -> Actor {
        match self {
            Principal::Admin { user_id, email } | Principal::Donor { user_id, email, .. } => {
                Actor { kind: ActorKind::User, id: Some(user_id.0), name: email.clone() }
            }
            Principal::Service { token_id, name, .. } => {
                Actor { kind: ActorKind::Service, id: Some(token_id.0), name: name.clone() }
            }
            Principal::Agent { token_id, machine_id } => {
                Actor { kind: ActorKind::Agent, id: Some(token_id.0), name: format!("agent of machine {machine_id}") }
            }
        }
    }

    /// Ops only.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self {
            Principal::Admin { .. } => Ok(()),
            _ => Err(self.refuse(&[Role::Admin])),
        }
    }

    /// Ops (everything) or a donor (its own data).
    pub fn admin_or_donor(&self) -> Result<DonorScope, ApiError> {
        match self {
            Principal::Admin { .. } => Ok(DonorScope::All),
            Principal::Donor { donor_id, .. } => Ok(DonorScope::Own(*donor_id)),
            _ => Err(self.refuse(&[Role::Admin, Role::Donor])),
        }
    }

    /// Reading the inventory: ops and service accounts see all of it, a donor its own part.
    pub fn inventory_reader(&self) -> Result<DonorScope, ApiError> {
        match self {
            Principal::Admin { .. } | Principal::Service { .. } => Ok(DonorScope::All),
            Principal::Donor { donor_id, .. } => Ok(DonorScope::Own(*donor_id)),
            Principal::Agent { .. } => Err(self.refuse(&[Role::Admin, Role::Donor, Role::Ci])),
        }
    }

    /// Who is asking, in the lifecycle table's terms. Only meaningful after
    /// [`admin_or_donor`](Self::admin_or_donor) has let the caller in.
    pub fn requester(&self) -> Requester {
        match self {
            Principal::Admin { .. } => Requester::Ops,
            _ => Requester::Donor,
        }
    }

    fn refuse(&self, allowed: &[Role]) -> ApiError {
        let allowed: Vec<&str> = allowed.iter().map(|r| r.as_str()).collect();
        ApiError::forbidden(format!(
            "this endpoint is open to the {} role(s); you are `{}`",
            allowed.join(", "),
            self.role()
        ))
    }
}

impl FromRequest for Principal {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let state = req.app_data::<web::Data<AppState>>().cloned();
        let header = req.headers().get(AUTHORIZATION).map(|v| v.to_str().map(str::to_owned));
        Box::pin(async move {
            let state = state.ok_or_else(|| ApiError::internal(anyhow::anyhow!("application state missing")))?;
            let token = match header {
                None => return Err(ApiError::unauthenticated("send a bearer token in the Authorization header")),
                Some(Err(_)) => return Err(ApiError::unauthenticated("the Authorization header is not valid text")),
                Some(Ok(value)) => bearer_token(value.as_bytes())
                    .and_then(|token| std::str::from_utf8(token).ok())
                    .ok_or_else(|| ApiError::unauthenticated("the Authorization header must be `Bearer <token>`"))?
                    .to_owned(),
            };
            let claims = state.tokens.verify(&token)?;
            let mut conn = state.db().await?;
            resolve(&mut conn, &claims).await
        })
    }
}

/// The token of an `Authorization: Bearer <token>` header, as bytes: an agent's credential is
/// looked up by them, and only checked as text when this replica does not remember it.
fn bearer_token(header: &[u8]) -> Option<&[u8]> {
    let (scheme, token) = header.split_at(header.iter().position(|&b| b == b' ')?);
    let token = token.trim_ascii();
    (scheme.eq_ignore_ascii_case(b"bearer") && !token.is_empty()).then_some(token)
}

/// Looks up the row a verified token points at and turns it into a principal.
pub(crate) async fn resolve(
    conn: &mut diesel_async::AsyncPgConnection,
    claims: &Claims,
) -> Result<Principal, ApiError> {
    match claims.typ {
        TokenKind::User => {
            let user = db::users::find(conn, UserId(claims.sub))
                .await?
                .ok_or_else(|| ApiError::unauthenticated("the account no longer exists"))?;
            if user.disabled_at.is_some() {
                return Err(ApiError::unauthenticated("the account is disabled"));
            }
            // Logging out, a new password or being disabled moved the generation on.
            if claims.generation.unwrap_or(0) != user.session_generation {
                return Err(ApiError::unauthenticated("the session has ended; log in again"));
            }
            match (user.role, user.donor_id) {
                (Role::Admin, _) => Ok(Principal::Admin { user_id: user.id, email: user.email }),
                (Role::Donor, Some(donor_id)) => Ok(Principal::Donor { user_id: user.id, donor_id, email: user.email }),
                _ => Err(ApiError::internal(anyhow::anyhow!("user {} has an impossible role", user.id))),
            }
        }
        TokenKind::Service | TokenKind::Agent => {
            let row = db::api_tokens::find(conn, TokenId(claims.jti))
                .await?
                .filter(|row| row.id.0 == claims.sub)
                .ok_or_else(|| ApiError::unauthenticated("the token is not known to this server"))?;
            if row.revoked_at.is_some_and(|at| at <= Utc::now()) {
                return Err(ApiError::unauthenticated("the token has been revoked"));
            }
            if row.expires_at <= Utc::now() {
                return Err(ApiError::unauthenticated("the token has expired"));
            }
            match (claims.typ, row.role, row.machine_id) {
                (TokenKind::Service, Role::Ci, _) => Ok(Principal::Service {
                    token_id: row.id,
                    name: row.name,
                    grant: ServiceGrant {
                        tenants: row.tenants,
                        max_priority: row.max_priority,
                        max_queued_leases: row.max_queued_leases,
                        max_queued_jobs: row.max_queued_jobs,
                    },
                }),
                (TokenKind::Agent, Role::Agent, Some(machine_id)) => {
                    Ok(Principal::Agent { token_id: row.id, machine_id })
                }
                _ => Err(ApiError::unauthenticated("the token does not match its record")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn the_bearer_scheme_is_matched_in_any_case_and_the_token_trimmed() {
        assert_eq!(bearer_token(b"Bearer abc.def"), Some(&b"abc.def"[..]));
        assert_eq!(bearer_token(b"bEaReR   abc.def  "), Some(&b"abc.def"[..]));
        assert_eq!(bearer_token(b"Basic abc"), None);
        assert_eq!(bearer_token(b"Bearer"), None);
        assert_eq!(bearer_token(b"Bearer   "), None);
        assert_eq!(bearer_token(b"abc.def"), None);
    }
}
