//! Leases as callers ask for and see them (the API's handlers and the web pages alike): CI (or
//! ops) asks for a machine for a while and gets it now, or a place in the queue; the list, one
//! lease, extending and releasing; and what jobs share with leases (holders, demand checks).

use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::{IntoParams, ToSchema};

use super::paging::{page, page_type, paginate};
use crate::auth::{Principal, ServiceGrant};
use crate::config::Config;
use crate::db::clouds::CloudInstance;
use crate::db::leases::{Connection, Lease, NewLease, Scope};
use crate::db::{self, Json as Jsonb};
use crate::domain::CloudProvider;
use crate::domain::cloud::{InstanceState, Market, Placement, amount, cost_micros};
use crate::domain::grant;
use crate::domain::inventory::validate_labels;
use crate::domain::lease::latest_end;
use crate::domain::placement::{Requirements, WaitReason, why_waiting};
use crate::domain::usage_policy::Purpose;
use crate::domain::{Arch, FieldErrors, HolderKind, JobId, LeaseId, LeaseState, MachineId, Problem};
use crate::error::ApiError;
use crate::error_code::ErrorCode;
use crate::scheduler::Answer;
use crate::state::AppState;
use crate::views::SshEndpoint;

/// A request for a machine.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaseRequest {
    pub requirements: Requirements,
    pub purpose: Purpose,
    /// How long the machine is needed, in minutes; at most the platform's limit
    /// (`FLEETYARD_LEASE_MAX_MINUTES`, 1440 by default, as stated here).
    #[schema(minimum = 1, maximum = 1440, example = 120)]
    pub duration_minutes: i64,
    /// 0 (lowest) to 100; default 50.
    #[serde(default = "default_priority")]
    #[schema(minimum = 0, maximum = 100, default = 50)]
    pub priority: i32,
    /// Who the machine serves (a SIG or a service), for fair share: `sig-riscv`.
    #[schema(example = "sig-riscv", pattern = r"^[a-z0-9][a-z0-9._-]{0,63}$")]
    pub tenant: String,
    /// An OpenSSH public key to let in for the lease.
    #[serde(default)]
    pub ssh_public_key: Option<String>,
    /// Foundation-lab machines only (release and signing work).
    #[serde(default)]
    pub trusted_only: bool,
    /// How long to wait in the queue before giving up, in minutes; default from the server's
    /// configuration. 0: grant now or fail.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 10080)]
    pub max_wait_minutes: Option<i64>,
    /// `lab`: donated machines only; `cloud`: a cloud instance only; `any` (the default): the
    /// labs first, a cloud instance when they cannot place it within `max_lab_wait_minutes`.
    #[serde(default = "any_placement")]
    pub placement: Placement,
    /// How long a `placement: any` request may wait for the labs before a cloud instance is
    /// launched for it; default from the server's configuration. 0: a cloud at once when no lab
    /// machine is free.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 10080)]
    pub max_lab_wait_minutes: Option<i64>,
}

pub(crate) fn any_placement() -> Placement {
    Placement::Any
}

fn default_priority() -> i32 {
    50
}

/// Where a queued lease stands.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct QueueStanding {
    /// 1 for the next in line among leases for the same architecture, counting priority and
    /// age (fair share between tenants may still reorder them).
    pub position: i64,
    /// When enough granted leases on matching-architecture machines will have expired for
    /// this one's turn, if that many are running; leases given back early make it sooner.
    pub estimated_start_at: Option<DateTime<Utc>>,
    /// What a cloud is doing for it, or why it is not on one (no offer for its architecture,
    /// the tenant's budget, an account at its cap...).
    pub cloud_note: Option<String>,
}

/// The cloud instance a lease waits for or holds.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LeaseCloud {
    pub instance_id: uuid::Uuid,
    pub state: InstanceState,
    pub provider: CloudProvider,
    pub account: String,
    pub region: String,
    pub flavour: String,
    pub market: Market,
    pub hourly_price: f64,
    /// What the lease has cost so far: the instance from its launch to its end, or, on an
    /// imported server, the time it was held.
    pub cost: f64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LeaseHolder {
    pub kind: HolderKind,
    pub name: String,
}

