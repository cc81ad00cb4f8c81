//! Build and test jobs: a command the scheduler places on a matching machine, which its agent
//! runs; the output and the exit status come back here.

use std::collections::BTreeMap;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, get, post, web};
use chrono::{DateTime, Utc};
use diesel_async::AsyncConnection;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::leases::idempotency_key;
use super::{page, page_type, paginate};
use crate::auth::Principal;
use crate::db::jobs::{Job, NewJob};
use crate::db::leases::Scope;
use crate::db::{self, Json as Jsonb};
use crate::domain::cloud::Placement;
use crate::domain::job::validate_env;
use crate::domain::placement::Requirements;
use crate::domain::usage_policy::Purpose;
use crate::domain::validation::check_text;
use crate::domain::{FieldErrors, JobId, JobState, LeaseState, MachineId, Problem};
use crate::error::{ApiError, ErrorBody};
use crate::error_code::ErrorCode;
use crate::extract::{Json, Query};
use crate::operations::leases::{
    Holder, LeaseSpec, check_demand, check_lab_wait, holder, may_change, new_lease, queue_standing, refusal,
    request_hash, scope,
};
use crate::scheduler::Answer;
use crate::state::AppState;

/// Time a job's lease runs past its timeout, for the agent to kill it and report.
const REPORT_GRACE_SECS: i32 = 120;

/// A job to run.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    pub requirements: Requirements,
    /// `build` or `test` (or `ci`), checked against donors' policies.
    pub purpose: Purpose,
    /// Run with `/bin/sh -c` as the machine's job user (the agent's `job_user`), in a cgroup of its own.
    #[schema(
        example = "make -j$(nproc) check",
        pattern = r"^[^\x00-\x08\x0b-\x1f\x7f-\x9f]*[^\s\x00-\x08\x0b-\x1f\x7f-\x9f][^\x00-\x08\x0b-\x1f\x7f-\x9f]*$",
        max_length = 65536
    )]
    pub command: String,
    /// Environment variables for the command.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Killed (with everything it started) after this many seconds.
    #[schema(minimum = 1, example = 3600)]
    pub timeout_secs: i32,
    /// Attempts before a job whose machine keeps getting lost fails; default 3.
    #[serde(default = "default_attempts")]
    #[schema(minimum = 1, maximum = 10, default = 3)]
    pub max_attempts: i32,
    #[schema(example = "sig-loongarch", pattern = r"^[a-z0-9][a-z0-9._-]{0,63}$")]
    pub tenant: String,
    #[serde(default = "default_priority")]
    #[schema(minimum = 0, maximum = 100, default = 50)]
    pub priority: i32,
    #[serde(default)]
    pub trusted_only: bool,
    /// How long each attempt may wait for a machine, in minutes.
    #[serde(default)]
    pub max_wait_minutes: Option<i64>,
    /// Lab machines, a cloud instance, or either (the default), as for leases.
    #[serde(default = "crate::operations::leases::any_placement")]
    pub placement: Placement,
    /// How long an attempt may wait for the labs before a cloud instance is launched for it.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 10080)]
    pub max_lab_wait_minutes: Option<i64>,
}

fn default_attempts() -> i32 {
    3
}

