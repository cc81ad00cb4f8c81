//! Donations (agreements): the three models, their statuses, and the donation-level actions
//! that move a donation and all its machines at once.

use chrono::NaiveDate;

use super::Problem;
use super::SiteKind;
use super::lifecycle::{By, LifecycleState, Requester};
use super::validation::FieldErrors;

text_enum! {
    /// Under which agreement the community may use the machines.
    pub enum DonationModel {
        /// Donor-hosted: the donor grants the right to use machines it keeps running at its
        /// own site, under a usage policy.
        UsageRight => "usage_right",
        /// Ownership passes to the foundation; the machines live in its lab.
        Ownership => "ownership",
        /// Lent to the foundation's lab until a due date, then returned.
        Loan => "loan",
    }
}

impl DonationModel {
    /// Whether the donor operates the machines itself (enrolls their agents, labels them,
    /// asks for SSH checks, reads the work done on them): only under a usage right. Machines
    /// given or lent to the foundation are the lab's; their donor may only read them.
    pub fn donor_operates(self) -> bool {
        self == DonationModel::UsageRight
    }
}

text_enum! {
    /// Where a donation stands.
    pub enum DonationStatus {
        Submitted => "submitted",
        Approved => "approved",
        Rejected => "rejected",
        /// A usage-right donation its donor has paused.
        Paused => "paused",
        Withdrawn => "withdrawn",
        /// A loan whose machines went back to the donor.
        Returned => "returned",
    }
}

text_enum! {
    /// Something done to a donation as a whole.
    pub enum DonationAction {
        Approve => "approve",
        /// Needs a reason.
        Reject => "reject",
        Pause => "pause",
        Resume => "resume",
        Withdraw => "withdraw",
        Return => "return",
    }
}

impl DonationModel {
    /// The kind of site this model's machines live at.
    pub fn site_kind(self) -> SiteKind {
        match self {
            DonationModel::UsageRight => SiteKind::DonorSite,
            DonationModel::Ownership | DonationModel::Loan => SiteKind::FoundationLab,
        }
    }
}

impl DonationAction {
    pub fn needs_reason(self) -> bool {
        self == DonationAction::Reject
    }
}

use DonationAction::*;
use DonationModel::{Loan, Ownership, UsageRight};
use DonationStatus as S;

struct ActionRule {
    action: DonationAction,
    from: &'static [DonationStatus],
    to: DonationStatus,
    models: &'static [DonationModel],
    by: By,
    /// The donation's machines in these states move to `machines_to` (the lifecycle table
    /// must allow each move; a unit test below holds the two tables together).
    machines_from: &'static [LifecycleState],
    machines_to: LifecycleState,
}

const ALL_MODELS: &[DonationModel] = &[UsageRight, Ownership, Loan];

use LifecycleState as L;

#[rustfmt::skip]
const ACTIONS: &[ActionRule] = &[
    ActionRule { action: Approve, from: &[S::Submitted], to: S::Approved, models: ALL_MODELS, by: By::Ops,
                 machines_from: &[L::PendingReview], machines_to: L::Approved },
    ActionRule { action: Reject, from: &[S::Submitted], to: S::Rejected, models: ALL_MODELS, by: By::Ops,
                 machines_from: &[L::PendingReview], machines_to: L::Rejected },
    // A submission to the lab may be cancelled before review; after that the machines are
    // the foundation's (ownership) or come back through `return` (loan).
    ActionRule { action: Withdraw, from: &[S::Submitted], to: S::Withdrawn, models: &[Ownership, Loan], by: By::OpsOrDonor,
                 machines_from: &[L::PendingReview], machines_to: L::Withdrawn },
    ActionRule { action: Withdraw, from: &[S::Submitted, S::Approved, S::Paused], to: S::Withdrawn, models: &[UsageRight], by: By::OpsOrDonor,
                 machines_from: &[L::PendingReview, L::Approved, L::Onboarding, L::Ready, L::Maintenance, L::PausedByDonor],
                 machines_to: L::Withdrawn },
    ActionRule { action: Pause, from: &[S::Approved], to: S::Paused, models: &[UsageRight], by: By::OpsOrDonor,
                 machines_from: &[L::Ready, L::Maintenance], machines_to: L::PausedByDonor },
    ActionRule { action: Resume, from: &[S::Paused], to: S::Approved, models: &[UsageRight], by: By::OpsOrDonor,
                 machines_from: &[L::PausedByDonor], machines_to: L::Ready },
    ActionRule { action: Return, from: &[S::Approved], to: S::Returned, models: &[Loan], by: By::Ops,
                 machines_from: &[L::Approved, L::InTransit, L::Received, L::Onboarding, L::Ready, L::Maintenance],
                 machines_to: L::ReturnedToDonor },
];