/// A lease as its holder, ops and the machine's donor see it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LeaseView {
    pub id: LeaseId,
    pub state: LeaseState,
    pub tenant: String,
    pub purpose: Purpose,
    pub priority: i32,
    pub requirements: Requirements,
    pub trusted_only: bool,
    pub duration_minutes: i64,
    pub holder: LeaseHolder,
    pub has_ssh_public_key: bool,
    pub queued_at: DateTime<Utc>,
    /// A lease still queued at this time fails.
    pub deadline: DateTime<Utc>,
    pub machine_id: Option<MachineId>,
    /// The build or test job this lease is an attempt of, if any.
    pub job_id: Option<JobId>,
    /// How to reach the machine while the lease is granted.
    pub connection: Option<SshEndpoint>,
    pub granted_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub end_reason: Option<String>,
    /// Only while queued.
    pub queue: Option<QueueStanding>,
    pub placement: Placement,
    pub max_lab_wait_minutes: i64,
    /// The cloud instance it waits for or runs on, if any.
    pub cloud: Option<LeaseCloud>,
}

impl LeaseView {
    fn new(lease: Lease, connection: Option<SshEndpoint>, queue: Option<QueueStanding>) -> Self {
        let requirements = lease.requirements();
        let max_lab_wait_minutes = i64::from(lease.max_lab_wait_secs) / 60;
        Self {
            id: lease.id,
            state: lease.state,
            tenant: lease.tenant,
            purpose: lease.purpose,
            priority: lease.priority,
            requirements,
            trusted_only: lease.trusted_only,
            duration_minutes: i64::from(lease.duration_secs) / 60,
            holder: LeaseHolder { kind: lease.holder_kind, name: lease.holder_name },
            has_ssh_public_key: lease.ssh_public_key.is_some(),
            queued_at: lease.queued_at,
            deadline: lease.deadline,
            machine_id: lease.machine_id,
            job_id: lease.job_id,
            connection: if lease.state == LeaseState::Granted { connection } else { None },
            granted_at: lease.granted_at,
            expires_at: lease.expires_at,
            ended_at: lease.ended_at,
            end_reason: lease.end_reason,
            queue,
            placement: lease.placement,
            max_lab_wait_minutes,
            cloud: None,
        }
    }
}

page_type!(LeasePage, LeaseView);

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WaitQuery {
    /// Seconds to wait for a queued lease to be granted before answering (long poll); at most
    /// the server's `lease_long_poll_max_secs`. Default 0: answer at once.
    pub wait: Option<u64>,
}

/// Who holds a lease or a job.
pub(crate) struct Holder {
    pub kind: HolderKind,
    pub id: uuid::Uuid,
    pub name: String,
    /// A service token's grant; ops have none and may act for any tenant.
    pub grant: Option<ServiceGrant>,
}

/// Who may hold leases and jobs: CI service accounts and ops.
pub(crate) fn holder(caller: &Principal, what: &str) -> Result<Holder, ApiError> {
    match caller {
        Principal::Service { token_id, name, grant } => {
            Ok(Holder { kind: HolderKind::Service, id: token_id.0, name: name.clone(), grant: Some(grant.clone()) })
        }
        Principal::Admin { user_id, email } => {
            Ok(Holder { kind: HolderKind::User, id: user_id.0, name: email.clone(), grant: None })
        }
        _ => Err(ApiError::forbidden(format!("{what} are for the ci and admin roles; you are `{}`", caller.role()))),
    }
}

/// Which leases a caller may see: ops all, a service account its own, a donor those on its
/// machines.
pub(crate) fn scope(caller: &Principal) -> Result<Scope, ApiError> {
    match caller {
        Principal::Admin { .. } => Ok(Scope::All),
        Principal::Service { token_id, .. } => Ok(Scope::Holder(token_id.0)),
        Principal::Donor { donor_id, .. } => Ok(Scope::Donor(*donor_id)),
        Principal::Agent { .. } => {
            Err(ApiError::forbidden("leases are for the admin, ci and donor roles; you are `agent`"))
        }
    }
}

fn visible(scope: Scope, lease: &Lease) -> bool {
    match scope {
        Scope::All => true,
        Scope::Holder(holder) => lease.holder_id == holder,
        Scope::Donor(donor) => lease.donor_id == Some(donor),
    }
}

