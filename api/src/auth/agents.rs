//! The agent caller: a machine credential, checked on the hottest path of the system.
//!
//! Every heartbeat would otherwise cost a signature check and a database read. Each replica
//! remembers, per credential it has verified, which machine it speaks for and until when: a
//! credential seen before is the same bytes that passed the signature check, so only its expiry
//! is checked again. The memory is keyed by a 128-bit SipHash of the credential under a key
//! drawn at start and never shown, so no one can make another string land on a remembered
//! credential; and a heartbeat finds everything this replica knows of its agent (including the
//! facts it last sent) in one small entry, rather than chasing a 300-byte string on the heap.
//!
//! Revocations reach the memory two ways: at once on the replica that revoked (it evicts), and
//! on every replica through a background poll, every `agent_token_cache_secs`, for agent
//! credentials revoked since the last poll. "Since" is counted in transactions, not time: each
//! revocation records its transaction's id, and a poll asks for those at or above the oldest
//! transaction the previous poll could not see. So a revocation is found at the first poll
//! after it commits, however long its transaction ran (a clock-based look-back would miss a
//! transaction slower than the look-back). The cost is one small query per replica per poll,
//! however many agents there are, and a remembered credential is answered without an await.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use actix_web::dev::Payload;
use actix_web::http::header::AUTHORIZATION;
use actix_web::{FromRequest, HttpRequest, web};
use chrono::Utc;
// The keys are keyed hashes already: the table's own hash need only be fast.
use foldhash::HashMap;
use futures_util::future::{Either, LocalBoxFuture, Ready, ready};
use siphasher::sip128::SipHasher13;

use super::TokenKind;
use crate::db::{self, Pool};
use crate::domain::{MachineId, Role, TokenId};
use crate::error::ApiError;
use crate::state::AppState;

/// A verified agent: which machine it speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentCaller {
    pub token_id: TokenId,
    pub machine_id: MachineId,
    /// The facts this replica last heard from this credential's agent, if any.
    pub facts_seen: Option<FactsSeen>,
    key: CredentialKey,
}

/// Facts as an agent last sent them: a hash of their text (agents send the same text while
/// nothing changes), and the CPU count in them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FactsSeen {
    pub text_hash: u64,
    pub cpu_count: u32,
}

/// A credential, as this replica's memory knows it: its keyed 128-bit SipHash.
type CredentialKey = u128;

#[derive(Debug, Clone, Copy)]
struct Cached {
    token_id: TokenId,
    machine_id: Option<MachineId>,
    /// The credential's own expiry (`exp`), as a Unix time.
    expires: i64,
    facts_seen: Option<FactsSeen>,
}

/// What this replica knows about machine credentials.
#[derive(Debug)]
pub struct AgentCredentials {
    /// The secret key of the credential hash, drawn at start.
    hasher: SipHasher13,
    known: RwLock<HashMap<CredentialKey, Cached>>,
    /// The lowest transaction-id floor of the reads behind credentials remembered since the
    /// last poll: the next poll looks from there, so a revocation that committed between such
    /// a read and its remembering is still found.
    unpolled_floor: AtomicI64,
}

/// Credentials remembered at most; beyond, the memory is cleared and rebuilt as agents call.
const MAX_REMEMBERED: usize = 1_000_000;

impl AgentCredentials {
    /// An empty memory, and a task (on the current tokio runtime) that polls for revocations
    /// every `poll_every` for as long as the memory is in use.
    pub fn start(pool: Pool, poll_every: Duration) -> Arc<Self> {
        let credentials = Arc::new(Self {
            hasher: SipHasher13::new_with_keys(rand::random(), rand::random()),
            known: RwLock::default(),
            unpolled_floor: AtomicI64::new(i64::MAX),
        });
        tokio::spawn(poll_revocations(Arc::downgrade(&credentials), pool, poll_every));
        credentials
    }

    /// The agent a credential belongs to, or why it does not, if this replica remembers the
    /// credential: the hot path, with no await.
    fn remembered(&self, key: CredentialKey) -> Option<Result<AgentCaller, ApiError>> {
        let entry = self.known.read().ok()?.get(&key).copied()?;
        Some(if entry.expires <= unix_now() {
            Err(ApiError::unauthenticated("the token has expired"))
        } else {
            entry
                .machine_id
                .map(|machine_id| AgentCaller {
                    token_id: entry.token_id,
                    machine_id,
                    facts_seen: entry.facts_seen,
                    key,
                })
                .ok_or_else(refused)
        })
    }

