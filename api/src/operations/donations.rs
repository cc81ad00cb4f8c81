//! Donations as callers see and act on them (the API's handlers and the web pages alike):
//! the registration form (one request registers an agreement and its machines),
//! review, and the donation-level actions (pause, resume, withdraw, return).

use std::collections::HashMap;

use chrono::{NaiveDate, Utc};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};

use super::paging::{page, page_type, paginate};
use crate::auth::{DonorScope, Principal};
use crate::db::audit::{self, Change};
use crate::db::donations::{Donation, DonationFilter, NewDonation};
use crate::db::machines::{LifecycleChange, Machine, NewMachine};
use crate::db::{self, Json as DbJson, is_unique_violation};
use crate::domain::EventType;
use crate::domain::donation::{self, check_terms};
use crate::domain::inventory::validate_labels;
use crate::domain::lifecycle::{self, Context, Requester};
use crate::domain::validation::{
    check_asset_tag, check_host, check_optional_text, check_text, check_unix_user, date_format,
};
use crate::domain::{
    Accelerator, Arch, DonationAction, DonationId, DonationModel, DonationStatus, DonorId, FieldErrors, Labels,
    LifecycleState, MachineId, Problem, SiteId, SiteKind, UsagePolicy,
};
use crate::error::ApiError;
use crate::error_code::ErrorCode;
use crate::operations::inventory::IssuedEnrollmentToken;
use crate::operations::inventory::issue_enrollment;
use crate::operations::machines::record_lifecycle_changes;
use crate::state::AppState;
pub use crate::views::{DonationView, MachineView};

/// The largest number of machines one donation form may register.
const MAX_MACHINES_PER_DONATION: usize = 500;

/// A donation with its machines and what the caller may do with it next.
#[derive(Debug, Serialize, ToSchema)]
pub struct DonationDetail {
    #[serde(flatten)]
    pub donation: DonationView,
    pub machines: Vec<MachineView>,
    /// Donation-level actions open to the caller.
    pub allowed_actions: Vec<DonationAction>,
    /// Only in the answer to `approve`: a one-time enrollment token per approved machine,
    /// shown here once (more can be issued per machine later).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub enrollment_tokens: Vec<IssuedEnrollmentToken>,
}

page_type!(DonationPage, DonationView);

/// SSH access to a machine, for checks and (later) leases.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SshEndpointInput {
    /// A host name or an IP address.
    #[schema(min_length = 1, max_length = 253)]
    pub host: String,
    #[serde(default = "default_ssh_port")]
    #[schema(default = 22, minimum = 1, maximum = 65535)]
    pub port: i64,
    #[schema(pattern = r"^[A-Za-z0-9_.][A-Za-z0-9_.-]{0,31}$")]
    pub user: String,
}

fn default_ssh_port() -> i64 {
    22
}

/// One machine in a donation form.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MachineInput {
    #[serde(default)]
    pub hostname: Option<String>,
    /// Unique across the inventory (compared without case).
    #[serde(default)]
    #[schema(pattern = r"^[A-Za-z0-9_./-]{1,64}$")]
    pub asset_tag: Option<String>,
    pub arch: Arch,
    #[schema(
        pattern = r"^[^\x00-\x08\x0b-\x1f\x7f-\x9f]*[^\s\x00-\x08\x0b-\x1f\x7f-\x9f][^\x00-\x08\x0b-\x1f\x7f-\x9f]*$",
        max_length = 200
    )]
    pub cpu_model: String,
    #[schema(minimum = 1, maximum = 4096)]
    pub cpu_cores: i64,
    #[schema(minimum = 1, maximum = 1073741824)]
    pub memory_mib: i64,
    #[schema(minimum = 1, maximum = 1073741824)]
    pub disk_gib: i64,
    #[serde(default)]
    #[schema(max_items = 16)]
    pub accelerators: Vec<Accelerator>,
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    pub ssh: Option<SshEndpointInput>,
    #[serde(default, deserialize_with = "date_format::option::deserialize")]
    #[schema(value_type = Option<String>, format = Date)]
    pub warranty_until: Option<NaiveDate>,
}