/// The outcome of an allowed donation action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActionOutcome {
    pub status: DonationStatus,
    /// The donation's machines in these states move to `machines_to`; others stay put.
    pub machines_from: &'static [LifecycleState],
    pub machines_to: LifecycleState,
}

impl ActionOutcome {
    /// Whether a machine in `state` moves with the donation.
    pub fn moves(&self, state: LifecycleState) -> bool {
        self.machines_from.contains(&state)
    }
}

/// A refused donation action, with those that are open to this requester.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", describe(self))]
pub struct InvalidAction {
    pub action: DonationAction,
    pub status: DonationStatus,
    pub model: DonationModel,
    pub allowed: Vec<DonationAction>,
}

fn describe(e: &InvalidAction) -> String {
    let head = format!("cannot {} a {} donation that is `{}`", e.action, e.model, e.status);
    if e.allowed.is_empty() {
        format!("{head}; no actions are open to you")
    } else {
        let allowed: Vec<&str> = e.allowed.iter().map(|a| a.as_str()).collect();
        format!("{head}; allowed actions: {}", allowed.join(", "))
    }
}

fn matching(
    status: DonationStatus,
    model: DonationModel,
    requester: Requester,
) -> impl Iterator<Item = &'static ActionRule> {
    ACTIONS.iter().filter(move |r| r.from.contains(&status) && r.models.contains(&model) && r.by.permits(requester))
}

/// Actions open to this requester on a donation in this status.
pub fn allowed_actions(status: DonationStatus, model: DonationModel, requester: Requester) -> Vec<DonationAction> {
    let mut actions: Vec<_> = matching(status, model, requester).map(|r| r.action).collect();
    actions.dedup();
    actions
}

/// Judges one action on a donation.
pub fn apply(
    status: DonationStatus,
    model: DonationModel,
    action: DonationAction,
    requester: Requester,
) -> Result<ActionOutcome, InvalidAction> {
    matching(status, model, requester)
        .find(|r| r.action == action)
        .map(|r| ActionOutcome { status: r.to, machines_from: r.machines_from, machines_to: r.machines_to })
        .ok_or_else(|| InvalidAction { action, status, model, allowed: allowed_actions(status, model, requester) })
}

