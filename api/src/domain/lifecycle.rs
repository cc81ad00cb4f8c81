//! Machine lifecycle: the states a machine passes through in its donation's life, and the one
//! table of transitions between them.
//!
//! The lifecycle says what a machine *is doing* in the community's hands; whether it is usable
//! right now is its [`Health`](super::Health), kept apart on purpose. Every in-progress state
//! has a deadline so that nothing sits half-done unnoticed.

use chrono::Duration;

use super::{DonationModel, DonationStatus};

text_enum! {
    /// Where a machine is in its donation's life.
    pub enum LifecycleState {
        /// Registered by a donor; waiting for ops to review the donation.
        PendingReview => "pending_review",
        /// Accepted; waiting to be shipped (foundation lab) or onboarded (donor-hosted).
        Approved => "approved",
        /// The donation was rejected; the machine never joins the pool.
        Rejected => "rejected",
        /// On its way to the foundation's lab.
        InTransit => "in_transit",
        /// Arrived at the lab and racked.
        Received => "received",
        /// Being installed, probed and checked before use.
        Onboarding => "onboarding",
        /// In the pool, available for builds, CI and tests.
        Ready => "ready",
        /// Taken out of the pool by ops; raises no alarms.
        Maintenance => "maintenance",
        /// Taken out of the pool by its donor (usage-right donations only).
        PausedByDonor => "paused_by_donor",
        /// The donor withdrew it (usage-right donations, or a submission cancelled before review).
        Withdrawn => "withdrawn",
        /// Owned by the foundation and taken out of service for good.
        Retired => "retired",
        /// A loaned machine that went back to its donor.
        ReturnedToDonor => "returned_to_donor",
    }
}

/// Who is asking for a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requester {
    /// The infrastructure team (role `admin`).
    Ops,
    /// The donor that owns the machine.
    Donor,
    /// A donation-level action (review, pause, withdraw, return) moving all its machines.
    DonationFlow,
}

/// Who a transition rule is open to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum By {
    Ops,
    OpsOrDonor,
    /// Only as part of a donation-level action.
    DonationFlow,
}

impl By {
    pub(super) fn permits(self, requester: Requester) -> bool {
        matches!(
            (self, requester),
            (_, Requester::DonationFlow)
                | (By::Ops, Requester::Ops)
                | (By::OpsOrDonor, Requester::Ops | Requester::Donor)
        )
    }
}

use DonationModel::{Loan, Ownership, UsageRight};
use LifecycleState::*;

const ALL_MODELS: &[DonationModel] = &[UsageRight, Ownership, Loan];
const FOUNDATION_LAB: &[DonationModel] = &[Ownership, Loan];
const DONOR_HOSTED: &[DonationModel] = &[UsageRight];

struct Rule {
    from: &'static [LifecycleState],
    to: LifecycleState,
    models: &'static [DonationModel],
    by: By,
}

/// The transition table. A transition not listed here does not exist.
const RULES: &[Rule] = &[
    // Review, always through the donation.
    Rule { from: &[PendingReview], to: Approved, models: ALL_MODELS, by: By::DonationFlow },
    Rule { from: &[PendingReview], to: Rejected, models: ALL_MODELS, by: By::DonationFlow },
    Rule { from: &[PendingReview], to: Withdrawn, models: ALL_MODELS, by: By::DonationFlow },
    // Foundation lab: ship, receive and rack, then onboard.
    Rule { from: &[Approved], to: InTransit, models: FOUNDATION_LAB, by: By::Ops },
    Rule { from: &[InTransit], to: Received, models: FOUNDATION_LAB, by: By::Ops },
    Rule { from: &[Received], to: Onboarding, models: FOUNDATION_LAB, by: By::Ops },
    // Donor-hosted: onboard where it stands.
    Rule { from: &[Approved], to: Onboarding, models: DONOR_HOSTED, by: By::Ops },
    // In service.
    Rule { from: &[Onboarding, Maintenance], to: Ready, models: ALL_MODELS, by: By::Ops },
    Rule { from: &[Onboarding, Ready], to: Maintenance, models: ALL_MODELS, by: By::Ops },
    // The donor's rights over a usage-right donation.
    Rule { from: &[Ready, Maintenance], to: PausedByDonor, models: DONOR_HOSTED, by: By::OpsOrDonor },
    Rule { from: &[PausedByDonor], to: Ready, models: DONOR_HOSTED, by: By::OpsOrDonor },
    Rule {
        from: &[Approved, Onboarding, Ready, Maintenance, PausedByDonor],
        to: Withdrawn,
        models: DONOR_HOSTED,
        by: By::OpsOrDonor,
    },
    // End of service in the foundation lab.
    Rule { from: &[Received, Onboarding, Ready, Maintenance], to: Retired, models: &[Ownership], by: By::Ops },
    Rule {
        from: &[Approved, InTransit, Received, Onboarding, Ready, Maintenance],
        to: ReturnedToDonor,
        models: &[Loan],
        by: By::Ops,
    },
];