/// The donation form: an agreement and the machines it covers.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DonationForm {
    /// The donor; ops must give it, a donor may leave it out (it is their own).
    #[serde(default)]
    pub donor_id: Option<DonorId>,
    pub model: DonationModel,
    /// Usage right: one of the donor's own sites. Ownership or loan: a foundation lab.
    pub site_id: SiteId,
    #[schema(
        pattern = r"^[^\x00-\x08\x0b-\x1f\x7f-\x9f]*[^\s\x00-\x08\x0b-\x1f\x7f-\x9f][^\x00-\x08\x0b-\x1f\x7f-\x9f]*$",
        max_length = 128
    )]
    pub agreement_ref: String,
    #[serde(default)]
    #[schema(
        pattern = r"^[^\x00-\x08\x0b-\x1f\x7f-\x9f]*[^\s\x00-\x08\x0b-\x1f\x7f-\x9f][^\x00-\x08\x0b-\x1f\x7f-\x9f]*$",
        max_length = 4000
    )]
    pub description: Option<String>,
    #[serde(deserialize_with = "date_format::deserialize")]
    #[schema(value_type = String, format = Date)]
    pub starts_on: NaiveDate,
    /// Required for a loan (the due date); optional term for a usage right; none for ownership.
    #[serde(default, deserialize_with = "date_format::option::deserialize")]
    #[schema(value_type = Option<String>, format = Date)]
    pub ends_on: Option<NaiveDate>,
    /// Required for (and only for) a usage-right donation.
    #[serde(default)]
    pub usage_policy: Option<UsagePolicy>,
    #[schema(min_items = 1, max_items = 500)]
    pub machines: Vec<MachineInput>,
}

impl DonationForm {
    /// Every problem that can be found without the database.
    fn validate(&self) -> Result<(), FieldErrors> {
        let mut errors = FieldErrors::new();
        check_text(&mut errors, "agreement_ref", &self.agreement_ref, 128);
        check_optional_text(&mut errors, "description", self.description.as_deref(), 4000);
        check_terms(self.model, self.starts_on, self.ends_on, self.usage_policy.is_some(), &mut errors);
        if let Some(policy) = &self.usage_policy {
            policy.validate("usage_policy", &mut errors);
        }
        if self.machines.is_empty() {
            errors.add("machines", Problem::NoneGiven);
        } else if self.machines.len() > MAX_MACHINES_PER_DONATION {
            errors.add("machines", Problem::TooMany { max: MAX_MACHINES_PER_DONATION as u64 });
        }
        let mut tags_seen: HashMap<String, usize> = HashMap::new();
        for (i, machine) in self.machines.iter().enumerate() {
            let at = format!("machines[{i}]");
            if let Some(hostname) = &machine.hostname
                && let Err(problem) = check_host(hostname)
            {
                errors.add(format!("{at}.hostname"), problem);
            }
            if let Some(tag) = &machine.asset_tag {
                if let Err(problem) = check_asset_tag(tag) {
                    errors.add(format!("{at}.asset_tag"), problem);
                } else if let Some(first) = tags_seen.insert(tag.to_lowercase(), i) {
                    errors
                        .add(format!("{at}.asset_tag"), Problem::TagRepeated { tag: tag.clone(), first: first as u64 });
                }
            }
            check_text(&mut errors, &format!("{at}.cpu_model"), &machine.cpu_model, 200);
            if !(1..=4096).contains(&machine.cpu_cores) {
                errors.add(format!("{at}.cpu_cores"), Problem::Between { min: 1, max: 4096 });
            }
            if !(1..=(1 << 30)).contains(&machine.memory_mib) {
                errors.add(format!("{at}.memory_mib"), Problem::PositiveAmount { unit: "MiB".into() });
            }
            if !(1..=(1 << 30)).contains(&machine.disk_gib) {
                errors.add(format!("{at}.disk_gib"), Problem::PositiveAmount { unit: "GiB".into() });
            }
            if machine.accelerators.len() > 16 {
                errors.add(format!("{at}.accelerators"), Problem::TooMany { max: 16 });
            }
            for (j, accelerator) in machine.accelerators.iter().enumerate() {
                accelerator.validate(&format!("{at}.accelerators[{j}]"), &mut errors);
            }
            validate_labels(&format!("{at}.labels"), &machine.labels, &mut errors);
            if let Some(ssh) = &machine.ssh {
                if let Err(problem) = check_host(&ssh.host) {
                    errors.add(format!("{at}.ssh.host"), problem);
                }
                if !(1..=65535).contains(&ssh.port) {
                    errors.add(format!("{at}.ssh.port"), Problem::Between { min: 1, max: 65535 });
                }
                if let Err(problem) = check_unix_user(&ssh.user) {
                    errors.add(format!("{at}.ssh.user"), problem);
                }
            }
        }
        errors.into_result()
    }
}