/// Checks the agreement's dates and policy against its model: a loan has a due date, an
/// ownership donation has no end, only usage-right donations carry a usage policy.
pub fn check_terms(
    model: DonationModel,
    starts_on: NaiveDate,
    ends_on: Option<NaiveDate>,
    has_usage_policy: bool,
    errors: &mut FieldErrors,
) {
    match (model, ends_on) {
        (Loan, None) => errors.add("ends_on", Problem::LoanNeedsEnd),
        (Ownership, Some(_)) => errors.add("ends_on", Problem::OwnershipHasNoEnd),
        (_, Some(end)) if end <= starts_on => errors.add("ends_on", Problem::NotAfter { other: "starts_on".into() }),
        _ => {}
    }
    match (model, has_usage_policy) {
        (UsageRight, false) => errors.add("usage_policy", Problem::PolicyNeeded),
        (Ownership | Loan, true) => errors.add("usage_policy", Problem::PolicyNotAllowed),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_approve_and_reject_submissions() {
        for model in ALL_MODELS {
            let out = apply(S::Submitted, *model, Approve, Requester::Ops).unwrap();
            assert_eq!(out.status, S::Approved);
            assert_eq!(out.machines_to, LifecycleState::Approved);
            assert!(apply(S::Submitted, *model, Approve, Requester::Donor).is_err());
        }
    }

    #[test]
    fn only_usage_right_donations_can_be_paused() {
        assert_eq!(apply(S::Approved, UsageRight, Pause, Requester::Donor).unwrap().status, S::Paused);
        let refused = apply(S::Approved, Loan, Pause, Requester::Ops).unwrap_err();
        assert_eq!(refused.allowed, vec![Return]);
        assert!(refused.to_string().contains("allowed actions: return"));
    }

    #[test]
    fn a_lab_submission_can_be_cancelled_but_not_an_approved_one() {
        assert!(apply(S::Submitted, Ownership, Withdraw, Requester::Donor).is_ok());
        assert!(apply(S::Approved, Ownership, Withdraw, Requester::Donor).is_err());
        assert!(apply(S::Paused, UsageRight, Withdraw, Requester::Donor).is_ok());
    }

    #[test]
    fn settled_donations_accept_nothing() {
        for status in [S::Rejected, S::Withdrawn, S::Returned] {
            for model in ALL_MODELS {
                assert!(allowed_actions(status, *model, Requester::Ops).is_empty());
            }
        }
    }

    #[test]
    fn every_machine_move_of_an_action_is_in_the_lifecycle_table() {
        use super::super::lifecycle::{self, Context};
        for rule in ACTIONS {
            for model in rule.models {
                let ctx = Context { model: *model, donation_status: rule.to, requester: Requester::DonationFlow };
                for from in rule.machines_from {
                    assert_eq!(
                        lifecycle::check(*from, rule.machines_to, &ctx),
                        Ok(()),
                        "{} of a {model} donation moves machines {from} -> {}",
                        rule.action,
                        rule.machines_to
                    );
                }
            }
        }
    }

    /// Every state a machine of this model can reach once its donation is approved.
    fn reachable_after_approval(model: DonationModel) -> Vec<LifecycleState> {
        use super::super::lifecycle::{Context, allowed_next};
        let ctx = Context { model, donation_status: S::Approved, requester: Requester::DonationFlow };
        let mut seen = vec![L::Approved];
        let mut frontier = vec![L::Approved];
        while let Some(state) = frontier.pop() {
            for next in allowed_next(state, &ctx) {
                if !seen.contains(&next) {
                    seen.push(next);
                    frontier.push(next);
                }
            }
        }
        seen
    }

    #[test]
    fn ending_a_donation_leaves_no_machine_behind() {
        use super::super::lifecycle::is_terminal;
        for rule in ACTIONS.iter().filter(|r| matches!(r.action, Withdraw | Return) && r.from.contains(&S::Approved)) {
            for model in rule.models {
                for state in reachable_after_approval(*model).into_iter().filter(|s| !is_terminal(*s)) {
                    assert!(
                        rule.machines_from.contains(&state),
                        "{} of a {model} donation leaves {state} behind",
                        rule.action
                    );
                }
            }
        }
    }

    #[test]
    fn resuming_brings_back_only_what_the_pause_took() {
        let out = apply(S::Paused, UsageRight, Resume, Requester::Donor).unwrap();
        assert!(out.moves(L::PausedByDonor));
        assert!(!out.moves(L::Onboarding) && !out.moves(L::Maintenance));
    }

    #[test]
    fn terms_follow_the_model() {
        let start = NaiveDate::from_ymd_opt(2026, 1, 1).unwrap();
        let end = NaiveDate::from_ymd_opt(2027, 1, 1).unwrap();
        let problems = |model, ends, policy| {
            let mut errors = FieldErrors::new();
            check_terms(model, start, ends, policy, &mut errors);
            errors.as_slice().iter().map(|e| e.field.clone()).collect::<Vec<_>>()
        };
        assert!(problems(Loan, Some(end), false).is_empty());
        assert_eq!(problems(Loan, None, false), ["ends_on"]);
        assert_eq!(problems(Ownership, Some(end), true), ["ends_on", "usage_policy"]);
        assert_eq!(problems(UsageRight, Some(start), false), ["ends_on", "usage_policy"]);
        assert!(problems(UsageRight, None, true).is_empty());
    }
}
