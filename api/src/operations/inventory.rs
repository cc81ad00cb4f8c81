//! Machines as callers see and act on them (the API's handlers and the web pages alike): the
//! list with its filters, one machine's detail, label edits, lifecycle moves, maintenance, SSH
//! probes, quarantine, enrollment tokens and cutting an agent off. Each function checks who is
//! calling, validates, and writes with its audit entries in one transaction.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use utoipa::{IntoParams, ToSchema};

use super::paging::{CursorKey, page, page_type};
use crate::auth::{DonorScope, Principal};
use crate::db::audit::{self, Change};
use crate::db::machine_status::MachineStatus;
use crate::db::machines::{LifecycleChange, Machine, MachineFilter, MachineOrder};
use crate::db::{self, donations::Donation};
use crate::domain::Requester;
use crate::domain::facts::{Facts, Mismatch};
use crate::domain::health::is_monitored;
use crate::domain::inventory::{check_label_key, validate_labels};
use crate::domain::lifecycle::{self, Context};
use crate::domain::validation::check_text;
use crate::domain::{
    Arch, DonationId, DonationModel, DonationStatus, DonorId, FieldErrors, Health, Labels, LifecycleState, MachineId,
    Problem, SiteId,
};
use crate::error::ApiError;
use crate::error_code::ErrorCode;
use crate::operations::machines::{AgentCutOff, cut_off_agent, record_lifecycle_changes};
use crate::probe;
use crate::state::AppState;
pub use crate::views::{Location, MachineView, SshEndpoint};

/// The prefix of enrollment-token secrets, so a leaked one is recognisable.
const ENROLLMENT_PREFIX: &str = "fyenroll_";

/// A new one-time enrollment token; the secret is shown here only.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct IssuedEnrollmentToken {
    pub machine_id: MachineId,
    /// Give this to `fleetyard-agent enroll --token ...` on the machine.
    pub token: String,
    pub expires_at: DateTime<Utc>,
}