/// Register a donation and its machines in one request. The donation starts `submitted`
/// and its machines `pending_review`.
pub async fn create_donation(
    state: &AppState,
    caller: &Principal,
    mut form: DonationForm,
) -> Result<DonationDetail, ApiError> {
    let scope = caller.admin_or_donor()?;
    let donor_id = match (scope, form.donor_id) {
        (DonorScope::All, Some(donor_id)) => donor_id,
        (DonorScope::All, None) => {
            return Err(ApiError::invalid_field("donor_id", Problem::DonorNeeded));
        }
        (DonorScope::Own(own), None) => own,
        (DonorScope::Own(own), Some(asked)) if asked == own => own,
        (DonorScope::Own(_), Some(_)) => {
            return Err(ApiError::invalid_field("donor_id", Problem::OwnDonorOnly));
        }
    };
    form.validate()?;

    let actor = caller.actor();
    let submitted_by = caller.user_id();
    let mut conn = state.db().await?;
    let detail = conn
        .transaction::<_, ApiError, _>(async move |conn| {
            let donor = db::donors::find(conn, donor_id)
                .await?
                .ok_or_else(|| ApiError::invalid_field("donor_id", Problem::NoSuchDonor))?;
            check_site(conn, &form, donor_id).await?;
            let policy = form.usage_policy.take().map(|mut policy| {
                policy.time_zone.get_or_insert(donor.time_zone);
                policy
            });
            check_asset_tags_free(conn, &form).await?;

            let new = NewDonation {
                id: DonationId::generate(),
                donor_id,
                site_id: form.site_id,
                model: form.model,
                status: DonationStatus::Submitted,
                agreement_ref: form.agreement_ref.trim(),
                description: form.description.as_deref(),
                starts_on: form.starts_on,
                ends_on: form.ends_on,
                usage_policy: policy.as_ref().map(DbJson),
                submitted_by,
            };
            let donation = db::donations::insert(conn, &new).await.map_err(|e| {
                if is_unique_violation(&e, db::donations::AGREEMENT_REF_KEY) {
                    ApiError::conflict(
                        ErrorCode::AgreementRefTaken,
                        "agreement_ref: this donor already has a donation with this reference",
                    )
                    .with_field_errors(FieldErrors::one("agreement_ref", Problem::AgreementRefTaken))
                } else {
                    e.into()
                }
            })?;

            let deadline = lifecycle::deadline(LifecycleState::PendingReview).map(|d| Utc::now() + d);
            let rows: Vec<NewMachine<'_>> = form
                .machines
                .iter()
                .map(|m| NewMachine {
                    id: MachineId::generate(),
                    donation_id: Some(donation.id),
                    donor_id: Some(donor_id),
                    site_id: donation.site_id,
                    hostname: m.hostname.as_deref(),
                    asset_tag: m.asset_tag.as_deref(),
                    arch: m.arch,
                    cpu_model: m.cpu_model.trim(),
                    cpu_cores: m.cpu_cores as i32,
                    memory_mib: m.memory_mib,
                    disk_gib: m.disk_gib,
                    accelerators: DbJson(&m.accelerators),
                    labels: DbJson(&m.labels),
                    ssh_host: m.ssh.as_ref().map(|s| s.host.as_str()),
                    ssh_port: m.ssh.as_ref().map(|s| s.port as i32),
                    ssh_user: m.ssh.as_ref().map(|s| s.user.as_str()),
                    warranty_until: m.warranty_until,
                    lifecycle: LifecycleState::PendingReview,
                    lifecycle_deadline: deadline,
                })
                .collect();
            let machines = db::machines::insert_many(conn, &rows).await.map_err(|e| {
                if is_unique_violation(&e, db::machines::ASSET_TAG_KEY) {
                    ApiError::conflict(
                        ErrorCode::AssetTagTaken,
                        "an asset tag in this form was registered at the same moment; retry",
                    )
                } else {
                    e.into()
                }
            })?;

            let detail = donation_detail(donation, machines, caller);
            let mut changes = vec![
                Change::new("donation.submitted", "donation", detail.donation.id)
                    .donor(Some(donor_id))
                    .after(&detail.donation),
            ];
            changes.extend(
                detail
                    .machines
                    .iter()
                    .map(|m| Change::new("machine.registered", "machine", m.id).donor(Some(donor_id)).after(m)),
            );
            audit::record(conn, &actor, &changes).await?;
            db::events::emit(conn, &[donation_event(EventType::DonationSubmitted, &detail)]).await?;
            Ok(detail)
        })
        .await?;
    Ok(detail)
}