/// The error a request the scheduler refused gets: 429 for a token over its queue cap (retry
/// once some of its leases are granted), 422 for the rest.
pub(crate) fn refusal(code: ErrorCode, reason: String) -> ApiError {
    if code == ErrorCode::QueueCapReached {
        ApiError::too_many(code, reason, QUEUE_CAP_RETRY_SECS)
    } else {
        ApiError::unprocessable(code, reason)
    }
}

/// What a token over its queue cap is told to wait before trying again.
pub(crate) const QUEUE_CAP_RETRY_SECS: u64 = 30;

/// Checks what every request for a machine carries (requirements, priority, tenant, how long
/// it may wait), and that the holder may ask for that tenant and priority, adding each problem
/// to `errors`; returns the minutes it may wait.
pub(crate) fn check_demand(
    config: &Config,
    holder: &Holder,
    r: &Requirements,
    priority: i32,
    tenant: &str,
    max_wait_minutes: Option<i64>,
    errors: &mut FieldErrors,
) -> i64 {
    if !(0..=4096).contains(&r.min_cores) {
        errors.add("requirements.min_cores", Problem::Between { min: 0, max: 4096 });
    }
    if !(0..=65_536).contains(&r.min_memory_gib) {
        errors.add("requirements.min_memory_gib", Problem::Between { min: 0, max: 65_536 });
    }
    if !(0..=1_048_576).contains(&r.min_disk_gib) {
        errors.add("requirements.min_disk_gib", Problem::Between { min: 0, max: 1_048_576 });
    }
    validate_labels("requirements.labels", &r.labels, errors);
    if !(0..=100).contains(&priority) {
        errors.add("priority", Problem::Between { min: 0, max: 100 });
    }
    if let Err(problem) = grant::check_tenant(tenant) {
        errors.add("tenant", problem);
    } else if let Some(bound) = &holder.grant
        && !grant::covers(&bound.tenants, tenant)
    {
        errors.add("tenant", Problem::TenantNotGranted { tenants: bound.tenants.join(", ") });
    }
    if let Some(bound) = &holder.grant
        && (0..=100).contains(&priority)
        && priority > bound.max_priority
    {
        errors.add("priority", Problem::AboveGrant { max: i64::from(bound.max_priority) });
    }
    let wait = max_wait_minutes.unwrap_or(config.lease_default_wait_minutes);
    if !(0..=10_080).contains(&wait) {
        errors.add("max_wait_minutes", Problem::Between { min: 0, max: 10_080 });
    }
    wait
}

/// A queued lease: for a CI runner, or for one attempt of a job.
pub(crate) struct LeaseSpec<'a> {
    pub holder: &'a Holder,
    pub requirements: &'a Requirements,
    pub purpose: Purpose,
    pub priority: i32,
    pub tenant: &'a str,
    pub trusted_only: bool,
    pub duration_secs: i32,
    pub wait_minutes: i64,
    pub ssh_public_key: Option<String>,
    pub idempotency_key: Option<String>,
    pub request_hash: Vec<u8>,
    pub job_id: Option<JobId>,
    pub placement: Placement,
    pub max_lab_wait_minutes: i64,
}

pub(crate) fn new_lease(spec: LeaseSpec<'_>) -> NewLease {
    let r = spec.requirements;
    NewLease {
        id: LeaseId::generate(),
        state: LeaseState::Queued,
        holder_kind: spec.holder.kind,
        holder_id: spec.holder.id,
        holder_name: spec.holder.name.clone(),
        idempotency_key: spec.idempotency_key,
        request_hash: spec.request_hash,
        tenant: spec.tenant.to_owned(),
        purpose: spec.purpose,
        priority: spec.priority,
        arch: r.arch,
        min_cores: r.min_cores,
        min_memory_mib: r.min_memory_gib * 1024,
        min_disk_gib: r.min_disk_gib,
        labels: Jsonb(r.labels.clone()),
        trusted_only: spec.trusted_only,
        duration_secs: spec.duration_secs,
        ssh_public_key: spec.ssh_public_key,
        deadline: Utc::now() + Duration::minutes(spec.wait_minutes),
        job_id: spec.job_id,
        placement: spec.placement,
        max_lab_wait_secs: i32::try_from(spec.max_lab_wait_minutes * 60).unwrap_or(i32::MAX),
    }
}

