//! Leases: their states, who holds them, and how far one may be extended.

use chrono::{DateTime, Duration, Utc};

text_enum! {
    /// Where a lease is in its life.
    pub enum LeaseState {
        /// Waiting for a machine.
        Queued => "queued",
        /// Holding a machine until it expires or is released.
        Granted => "granted",
        /// Given back by its holder.
        Released => "released",
        /// Reclaimed when its time ran out.
        Expired => "expired",
        /// Withdrawn by its holder before it got a machine.
        Cancelled => "cancelled",
        /// It waited past its deadline, or lost its machine.
        Failed => "failed",
    }
}

impl LeaseState {
    /// Whether the lease can still change (it waits or holds a machine).
    pub fn is_open(self) -> bool {
        matches!(self, LeaseState::Queued | LeaseState::Granted)
    }
}

text_enum! {
    /// What kind of caller holds a lease.
    pub enum HolderKind {
        /// A person (ops).
        User => "user",
        /// A `ci` service account.
        Service => "service",
    }
}

/// The latest a lease granted at `granted_at` may run to: the platform's cap and, on a
/// usage-right donor's machine, the donor's.
pub fn latest_end(granted_at: DateTime<Utc>, platform_max: Duration, donor_max: Option<Duration>) -> DateTime<Utc> {
    granted_at + donor_max.map_or(platform_max, |donor| donor.min(platform_max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tighter_cap_bounds_an_extension() {
        let at = Utc::now();
        assert_eq!(latest_end(at, Duration::hours(24), None), at + Duration::hours(24));
        assert_eq!(latest_end(at, Duration::hours(24), Some(Duration::hours(4))), at + Duration::hours(4));
        assert_eq!(latest_end(at, Duration::hours(2), Some(Duration::hours(4))), at + Duration::hours(2));
    }
}
