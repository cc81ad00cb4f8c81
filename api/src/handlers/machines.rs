//! Machines: list with filters, detail, label edits, maintenance, lifecycle transitions.

use actix_web::{delete, get, patch, post, put, web};
use chrono::{DateTime, NaiveDate, Utc};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{page, page_type, paginate};
use crate::auth::{DonorScope, Principal};
use crate::db::audit::{self, Actor, Change};
use crate::db::machines::{LifecycleChange, Machine, MachineFilter};
use crate::db::{self, donations::Donation};
use crate::domain::inventory::{check_label_key, validate_labels};
use crate::domain::lifecycle::{self, Context};
use crate::domain::validation::check_text;
use crate::domain::{
    Accelerator, Arch, DonationId, DonationModel, DonationStatus, DonorId, FieldErrors, Health, Labels, LifecycleState,
    MachineId, SiteId,
};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{Json, Query};
use crate::state::AppState;

/// How to log in to a machine over SSH.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct SshEndpoint {
    pub host: String,
    pub port: i32,
    pub user: String,
}

/// Where a machine sits in the foundation's lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Location {
    pub rack: String,
    pub slot: String,
}

/// A machine as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MachineView {
    pub id: MachineId,
    pub donation_id: DonationId,
    pub donor_id: DonorId,
    pub site_id: SiteId,
    pub hostname: Option<String>,
    pub asset_tag: Option<String>,
    pub arch: Arch,
    pub cpu_model: String,
    pub cpu_cores: i32,
    pub memory_mib: i64,
    pub disk_gib: i64,
    pub accelerators: Vec<Accelerator>,
    pub labels: Labels,
    pub ssh: Option<SshEndpoint>,
    /// End of warranty, or of the agreement's term for this machine.
    pub warranty_until: Option<NaiveDate>,
    pub lifecycle: LifecycleState,
    pub lifecycle_changed_at: DateTime<Utc>,
    /// When the current in-progress state should be over; absent for settled states.
    pub lifecycle_deadline: Option<DateTime<Utc>>,
    /// Past its deadline.
    pub overdue: bool,
    pub health: Health,
    pub location: Option<Location>,
    pub maintenance_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<Machine> for MachineView {
    fn from(m: Machine) -> Self {
        let ssh = match (m.ssh_host, m.ssh_port, m.ssh_user) {
            (Some(host), Some(port), Some(user)) => Some(SshEndpoint { host, port, user }),
            _ => None,
        };
        let location = match (m.rack, m.slot) {
            (Some(rack), Some(slot)) => Some(Location { rack, slot }),
            _ => None,
        };
        Self {
            overdue: m.lifecycle_deadline.is_some_and(|deadline| deadline < Utc::now()),
            id: m.id,
            donation_id: m.donation_id,
            donor_id: m.donor_id,
            site_id: m.site_id,
            hostname: m.hostname,
            asset_tag: m.asset_tag,
            arch: m.arch,
            cpu_model: m.cpu_model,
            cpu_cores: m.cpu_cores,
            memory_mib: m.memory_mib,
            disk_gib: m.disk_gib,
            accelerators: m.accelerators.0,
            labels: m.labels.0,
            ssh,
            warranty_until: m.warranty_until,
            lifecycle: m.lifecycle,
            lifecycle_changed_at: m.lifecycle_changed_at,
            lifecycle_deadline: m.lifecycle_deadline,
            health: m.health,
            location,
            maintenance_reason: m.maintenance_reason,
            created_at: m.created_at,
            updated_at: m.updated_at,
        }
    }
}

/// A machine with its donation's terms and what the caller may do with it next.
#[derive(Debug, Serialize, ToSchema)]
pub struct MachineDetail {
    #[serde(flatten)]
    pub machine: MachineView,
    pub donation_model: DonationModel,
    pub donation_status: DonationStatus,
    /// Lifecycle states the caller may move this machine to.
    pub allowed_transitions: Vec<LifecycleState>,
}

page_type!(MachinePage, MachineView);

/// Filters for the machine list; all given filters must match.
#[derive(Debug, Deserialize, IntoParams)]
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
    pub cursor: Option<String>,
    /// 1 to 200, default 50.
    pub limit: Option<i64>,
}

