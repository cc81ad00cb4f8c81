//! What machine agents call: enroll once with a one-time token, then send heartbeats, renew
//! their credential and take their work.

use std::borrow::Cow;
use std::time::Duration as StdDuration;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, get, post, web};
use chrono::{DateTime, Duration, Utc};
use diesel_async::AsyncConnection;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::{IntoParams, ToSchema};

use crate::auth::{AgentCaller, FactsSeen, TokenKind};
use crate::db::audit::{self, Actor, Change};
use crate::db::machine_status::HeartbeatRow;
use crate::db::{self, api_tokens::NewApiToken};
use crate::domain::facts::{Facts, Metrics, clip};
use crate::domain::health::is_monitored;
use crate::domain::health::is_overloaded;
use crate::domain::{ActorKind, Arch, JobId, LeaseId, MachineId, Problem, TokenId};
use crate::error::{ApiError, ErrorBody};
use crate::error_code::ErrorCode;
use crate::extract::parse_json_at;
use crate::extract::{Json, JsonBody, Query};
use crate::heartbeats::{facts_hash, facts_text_hash};
use crate::monitoring::{self, FactsSource};
use crate::state::AppState;

/// One of two ways to enroll: a machine's one-time `token`, or, on a cloud instance
/// Fleetyard launched, its launch's `launch_secret` (from the user data) with the
/// `instance_id` the cloud gave it. (No `Debug`: it holds secrets.)
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// The one-time enrollment token.
    #[serde(default)]
    pub token: Option<String>,
    /// The secret of the launch that made this cloud instance.
    #[serde(default)]
    pub launch_secret: Option<String>,
    /// This cloud instance's id, as its cloud knows it (`i-0abc...`).
    #[serde(default)]
    pub instance_id: Option<String>,
    /// The machine's facts, compared with its declaration at once.
    #[serde(default)]
    pub facts: Option<Facts>,
}

/// Which machine an enrollment is for, once its secret checked out.
enum Enrolling {
    Token(TokenId),
    Instance(uuid::Uuid),
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Credential {
    pub machine_id: MachineId,
    /// The machine credential: send it as `Authorization: Bearer <credential>`. Store it
    /// readable by the agent only.
    pub credential: String,
    pub credential_expires_at: DateTime<Utc>,
    pub heartbeat_interval_secs: u64,
}

#[utoipa::path(
    tag = "agents",
    request_body = EnrollRequest,
    security(()),
    responses(
        (status = 200, body = Credential),
        (status = 401, description = "The token is unknown, used, revoked or expired", body = ErrorBody),
        (status = 409, description = "The machine is not in a state that is monitored", body = ErrorBody),
        (status = 422, body = ErrorBody),
    ),
)]
#[post("/agent/enroll")]
/// Exchange a one-time enrollment token for a machine credential. Any earlier credential of
/// the machine stops working.
pub async fn enroll(state: web::Data<AppState>, body: Json<EnrollRequest>) -> Result<web::Json<Credential>, ApiError> {
    let mut request = body.into_inner();
    request.facts = request.facts.map(Facts::sanitized);
    let secret = match (&request.token, &request.launch_secret, &request.instance_id) {
        (Some(token), None, None) => Ok(token),
        (None, Some(secret), Some(instance)) if !instance.trim().is_empty() && instance.len() <= 128 => Err(secret),
        _ => {
            return Err(ApiError::invalid_field("token", Problem::EnrollWith));
        }
    };
    let hash = Sha256::digest(secret.unwrap_or_else(|s| s).trim().as_bytes()).to_vec();
    let lifetime = Duration::days(state.config.agent_credential_days);
    let mut conn = state.db().await?;
    let (credential, revoked) = conn
        .transaction::<_, ApiError, _>(async |conn| {
            let refused = || ApiError::new(StatusCode::UNAUTHORIZED, ErrorCode::InvalidEnrollmentToken, "the enrollment token is unknown, used, revoked or expired");
            let (machine_id, enrolling) = match secret {
                Ok(_) => {
                    let token = db::enrollment::lock_by_secret(conn, &hash).await?.ok_or_else(refused)?;
                    if token.used_at.is_some() || token.revoked_at.is_some() || token.expires_at <= Utc::now() {
                        return Err(refused());
                    }
                    (token.machine_id, Enrolling::Token(token.id))
                }
                Err(_) => {
                    let instance = request.instance_id.as_deref().unwrap_or_default().trim();
                    let (machine, row) = launched_instance(conn, &hash, instance).await?;
                    (machine, Enrolling::Instance(row))
                }
            };
            let machine = db::machines::lock(conn, machine_id).await?.ok_or_else(|| ApiError::not_found(ErrorCode::MachineNotFound))?;
            if !is_monitored(machine.lifecycle) {
                return Err(ApiError::conflict(
                    ErrorCode::MachineNotEnrollable,
                    format!("the machine is `{}`; agents enroll once it is approved", machine.lifecycle),
                ));
            }
            match enrolling {
                Enrolling::Token(token) => db::enrollment::mark_used(conn, token).await?,
                Enrolling::Instance(row) => {
                    db::clouds::set_enrolled(conn, row).await?;
                    if let Some(launch) = db::clouds::find_instance(conn, row).await?.and_then(|r| r.launch_id)
                        && db::clouds::of_launch(conn, launch).await?.iter().all(|r| r.enrolled_at.is_some() || r.ended_at.is_some())
                    {
                        // Every instance of the launch has enrolled: its secret is spent.
                        db::clouds::burn_secret(conn, launch).await?;
                    }
                }
            }
            let revoked = db::enrollment::revoke_agent_credentials(conn, machine.id).await?;
            let credential = issue_credential(&state, conn, machine.id, lifetime).await?;
            let actor = Actor { kind: ActorKind::Agent, id: Some(credential.token_id.0), name: format!("agent of machine {}", machine.id) };
            let entry = Change::new("machine.agent_enrolled", "machine", machine.id)
                .donor(machine.donor_id)
                .after(&serde_json::json!({ "credential_id": credential.token_id, "expires_at": credential.body.credential_expires_at }));
            audit::record(conn, &actor, &[entry]).await?;
            if let Some(facts) = &request.facts {
                monitoring::store_facts(conn, &machine, facts, FactsSource::Agent, facts_hash(facts), &actor).await?;
            }
            Ok((credential.body, revoked))
        })
        .await?;
    state.agents.evict(&revoked);
    Ok(web::Json(credential))
}

