//! The API's representations of machines, donations and users: what responses show, what audit
//! entries record before and after a change, and what events carry. Shared by handlers and
//! jobs, so both describe an entity the same way.

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::db::donations::Donation;
use crate::db::machines::Machine;
use crate::db::users::User;
use crate::domain::{
    Accelerator, Arch, DonationId, DonationModel, DonationStatus, DonorId, Health, Labels, LifecycleState, MachineId,
    Role, SiteId, UsagePolicy, UserId,
};

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
    #[schema(
        pattern = r"^[^\x00-\x08\x0b-\x1f\x7f-\x9f]*[^\s\x00-\x08\x0b-\x1f\x7f-\x9f][^\x00-\x08\x0b-\x1f\x7f-\x9f]*$",
        max_length = 32
    )]
    pub rack: String,
    #[schema(
        pattern = r"^[^\x00-\x08\x0b-\x1f\x7f-\x9f]*[^\s\x00-\x08\x0b-\x1f\x7f-\x9f][^\x00-\x08\x0b-\x1f\x7f-\x9f]*$",
        max_length = 32
    )]
    pub slot: String,
}

/// Why and since when a machine is quarantined.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Quarantine {
    pub since: DateTime<Utc>,
    pub reason: String,
}

/// A machine as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MachineView {
    pub id: MachineId,
    /// Absent for a machine rented from a cloud (or imported from one).
    pub donation_id: Option<DonationId>,
    pub donor_id: Option<DonorId>,
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
    /// Why the health is what it is, e.g. `no heartbeat since ...`.
    pub health_reason: Option<String>,
    pub health_changed_at: Option<DateTime<Utc>>,
    /// Set when the machine must not be used until ops look at it (e.g. its SSH host key
    /// changed).
    pub quarantine: Option<Quarantine>,
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
            health_reason: m.health_reason,
            health_changed_at: m.health_changed_at,
            quarantine: m
                .quarantined_at
                .map(|since| Quarantine { since, reason: m.quarantine_reason.unwrap_or_default() }),
            location,
            maintenance_reason: m.maintenance_reason,
            created_at: m.created_at,
            updated_at: m.updated_at,
        }
    }
}

/// A donation as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DonationView {
    pub id: DonationId,
    pub donor_id: DonorId,
    /// The donor's name (in the donation list).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub donor_name: Option<String>,
    /// Where the machines live: the donor's site (usage right) or the foundation's lab.
    pub site_id: SiteId,
    pub model: DonationModel,
    pub status: DonationStatus,
    /// The reference of the signed agreement.
    pub agreement_ref: String,
    pub description: Option<String>,
    pub starts_on: NaiveDate,
    /// A loan's due date, or the end of a usage-right term.
    pub ends_on: Option<NaiveDate>,
    pub usage_policy: Option<UsagePolicy>,
    /// The reviewer's note; for a rejection, the reason.
    pub review_note: Option<String>,
    pub reviewed_by: Option<UserId>,
    pub reviewed_at: Option<DateTime<Utc>>,
    pub submitted_by: Option<UserId>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<Donation> for DonationView {
    fn from(d: Donation) -> Self {
        Self {
            id: d.id,
            donor_id: d.donor_id,
            donor_name: None,
            site_id: d.site_id,
            model: d.model,
            status: d.status,
            agreement_ref: d.agreement_ref,
            description: d.description,
            starts_on: d.starts_on,
            ends_on: d.ends_on,
            usage_policy: d.usage_policy.map(|p| p.0),
            review_note: d.review_note,
            reviewed_by: d.reviewed_by,
            reviewed_at: d.reviewed_at,
            submitted_by: d.submitted_by,
            created_at: d.created_at,
            updated_at: d.updated_at,
        }
    }
}

/// A user account; the password hash never leaves the server.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UserView {
    pub id: UserId,
    pub email: String,
    pub display_name: String,
    pub role: Role,
    /// The donor a `donor` user belongs to.
    pub donor_id: Option<DonorId>,
    pub disabled: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<User> for UserView {
    fn from(u: User) -> Self {
        Self {
            id: u.id,
            email: u.email,
            display_name: u.display_name,
            role: u.role,
            donor_id: u.donor_id,
            disabled: u.disabled_at.is_some(),
            created_at: u.created_at,
            updated_at: u.updated_at,
        }
    }
}