#[utoipa::path(
    tag = "machines",
    params(MachineListQuery),
    responses(
        (status = 200, body = MachinePage),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody),
    ),
)]
#[get("/machines")]
/// List machines. Ops and service accounts see every machine; a donor sees its own.
pub async fn list_machines(
    state: web::Data<AppState>,
    caller: Principal,
    query: Query<MachineListQuery>,
) -> Result<web::Json<MachinePage>, ApiError> {
    let scope = caller.inventory_reader()?;
    let query = query.into_inner();
    let page = page(query.cursor.as_deref(), query.limit)?;
    let mut labels = Labels::new();
    let mut errors = FieldErrors::new();
    for pair in &query.label {
        match pair.split_once('=') {
            Some((key, value)) if check_label_key(key).is_ok() => {
                labels.insert(key.to_owned(), value.to_owned());
            }
            _ => errors.add("label", format!("`{pair}` is not `key=value` with a valid key")),
        }
    }
    errors.into_result()?;
    let donor_id = match (scope, query.donor_id) {
        (DonorScope::Own(own), Some(asked)) if asked != own => {
            return Err(ApiError::invalid_field("donor_id", "you can only list your own donor's machines"));
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
    };
    let mut conn = state.db().await?;
    let rows = db::machines::list(&mut conn, &filter, page).await?;
    let (rows, next_cursor) = paginate(rows, &page, |m| m.id);
    Ok(web::Json(MachinePage { items: rows.into_iter().map(MachineView::from).collect(), next_cursor }))
}

#[utoipa::path(
    tag = "machines",
    params(("id" = MachineId, Path, description = "Machine id")),
    responses(
        (status = 200, body = MachineDetail),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
    ),
)]
#[get("/machines/{id}")]
/// One machine, with the lifecycle transitions open to the caller.
pub async fn get_machine(
    state: web::Data<AppState>,
    caller: Principal,
    id: web::Path<MachineId>,
) -> Result<web::Json<MachineDetail>, ApiError> {
    let scope = caller.inventory_reader()?;
    let mut conn = state.db().await?;
    let machine = db::machines::find(&mut conn, id.into_inner())
        .await?
        .filter(|m| scope.covers(m.donor_id))
        .ok_or_else(|| ApiError::not_found("machine"))?;
    let donation = find_donation(&mut conn, machine.donation_id).await?;
    Ok(web::Json(detail(machine, &donation, &caller)))
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

#[utoipa::path(
    tag = "machines",
    params(("id" = MachineId, Path, description = "Machine id")),
    request_body = LabelEdit,
    responses(
        (status = 200, body = MachineView),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody),
    ),
)]
#[patch("/machines/{id}/labels")]
/// Add, change or remove labels. Ops, or the machine's donor.
pub async fn edit_labels(
    state: web::Data<AppState>,
    caller: Principal,
    id: web::Path<MachineId>,
    body: Json<LabelEdit>,
) -> Result<web::Json<MachineView>, ApiError> {
    let scope = caller.admin_or_donor()?;
    let edit = body.into_inner();
    let mut errors = FieldErrors::new();
    validate_labels("set", &edit.set, &mut errors);
    for (i, key) in edit.remove.iter().enumerate() {
        if edit.set.contains_key(key) {
            errors.add(format!("remove[{i}]"), format!("`{key}` is also being set"));
        }
    }
    errors.into_result()?;
    let actor = caller.actor();
    let mut conn = state.db().await?;
    let updated = conn
        .transaction::<_, ApiError, _>(async move |conn| {
            let machine = lock_visible(conn, id.into_inner(), scope).await?;
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
                    .donor(Some(after.donor_id))
                    .before(&before)
                    .after(&after)],
            )
            .await?;
            Ok(after)
        })
        .await?;
    Ok(web::Json(updated))
}

/// Move a machine to another lifecycle state.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransitionRequest {
    pub to: LifecycleState,
    /// Why; recorded in the audit log (and as the reason, for maintenance).
    #[serde(default)]
    pub note: Option<String>,
    /// Required when moving to `received`.
    #[serde(default)]
    pub location: Option<Location>,
}

#[utoipa::path(
    tag = "machines",
    params(("id" = MachineId, Path, description = "Machine id")),
    request_body = TransitionRequest,
    responses(
        (status = 200, body = MachineDetail),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "Not allowed from the current state; `details.allowed` lists what is", body = ErrorBody),
        (status = 422, body = ErrorBody),
    ),
)]
#[post("/machines/{id}/transitions")]
/// Move a machine through its lifecycle (ship, receive, onboard, ready, retire, return...).
/// Donors may pause, resume and withdraw their usage-right machines.
pub async fn transition_machine(
    state: web::Data<AppState>,
    caller: Principal,
    id: web::Path<MachineId>,
    body: Json<TransitionRequest>,
) -> Result<web::Json<MachineDetail>, ApiError> {
    let request = body.into_inner();
    move_machine(&state, &caller, id.into_inner(), request, None).await.map(web::Json)
}

/// Why a machine goes into maintenance.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceRequest {
    pub reason: String,
}