/// The machine of the cloud instance `instance` of the launch whose secret hashes to `hash`,
/// and its row, if the secret still works and that instance has not enrolled yet. An instance
/// the worker has not recorded yet answers 409 `instance-not-yet-known`: retry shortly.
async fn launched_instance(
    conn: &mut diesel_async::AsyncPgConnection,
    hash: &[u8],
    instance: &str,
) -> Result<(MachineId, uuid::Uuid), ApiError> {
    let refused = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::InvalidLaunchSecret,
            "the launch secret is unknown or spent, or the instance is not of its launch or has enrolled already",
        )
    };
    let launch = db::clouds::launch_by_secret(conn, hash).await?.ok_or_else(refused)?;
    if launch.secret_expires_at <= Utc::now() {
        return Err(refused());
    }
    let rows = db::clouds::of_launch(conn, launch.id).await?;
    if let Some(row) = rows.iter().find(|r| r.provider_id.as_deref() == Some(instance)) {
        if row.enrolled_at.is_some() || row.ended_at.is_some() {
            return Err(refused());
        }
        let machine = row.machine_id.ok_or_else(refused)?;
        return Ok((machine, row.id));
    }
    if rows.iter().any(|r| r.provider_id.is_none() && r.ended_at.is_none()) {
        return Err(ApiError::conflict(
            ErrorCode::InstanceNotYetKnown,
            "Fleetyard has not yet recorded this launch's instances; retry in a few seconds",
        ));
    }
    Err(refused())
}

struct IssuedCredential {
    token_id: TokenId,
    body: Credential,
}

async fn issue_credential(
    state: &AppState,
    conn: &mut diesel_async::AsyncPgConnection,
    machine: MachineId,
    lifetime: Duration,
) -> Result<IssuedCredential, ApiError> {
    let row = db::api_tokens::insert(
        conn,
        &NewApiToken::agent(
            TokenId::generate(),
            &format!("agent of machine {machine}"),
            machine,
            Utc::now() + lifetime,
        ),
    )
    .await?;
    let issued =
        state.tokens.issue_api_token(row.id.0, TokenKind::Agent, row.expires_at).map_err(ApiError::internal)?;
    Ok(IssuedCredential {
        token_id: row.id,
        body: Credential {
            machine_id: machine,
            credential: issued.token,
            credential_expires_at: issued.expires_at,
            heartbeat_interval_secs: state.config.heartbeat_interval_secs,
        },
    })
}