/// Makes a fresh enrollment secret and the hash that is stored of it.
pub fn new_enrollment_secret() -> (String, Vec<u8>) {
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    let secret = format!("{ENROLLMENT_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
    let hash = Sha256::digest(secret.as_bytes()).to_vec();
    (secret, hash)
}

/// A machine with its donation's terms and what the caller may do with it next.
#[derive(Debug, Serialize, ToSchema)]
pub struct MachineDetail {
    #[serde(flatten)]
    pub machine: MachineView,
    /// Absent for a machine rented from a cloud.
    pub donation_model: Option<DonationModel>,
    pub donation_status: Option<DonationStatus>,
    /// Lifecycle states the caller may move this machine to.
    pub allowed_transitions: Vec<LifecycleState>,
    /// What the machine last reported (agent) or showed (SSH).
    pub monitoring: Option<MonitoringView>,
}

/// What Fleetyard last heard from and about a machine.
#[derive(Debug, Serialize, ToSchema)]
pub struct MonitoringView {
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    pub agent_version: Option<String>,
    pub load1: Option<f32>,
    pub disk_used_pct: Option<f32>,
    /// The agent's clock minus the server's, in milliseconds.
    pub clock_skew_ms: Option<i32>,
    pub uptime_secs: Option<i64>,
    /// The facts last reported (`agent`) or probed (`ssh`).
    pub facts: Option<Facts>,
    pub facts_source: Option<String>,
    pub facts_at: Option<DateTime<Utc>>,
    /// Where the facts contradict the declaration.
    pub mismatches: Vec<Mismatch>,
    pub ssh: SshCheckView,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SshCheckView {
    pub last_check_at: Option<DateTime<Utc>>,
    pub last_ok_at: Option<DateTime<Utc>>,
    pub consecutive_failures: i32,
    /// Why the last check failed. Donors read why a connection could not be opened only as
    /// "unreachable"; the detail is for ops.
    pub last_error: Option<String>,
    /// The pinned host key's fingerprint.
    pub host_key_fingerprint: Option<String>,
    /// An SSH probe is waiting for the next round.
    pub probe_requested: bool,
}

impl MonitoringView {
    fn new(s: MachineStatus, caller: &Principal) -> Self {
        let last_error = match caller {
            Principal::Admin { .. } => s.ssh_error,
            _ => s.ssh_error.as_deref().map(|e| probe::error_for_donors(e).to_owned()),
        };
        Self {
            last_heartbeat_at: s.last_heartbeat_at,
            agent_version: s.agent_version,
            load1: s.load1,
            disk_used_pct: s.disk_used_pct,
            clock_skew_ms: s.clock_skew_ms,
            uptime_secs: s.uptime_secs,
            facts: s.facts.map(|f| f.0),
            facts_source: s.facts_source,
            facts_at: s.facts_at,
            mismatches: s.mismatches.0,
            ssh: SshCheckView {
                last_check_at: s.last_ssh_check_at,
                last_ok_at: s.last_ssh_ok_at,
                consecutive_failures: s.ssh_failures,
                last_error,
                host_key_fingerprint: s.ssh_host_key_fingerprint,
                probe_requested: s.probe_requested_at.is_some(),
            },
        }
    }
}

page_type!(MachinePage, MachineView);

/// Filters for the machine list; all given filters must match.
#[derive(Debug, Clone, Default, Deserialize, Serialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MachineListQuery {
    pub arch: Option<Arch>,
    pub lifecycle: Option<LifecycleState>,
    pub health: Option<Health>,
    #[param(value_type = Option<String>, format = Uuid)]
    pub site_id: Option<SiteId>,
    #[param(value_type = Option<String>, format = Uuid)]
    pub donation_id: Option<DonationId>,
    #[param(value_type = Option<String>, format = Uuid)]
    pub donor_id: Option<DonorId>,
    pub donation_model: Option<DonationModel>,
    /// `key=value`; repeat for several labels, all of which must match.
    #[serde(default)]
    #[param(rename = "label")]
    pub label: Vec<String>,
    /// Only machines past (`true`) or within (`false`) their in-progress state's deadline.
    pub overdue: Option<bool>,
    /// Words (separated by spaces) each of which the hostname, asset tag or CPU model
    /// contains, in any case.
    #[param(max_length = 200)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub q: Option<String>,
    /// `registered` (the default: in the order machines were registered) or `hostname`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[param(inline)]
    pub sort: Option<MachineSort>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// 1 to 200, default 50.
    #[param(minimum = 1, maximum = 200)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
}

/// The order of the machine list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MachineSort {
    Registered,
    Hostname,
}

/// The order and position a list query asks for. A cursor of the hostname order carries the
/// last row's hostname and id.
fn machine_order(sort: Option<MachineSort>, cursor: Option<&str>) -> Result<MachineOrder, ApiError> {
    let bad_cursor = || ApiError::invalid_field("cursor", Problem::NotACursor);
    Ok(match sort.unwrap_or(MachineSort::Registered) {
        MachineSort::Registered => MachineOrder::Registered { after: page::<MachineId>(cursor, None)?.after },
        MachineSort::Hostname => MachineOrder::Hostname {
            after: cursor
                .map(|text| {
                    let bytes = URL_SAFE_NO_PAD
                        .decode(text.strip_prefix('h').ok_or_else(bad_cursor)?)
                        .map_err(|_| bad_cursor())?;
                    serde_json::from_slice::<(String, MachineId)>(&bytes).map_err(|_| bad_cursor())
                })
                .transpose()?,
        },
    })
}

/// The cursor that continues `order` after `last`.
fn machine_cursor(order: &MachineOrder, last: &Machine) -> String {
    match order {
        MachineOrder::Registered { .. } => last.id.encode(),
        MachineOrder::Hostname { .. } => {
            let key = (last.hostname.clone().unwrap_or_default(), last.id);
            format!("h{}", URL_SAFE_NO_PAD.encode(serde_json::to_vec(&key).unwrap_or_default()))
        }
    }
}

