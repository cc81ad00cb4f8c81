//! The events Fleetyard announces (as CloudEvents, to webhook subscribers).

text_enum! {
    /// What happened. The CloudEvents `type` is this with an `io.fleetyard.` prefix.
    pub enum EventType {
        DonationSubmitted => "donation.submitted",
        DonationApproved => "donation.approved",
        DonationRejected => "donation.rejected",
        MachineReady => "machine.ready",
        MachineUnreachable => "machine.unreachable",
        MachineBackOnline => "machine.back_online",
        MachineQuarantined => "machine.quarantined",
        MachineFactsMismatch => "machine.facts_mismatch",
        LoanDueSoon => "loan.due_soon",
        AgreementEndingSoon => "agreement.ending_soon",
    }
}

/// The CloudEvents `type` attribute for an event type.
pub fn cloudevents_type(event: EventType) -> String {
    format!("io.fleetyard.{event}")
}

/// Days before a loan's due date (or a usage-right term's end) that a reminder goes out.
pub const REMINDER_DAYS: [i64; 3] = [30, 7, 1];

/// Which reminder is due with `days_left` to go, if any: the nearest threshold not passed.
/// A job that missed a day still sends the reminder that matters now, not a stale one.
pub fn reminder_due(days_left: i64) -> Option<i64> {
    REMINDER_DAYS.iter().rev().copied().find(|&threshold| days_left >= 0 && days_left <= threshold)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reminders_go_out_30_7_and_1_days_before() {
        assert_eq!(reminder_due(31), None);
        assert_eq!(reminder_due(30), Some(30));
        assert_eq!(reminder_due(12), Some(30));
        assert_eq!(reminder_due(7), Some(7));
        assert_eq!(reminder_due(2), Some(7));
        assert_eq!(reminder_due(1), Some(1));
        assert_eq!(reminder_due(0), Some(1));
        assert_eq!(reminder_due(-1), None);
    }
}