// Read in place, borrowing from the request body: the facts are never copied, only the agent
// version (into the queued row). A plain comment, so that it stays out of the API document.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest<'a> {
    #[schema(value_type = String, example = "0.1.0")]
    #[serde(borrow)]
    pub agent_version: Cow<'a, str>,
    /// The agent's clock when it sent this (RFC 3339), to measure clock skew.
    #[serde(deserialize_with = "crate::domain::validation::rfc3339_time")]
    pub sent_at: DateTime<Utc>,
    /// The machine's facts. Send them in the first heartbeat, whenever they change, and when
    /// the server answers 409 `facts-wanted` (it does not know them: it restarted, or this is
    /// another replica or a new credential); leave them out otherwise.
    // Kept as sent: unchanged facts are recognised without parsing them.
    #[schema(value_type = Option<Facts>)]
    #[serde(borrow, default)]
    pub facts: Option<&'a serde_json::value::RawValue>,
    pub metrics: Metrics,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HeartbeatAck {
    /// When to send the next heartbeat (agents add jitter).
    pub heartbeat_interval_secs: u64,
    /// The server's clock when it answered (RFC 3339, to the millisecond).
    #[serde(serialize_with = "crate::domain::validation::rfc3339_millis")]
    pub server_time: DateTime<Utc>,
}

#[utoipa::path(
    tag = "agents",
    request_body = HeartbeatRequest,
    responses(
        (status = 200, body = HeartbeatAck),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 409, description = "`facts-wanted`: this server does not know the machine's facts; send this heartbeat again with them", body = ErrorBody),
        (status = 503, description = "Too busy to store heartbeats; send the next one at the usual interval", body = ErrorBody),
    ),
)]
#[post("/agent/heartbeat")]
/// Report that the machine is alive, with its load, and its facts when they are new to the
/// server. Facts that contradict the inventory are flagged (and audited), never written over it.
pub async fn heartbeat(
    state: web::Data<AppState>,
    agent: AgentCaller,
    body: JsonBody,
) -> Result<web::Json<HeartbeatAck>, ApiError> {
    let beat: HeartbeatRequest = body.parse()?;
    let metrics = beat.metrics.sanitized();
    let now = Utc::now();
    let cpu_count = match (beat.facts, agent.facts_seen) {
        (None, Some(seen)) => seen.cpu_count,
        (None, None) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                ErrorCode::FactsWanted,
                "this server does not know the machine's facts yet; send this heartbeat again with them",
            ));
        }
        (Some(raw), seen) => {
            let text_hash = facts_text_hash(raw.get());
            match seen {
                Some(seen) if seen.text_hash == text_hash => seen.cpu_count,
                _ => {
                    let facts = parse_json_at::<Facts>(raw.get().as_bytes(), "facts")?.sanitized();
                    record_reported_facts(&state, agent, &facts, facts_hash(&facts)).await?;
                    state.agents.remember_facts(&agent, FactsSeen { text_hash, cpu_count: facts.cpu_count });
                    facts.cpu_count
                }
            }
        }
    };
    let policy = state.config.health_policy();
    let row = HeartbeatRow {
        machine_id: agent.machine_id,
        at: now,
        overloaded: is_overloaded(&metrics, cpu_count, &policy),
        agent_version: clip(beat.agent_version.into_owned(), 64),
        load1: metrics.load1,
        disk_used_pct: metrics.disk_used_pct,
        clock_skew_ms: (beat.sent_at - now).num_milliseconds().clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32,
        uptime_secs: i64::try_from(metrics.uptime_secs).unwrap_or(i64::MAX),
    };
    state.heartbeats.enqueue(row).map_err(|busy| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::HeartbeatsBacklogged,
            format!("{busy}; retry shortly"),
        )
    })?;
    Ok(web::Json(HeartbeatAck { heartbeat_interval_secs: state.config.heartbeat_interval_secs, server_time: now }))
}