#[utoipa::path(
    tag = "machines",
    params(("id" = MachineId, Path, description = "Machine id")),
    request_body = MaintenanceRequest,
    responses(
        (status = 200, body = MachineDetail),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody),
    ),
)]
#[put("/machines/{id}/maintenance")]
/// Put a machine into maintenance: out of the pool, and no alarms. Ops only.
pub async fn start_maintenance(
    state: web::Data<AppState>,
    caller: Principal,
    id: web::Path<MachineId>,
    body: Json<MaintenanceRequest>,
) -> Result<web::Json<MachineDetail>, ApiError> {
    caller.require_admin()?;
    let request =
        TransitionRequest { to: LifecycleState::Maintenance, note: Some(body.into_inner().reason), location: None };
    move_machine(&state, &caller, id.into_inner(), request, None).await.map(web::Json)
}

#[utoipa::path(
    tag = "machines",
    params(("id" = MachineId, Path, description = "Machine id")),
    responses(
        (status = 200, body = MachineDetail),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody),
    ),
)]
#[delete("/machines/{id}/maintenance")]
/// End maintenance: the machine goes back to `ready`. Ops only.
pub async fn end_maintenance(
    state: web::Data<AppState>,
    caller: Principal,
    id: web::Path<MachineId>,
) -> Result<web::Json<MachineDetail>, ApiError> {
    caller.require_admin()?;
    let request = TransitionRequest { to: LifecycleState::Ready, note: None, location: None };
    move_machine(&state, &caller, id.into_inner(), request, Some(LifecycleState::Maintenance)).await.map(web::Json)
}

/// The one path every machine-level lifecycle change takes.
async fn move_machine(
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
                errors
                    .add("location", format!("is only recorded when a machine becomes `{}`", LifecycleState::Received));
            }
        }
        (None, true) => errors.add("location", "is required when a machine is received: give its rack and slot"),
        (None, false) => {}
    }
    if request.to == LifecycleState::Maintenance && request.note.is_none() {
        errors.add("note", "say why the machine goes into maintenance");
    }
    errors.into_result()?;

    let actor = caller.actor();
    let requester = caller.requester();
    let mut conn = state.db().await?;
    conn.transaction::<_, ApiError, _>(async move |conn| {
        let machine = lock_visible(conn, id, scope).await?;
        if let Some(expected) = only_from.filter(|expected| *expected != machine.lifecycle) {
            return Err(ApiError::conflict(
                "invalid-transition",
                format!("the machine is `{}`, not `{expected}`", machine.lifecycle),
            ));
        }
        let donation = find_donation(conn, machine.donation_id).await?;
        let ctx = Context { model: donation.model, donation_status: donation.status, requester };
        lifecycle::check(machine.lifecycle, request.to, &ctx)?;
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
            .ok_or_else(|| ApiError::not_found("machine"))?;
        record_lifecycle_changes(conn, &actor, &[machine], std::slice::from_ref(&updated), request.note.as_deref())
            .await?;
        Ok(detail(updated, &donation, caller))
    })
    .await
}

/// Audit entries for machines that changed lifecycle, `before[i]` becoming `after[i]`.
pub(crate) async fn record_lifecycle_changes(
    conn: &mut AsyncPgConnection,
    actor: &Actor,
    before: &[Machine],
    after: &[Machine],
    note: Option<&str>,
) -> Result<(), ApiError> {
    let changes: Vec<Change> = before
        .iter()
        .zip(after)
        .map(|(old, new)| {
            Change::new("machine.lifecycle_changed", "machine", new.id)
                .donor(Some(new.donor_id))
                .note(note)
                .before(&MachineView::from(old.clone()))
                .after(&MachineView::from(new.clone()))
        })
        .collect();
    audit::record(conn, actor, &changes).await?;
    Ok(())
}

/// Locks a machine the caller may see, or answers 404.
async fn lock_visible(conn: &mut AsyncPgConnection, id: MachineId, scope: DonorScope) -> Result<Machine, ApiError> {
    db::machines::lock(conn, id)
        .await?
        .filter(|m| scope.covers(m.donor_id))
        .ok_or_else(|| ApiError::not_found("machine"))
}

async fn find_donation(conn: &mut AsyncPgConnection, id: DonationId) -> Result<Donation, ApiError> {
    db::donations::find(conn, id)
        .await?
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("machine refers to missing donation {id}")))
}

fn detail(machine: Machine, donation: &Donation, caller: &Principal) -> MachineDetail {
    let allowed_transitions = match caller {
        Principal::Admin { .. } | Principal::Donor { .. } => {
            let ctx =
                Context { model: donation.model, donation_status: donation.status, requester: caller.requester() };
            lifecycle::allowed_next(machine.lifecycle, &ctx)
        }
        _ => Vec::new(),
    };
    MachineDetail {
        machine: machine.into(),
        donation_model: donation.model,
        donation_status: donation.status,
        allowed_transitions,
    }
}
