//! Fleetyard's rules as pure code: no IO, no HTTP, no SQL.
//!
//! Types here derive their wire representations (serde, utoipa, diesel's `AsExpression`
//! marker) so that every layer speaks the same vocabulary, but nothing in this module opens a
//! connection, reads a clock it was not given, or knows about actix.

#[macro_use]
mod macros;

pub mod cloud;
pub mod donation;
pub mod events;
pub mod facts;
pub mod grant;
pub mod health;
pub mod ids;
pub mod inventory;
pub mod job;
pub mod lease;
pub mod lifecycle;
pub mod placement;
pub mod problem;
pub mod queue;
pub mod role;
pub mod usage_policy;
pub mod validation;

pub use donation::{DonationAction, DonationModel, DonationStatus};
pub use events::EventType;
pub use ids::{DonationId, DonorId, JobId, LeaseId, MachineId, SiteId, TokenId, UserId};
pub use inventory::{Accelerator, Arch, CloudProvider, Contact, DonorKind, Health, Labels, SiteKind};
pub use job::JobState;
pub use lease::{HolderKind, LeaseState};
pub use lifecycle::{LifecycleState, Requester};
pub use problem::Problem;
pub use role::{ActorKind, Role};
pub use usage_policy::UsagePolicy;
pub use validation::{FieldError, FieldErrors};

/// A value that is not one of an enumeration's spellings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{value}` is not a valid {kind}")]
pub struct UnknownVariant {
    pub kind: &'static str,
    pub value: String,
}