/// Facts this replica has not seen from the machine: store them (unless another replica
/// already has) and compare them with the declaration.
async fn record_reported_facts(state: &AppState, agent: AgentCaller, facts: &Facts, hash: i64) -> Result<(), ApiError> {
    let actor = Actor {
        kind: ActorKind::Agent,
        id: Some(agent.token_id.0),
        name: format!("agent of machine {}", agent.machine_id),
    };
    let mut conn = state.db().await?;
    conn.transaction::<_, ApiError, _>(async |conn| {
        let stored = db::machine_status::lock(conn, agent.machine_id).await?;
        if stored.as_ref().and_then(|s| s.facts_hash) == Some(hash)
            && stored.and_then(|s| s.facts_source).as_deref() == Some("agent")
        {
            return Ok(());
        }
        let machine = db::machines::find(conn, agent.machine_id)
            .await?
            .ok_or_else(|| ApiError::not_found(ErrorCode::MachineNotFound))?;
        monitoring::store_facts(conn, &machine, facts, FactsSource::Agent, hash, &actor).await?;
        Ok(())
    })
    .await
}

#[utoipa::path(
    tag = "agents",
    responses(
        (status = 200, body = Credential), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, description = "The credential is less than an hour old (`renewal-too-early`)", body = ErrorBody),
    ),
)]
#[post("/agent/credential")]
/// Swap the machine credential for a fresh one (agents do this when a tenth of its life is
/// left). The old one keeps working for ten minutes, in case the answer never arrives. At most
/// once an hour.
pub async fn renew_credential(
    state: web::Data<AppState>,
    agent: AgentCaller,
) -> Result<web::Json<Credential>, ApiError> {
    let lifetime = Duration::days(state.config.agent_credential_days);
    let mut conn = state.db().await?;
    let (credential, retired) = conn
        .transaction::<_, ApiError, _>(async |conn| {
            // Locked: two renewals at once must not leave two live credentials.
            let machine = db::machines::lock(conn, agent.machine_id)
                .await?
                .ok_or_else(|| ApiError::not_found(ErrorCode::MachineNotFound))?;
            if !is_monitored(machine.lifecycle) {
                return Err(ApiError::conflict(
                    ErrorCode::MachineNotEnrollable,
                    format!("the machine is `{}`", machine.lifecycle),
                ));
            }
            let current = db::api_tokens::find(conn, agent.token_id)
                .await?
                .ok_or_else(|| ApiError::not_found(ErrorCode::CredentialNotFound))?;
            if current.created_at > Utc::now() - Duration::hours(1) {
                return Err(ApiError::conflict(
                    ErrorCode::RenewalTooEarly,
                    "this credential was issued less than an hour ago",
                ));
            }
            let credential = issue_credential(&state, conn, machine.id, lifetime).await?;
            let grace = Utc::now() + Duration::minutes(10);
            let retired =
                db::enrollment::retire_agent_credentials(conn, machine.id, credential.token_id, grace).await?;
            let actor = Actor {
                kind: ActorKind::Agent,
                id: Some(agent.token_id.0),
                name: format!("agent of machine {}", machine.id),
            };
            let entry = Change::new("machine.agent_credential_renewed", "machine", machine.id)
                .donor(machine.donor_id)
                .after(&serde_json::json!({
                    "credential_id": credential.token_id,
                    "expires_at": credential.body.credential_expires_at,
                    "previous_works_until": grace,
                }));
            audit::record(conn, &actor, &[entry]).await?;
            Ok((credential.body, retired))
        })
        .await?;
    // Re-read at the next use, with its new end.
    state.agents.evict(&retired);
    Ok(web::Json(credential))
}

/// A lease the machine holds now: whose SSH key to let in, and until when.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LeaseWork {
    pub lease_id: LeaseId,
    /// The holder's OpenSSH public key, if they gave one.
    pub ssh_public_key: Option<String>,
    /// Stop letting the key in at this time, even without hearing from Fleetyard again.
    pub expires_at: DateTime<Utc>,
}

/// What the machine should be doing now. The agent makes it so, and asks again with
/// `since=version`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AgentWork {
    /// Changes whenever anything below does.
    pub version: String,
    pub leases: Vec<LeaseWork>,
    /// Jobs to run (or keep running); a job that disappears from here is to be killed.
    pub jobs: Vec<JobWork>,
}