/// A usage-right donation's machines stay at the donor's own site; the others go to a lab.
async fn check_site(conn: &mut AsyncPgConnection, form: &DonationForm, donor_id: DonorId) -> Result<(), ApiError> {
    let problem = match db::sites::find(conn, form.site_id).await? {
        None => Some(Problem::NoSuchSite),
        // Another donor's premises: not this donor's to learn of.
        Some(site) if site.kind == SiteKind::DonorSite && site.donor_id != Some(donor_id) => Some(Problem::NoSuchSite),
        Some(site) if site.kind != form.model.site_kind() => Some(Problem::WrongSiteKind {
            model: form.model.to_string(),
            need: form.model.site_kind().to_string(),
            kind: site.kind.to_string(),
        }),
        Some(_) => None,
    };
    match problem {
        Some(problem) => Err(ApiError::invalid_field("site_id", problem)),
        None => Ok(()),
    }
}

/// Refuses the form, naming each machine, if any of its asset tags is already in use.
async fn check_asset_tags_free(conn: &mut AsyncPgConnection, form: &DonationForm) -> Result<(), ApiError> {
    let tags: Vec<&str> = form.machines.iter().filter_map(|m| m.asset_tag.as_deref()).collect();
    if tags.is_empty() {
        return Ok(());
    }
    let taken: Vec<String> =
        db::machines::taken_asset_tags(conn, &tags).await?.iter().map(|t| t.to_lowercase()).collect();
    let mut errors = FieldErrors::new();
    for (i, machine) in form.machines.iter().enumerate() {
        if let Some(tag) = &machine.asset_tag
            && taken.contains(&tag.to_lowercase())
        {
            errors.add(format!("machines[{i}].asset_tag"), Problem::TagTaken { tag: tag.clone() });
        }
    }
    if errors.is_empty() {
        return Ok(());
    }
    let message = errors.as_slice().iter().map(|e| format!("{}: {}", e.field, e.problem)).collect::<Vec<_>>();
    Err(ApiError::conflict(ErrorCode::AssetTagTaken, message.join("; ")).with_field_errors(errors))
}

/// Filters for the donation list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DonationListQuery {
    pub status: Option<DonationStatus>,
    pub model: Option<DonationModel>,
    /// Ops only; a donor always sees its own.
    #[param(value_type = Option<String>, format = Uuid)]
    pub donor_id: Option<DonorId>,
    pub cursor: Option<String>,
    /// 1 to 200, default 50.
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
}

/// List donations: all of them for ops, its own for a donor.
pub async fn list_donations(
    state: &AppState,
    caller: &Principal,
    query: DonationListQuery,
) -> Result<DonationPage, ApiError> {
    let scope = caller.admin_or_donor()?;
    let page = page(query.cursor.as_deref(), query.limit)?;
    let donor_id = match (scope, query.donor_id) {
        (DonorScope::Own(own), Some(asked)) if asked != own => {
            return Err(ApiError::invalid_field("donor_id", Problem::OwnDonorOnly));
        }
        (DonorScope::Own(own), _) => Some(own),
        (DonorScope::All, asked) => asked,
    };
    let filter = DonationFilter { donor_id, status: query.status, model: query.model };
    let mut conn = state.db().await?;
    let rows = db::donations::list(&mut conn, &filter, page).await?;
    let (rows, next_cursor) = paginate(rows, &page, |d| d.id);
    let donors: Vec<DonorId> = rows.iter().map(|d| d.donor_id).collect();
    let names = db::donors::names(&mut conn, &donors).await?;
    let items = rows
        .into_iter()
        .map(|d| DonationView { donor_name: names.get(&d.donor_id).cloned(), ..DonationView::from(d) })
        .collect();
    Ok(DonationPage { items, next_cursor })
}