fn default_priority() -> i32 {
    50
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct JobView {
    pub id: JobId,
    pub state: JobState,
    pub tenant: String,
    pub holder: crate::operations::leases::LeaseHolder,
    /// `null` for a donor whose machine in the foundation's lab ran it: the work done in the
    /// lab is not the lender's to read.
    pub command: Option<String>,
    pub env: Option<BTreeMap<String, String>>,
    pub timeout_secs: i32,
    /// Attempts made so far (a machine lost mid-job costs one).
    pub attempts: i32,
    pub max_attempts: i32,
    /// Where it runs or last ran.
    pub machine_id: Option<MachineId>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub exit_code: Option<i32>,
    /// Why it ended (or why it was queued again).
    pub end_reason: Option<String>,
    /// Bytes of output so far (the newest 16 MiB are kept).
    pub output_bytes: i64,
    /// While queued: its place, as for leases.
    pub queue: Option<crate::operations::leases::QueueStanding>,
}

impl From<Job> for JobView {
    fn from(j: Job) -> Self {
        Self {
            id: j.id,
            state: j.state,
            tenant: j.tenant,
            holder: crate::operations::leases::LeaseHolder { kind: j.holder_kind, name: j.holder_name },
            command: Some(j.command),
            env: Some(j.env.0),
            timeout_secs: j.timeout_secs,
            attempts: j.attempts,
            max_attempts: j.max_attempts,
            machine_id: j.machine_id,
            created_at: j.created_at,
            started_at: j.started_at,
            finished_at: j.finished_at,
            exit_code: j.exit_code,
            end_reason: j.end_reason,
            output_bytes: j.output_bytes,
            queue: None,
        }
    }
}

page_type!(JobPage, JobView);

/// Validates a request, naming every problem; returns how long each attempt may wait in the
/// queue and for the labs, in minutes.
fn validate(state: &AppState, holder: &Holder, request: &JobRequest) -> Result<(i64, i64), ApiError> {
    let config = &state.config;
    let mut errors = FieldErrors::new();
    let wait = check_demand(
        config,
        holder,
        &request.requirements,
        request.priority,
        &request.tenant,
        request.max_wait_minutes,
        &mut errors,
    );
    let lab_wait = check_lab_wait(config, request.max_lab_wait_minutes, &mut errors);
    check_text(&mut errors, "command", &request.command, 65_536);
    validate_env("env", &request.env, &mut errors);
    let max_secs = config.lease_max_minutes * 60 - i64::from(REPORT_GRACE_SECS);
    if !(1..=max_secs).contains(&i64::from(request.timeout_secs)) {
        errors.add("timeout_secs", Problem::Between { min: 1, max: max_secs });
    }
    if !(1..=10).contains(&request.max_attempts) {
        errors.add("max_attempts", Problem::Between { min: 1, max: 10 });
    }
    errors.into_result()?;
    Ok((wait, lab_wait))
}

async fn view(state: &AppState, job: Job) -> Result<JobView, ApiError> {
    let queued = job.state == JobState::Queued;
    let id = job.id;
    let mut view = JobView::from(job);
    if queued {
        let mut conn = state.db().await?;
        if let Some(lease) = db::jobs::current_lease(&mut conn, id).await?.filter(|l| l.state == LeaseState::Queued) {
            view.queue = Some(queue_standing(&mut conn, &lease).await?);
        }
    }
    Ok(view)
}

fn respond(view: JobView, status: StatusCode, replayed: bool) -> HttpResponse {
    let mut response = HttpResponse::build(status);
    response.insert_header(("location", format!("/api/v1/jobs/{}", view.id)));
    if replayed {
        response.insert_header(("idempotent-replayed", "true"));
    }
    response.json(view)
}

#[utoipa::path(
    tag = "jobs",
    request_body = JobRequest,
    params(("Idempotency-Key" = Option<String>, Header, pattern = r"^[\x21-\x7e]{1,200}$", description = "Makes a retry return the job the first attempt made.")),
    responses(
        (status = 201, description = "Placed: running on a machine, or queued for one.", body = JobView),
        (status = 200, description = "A retry with a known Idempotency-Key: the job it made.", body = JobView),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 422, description = "Invalid, or no machine could ever run it (`unsatisfiable`, with the reason).", body = ErrorBody),
        (status = 429, description = "The service token has as many jobs open as it may (`queue-cap-reached`); `Retry-After` says when to try again.", body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
)]
#[post("/jobs")]
/// Run a command on a machine that matches: placed like a lease (donor policies, fair share),
/// run by the machine's agent, its output and exit status kept. CI service accounts and ops.
pub async fn create_job(
    state: web::Data<AppState>,
    caller: Principal,
    req: HttpRequest,
    body: Json<JobRequest>,
) -> Result<HttpResponse, ApiError> {
    let holder = holder(&caller, "jobs")?;
    let key = idempotency_key(&req)?;
    let request = body.into_inner();
    let (wait, lab_wait) = validate(&state, &holder, &request)?;
    let hash = request_hash(&request)?;

    let mut conn = state.db().await?;
    if let Some(key) = &key
        && let Some(existing) = db::jobs::by_key(&mut conn, holder.id, key).await?
    {
        if existing.request_hash != hash {
            return Err(ApiError::invalid_field("Idempotency-Key", Problem::KeyReused));
        }
        drop(conn);
        return Ok(respond(view(&state, existing).await?, StatusCode::OK, true));
    }
    let new = NewJob {
        id: JobId::generate(),
        state: JobState::Queued,
        holder_kind: holder.kind,
        holder_id: holder.id,
        holder_name: holder.name.clone(),
        idempotency_key: key,
        request_hash: hash.clone(),
        tenant: request.tenant.clone(),
        command: request.command.clone(),
        env: Jsonb(request.env.clone()),
        timeout_secs: request.timeout_secs,
        max_wait_secs: i32::try_from(wait * 60).map_err(ApiError::internal)?,
        max_attempts: request.max_attempts,
    };
    // A service token's cap on open jobs, counted under a lock on the token so that requests
    // sent at once cannot all slip under it.
    let cap = holder.grant.as_ref().map(|g| g.max_queued_jobs.unwrap_or(state.config.auth.max_queued_jobs));
    let job = conn
        .transaction::<_, ApiError, _>(async |conn| {
            if let Some(cap) = cap {
                let open = db::jobs::lock_and_count_open(conn, holder.id).await?;
                if open >= i64::from(cap) {
                    return Err(ApiError::too_many(
                        ErrorCode::QueueCapReached,
                        format!("this service token may have at most {cap} jobs queued or running at once; retry once some have ended"),
                        crate::operations::leases::QUEUE_CAP_RETRY_SECS,
                    ));
                }
            }
            db::jobs::insert(conn, &new).await?.ok_or_else(|| {
                ApiError::conflict(ErrorCode::IdempotencyRace, "a job with this Idempotency-Key was just made; retry")
            })
        })
        .await?;
    drop(conn);

    let lease = new_lease(LeaseSpec {
        holder: &holder,
        requirements: &request.requirements,
        purpose: request.purpose,
        priority: request.priority,
        tenant: &request.tenant,
        trusted_only: request.trusted_only,
        duration_secs: request.timeout_secs + REPORT_GRACE_SECS,
        wait_minutes: wait,
        ssh_public_key: None,
        idempotency_key: None,
        request_hash: hash,
        job_id: Some(job.id),
        placement: request.placement,
        max_lab_wait_minutes: lab_wait,
    });
    let refused = match state.scheduler.submit(lease).await {
        Ok(Answer::Accepted(..) | Answer::Replayed(_)) => None,
        Ok(Answer::Refused { code, reason }) => Some(refusal(code, reason)),
        Err(e) => Some(e),
    };
    match refused {
        None => {}
        Some(refused) => {
            // Nothing may stay of a refused request, nor of one the scheduler could not take.
            let mut conn = state.db().await?;
            db::jobs::delete(&mut conn, job.id).await?;
            return Err(refused);
        }
    }
    let mut conn = state.db().await?;
    let job = db::jobs::find(&mut conn, job.id).await?.ok_or_else(|| ApiError::not_found(ErrorCode::JobNotFound))?;
    drop(conn);
    Ok(respond(view(&state, job).await?, StatusCode::CREATED, false))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct JobListQuery {
    /// Repeat for several.
    #[serde(default)]
    pub state: Vec<JobState>,
    pub cursor: Option<String>,
    /// 1 to 200, default 50.
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
}

#[utoipa::path(
    tag = "jobs",
    params(JobListQuery),
    responses((status = 200, body = JobPage), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
)]
#[get("/jobs")]
/// List jobs, newest first: ops see all, a service account its own, a donor those that ran on
/// its machines.
pub async fn list_jobs(
    state: web::Data<AppState>,
    caller: Principal,
    query: Query<JobListQuery>,
) -> Result<web::Json<JobPage>, ApiError> {
    let scope = scope(&caller)?;
    let query = query.into_inner();
    let page = page(query.cursor.as_deref(), query.limit)?;
    let mut conn = state.db().await?;
    let rows = db::jobs::list(&mut conn, scope, &query.state, page).await?;
    let (rows, next_cursor) = paginate(rows, &page, |j| j.id);
    let readable = match scope {
        Scope::Donor(donor) => {
            let ids: Vec<JobId> = rows.iter().map(|j| j.id).collect();
            Some(db::jobs::operated_by_donor(&mut conn, donor, &ids).await?)
        }
        _ => None,
    };
    let items = rows
        .into_iter()
        .map(|job| {
            let withheld = readable.as_ref().is_some_and(|r| !r.contains(&job.id));
            let view = JobView::from(job);
            if withheld { view.withheld() } else { view }
        })
        .collect();
    Ok(web::Json(JobPage { items, next_cursor }))
}