/// The transition table of machines rented from a cloud, or imported from one: no review, no
/// shipping, no donor. The cloud worker moves a new instance to `ready` once its agent beats
/// and retires it when it is terminated; ops may take one out for maintenance or retire it.
#[rustfmt::skip]
const RENTED: &[(&[LifecycleState], LifecycleState)] = &[
    (&[Onboarding, Maintenance], Ready),
    (&[Onboarding, Ready], Maintenance),
    (&[Onboarding, Ready, Maintenance], Retired),
];

/// States a rented machine may move to, for ops (donors have no rights over one).
pub fn allowed_next_rented(from: LifecycleState, requester: Requester) -> Vec<LifecycleState> {
    if requester == Requester::Donor {
        return Vec::new();
    }
    RENTED.iter().filter(|(froms, _)| froms.contains(&from)).map(|(_, to)| *to).collect()
}

/// Whether a rented machine may go `from -> to`.
pub fn check_rented(from: LifecycleState, to: LifecycleState, requester: Requester) -> Result<(), InvalidTransition> {
    let allowed = allowed_next_rented(from, requester);
    if allowed.contains(&to) { Ok(()) } else { Err(InvalidTransition { from, to, allowed }) }
}

/// The facts a transition is judged on.
#[derive(Debug, Clone, Copy)]
pub struct Context {
    pub model: DonationModel,
    pub donation_status: DonationStatus,
    pub requester: Requester,
}

/// A refused transition, with the states that *are* reachable for this requester.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", describe(self))]
pub struct InvalidTransition {
    pub from: LifecycleState,
    pub to: LifecycleState,
    pub allowed: Vec<LifecycleState>,
}

fn describe(e: &InvalidTransition) -> String {
    let head = format!("a machine cannot go from `{}` to `{}`", e.from, e.to);
    if e.allowed.is_empty() {
        format!("{head}; no transitions from `{}` are open to you", e.from)
    } else {
        let allowed: Vec<&str> = e.allowed.iter().map(|s| s.as_str()).collect();
        format!("{head}; allowed next states: {}", allowed.join(", "))
    }
}

fn guard_allows(to: LifecycleState, ctx: &Context) -> bool {
    // A machine only enters the pool while its donation is in force; a paused donation keeps
    // its machines out until the donor resumes it.
    to != Ready || ctx.donation_status == DonationStatus::Approved
}

/// States `from` may move to, for this requester, in table order.
pub fn allowed_next(from: LifecycleState, ctx: &Context) -> Vec<LifecycleState> {
    RULES
        .iter()
        .filter(|rule| {
            rule.from.contains(&from)
                && rule.models.contains(&ctx.model)
                && rule.by.permits(ctx.requester)
                && guard_allows(rule.to, ctx)
        })
        .map(|rule| rule.to)
        .collect()
}

/// Whether `from -> to` is allowed in this context.
pub fn check(from: LifecycleState, to: LifecycleState, ctx: &Context) -> Result<(), InvalidTransition> {
    let allowed = allowed_next(from, ctx);
    if allowed.contains(&to) { Ok(()) } else { Err(InvalidTransition { from, to, allowed }) }
}

/// A state with no way out, for any donation model.
pub fn is_terminal(state: LifecycleState) -> bool {
    !RULES.iter().any(|rule| rule.from.contains(&state))
}