/// Checks a request's `max_lab_wait_minutes`; returns it, or the configuration's default.
pub(crate) fn check_lab_wait(config: &Config, minutes: Option<i64>, errors: &mut FieldErrors) -> i64 {
    let minutes = minutes.unwrap_or(config.clouds.default_max_lab_wait_minutes);
    if !(0..=10_080).contains(&minutes) {
        errors.add("max_lab_wait_minutes", Problem::Between { min: 0, max: 10_080 });
    }
    minutes
}

/// A digest of a request as parsed, so a retry with the same key but another body is caught.
pub(crate) fn request_hash(request: &impl Serialize) -> Result<Vec<u8>, ApiError> {
    Ok(Sha256::digest(serde_json::to_vec(request).map_err(ApiError::internal)?).to_vec())
}

/// Validates a request into the lease to queue, naming every problem.
fn validate(
    state: &AppState,
    request: &LeaseRequest,
    holder: &Holder,
    key: Option<String>,
) -> Result<NewLease, ApiError> {
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
    if !(1..=config.lease_max_minutes).contains(&request.duration_minutes) {
        errors.add("duration_minutes", Problem::Between { min: 1, max: config.lease_max_minutes });
    }
    let lab_wait = check_lab_wait(config, request.max_lab_wait_minutes, &mut errors);
    if let Some(key) = &request.ssh_public_key {
        let one_line = !key.trim().contains('\n');
        if !one_line || key.len() > 16_384 || russh::keys::PublicKey::from_openssh(key.trim()).is_err() {
            errors.add("ssh_public_key", Problem::NotAnSshKey);
        }
    }
    errors.into_result()?;
    Ok(new_lease(LeaseSpec {
        holder,
        requirements: &request.requirements,
        purpose: request.purpose,
        priority: request.priority,
        tenant: &request.tenant,
        trusted_only: request.trusted_only,
        duration_secs: i32::try_from(request.duration_minutes * 60).map_err(ApiError::internal)?,
        wait_minutes: wait,
        ssh_public_key: request.ssh_public_key.as_ref().map(|k| k.trim().to_owned()),
        idempotency_key: key,
        request_hash: request_hash(request)?,
        job_id: None,
        placement: request.placement,
        max_lab_wait_minutes: lab_wait,
    }))
}

fn endpoint(c: Connection) -> SshEndpoint {
    SshEndpoint { host: c.host, port: c.port, user: c.user }
}

/// The lease as the caller should see it: with connection details when granted, its place in
/// the queue when queued.
async fn view(state: &AppState, lease: Lease) -> Result<LeaseView, ApiError> {
    let mut conn = state.db().await?;
    view_on(&mut conn, lease).await
}

/// [`view`] on a connection the caller already holds (a list reuses one for every item).
async fn view_on(conn: &mut AsyncPgConnection, lease: Lease) -> Result<LeaseView, ApiError> {
    let connection = match (lease.state, lease.machine_id) {
        (LeaseState::Granted, Some(machine)) => db::machines::find(conn, machine).await?.and_then(|m| {
            Some(SshEndpoint {
                host: m.ssh_host?,
                port: m.ssh_port.unwrap_or(22),
                user: m.ssh_user.unwrap_or_default(),
            })
        }),
        _ => None,
    };
    let queue = if lease.state == LeaseState::Queued { Some(queue_standing(conn, &lease).await?) } else { None };
    let instance = match lease.cloud_instance_id {
        Some(id) => db::clouds::find_instance(conn, id).await?,
        None if lease.state == LeaseState::Queued => db::clouds::waited_for_by(conn, lease.id).await?,
        None => None,
    };
    Ok(view_of(lease, connection, queue, instance))
}

/// A lease as the API shows it, from what was read about it.
fn view_of(
    lease: Lease,
    connection: Option<SshEndpoint>,
    queue: Option<QueueStanding>,
    instance: Option<db::clouds::CloudInstance>,
) -> LeaseView {
    let cloud = instance.map(|i| LeaseCloud {
        cost: lease_cost(&i, lease.granted_at, lease.ended_at),
        instance_id: i.id,
        state: i.state,
        provider: i.provider,
        account: i.account,
        region: i.region,
        flavour: i.flavour,
        market: i.market,
        hourly_price: amount(i.hourly_micros),
    });
    let mut view = LeaseView::new(lease, connection, queue);
    view.cloud = cloud;
    view
}