impl JobView {
    /// Without what the job ran: for the lender of the lab machine that ran it.
    fn withheld(self) -> Self {
        Self { command: None, env: None, ..self }
    }
}

/// How much of a job a caller may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sight {
    /// All of it: ops, its holder, the donor of a usage-right machine that ran it.
    Whole,
    /// That it ran, not what: the lender of a lab machine that ran it.
    Outline,
}

/// A job the caller may see, and how much of it, or 404.
async fn find_visible(state: &AppState, caller: &Principal, id: JobId) -> Result<(Job, Sight), ApiError> {
    let scope = scope(caller)?;
    let mut conn = state.db().await?;
    let job = db::jobs::find(&mut conn, id).await?.ok_or_else(|| ApiError::not_found(ErrorCode::JobNotFound))?;
    let sight = match scope {
        Scope::All => Some(Sight::Whole),
        Scope::Holder(holder) => (job.holder_id == holder).then_some(Sight::Whole),
        Scope::Donor(donor) => db::jobs::ran_on_donor(&mut conn, id, donor)
            .await?
            .map(|operated| if operated { Sight::Whole } else { Sight::Outline }),
    };
    sight.map(|sight| (job, sight)).ok_or_else(|| ApiError::not_found(ErrorCode::JobNotFound))
}