/// How long a machine may stay in an in-progress state before it counts as overdue.
pub fn deadline(state: LifecycleState) -> Option<Duration> {
    match state {
        PendingReview => Some(Duration::days(14)),
        Approved => Some(Duration::days(30)),
        InTransit => Some(Duration::days(30)),
        Received => Some(Duration::days(14)),
        Onboarding => Some(Duration::days(7)),
        _ => None,
    }
}

/// Entering this state records where the machine sits in the lab.
pub fn requires_location(state: LifecycleState) -> bool {
    state == Received
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(model: DonationModel, requester: Requester) -> Context {
        Context { model, donation_status: DonationStatus::Approved, requester }
    }

    #[test]
    fn a_loaned_server_goes_through_shipping_and_racking() {
        let c = ctx(Loan, Requester::Ops);
        let path = [Approved, InTransit, Received, Onboarding, Ready, Maintenance, Ready, ReturnedToDonor];
        for pair in path.windows(2) {
            assert_eq!(check(pair[0], pair[1], &c), Ok(()), "{} -> {}", pair[0], pair[1]);
        }
    }

    #[test]
    fn a_usage_right_board_is_onboarded_in_place() {
        let c = ctx(UsageRight, Requester::Ops);
        assert_eq!(check(Approved, Onboarding, &c), Ok(()));
        let refused = check(Approved, InTransit, &c).unwrap_err();
        assert_eq!(refused.allowed, vec![Onboarding, Withdrawn]);
        assert!(refused.to_string().contains("allowed next states: onboarding, withdrawn"));
    }

    #[test]
    fn donors_may_pause_and_withdraw_but_not_operate() {
        let c = ctx(UsageRight, Requester::Donor);
        assert_eq!(allowed_next(Ready, &c), vec![PausedByDonor, Withdrawn]);
        assert!(check(Onboarding, Ready, &c).is_err());
        assert!(check(Ready, Maintenance, &c).is_err());
    }

    #[test]
    fn lab_machines_cannot_be_paused_by_their_donor() {
        for model in [Ownership, Loan] {
            assert!(check(Ready, PausedByDonor, &ctx(model, Requester::Donor)).is_err());
            assert!(check(Ready, PausedByDonor, &ctx(model, Requester::Ops)).is_err());
        }
    }

    #[test]
    fn review_outcomes_only_come_from_the_donation() {
        assert!(check(PendingReview, Approved, &ctx(Ownership, Requester::Ops)).is_err());
        assert_eq!(check(PendingReview, Approved, &ctx(Ownership, Requester::DonationFlow)), Ok(()));
    }

    #[test]
    fn a_paused_donation_keeps_machines_out_of_the_pool() {
        let paused = Context { model: UsageRight, donation_status: DonationStatus::Paused, requester: Requester::Ops };
        assert!(check(Maintenance, Ready, &paused).is_err());
        assert!(check(PausedByDonor, Ready, &paused).is_err());
        assert_eq!(check(Maintenance, PausedByDonor, &paused), Ok(()));
    }

    #[test]
    fn terminal_states_have_no_way_out() {
        let terminal: Vec<_> = LifecycleState::ALL.iter().copied().filter(|s| is_terminal(*s)).collect();
        assert_eq!(terminal, vec![Rejected, Withdrawn, Retired, ReturnedToDonor]);
        let refused = check(Retired, Ready, &ctx(Ownership, Requester::Ops)).unwrap_err();
        assert!(refused.allowed.is_empty());
    }

    #[test]
    fn every_in_progress_state_has_a_deadline() {
        for state in [PendingReview, Approved, InTransit, Received, Onboarding] {
            assert!(deadline(state).is_some(), "{state}");
        }
        for state in [Ready, Maintenance, PausedByDonor, Retired] {
            assert!(deadline(state).is_none(), "{state}");
        }
    }

    #[test]
    fn every_state_is_reachable_from_pending_review() {
        let mut seen = vec![PendingReview];
        let mut frontier = vec![PendingReview];
        while let Some(state) = frontier.pop() {
            for model in ALL_MODELS {
                for next in allowed_next(state, &ctx(*model, Requester::DonationFlow)) {
                    if !seen.contains(&next) {
                        seen.push(next);
                        frontier.push(next);
                    }
                }
            }
        }
        seen.sort();
        let mut all = LifecycleState::ALL.to_vec();
        all.sort();
        assert_eq!(seen, all);
    }
}