/// Where a queued lease stands (for a job, its current attempt's lease).
pub(crate) async fn queue_standing(conn: &mut AsyncPgConnection, lease: &Lease) -> Result<QueueStanding, ApiError> {
    let (ahead, ends) = db::leases::queue_standing(conn, lease).await?;
    let estimated_start_at = usize::try_from(ahead).ok().and_then(|n| ends.get(n).copied());
    Ok(standing(lease, ahead, estimated_start_at))
}

fn standing(lease: &Lease, ahead: i64, estimated_start_at: Option<DateTime<Utc>>) -> QueueStanding {
    QueueStanding { position: ahead + 1, estimated_start_at, cloud_note: lease.cloud_note.clone() }
}

/// Waits up to `wait` for a queued lease to leave the queue, and returns it as it then stands.
async fn wait_while_queued(state: &AppState, mut lease: Lease, wait: Option<u64>) -> Result<Lease, ApiError> {
    let wait = StdDuration::from_secs(wait.unwrap_or(0).min(state.config.lease_long_poll_max_secs));
    let until = tokio::time::Instant::now() + wait;
    let mut rounds = state.scheduler.rounds();
    while lease.state == LeaseState::Queued && tokio::time::Instant::now() < until {
        // A round on this replica, or half a second for one elsewhere.
        let next = until.min(tokio::time::Instant::now() + StdDuration::from_millis(500));
        let _ = tokio::time::timeout_at(next, rounds.changed()).await;
        let mut conn = state.db().await?;
        lease = db::leases::find(&mut conn, lease.id)
            .await?
            .ok_or_else(|| ApiError::not_found(ErrorCode::LeaseNotFound))?;
    }
    Ok(lease)
}