/// List machines. Ops and service accounts see every machine; a donor sees its own.
pub async fn list_machines(
    state: &AppState,
    caller: &Principal,
    query: MachineListQuery,
) -> Result<MachinePage, ApiError> {
    let scope = caller.inventory_reader()?;
    let limit = page::<MachineId>(None, query.limit)?.limit;
    let order = machine_order(query.sort, query.cursor.as_deref())?;
    let mut labels = Labels::new();
    let mut errors = FieldErrors::new();
    for pair in &query.label {
        match pair.split_once('=') {
            Some((key, value)) if check_label_key(key).is_ok() => {
                labels.insert(key.to_owned(), value.to_owned());
            }
            _ => errors.add("label", Problem::NotALabelPair { pair: pair.clone() }),
        }
    }
    let search: Vec<String> = query.q.as_deref().unwrap_or_default().split_whitespace().map(str::to_owned).collect();
    match query.q.as_deref() {
        Some(q) if q.chars().count() > 200 => errors.add("q", Problem::TooLong { max: 200 }),
        Some(q) if q.chars().any(char::is_control) => errors.add("q", Problem::ControlCharacters),
        _ => {}
    }
    errors.into_result()?;
    let donor_id = match (scope, query.donor_id) {
        (DonorScope::Own(own), Some(asked)) if asked != own => {
            return Err(ApiError::invalid_field("donor_id", Problem::OwnDonorOnly));
        }
        (DonorScope::Own(own), _) => Some(own),
        (DonorScope::All, asked) => asked,
    };
    let filter = MachineFilter {
        donor_id,
        arch: query.arch,
        lifecycle: query.lifecycle,
        health: query.health,
        site_id: query.site_id,
        donation_id: query.donation_id,
        donation_model: query.donation_model,
        labels,
        overdue: query.overdue,
        search,
    };
    let mut conn = state.db().await?;
    let mut rows = db::machines::list(&mut conn, &filter, &order, limit).await?;
    let next_cursor = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|last| machine_cursor(&order, last))
    } else {
        None
    };
    Ok(MachinePage { items: rows.into_iter().map(MachineView::from).collect(), next_cursor })
}

/// One machine, with the lifecycle transitions open to the caller.
pub async fn get_machine(state: &AppState, caller: &Principal, id: MachineId) -> Result<MachineDetail, ApiError> {
    let scope = caller.inventory_reader()?;
    let mut conn = state.db().await?;
    let machine = db::machines::find(&mut conn, id)
        .await?
        .filter(|m| scope.covers(m.donor_id))
        .ok_or_else(|| ApiError::not_found(ErrorCode::MachineNotFound))?;
    let donation = find_donation(&mut conn, machine.donation_id).await?;
    let status = db::machine_status::find(&mut conn, machine.id).await?;
    let mut detail = detail(machine, donation.as_ref(), caller);
    detail.monitoring = status.map(|s| MonitoringView::new(s, caller));
    Ok(detail)
}

/// Label changes: `set` adds or overwrites, `remove` deletes.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LabelEdit {
    #[serde(default)]
    pub set: Labels,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// Add, change or remove labels. Ops, or the donor of a usage-right machine.