#[utoipa::path(
    tag = "jobs",
    params(("id" = JobId, Path)),
    responses((status = 200, body = JobView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
)]
#[get("/jobs/{id}")]
/// One job.
pub async fn get_job(
    state: web::Data<AppState>,
    caller: Principal,
    path: web::Path<JobId>,
) -> Result<web::Json<JobView>, ApiError> {
    let (job, sight) = find_visible(&state, &caller, path.into_inner()).await?;
    let view = view(&state, job).await?;
    Ok(web::Json(if sight == Sight::Whole { view } else { view.withheld() }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct OutputQuery {
    /// The last this many bytes (default 65536, at most 16 MiB).
    #[param(minimum = 1, maximum = 16777216)]
    pub tail: Option<i64>,
}

#[utoipa::path(
    tag = "jobs",
    params(("id" = JobId, Path), OutputQuery),
    responses(
        (status = 200, description = "The output's tail as text; `x-output-bytes` is how much it printed in all.", body = String, content_type = "text/plain"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody),
    ),
)]
#[get("/jobs/{id}/output")]
/// What the job printed (stdout and stderr together), its tail by default.
pub async fn job_output(
    state: web::Data<AppState>,
    caller: Principal,
    path: web::Path<JobId>,
    query: Query<OutputQuery>,
) -> Result<HttpResponse, ApiError> {
    let tail = query.into_inner().tail.unwrap_or(65_536);
    if !(1..=db::jobs::MAX_OUTPUT_BYTES).contains(&tail) {
        return Err(ApiError::invalid_field("tail", Problem::Between { min: 1, max: db::jobs::MAX_OUTPUT_BYTES }));
    }
    let (job, sight) = find_visible(&state, &caller, path.into_inner()).await?;
    if sight != Sight::Whole {
        return Err(crate::operations::inventory::lab_machine());
    }
    let mut conn = state.db().await?;
    let (bytes, total) = db::jobs::output_tail(&mut conn, job.id, tail).await?;
    Ok(HttpResponse::Ok()
        .insert_header(("x-output-bytes", total.to_string()))
        .content_type("text/plain; charset=utf-8")
        .body(String::from_utf8_lossy(&bytes).into_owned()))
}

#[utoipa::path(
    tag = "jobs",
    params(("id" = JobId, Path)),
    responses(
        (status = 200, body = JobView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, description = "The job has already ended.", body = ErrorBody),
    ),
)]
#[post("/jobs/{id}/cancel")]
/// Cancel a job: a queued one leaves the queue; a running one's agent kills it with everything
/// it started. Its holder or ops.
pub async fn cancel_job(
    state: web::Data<AppState>,
    caller: Principal,
    path: web::Path<JobId>,
) -> Result<web::Json<JobView>, ApiError> {
    let (job, _) = find_visible(&state, &caller, path.into_inner()).await?;
    may_change(&caller, job.holder_id, ErrorCode::JobNotFound)?;
    let by = caller.actor().name;
    let mut conn = state.db().await?;
    let cancelled = conn
        .transaction::<_, ApiError, _>(async move |conn| {
            // Lease first, then job: the order placement rounds lock them in.
            let lease = db::jobs::current_lease(conn, job.id).await?;
            if let Some(lease) = &lease {
                db::leases::lock(conn, lease.id).await?;
            }
            let job = db::jobs::lock(conn, job.id).await?.ok_or_else(|| ApiError::not_found(ErrorCode::JobNotFound))?;
            if !job.state.is_open() {
                return Err(ApiError::conflict(
                    ErrorCode::JobEnded,
                    format!("the job has already ended ({})", job.state),
                ));
            }
            if let Some(lease) = lease.filter(|l| l.state.is_open()) {
                let to = if lease.state == LeaseState::Queued { LeaseState::Cancelled } else { LeaseState::Released };
                let ended = db::leases::end(conn, lease.id, to, &format!("its job was cancelled by {by}")).await?;
                db::leases::announce_work(conn, ended.machine_id.as_slice()).await?;
            }
            Ok(db::jobs::finish(conn, job.id, JobState::Cancelled, None, Some(&format!("cancelled by {by}"))).await?)
        })
        .await?;
    state.scheduler.wake();
    Ok(web::Json(JobView::from(cancelled)))
}