/// Ask for a machine: granted at once when one is free, queued when one could be, refused with
/// the reason when none ever could. CI service accounts and ops.
pub async fn create_lease(
    state: &AppState,
    caller: &Principal,
    idempotency_key: Option<String>,
    wait: Option<u64>,
    request: LeaseRequest,
) -> Result<(LeaseView, bool), ApiError> {
    let holder = holder(caller, "leases")?;
    let new = validate(state, &request, &holder, idempotency_key)?;
    let (lease, connection, replayed) = match state.scheduler.submit(new).await? {
        Answer::Accepted(lease, connection) => (lease, connection, false),
        Answer::Replayed(lease) => (lease, None, true),
        Answer::Refused { code, reason } => return Err(refusal(code, reason)),
    };
    if let (LeaseState::Granted, Some(connection)) = (lease.state, connection) {
        // Granted at once: everything needed is at hand.
        return Ok((LeaseView::new(lease, Some(endpoint(connection)), None), replayed));
    }
    let lease = wait_while_queued(state, lease, wait).await?;
    Ok((view(state, lease).await?, replayed))
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LeaseListQuery {
    /// Repeat for several.
    #[serde(default)]
    pub state: Vec<LeaseState>,
    pub tenant: Option<String>,
    pub arch: Option<Arch>,
    #[param(value_type = Option<String>, format = Uuid)]
    pub machine_id: Option<MachineId>,
    pub cursor: Option<String>,
    /// 1 to 200, default 50.
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
}

/// List leases, newest first: ops see all, a service account its own, a donor those granted on
/// its machines.
pub async fn list_leases(state: &AppState, caller: &Principal, query: LeaseListQuery) -> Result<LeasePage, ApiError> {
    let scope = scope(caller)?;
    let page = page(query.cursor.as_deref(), query.limit)?;
    let filter = db::leases::Filter {
        states: query.state,
        tenant: query.tenant,
        arch: query.arch,
        machine_id: query.machine_id,
    };
    let mut conn = state.db().await?;
    let rows = db::leases::list(&mut conn, scope, &filter, page).await?;
    let (rows, next_cursor) = paginate(rows, &page, |l| l.id);
    let mut items = Vec::with_capacity(rows.len());
    for lease in rows {
        items.push(view_on(&mut conn, lease).await?);
    }
    Ok(LeasePage { items, next_cursor })
}

/// A lease the caller may see, or 404.
async fn find_visible(state: &AppState, caller: &Principal, id: LeaseId) -> Result<Lease, ApiError> {
    let scope = scope(caller)?;
    let mut conn = state.db().await?;
    db::leases::find(&mut conn, id)
        .await?
        .filter(|l| visible(scope, l))
        .ok_or_else(|| ApiError::not_found(ErrorCode::LeaseNotFound))
}

/// One lease; with `wait`, a queued lease is answered once granted or when the wait is over.
pub async fn get_lease(
    state: &AppState,
    caller: &Principal,
    id: LeaseId,
    wait: Option<u64>,
) -> Result<LeaseView, ApiError> {
    let lease = find_visible(state, caller, id).await?;
    let lease = wait_while_queued(state, lease, wait).await?;
    view(state, lease).await
}

/// The holder, or ops. (A service account that is not the holder never gets this far: the
/// lease or job is hidden from it.)
pub(crate) fn may_change(caller: &Principal, holder_id: uuid::Uuid, missing: ErrorCode) -> Result<(), ApiError> {
    let what = missing.as_str().trim_end_matches("-not-found");
    match caller {
        Principal::Admin { .. } => Ok(()),
        Principal::Service { token_id, .. } if token_id.0 == holder_id => Ok(()),
        Principal::Service { .. } => Err(ApiError::not_found(missing)),
        _ => Err(ApiError::forbidden(format!(
            "only the {what}'s holder or ops may change it; you are `{}`",
            caller.role()
        ))),
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtendRequest {
    /// Minutes to add to the lease's current expiry (the lease may not outlast the platform's
    /// limit, 1440 minutes by default, nor the donor's).
    #[schema(minimum = 1, maximum = 1440)]
    pub minutes: i64,
}

/// Extend a granted lease, within the donor's maximum lease length and the platform's.
/// Its holder or ops.
pub async fn extend_lease(
    state: &AppState,
    caller: &Principal,
    id: LeaseId,
    request: ExtendRequest,
) -> Result<LeaseView, ApiError> {
    let minutes = request.minutes;
    if !(1..=state.config.lease_max_minutes).contains(&minutes) {
        return Err(ApiError::invalid_field(
            "minutes",
            Problem::Between { min: 1, max: state.config.lease_max_minutes },
        ));
    }
    let lease = find_visible(state, caller, id).await?;
    may_change(caller, lease.holder_id, ErrorCode::LeaseNotFound)?;
    let platform_max = Duration::minutes(state.config.lease_max_minutes);
    let mut conn = state.db().await?;
    let extended = conn
        .transaction::<_, ApiError, _>(async move |conn| {
            let lease =
                db::leases::lock(conn, lease.id).await?.ok_or_else(|| ApiError::not_found(ErrorCode::LeaseNotFound))?;
            ensure_state(&lease, &[LeaseState::Granted])?;
            let (Some(granted_at), Some(expires_at)) = (lease.granted_at, lease.expires_at) else {
                return Err(ApiError::internal(anyhow::anyhow!("granted lease {} without times", lease.id)));
            };
            let donor_max = match lease.donation_id {
                Some(donation) => db::donations::find(conn, donation)
                    .await?
                    .and_then(|d| d.usage_policy)
                    .map(|p| Duration::minutes(p.0.max_lease_minutes)),
                None => None,
            };
            let latest = latest_end(granted_at, platform_max, donor_max);
            let wanted = expires_at + Duration::minutes(minutes);
            if wanted > latest {
                return Err(ApiError::conflict(
                    ErrorCode::LeaseLimit,
                    format!(
                        "the lease may run until {} at the latest (the donor's and the platform's limits)",
                        latest.to_rfc3339()
                    ),
                )
                .with_details(serde_json::json!({ "latest_end": latest })));
            }
            let extended = db::leases::set_expiry(conn, lease.id, wanted).await?;
            db::leases::announce_work(conn, extended.machine_id.as_slice()).await?;
            Ok(extended)
        })
        .await?;
    view(state, extended).await
}

/// Give a lease back: a granted one frees its machine at once, a queued one leaves the queue.
/// Its holder or ops.
pub async fn release_lease(state: &AppState, caller: &Principal, id: LeaseId) -> Result<LeaseView, ApiError> {
    let lease = find_visible(state, caller, id).await?;
    may_change(caller, lease.holder_id, ErrorCode::LeaseNotFound)?;
    let by = caller.actor().name;
    let mut conn = state.db().await?;
    let ended = conn
        .transaction::<_, ApiError, _>(async move |conn| {
            let lease =
                db::leases::lock(conn, lease.id).await?.ok_or_else(|| ApiError::not_found(ErrorCode::LeaseNotFound))?;
            ensure_state(&lease, &[LeaseState::Queued, LeaseState::Granted])?;
            let (to, reason) = match lease.state {
                LeaseState::Queued => (LeaseState::Cancelled, format!("withdrawn by {by}")),
                _ => (LeaseState::Released, format!("released by {by}")),
            };
            let ended = db::leases::end(conn, lease.id, to, &reason).await?;
            db::leases::announce_work(conn, ended.machine_id.as_slice()).await?;
            Ok(ended)
        })
        .await?;
    state.scheduler.wake();
    view(state, ended).await
}

/// The state a lease must be in for `want`, or why not.
pub fn ensure_state(lease: &Lease, want: &[LeaseState]) -> Result<(), ApiError> {
    if want.contains(&lease.state) {
        return Ok(());
    }
    Err(ApiError::conflict(
        ErrorCode::LeaseState,
        format!("the lease is {}; this needs it {}", lease.state, join(want)),
    ))
}

fn join(states: &[LeaseState]) -> String {
    states.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" or ")
}

/// What a lease's cloud instance costs it: the whole instance for one launched for it (or
/// taken fresh from the warm pool: instances serve one lease), the time held for an imported
/// server.
pub fn lease_cost(instance: &CloudInstance, granted_at: Option<DateTime<Utc>>, ended_at: Option<DateTime<Utc>>) -> f64 {
    let now = Utc::now();
    let micros = if instance.imported {
        match granted_at {
            Some(from) => cost_micros(instance.hourly_micros, ended_at.unwrap_or(now) - from),
            None => 0,
        }
    } else {
        match instance.launched_at {
            Some(from) => cost_micros(instance.hourly_micros, instance.ended_at.unwrap_or(now) - from),
            None => 0,
        }
    };
    amount(micros)
}

/// A queued lease and why it still waits.
#[derive(Debug, Serialize, ToSchema)]
pub struct WaitingLease {
    #[serde(flatten)]
    pub lease: LeaseView,
    pub why: WaitReason,
}

/// The queue as ops see it: every queued lease up to `limit` (the oldest first), each with its
/// place, its estimate and why it waits. Ops only.
pub async fn waiting(state: &AppState, caller: &Principal, limit: i64) -> Result<Vec<WaitingLease>, ApiError> {
    caller.require_admin()?;
    let mut conn = state.db().await?;
    let queued = db::leases::queued(&mut conn, limit).await?;
    if queued.is_empty() {
        return Ok(Vec::new());
    }
    let inventory = db::leases::inventory(&mut conn).await?;
    let (free, _) = db::leases::free_machines(&mut conn).await?;
    let mut held: std::collections::HashMap<Option<crate::domain::DonationId>, i64> = Default::default();
    for h in db::leases::held(&mut conn).await? {
        *held.entry(h.donation_id).or_default() += h.count;
    }
    // Each lease's place and estimate, and the instance it waits for, read for all at once.
    let ids: Vec<LeaseId> = queued.iter().map(|l| l.id).collect();
    let standings = db::leases::queue_standings(&mut conn, &ids).await?;
    let mut instances = db::clouds::waited_for_by_each(&mut conn, &ids).await?;
    let now = Utc::now();
    let mut out = Vec::with_capacity(queued.len());
    for lease in queued {
        let why = why_waiting(&lease.demand(), &inventory, &free, |d| held.get(&d).copied().unwrap_or(0), now);
        let queue = standings.get(&lease.id).map(|&(ahead, at)| standing(&lease, ahead, at));
        let instance = match lease.cloud_instance_id {
            Some(id) => db::clouds::find_instance(&mut conn, id).await?,
            None => instances.remove(&lease.id),
        };
        out.push(WaitingLease { lease: view_of(lease, None, queue, instance), why });
    }
    Ok(out)
}