pub async fn edit_labels(
    state: &AppState,
    caller: &Principal,
    id: MachineId,
    edit: LabelEdit,
) -> Result<MachineView, ApiError> {
    let scope = caller.admin_or_donor()?;
    let mut errors = FieldErrors::new();
    validate_labels("set", &edit.set, &mut errors);
    for (i, key) in edit.remove.iter().enumerate() {
        if edit.set.contains_key(key) {
            errors.add(format!("remove[{i}]"), Problem::AlsoSet { key: key.clone() });
        }
    }
    errors.into_result()?;
    let actor = caller.actor();
    let mut conn = state.db().await?;
    let updated = conn
        .transaction::<_, ApiError, _>(async move |conn| {
            let machine = lock_operable(conn, id, scope).await?;
            let mut labels = machine.labels.0.clone();
            labels.extend(edit.set);
            for key in &edit.remove {
                labels.remove(key);
            }
            let mut errors = FieldErrors::new();
            validate_labels("labels", &labels, &mut errors);
            errors.into_result()?;
            let updated = db::machines::set_labels(conn, machine.id, &labels).await?;
            let (before, after) = (MachineView::from(machine), MachineView::from(updated));
            audit::record(
                conn,
                &actor,
                &[Change::new("machine.labels_changed", "machine", after.id)
                    .donor(after.donor_id)
                    .before(&before)
                    .after(&after)],
            )
            .await?;
            Ok(after)
        })
        .await?;
    Ok(updated)
}

/// Move a machine to another lifecycle state.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransitionRequest {
    pub to: LifecycleState,
    /// Why; recorded in the audit log (and as the reason, for maintenance).
    #[serde(default)]
    #[schema(
        pattern = r"^[^\x00-\x08\x0b-\x1f\x7f-\x9f]*[^\s\x00-\x08\x0b-\x1f\x7f-\x9f][^\x00-\x08\x0b-\x1f\x7f-\x9f]*$",
        max_length = 2000
    )]
    pub note: Option<String>,
    /// Required when moving to `received`.
    #[serde(default)]
    pub location: Option<Location>,
}

/// Move a machine through its lifecycle (ship, receive, onboard, ready, retire, return...).
/// Donors may pause, resume and withdraw their usage-right machines.
pub async fn transition_machine(
    state: &AppState,
    caller: &Principal,
    id: MachineId,
    request: TransitionRequest,
) -> Result<MachineDetail, ApiError> {
    move_machine(state, caller, id, request, None).await
}

/// Why a machine goes into maintenance.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceRequest {
    #[schema(
        pattern = r"^[^\x00-\x08\x0b-\x1f\x7f-\x9f]*[^\s\x00-\x08\x0b-\x1f\x7f-\x9f][^\x00-\x08\x0b-\x1f\x7f-\x9f]*$",
        max_length = 2000
    )]
    pub reason: String,
}

/// Put a machine into maintenance: out of the pool, and no alarms. Ops only.
pub async fn start_maintenance(
    state: &AppState,
    caller: &Principal,
    id: MachineId,
    request: MaintenanceRequest,
) -> Result<MachineDetail, ApiError> {
    caller.require_admin()?;
    let reason = request.reason;
    let mut errors = FieldErrors::new();
    check_text(&mut errors, "reason", &reason, 2000);
    errors.into_result()?;
    let request = TransitionRequest { to: LifecycleState::Maintenance, note: Some(reason), location: None };
    move_machine(state, caller, id, request, None).await
}

/// End maintenance: the machine goes back to `ready`. Ops only.
pub async fn end_maintenance(state: &AppState, caller: &Principal, id: MachineId) -> Result<MachineDetail, ApiError> {
    caller.require_admin()?;
    let request = TransitionRequest { to: LifecycleState::Ready, note: None, location: None };
    move_machine(state, caller, id, request, Some(LifecycleState::Maintenance)).await
}

/// The one path every machine-level lifecycle change takes.
async fn move_machine(
    state: &AppState,
    caller: &Principal,
    id: MachineId,
    request: TransitionRequest,
    only_from: Option<LifecycleState>,
) -> Result<MachineDetail, ApiError> {
    let moved = move_machine_now(state, caller, id, request, only_from).await?;
    // A machine came into the pool, or left it (perhaps with a lease): place and reclaim now.
    state.scheduler.wake();
    Ok(moved)
}