/// A job attempt for the agent to run.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct JobWork {
    pub job_id: JobId,
    /// Reports name the attempt, so a late report of an earlier one is told apart.
    pub attempt: i32,
    /// For `/bin/sh -c`.
    pub command: String,
    pub env: std::collections::BTreeMap<String, String>,
    pub timeout_secs: i32,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WorkQuery {
    /// The version the agent has; the answer waits for a different one.
    pub since: Option<String>,
    /// Seconds to wait for a change (long poll), at most 30; default 25.
    pub wait: Option<u64>,
}

/// The longest an agent's work poll is held.
const MAX_WORK_WAIT: StdDuration = StdDuration::from_secs(30);

async fn current_work(state: &AppState, machine: MachineId) -> Result<AgentWork, ApiError> {
    let mut conn = state.db().await?;
    let leases: Vec<LeaseWork> = db::leases::held_by_machine(&mut conn, machine)
        .await?
        .into_iter()
        .filter(|l| l.job_id.is_none())
        .filter_map(|l| Some(LeaseWork { lease_id: l.id, ssh_public_key: l.ssh_public_key, expires_at: l.expires_at? }))
        .collect();
    let jobs: Vec<JobWork> = db::jobs::running_on(&mut conn, machine)
        .await?
        .into_iter()
        .map(|(job, _)| JobWork {
            job_id: job.id,
            attempt: job.attempts,
            command: job.command,
            env: job.env.0,
            timeout_secs: job.timeout_secs,
        })
        .collect();
    let digest = Sha256::digest(serde_json::to_vec(&(&leases, &jobs)).map_err(ApiError::internal)?);
    Ok(AgentWork { version: hex::encode(&digest[..8]), leases, jobs })
}

#[utoipa::path(
    tag = "agents",
    params(WorkQuery),
    responses((status = 200, body = AgentWork), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
)]
#[get("/agent/work")]
/// What this machine should be doing: the SSH keys of the leases it holds. With `since`, the
/// answer waits (up to `wait` seconds) until that changes, and comes the moment it does.
pub async fn agent_work(
    state: web::Data<AppState>,
    agent: AgentCaller,
    query: Query<WorkQuery>,
) -> Result<web::Json<AgentWork>, ApiError> {
    let query = query.into_inner();
    let wait = StdDuration::from_secs(query.wait.unwrap_or(25)).min(MAX_WORK_WAIT);
    let machine = agent.machine_id;
    // Hold the bell before looking, so a change between the look and the wait still rings.
    let bell = state.work_bell.bell(machine);
    let mut work = current_work(&state, machine).await;
    if let Ok(current) = &work
        && query.since.as_deref() == Some(current.version.as_str())
        && !wait.is_zero()
    {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if tokio::time::timeout_at(deadline, bell.notified()).await.is_err() {
                break;
            }
            work = current_work(&state, machine).await;
            // A ring for a change that undid itself, or for all after a reconnect: wait on.
            if !matches!(&work, Ok(w) if query.since.as_deref() == Some(w.version.as_str())) {
                break;
            }
        }
    }
    state.work_bell.release(machine, bell);
    work.map(web::Json)
}

/// Output of a running job attempt.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobOutputChunk {
    pub attempt: i32,
    /// What the command printed since the last chunk (at most 256 KiB).
    pub data: String,
}

/// A job attempt that ended on the machine.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobFinished {
    pub attempt: i32,
    /// The exit status, if it exited.
    pub exit_code: Option<i32>,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
    /// Whether the agent killed it for running past its timeout.
    #[serde(default)]
    pub timed_out: bool,
}

/// The job, if it is this machine's current attempt `attempt` and still running.
async fn own_attempt(
    conn: &mut diesel_async::AsyncPgConnection,
    agent: AgentCaller,
    id: JobId,
    attempt: i32,
) -> Result<db::jobs::Job, ApiError> {
    let job = db::jobs::lock(conn, id).await?.ok_or_else(|| ApiError::not_found(ErrorCode::JobNotFound))?;
    if job.machine_id != Some(agent.machine_id) {
        return Err(ApiError::not_found(ErrorCode::JobNotFound));
    }
    if job.state != crate::domain::JobState::Running || job.attempts != attempt {
        return Err(ApiError::conflict(
            ErrorCode::JobNotRunningHere,
            format!("attempt {attempt} of this job is not running on this machine any more; stop it"),
        ));
    }
    Ok(job)
}

