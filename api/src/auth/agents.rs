//! The agent caller: a machine credential, checked on the hottest path of the system.
//!
//! Every heartbeat would otherwise cost a database read to check the credential. Each replica
//! keeps what it learned about a credential for `agent_token_cache_secs`: a revocation on this
//! replica takes effect at once (it evicts), on another replica within that time.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use actix_web::dev::Payload;
use actix_web::http::header::AUTHORIZATION;
use actix_web::{FromRequest, HttpRequest, web};
use chrono::Utc;
use futures_util::future::LocalBoxFuture;

use super::TokenKind;
use crate::db;
use crate::domain::{MachineId, Role, TokenId};
use crate::error::ApiError;
use crate::state::AppState;

/// A verified agent: which machine it speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentCaller {
    pub token_id: TokenId,
    pub machine_id: MachineId,
}

#[derive(Debug, Clone, Copy)]
struct Cached {
    machine_id: Option<MachineId>,
    checked_at: Instant,
}

/// What this replica knows about machine credentials.
#[derive(Debug)]
pub struct AgentCredentials {
    ttl: Duration,
    known: RwLock<HashMap<TokenId, Cached>>,
}

impl AgentCredentials {
    pub fn new(ttl: Duration) -> Self {
        Self { ttl, known: RwLock::new(HashMap::new()) }
    }

    /// The machine a live credential speaks for, or why it does not.
    pub async fn resolve(&self, state: &AppState, token: TokenId) -> Result<MachineId, ApiError> {
        let cached = self.known.read().ok().and_then(|known| known.get(&token).copied());
        let machine = match cached {
            Some(entry) if entry.checked_at.elapsed() < self.ttl => entry.machine_id,
            _ => {
                let mut conn = state.db().await?;
                let row = db::api_tokens::find(&mut conn, token).await?;
                let machine = row
                    .filter(|t| t.role == Role::Agent && t.revoked_at.is_none() && t.expires_at > Utc::now())
                    .and_then(|t| t.machine_id);
                if let Ok(mut known) = self.known.write() {
                    known.insert(token, Cached { machine_id: machine, checked_at: Instant::now() });
                }
                machine
            }
        };
        machine.ok_or_else(|| ApiError::unauthenticated("the machine credential is revoked, expired or unknown"))
    }

    /// Forgets credentials at once (after a revocation on this replica).
    pub fn evict(&self, tokens: &[TokenId]) {
        if let Ok(mut known) = self.known.write() {
            for token in tokens {
                known.remove(token);
            }
        }
    }
}

impl FromRequest for AgentCaller {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let state = req.app_data::<web::Data<AppState>>().cloned();
        let header = req.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
        Box::pin(async move {
            let state = state.ok_or_else(|| ApiError::internal(anyhow::anyhow!("application state missing")))?;
            let token = header
                .as_deref()
                .and_then(super::bearer_token)
                .ok_or_else(|| ApiError::unauthenticated("send the machine credential as a bearer token"))?;
            let claims = state.tokens.verify(token)?;
            if claims.typ != TokenKind::Agent {
                return Err(ApiError::forbidden("this endpoint is for machine agents"));
            }
            let token_id = TokenId(claims.jti);
            let machine_id = state.agents.resolve(&state, token_id).await?;
            Ok(AgentCaller { token_id, machine_id })
        })
    }
}