async fn move_machine_now(
    state: &AppState,
    caller: &Principal,
    id: MachineId,
    request: TransitionRequest,
    only_from: Option<LifecycleState>,
) -> Result<MachineDetail, ApiError> {
    let scope = caller.admin_or_donor()?;
    let mut errors = FieldErrors::new();
    if let Some(note) = &request.note {
        check_text(&mut errors, "note", note, 2000);
    }
    match (&request.location, lifecycle::requires_location(request.to)) {
        (Some(location), _) => {
            check_text(&mut errors, "location.rack", &location.rack, 32);
            check_text(&mut errors, "location.slot", &location.slot, 32);
            if !lifecycle::requires_location(request.to) {
                errors.add("location", Problem::OnlyWhenReceived);
            }
        }
        (None, true) => errors.add("location", Problem::LocationNeeded),
        (None, false) => {}
    }
    if request.to == LifecycleState::Maintenance && request.note.is_none() {
        errors.add("note", Problem::MaintenanceReason);
    }
    errors.into_result()?;

    let actor = caller.actor();
    let requester = caller.requester();
    let mut conn = state.db().await?;
    let (detail, cut_off) = conn
        .transaction::<_, ApiError, _>(async move |conn| {
            let machine = lock_visible(conn, id, scope).await?;
            if let Some(expected) = only_from.filter(|expected| *expected != machine.lifecycle) {
                return Err(ApiError::conflict(
                    ErrorCode::InvalidTransition,
                    format!("the machine is `{}`, not `{expected}`", machine.lifecycle),
                )
                .with_details(json!({ "from": machine.lifecycle, "to": request.to, "expected": expected })));
            }
            let donation = find_donation(conn, machine.donation_id).await?;
            match &donation {
                Some(d) => {
                    let ctx = Context { model: d.model, donation_status: d.status, requester };
                    lifecycle::check(machine.lifecycle, request.to, &ctx)?;
                }
                None => lifecycle::check_rented(machine.lifecycle, request.to, requester)?,
            }
            let change = LifecycleChange {
                to: request.to,
                deadline: lifecycle::deadline(request.to).map(|d| Utc::now() + d),
                maintenance_reason: (request.to == LifecycleState::Maintenance)
                    .then_some(request.note.as_deref())
                    .flatten(),
                location: request.location.as_ref().map(|l| (l.rack.as_str(), l.slot.as_str())),
            };
            let updated = db::machines::set_lifecycle(conn, &[machine.id], &change)
                .await?
                .pop()
                .ok_or_else(|| ApiError::not_found(ErrorCode::MachineNotFound))?;
            let cut_off = record_lifecycle_changes(
                conn,
                &actor,
                &[machine],
                std::slice::from_ref(&updated),
                request.note.as_deref(),
            )
            .await?;
            Ok((detail(updated, donation.as_ref(), caller), cut_off))
        })
        .await?;
    state.agents.evict(&cut_off);
    Ok(detail)
}

/// Cut off the machine's agent: its credentials and unused enrollment tokens stop working now
/// (a stolen disk, a reinstall, a credential that leaked). A new enrollment token enrolls an
/// agent again. Ops, or the machine's donor.
pub async fn cut_off_machine_agent(
    state: &AppState,
    caller: &Principal,
    id: MachineId,
) -> Result<AgentCutOff, ApiError> {
    let scope = caller.admin_or_donor()?;
    let actor = caller.actor();
    let mut conn = state.db().await?;
    let cut_off = conn
        .transaction::<_, ApiError, _>(async |conn| {
            let machine = lock_operable(conn, id, scope).await?;
            let cut_off = cut_off_agent(conn, machine.id).await?;
            if cut_off.credentials_revoked + cut_off.enrollment_tokens_revoked > 0 {
                let entry =
                    Change::new("machine.agent_cut_off", "machine", machine.id).donor(machine.donor_id).after(&cut_off);
                audit::record(conn, &actor, &[entry]).await?;
            }
            Ok(cut_off)
        })
        .await?;
    state.agents.evict(&cut_off.credentials);
    Ok(cut_off)
}