    /// Checks a credential this replica does not remember (its signature, then its row) and
    /// remembers the answer.
    async fn verify(&self, state: &AppState, credential: &str, key: CredentialKey) -> Result<AgentCaller, ApiError> {
        let claims = state.tokens.verify(credential)?;
        if claims.typ != TokenKind::Agent {
            return Err(ApiError::forbidden("this endpoint is for machine agents"));
        }
        let token_id = TokenId(claims.jti);
        let mut conn = state.db().await?;
        let (row, floor) = db::api_tokens::find_with_floor(&mut conn, token_id).await?;
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
            known.insert(key, Cached { token_id, machine_id, expires: until, facts_seen: None });
        }
        // After remembering: a poll that has not seen this floor yet will look from it.
        self.unpolled_floor.fetch_min(floor, Ordering::SeqCst);
        Ok(AgentCaller { token_id, machine_id: machine_id.ok_or_else(refused)?, facts_seen: None, key })
    }

    fn key(&self, credential: &[u8]) -> CredentialKey {
        self.hasher.hash(credential).as_u128()
    }

    /// Remembers the facts `agent` just sent, for its next heartbeats.
    pub fn remember_facts(&self, agent: &AgentCaller, seen: FactsSeen) {
        if let Ok(mut known) = self.known.write()
            && let Some(entry) = known.get_mut(&agent.key)
        {
            entry.facts_seen = Some(seen);
        }
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

/// Seconds since the Unix epoch, without building a calendar date (as `Utc::now()` does): it
/// is read on every heartbeat.
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| i64::try_from(since.as_secs()).unwrap_or(i64::MAX))
}

fn refused() -> ApiError {
    ApiError::unauthenticated("the machine credential is revoked, expired or unknown")
}

/// Every `poll_every`, asks the database for agent credentials revoked since the last poll and
/// forgets them. Stops when the memory is dropped.
async fn poll_revocations(credentials: Weak<AgentCredentials>, pool: Pool, poll_every: Duration) {
    // The first poll reads every revocation ever made: a credential may be remembered before
    // it ends, and only a snapshot older than that would bound what it must see.
    let mut floor: Option<i64> = None;
    let mut tick = tokio::time::interval(poll_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(credentials) = credentials.upgrade() else { return };
        let remembered_from = credentials.unpolled_floor.swap(i64::MAX, Ordering::SeqCst);
        let from = floor.map(|f| f.min(remembered_from));
        let polled = match pool.get().await {
            Ok(mut conn) => db::api_tokens::agent_revocations_after(&mut conn, from).await.map_err(anyhow::Error::from),
            Err(e) => Err(anyhow::Error::from(e)),
        };
        match polled {
            Ok((revoked, next)) => {
                credentials.evict(&revoked);
                floor = Some(next);
            }
            Err(e) => {
                // What is remembered stays right until a poll gets through, from the same point.
                credentials.unpolled_floor.fetch_min(remembered_from, Ordering::SeqCst);
                tracing::warn!("polling for revoked agent credentials: {e:#}");
            }
        }
    }
}

impl FromRequest for AgentCaller {
    type Error = ApiError;
    type Future = Either<Ready<Result<Self, ApiError>>, LocalBoxFuture<'static, Result<Self, ApiError>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let Some(state) = req.app_data::<web::Data<AppState>>() else {
            return Either::Left(ready(Err(ApiError::internal(anyhow::anyhow!("application state missing")))));
        };
        let token = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|value| super::bearer_token(value.as_bytes()))
            .ok_or_else(|| ApiError::unauthenticated("send the machine credential as a bearer token"));
        let token = match token {
            Ok(token) => token,
            Err(e) => return Either::Left(ready(Err(e))),
        };
        let key = state.agents.key(token);
        if let Some(known) = state.agents.remembered(key) {
            return Either::Left(ready(known));
        }
        let Ok(token) = std::str::from_utf8(token) else {
            return Either::Left(ready(Err(ApiError::unauthenticated("the machine credential is not valid text"))));
        };
        let (state, token) = (state.clone(), token.to_owned());
        Either::Right(Box::pin(async move { state.agents.verify(&state, &token, key).await }))
    }
}