/// One donation with its machines.
pub async fn get_donation(state: &AppState, caller: &Principal, id: DonationId) -> Result<DonationDetail, ApiError> {
    let scope = caller.admin_or_donor()?;
    let mut conn = state.db().await?;
    let donation = db::donations::find(&mut conn, id)
        .await?
        .filter(|d| scope.covers(Some(d.donor_id)))
        .ok_or_else(|| ApiError::not_found(ErrorCode::DonationNotFound))?;
    let machines = db::machines::of_donation(&mut conn, donation.id).await?;
    Ok(donation_detail(donation, machines, caller))
}

/// A donation-level action.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DonationActionRequest {
    pub action: DonationAction,
    /// Why. Required to reject; recorded in the audit log.
    #[serde(default)]
    #[schema(
        pattern = r"^[^\x00-\x08\x0b-\x1f\x7f-\x9f]*[^\s\x00-\x08\x0b-\x1f\x7f-\x9f][^\x00-\x08\x0b-\x1f\x7f-\x9f]*$",
        max_length = 2000
    )]
    pub note: Option<String>,
}

/// Act on a donation as a whole: ops `approve` or `reject` (with a reason) a submission and
/// `return` a loan; a usage-right donor may `pause`, `resume` and `withdraw`. Its machines
/// move with it wherever the lifecycle table allows.
pub async fn act_on_donation(
    state: &AppState,
    caller: &Principal,
    id: DonationId,
    request: DonationActionRequest,
) -> Result<DonationDetail, ApiError> {
    let scope = caller.admin_or_donor()?;
    let mut errors = FieldErrors::new();
    check_optional_text(&mut errors, "note", request.note.as_deref(), 2000);
    if request.action.needs_reason() && request.note.is_none() {
        errors.add("note", Problem::ReasonNeeded { action: request.action.to_string() });
    }
    errors.into_result()?;

    let actor = caller.actor();
    let requester = caller.requester();
    let reviewer = caller.user_id();
    let mut conn = state.db().await?;
    let token_lifetime = chrono::Duration::hours(state.config.enrollment_token_hours);
    let (detail, cut_off) = conn
        .transaction::<_, ApiError, _>(async move |conn| {
            let donation = db::donations::lock(conn, id)
                .await?
                .filter(|d| scope.covers(Some(d.donor_id)))
                .ok_or_else(|| ApiError::not_found(ErrorCode::DonationNotFound))?;
            let outcome = donation::apply(donation.status, donation.model, request.action, requester)?;
            let note = request.note.as_deref();
            let review = match request.action {
                DonationAction::Approve | DonationAction::Reject => reviewer.map(|r| (r, note)),
                _ => None,
            };
            let updated = db::donations::set_status(conn, donation.id, outcome.status, review).await?;

            let machines = db::machines::lock_of_donation(conn, donation.id).await?;
            let ctx =
                Context { model: updated.model, donation_status: updated.status, requester: Requester::DonationFlow };
            let moving: Vec<Machine> = machines
                .into_iter()
                .filter(|m| {
                    outcome.moves(m.lifecycle) && lifecycle::check(m.lifecycle, outcome.machines_to, &ctx).is_ok()
                })
                .collect();
            let ids: Vec<MachineId> = moving.iter().map(|m| m.id).collect();
            let change = LifecycleChange {
                to: outcome.machines_to,
                deadline: lifecycle::deadline(outcome.machines_to).map(|d| Utc::now() + d),
                maintenance_reason: None,
                location: None,
            };
            let moved = db::machines::set_lifecycle(conn, &ids, &change).await?;
            let cut_off = record_lifecycle_changes(conn, &actor, &moving, &moved, note).await?;

            let before = DonationView::from(donation);
            let machines = db::machines::of_donation(conn, updated.id).await?;
            let mut detail = donation_detail(updated, machines, caller);
            if request.action == DonationAction::Approve {
                let expires_at = Utc::now() + token_lifetime;
                for machine in moved.iter() {
                    detail.enrollment_tokens.push(issue_enrollment(conn, machine, reviewer, expires_at).await?);
                }
            }
            let event = match request.action {
                DonationAction::Approve => Some(EventType::DonationApproved),
                DonationAction::Reject => Some(EventType::DonationRejected),
                _ => None,
            };
            if let Some(event) = event {
                db::events::emit(conn, &[donation_event(event, &detail)]).await?;
            }
            let action = match request.action {
                DonationAction::Approve => "donation.approved",
                DonationAction::Reject => "donation.rejected",
                DonationAction::Pause => "donation.paused",
                DonationAction::Resume => "donation.resumed",
                DonationAction::Withdraw => "donation.withdrawn",
                DonationAction::Return => "donation.returned",
            };
            let entry = Change::new(action, "donation", before.id)
                .donor(Some(before.donor_id))
                .note(note)
                .before(&before)
                .after(&detail.donation);
            audit::record(conn, &actor, &[entry]).await?;
            Ok((detail, cut_off))
        })
        .await?;
    state.agents.evict(&cut_off);
    Ok(detail)
}