/// Locks a machine the caller may operate: ops any, a donor its own under a usage right. A
/// donor's machine in the foundation's lab (given or lent) is answered 403: visible, not theirs
/// to act on.
async fn lock_operable(conn: &mut AsyncPgConnection, id: MachineId, scope: DonorScope) -> Result<Machine, ApiError> {
    let machine = lock_visible(conn, id, scope).await?;
    if scope.only().is_some() {
        let donation = find_donation(conn, machine.donation_id).await?;
        if !donation.is_some_and(|d| d.model.donor_operates()) {
            return Err(lab_machine());
        }
    }
    Ok(machine)
}

/// 403 for a lender acting on a machine in the foundation's lab.
pub(crate) fn lab_machine() -> ApiError {
    ApiError::new(
        actix_web::http::StatusCode::FORBIDDEN,
        ErrorCode::LabMachine,
        "the machine is in the foundation's lab (given or lent): its donor may read it, only ops act on it",
    )
}

/// Locks a machine the caller may see, or answers 404.
async fn lock_visible(conn: &mut AsyncPgConnection, id: MachineId, scope: DonorScope) -> Result<Machine, ApiError> {
    db::machines::lock(conn, id)
        .await?
        .filter(|m| scope.covers(m.donor_id))
        .ok_or_else(|| ApiError::not_found(ErrorCode::MachineNotFound))
}

/// The machine's donation; `None` for a machine rented from a cloud.
async fn find_donation(conn: &mut AsyncPgConnection, id: Option<DonationId>) -> Result<Option<Donation>, ApiError> {
    let Some(id) = id else { return Ok(None) };
    db::donations::find(conn, id)
        .await?
        .map(Some)
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("machine refers to missing donation {id}")))
}

/// States the machine may move to for this requester: by its donation's table, or the table
/// of rented machines.
fn allowed_next(machine: &Machine, donation: Option<&Donation>, requester: Requester) -> Vec<LifecycleState> {
    match donation {
        Some(d) => lifecycle::allowed_next(
            machine.lifecycle,
            &Context { model: d.model, donation_status: d.status, requester },
        ),
        None => lifecycle::allowed_next_rented(machine.lifecycle, requester),
    }
}

fn detail(machine: Machine, donation: Option<&Donation>, caller: &Principal) -> MachineDetail {
    let allowed_transitions = match caller {
        Principal::Admin { .. } | Principal::Donor { .. } => allowed_next(&machine, donation, caller.requester()),
        _ => Vec::new(),
    };
    MachineDetail {
        machine: machine.into(),
        donation_model: donation.map(|d| d.model),
        donation_status: donation.map(|d| d.status),
        allowed_transitions,
        monitoring: None,
    }
}

/// Issue a one-time token that enrolls this machine's agent (any unused earlier token is
/// revoked). Ops, or the donor of a usage-right machine. The token is shown once.
pub async fn issue_enrollment_token(
    state: &AppState,
    caller: &Principal,
    id: MachineId,
) -> Result<IssuedEnrollmentToken, ApiError> {
    let scope = caller.admin_or_donor()?;
    let actor = caller.actor();
    let created_by = caller.user_id();
    let lifetime = chrono::Duration::hours(state.config.enrollment_token_hours);
    let mut conn = state.db().await?;
    let issued = conn
        .transaction::<_, ApiError, _>(async |conn| {
            let machine = lock_operable(conn, id, scope).await?;
            if !is_monitored(machine.lifecycle) {
                return Err(ApiError::conflict(
                    ErrorCode::MachineNotEnrollable,
                    format!("the machine is `{}`; agents enroll once it is approved", machine.lifecycle),
                ));
            }
            let issued = issue_enrollment(conn, &machine, created_by, Utc::now() + lifetime).await?;
            let entry = Change::new("machine.enrollment_token_issued", "machine", machine.id)
                .donor(machine.donor_id)
                .after(&serde_json::json!({ "expires_at": issued.expires_at }));
            audit::record(conn, &actor, &[entry]).await?;
            Ok(issued)
        })
        .await?;
    Ok(issued)
}

