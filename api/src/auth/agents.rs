//! The agent caller: a machine credential, checked on the hottest path of the system.
//!
//! Every heartbeat would otherwise cost a signature check and a database read. Each replica
//! remembers, per exact credential string it has verified, which machine it speaks for and
//! until when: a string seen before is the same bytes that passed the signature check, so only
//! its expiry is checked again. Revocations reach the memory two ways: at once on the replica
//! that revoked (it evicts), and on every replica through a poll, every
//! `agent_token_cache_secs`, for agent credentials revoked since the last poll. The cost is
//! one small query per replica per poll, however many agents there are.

use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use actix_web::dev::Payload;
use actix_web::http::header::AUTHORIZATION;
use actix_web::{FromRequest, HttpRequest, web};
use chrono::{DateTime, Utc};
// Seeded per process, and several times faster than SipHash on these keys.
use foldhash::{HashMap, HashMapExt};
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
    token_id: TokenId,
    machine_id: Option<MachineId>,
    /// The credential's own expiry (`exp`), as a Unix time.
    expires: i64,
}

/// What this replica knows about machine credentials, by credential string.
#[derive(Debug)]
pub struct AgentCredentials {
    poll_every: Duration,
    known: RwLock<HashMap<String, Cached>>,
    /// When revocations were last polled, and from which database time to poll next.
    poll: Mutex<(Instant, Option<DateTime<Utc>>)>,
}

/// Polls look this far back before the previous poll, so a revocation whose transaction was
/// still running at that poll is not missed.
const POLL_OVERLAP: chrono::Duration = chrono::Duration::seconds(10);

/// Credentials remembered at most; beyond, the memory is cleared and rebuilt as agents call.
const MAX_REMEMBERED: usize = 1_000_000;

impl AgentCredentials {
    pub fn new(poll_every: Duration) -> Self {
        Self { poll_every, known: RwLock::new(HashMap::new()), poll: Mutex::new((Instant::now(), None)) }
    }

    /// The agent a credential string belongs to, or why it does not.
    pub async fn authenticate(&self, state: &AppState, credential: &str) -> Result<AgentCaller, ApiError> {
        let refused = || ApiError::unauthenticated("the machine credential is revoked, expired or unknown");
        if let Err(e) = self.poll_revocations(state).await {
            // What is remembered stays right until the next poll gets through.
            tracing::warn!("polling for revoked agent credentials: {e}");
        }
        let cached = self.known.read().ok().and_then(|known| known.get(credential).copied());
        if let Some(entry) = cached {
            if entry.expires <= Utc::now().timestamp() {
                return Err(ApiError::unauthenticated("the token has expired"));
            }
            let machine_id = entry.machine_id.ok_or_else(refused)?;
            return Ok(AgentCaller { token_id: entry.token_id, machine_id });
        }
        let claims = state.tokens.verify(credential)?;
        if claims.typ != TokenKind::Agent {
            return Err(ApiError::forbidden("this endpoint is for machine agents"));
        }
        let token_id = TokenId(claims.jti);
        let mut conn = state.db().await?;
        let row = db::api_tokens::find(&mut conn, token_id).await?;
        let now = Utc::now();
        // A credential may be retired in the future (its successor was issued); it works until then.
        let until = row.as_ref().and_then(|t| t.revoked_at).map_or(claims.exp, |at| at.timestamp().min(claims.exp));
        let machine_id = row
            .filter(|t| t.role == Role::Agent && t.revoked_at.is_none_or(|at| at > now) && t.expires_at > now)
            .and_then(|t| t.machine_id);
        if let Ok(mut known) = self.known.write() {
            if known.len() >= MAX_REMEMBERED {
                known.clear();
            }
            let entry = Cached { token_id, machine_id, expires: until };
            known.insert(credential.to_owned(), entry);
        }
        Ok(AgentCaller { token_id, machine_id: machine_id.ok_or_else(refused)? })
    }

    /// Every `poll_every`, one caller asks the database for revocations since the last poll and
    /// evicts them; everyone else goes on.
    async fn poll_revocations(&self, state: &AppState) -> Result<(), ApiError> {
        let since = {
            let Ok(mut poll) = self.poll.try_lock() else { return Ok(()) };
            if poll.0.elapsed() < self.poll_every && poll.1.is_some() {
                return Ok(());
            }
            poll.0 = Instant::now();
            poll.1
        };
        // The first poll starts from now: nothing is cached yet.
        let mut conn = state.db().await?;
        let from = since.map_or_else(Utc::now, |at| at - POLL_OVERLAP);
        let (revoked, now) = db::api_tokens::agent_revocations_since(&mut conn, from).await?;
        self.evict(&revoked);
        if let Ok(mut poll) = self.poll.lock() {
            poll.1 = Some(now);
        }
        Ok(())
    }

    /// Forgets credentials at once (after a revocation on this replica).
    pub fn evict(&self, tokens: &[TokenId]) {
        if tokens.is_empty() {
            return;
        }
        if let Ok(mut known) = self.known.write() {
            known.retain(|_, entry| !tokens.contains(&entry.token_id));
        }
    }
}

impl FromRequest for AgentCaller {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let state = req.app_data::<web::Data<AppState>>().cloned();
        // A cheap reference-counted clone, not a copy of the 300-byte credential.
        let header = req.headers().get(AUTHORIZATION).cloned();
        Box::pin(async move {
            let state = state.ok_or_else(|| ApiError::internal(anyhow::anyhow!("application state missing")))?;
            let token = header
                .as_ref()
                .and_then(|value| value.to_str().ok())
                .and_then(super::bearer_token)
                .ok_or_else(|| ApiError::unauthenticated("send the machine credential as a bearer token"))?;
            state.agents.authenticate(&state, token).await
        })
    }
}