/// Replace a usage-right donation's usage policy. Ops, or the donor.
pub async fn put_usage_policy(
    state: &AppState,
    caller: &Principal,
    id: DonationId,
    mut policy: UsagePolicy,
) -> Result<DonationView, ApiError> {
    let scope = caller.admin_or_donor()?;
    let mut errors = FieldErrors::new();
    policy.validate("", &mut errors);
    errors.into_result()?;
    let actor = caller.actor();
    let mut conn = state.db().await?;
    let view = conn
        .transaction::<_, ApiError, _>(async move |conn| {
            let donation = db::donations::lock(conn, id)
                .await?
                .filter(|d| scope.covers(Some(d.donor_id)))
                .ok_or_else(|| ApiError::not_found(ErrorCode::DonationNotFound))?;
            if donation.model != DonationModel::UsageRight {
                return Err(ApiError::conflict(
                    ErrorCode::NoUsagePolicy,
                    format!("a {} donation has no usage policy", donation.model),
                ));
            }
            if matches!(
                donation.status,
                DonationStatus::Rejected | DonationStatus::Withdrawn | DonationStatus::Returned
            ) {
                return Err(ApiError::conflict(
                    ErrorCode::DonationClosed,
                    format!("the donation is `{}`", donation.status),
                )
                .with_details(json!({ "status": donation.status })));
            }
            if policy.time_zone.is_none() {
                policy.time_zone = donation.usage_policy.as_ref().and_then(|p| p.0.time_zone.clone());
            }
            let updated = db::donations::set_usage_policy(conn, donation.id, &policy).await?;
            let (before, after) = (DonationView::from(donation), DonationView::from(updated));
            let entry = Change::new("donation.usage_policy_changed", "donation", after.id)
                .donor(Some(after.donor_id))
                .before(&before)
                .after(&after);
            audit::record(conn, &actor, &[entry]).await?;
            Ok(after)
        })
        .await?;
    Ok(view)
}

/// An event about a donation, carrying the donation as the API shows it.
fn donation_event(event_type: EventType, detail: &DonationDetail) -> db::events::NewEvent {
    let mut data = serde_json::to_value(&detail.donation).unwrap_or_default();
    if let Some(data) = data.as_object_mut() {
        data.insert("machine_count".into(), detail.machines.len().into());
    }
    db::events::NewEvent {
        event_type,
        subject: format!("donations/{}", detail.donation.id),
        donor_id: Some(detail.donation.donor_id),
        data,
    }
}

fn donation_detail(donation: Donation, machines: Vec<Machine>, caller: &Principal) -> DonationDetail {
    let allowed_actions = match caller {
        Principal::Admin { .. } | Principal::Donor { .. } => {
            donation::allowed_actions(donation.status, donation.model, caller.requester())
        }
        _ => Vec::new(),
    };
    DonationDetail {
        donation: donation.into(),
        machines: machines.into_iter().map(MachineView::from).collect(),
        allowed_actions,
        enrollment_tokens: Vec::new(),
    }
}