#[utoipa::path(
    tag = "agents",
    params(("id" = JobId, Path)),
    request_body = JobOutputChunk,
    responses(
        (status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "The attempt is no longer this machine's: kill it.", body = ErrorBody),
        (status = 422, body = ErrorBody),
    ),
)]
#[post("/agent/jobs/{id}/output")]
/// Append what a running job printed.
pub async fn job_output_from_agent(
    state: web::Data<AppState>,
    agent: AgentCaller,
    path: web::Path<JobId>,
    body: Json<JobOutputChunk>,
) -> Result<HttpResponse, ApiError> {
    let chunk = body.into_inner();
    if chunk.data.len() > 256 * 1024 {
        return Err(ApiError::invalid_field("data", Problem::TooManyBytes { max: 256 * 1024 }));
    }
    let id = path.into_inner();
    let mut conn = state.db().await?;
    conn.transaction::<_, ApiError, _>(async move |conn| {
        own_attempt(conn, agent, id, chunk.attempt).await?;
        db::jobs::append_output(conn, id, chunk.attempt, chunk.data.as_bytes()).await?;
        Ok(())
    })
    .await?;
    Ok(HttpResponse::NoContent().finish())
}

#[utoipa::path(
    tag = "agents",
    params(("id" = JobId, Path)),
    request_body = JobFinished,
    responses(
        (status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "The attempt is no longer this machine's.", body = ErrorBody),
    ),
)]
#[post("/agent/jobs/{id}/finish")]
/// Report how a job attempt ended; its machine is free again.
pub async fn job_finished(
    state: web::Data<AppState>,
    agent: AgentCaller,
    path: web::Path<JobId>,
    body: Json<JobFinished>,
) -> Result<HttpResponse, ApiError> {
    let report = body.into_inner();
    let id = path.into_inner();
    let mut conn = state.db().await?;
    conn.transaction::<_, ApiError, _>(async move |conn| {
        // Lease first, then job: the order placement rounds lock them in.
        let lease =
            db::jobs::current_lease(conn, id).await?.ok_or_else(|| ApiError::not_found(ErrorCode::JobNotFound))?;
        db::leases::lock(conn, lease.id).await?;
        let job = own_attempt(conn, agent, id, report.attempt).await?;
        let exit =
            crate::domain::job::Exit { code: report.exit_code, signal: report.signal, timed_out: report.timed_out };
        let (to, reason) = crate::domain::job::outcome(exit, job.timeout_secs);
        db::jobs::finish(conn, id, to, report.exit_code, reason.as_deref()).await?;
        if report.signal.is_some() && !report.timed_out {
            // Killed by something other than its timeout (a crash, the OOM killer): placement
            // trusts this machine a little less.
            db::machine_status::count_crashed_job(conn, agent.machine_id).await?;
        }
        if lease.state == crate::domain::LeaseState::Granted {
            db::leases::end(conn, lease.id, crate::domain::LeaseState::Released, "its job finished").await?;
        }
        db::leases::announce_work(conn, &[agent.machine_id]).await?;
        Ok(())
    })
    .await?;
    state.scheduler.wake();
    Ok(HttpResponse::NoContent().finish())
}

#[utoipa::path(
    tag = "agents",
    params(("arch" = Arch, Path)),
    security(()),
    responses(
        (status = 200, description = "The `fleetyard-agent` binary for this architecture.", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 404, description = "This server has no agent binary for the architecture.", body = ErrorBody),
        (status = 422, body = ErrorBody),
    ),
)]
#[get("/agent/binaries/{arch}")]
/// The agent binary for an architecture, from `clouds.agent_binaries_dir`: what the user data of
/// cloud instances downloads (and checks against the digest it carries). Public: the agent is
/// open source and holds no secret.
pub async fn agent_binary(state: web::Data<AppState>, arch: web::Path<Arch>) -> Result<HttpResponse, ApiError> {
    let missing = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::AgentBinaryNotFound,
            "this server has no agent binary for that architecture",
        )
    };
    let dir = state.config.clouds.agent_binaries_dir.clone().ok_or_else(missing)?;
    let bytes =
        tokio::fs::read(dir.join(format!("fleetyard-agent-{}", arch.into_inner()))).await.map_err(|_| missing())?;
    Ok(HttpResponse::Ok().content_type("application/octet-stream").body(bytes))
}