/// Issues an enrollment token for `machine` (inside the caller's transaction).
pub(crate) async fn issue_enrollment(
    conn: &mut AsyncPgConnection,
    machine: &Machine,
    created_by: Option<crate::domain::UserId>,
    expires_at: DateTime<Utc>,
) -> Result<IssuedEnrollmentToken, ApiError> {
    let (token, hash) = new_enrollment_secret();
    let row = db::enrollment::issue(conn, machine.id, &hash, created_by, expires_at).await?;
    Ok(IssuedEnrollmentToken { machine_id: machine.id, token, expires_at: row.expires_at })
}

/// Ask for an SSH probe of the machine at the next round: its facts are collected and
/// compared with its declaration. Asking again before that round changes nothing: a machine
/// is probed at most once a round. Ops, or the donor of a usage-right machine.
pub async fn request_ssh_probe(state: &AppState, caller: &Principal, id: MachineId) -> Result<(), ApiError> {
    let scope = caller.admin_or_donor()?;
    let actor = caller.actor();
    let mut conn = state.db().await?;
    conn.transaction::<_, ApiError, _>(async |conn| {
        let machine = lock_operable(conn, id, scope).await?;
        if machine.ssh_host.is_none() {
            return Err(ApiError::conflict(ErrorCode::NoSshEndpoint, "the machine has no SSH endpoint to probe"));
        }
        if db::machine_status::request_probe(conn, machine.id).await? {
            let entry = Change::new("machine.ssh_probe_requested", "machine", machine.id).donor(machine.donor_id);
            audit::record(conn, &actor, &[entry]).await?;
        }
        Ok(())
    })
    .await
}

/// Why a quarantine may be lifted.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LiftQuarantineRequest {
    /// What ops checked, e.g. "the board was reinstalled; new host key expected".
    #[schema(
        pattern = r"^[^\x00-\x08\x0b-\x1f\x7f-\x9f]*[^\s\x00-\x08\x0b-\x1f\x7f-\x9f][^\x00-\x08\x0b-\x1f\x7f-\x9f]*$",
        max_length = 2000
    )]
    pub note: String,
}

/// Lift a quarantine: the pinned SSH host key is forgotten, the next check pins the one the
/// machine presents, and a probe is requested. Ops only.
pub async fn lift_quarantine(
    state: &AppState,
    caller: &Principal,
    id: MachineId,
    request: LiftQuarantineRequest,
) -> Result<MachineView, ApiError> {
    caller.require_admin()?;
    let note = request.note;
    let mut errors = FieldErrors::new();
    check_text(&mut errors, "note", &note, 2000);
    errors.into_result()?;
    let actor = caller.actor();
    let mut conn = state.db().await?;
    let view = conn
        .transaction::<_, ApiError, _>(async |conn| {
            let machine = lock_visible(conn, id, DonorScope::All).await?;
            if machine.quarantined_at.is_none() {
                return Err(ApiError::conflict(ErrorCode::NotQuarantined, "the machine is not quarantined"));
            }
            let lifted = db::machine_status::set_quarantine(conn, machine.id, None).await?;
            db::machine_status::forget_host_key(conn, machine.id).await?;
            if lifted.ssh_host.is_some() {
                db::machine_status::request_probe(conn, machine.id).await?;
            }
            let (before, after) = (MachineView::from(machine), MachineView::from(lifted));
            let entry = Change::new("machine.quarantine_lifted", "machine", after.id)
                .donor(after.donor_id)
                .note(Some(&note))
                .before(&before)
                .after(&after);
            audit::record(conn, &actor, &[entry]).await?;
            Ok(after)
        })
        .await?;
    Ok(view)
}
