//! Health, derived: from heartbeats for machines with an agent, from SSH checks for the
//! others. Marking a machine unreachable is done conservatively: an agent that falls silent on
//! a machine with an SSH endpoint is first checked over SSH.

use chrono::{DateTime, Duration, Utc};

use super::facts::Metrics;
use super::{Health, LifecycleState};

/// Thresholds, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct HealthPolicy {
    pub heartbeat_interval: Duration,
    /// Heartbeats missed before an agent counts as silent.
    pub missed_heartbeats: u32,
    /// Root file system use (percent) at which a machine is degraded.
    pub disk_full_pct: f32,
    pub max_clock_skew: Duration,
    /// Load average per CPU above which a machine is overloaded...
    pub overload_per_cpu: f32,
    /// ...and how long it must last to degrade it.
    pub overload_for: Duration,
    /// Consecutive failed SSH checks that make an agentless machine unreachable.
    pub ssh_failures_unreachable: u32,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::seconds(10),
            missed_heartbeats: 3,
            disk_full_pct: 95.0,
            max_clock_skew: Duration::seconds(30),
            overload_per_cpu: 2.0,
            overload_for: Duration::minutes(5),
            ssh_failures_unreachable: 3,
        }
    }
}

impl HealthPolicy {
    /// How long an agent may stay silent before it is suspect.
    pub fn silence(&self) -> Duration {
        self.heartbeat_interval * self.missed_heartbeats as i32
    }
}

/// The longest an agent waits between attempts while it cannot reach Fleetyard (the agent's
/// own constant is the same). After an outage, silence is not held against agents for this
/// long on top of the silence window.
pub const AGENT_MAX_BACKOFF_SECS: i64 = 60;

/// How far below a threshold a degraded machine must come to be healthy again, so a value
/// hovering at the threshold does not flip its health (and write an audit entry) every sweep.
const DISK_RECOVERY_MARGIN_PCT: f32 = 3.0;

/// Everything health is derived from, as stored.
#[derive(Debug, Clone, Default)]
pub struct Observations {
    /// The health the machine has now (thresholds have some hysteresis).
    pub current: Health,
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    /// Root file system use, percent.
    pub disk_used_pct: Option<f32>,
    pub clock_skew_ms: Option<i32>,
    pub overloaded_since: Option<DateTime<Utc>>,
    pub has_ssh_endpoint: bool,
    pub last_ssh_check_at: Option<DateTime<Utc>>,
    pub last_ssh_ok_at: Option<DateTime<Utc>>,
    pub ssh_failures: i32,
}

/// The verdict: a health with its reason, or "check over SSH first".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Health(Health, String),
    /// The agent is silent and no SSH check has happened since: check before deciding.
    ConfirmOverSsh,
}

/// Derives a machine's health at `now`.
pub fn derive(obs: &Observations, policy: &HealthPolicy, now: DateTime<Utc>) -> Verdict {
    match obs.last_heartbeat_at {
        Some(last) => {
            let silent_since = last + policy.silence();
            if now < silent_since {
                let (health, reason) = from_metrics(obs, policy, now);
                Verdict::Health(health, reason)
            } else if !obs.has_ssh_endpoint {
                Verdict::Health(Health::Unreachable, format!("no heartbeat since {}", last.to_rfc3339()))
            } else {
                match (obs.last_ssh_check_at, obs.last_ssh_ok_at) {
                    (Some(checked), _) if checked < silent_since => Verdict::ConfirmOverSsh,
                    (None, _) => Verdict::ConfirmOverSsh,
                    (Some(checked), Some(ok)) if ok >= checked => Verdict::Health(
                        Health::Degraded,
                        format!("the agent is silent since {} but the machine answers over SSH", last.to_rfc3339()),
                    ),
                    _ => Verdict::Health(
                        Health::Unreachable,
                        format!("no heartbeat since {} and the SSH check failed", last.to_rfc3339()),
                    ),
                }
            }
        }
        None if !obs.has_ssh_endpoint || obs.last_ssh_check_at.is_none() => {
            Verdict::Health(Health::Unknown, "no agent has reported and no SSH check has run".into())
        }
        None if obs.ssh_failures >= policy.ssh_failures_unreachable as i32 => {
            Verdict::Health(Health::Unreachable, format!("the last {} SSH checks failed", obs.ssh_failures))
        }
        None if obs.last_ssh_ok_at.is_none() => {
            Verdict::Health(Health::Unknown, "SSH checks have not succeeded yet".into())
        }
        None => {
            let (health, reason) = from_metrics(obs, policy, now);
            Verdict::Health(health, reason)
        }
    }
}

fn from_metrics(obs: &Observations, policy: &HealthPolicy, now: DateTime<Utc>) -> (Health, String) {
    // A degraded machine recovers a little below the thresholds that degraded it.
    let recovering = obs.current == Health::Degraded;
    let disk_limit = if recovering { policy.disk_full_pct - DISK_RECOVERY_MARGIN_PCT } else { policy.disk_full_pct };
    let skew_limit = policy.max_clock_skew.num_milliseconds() * if recovering { 2 } else { 3 } / 3;
    let mut problems = Vec::new();
    if let Some(disk) = obs.disk_used_pct
        && disk >= disk_limit
    {
        problems.push(format!("root file system {disk:.0}% full"));
    }
    if let Some(skew) = obs.clock_skew_ms
        && i64::from(skew).abs() > skew_limit
    {
        problems.push(format!("clock off by {:.1} s", f64::from(skew) / 1000.0));
    }
    if let Some(since) = obs.overloaded_since
        && now - since >= policy.overload_for
    {
        problems.push(format!("overloaded since {}", since.to_rfc3339()));
    }
    if problems.is_empty() {
        (Health::Healthy, "reporting normally".into())
    } else {
        (Health::Degraded, problems.join("; "))
    }
}

/// Whether the load in `metrics` overloads a machine with `cpus` CPUs.
pub fn is_overloaded(metrics: &Metrics, cpus: u32, policy: &HealthPolicy) -> bool {
    metrics.load5 / cpus.max(1) as f32 > policy.overload_per_cpu
}

/// The lifecycle states whose machines have their health derived, and whose agents may
/// enroll: from approval until the machine leaves the community's hands.
pub const MONITORED: &[LifecycleState] = &[
    LifecycleState::Approved,
    LifecycleState::Received,
    LifecycleState::Onboarding,
    LifecycleState::Ready,
    LifecycleState::Maintenance,
    LifecycleState::PausedByDonor,
];

/// Whether health is derived for a machine in this state at all.
pub fn is_monitored(state: LifecycleState) -> bool {
    MONITORED.contains(&state)
}

/// Whether a health change of a machine in this state raises an alarm (an event). Machines in
/// maintenance or paused by their donor are expected to be away.
pub fn raises_alarms(state: LifecycleState) -> bool {
    matches!(state, LifecycleState::Ready | LifecycleState::Onboarding)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn agent(last: i64) -> Observations {
        Observations { last_heartbeat_at: Some(at(last)), disk_used_pct: Some(40.0), ..Default::default() }
    }

    /// The verdict's health; its reason must be one the pages can read back and translate.
    fn health(v: Verdict) -> Health {
        match v {
            Verdict::Health(h, reason) => {
                for part in reason.split("; ") {
                    assert!(crate::locale::read_recorded(part).is_some(), "`{part}` has no template in recorded.ftl");
                }
                h
            }
            Verdict::ConfirmOverSsh => panic!("expected a verdict, got a request to confirm"),
        }
    }

    #[test]
    fn a_reporting_agent_is_healthy_until_it_misses_three_heartbeats() {
        let policy = HealthPolicy::default();
        assert_eq!(health(derive(&agent(0), &policy, at(29))), Health::Healthy);
        assert_eq!(health(derive(&agent(0), &policy, at(31))), Health::Unreachable);
    }

    #[test]
    fn a_silent_agent_with_ssh_is_confirmed_before_it_is_declared_unreachable() {
        let policy = HealthPolicy::default();
        let mut obs = agent(0);
        obs.has_ssh_endpoint = true;
        assert_eq!(derive(&obs, &policy, at(31)), Verdict::ConfirmOverSsh);
        // The check since the silence began succeeded: only degraded.
        obs.last_ssh_check_at = Some(at(32));
        obs.last_ssh_ok_at = Some(at(32));
        assert_eq!(health(derive(&obs, &policy, at(33))), Health::Degraded);
        // It failed: now unreachable.
        obs.last_ssh_check_at = Some(at(40));
        assert_eq!(health(derive(&obs, &policy, at(41))), Health::Unreachable);
    }

    #[test]
    fn full_disks_skewed_clocks_and_sustained_overload_degrade() {
        let policy = HealthPolicy::default();
        let mut obs = agent(0);
        obs.disk_used_pct = Some(97.0);
        assert_eq!(health(derive(&obs, &policy, at(1))), Health::Degraded);
        let mut obs = agent(0);
        obs.clock_skew_ms = Some(-45_000);
        let Verdict::Health(Health::Degraded, reason) = derive(&obs, &policy, at(1)) else { panic!() };
        assert_eq!(reason, "clock off by -45.0 s");
        let mut obs = agent(0);
        obs.overloaded_since = Some(at(-200));
        assert_eq!(health(derive(&obs, &policy, at(1))), Health::Healthy, "not for long enough yet");
        obs.overloaded_since = Some(at(-400));
        assert_eq!(health(derive(&obs, &policy, at(1))), Health::Degraded);
    }

    #[test]
    fn a_value_hovering_at_a_threshold_does_not_flip_health() {
        let policy = HealthPolicy::default();
        let mut obs = agent(0);
        obs.disk_used_pct = Some(95.5);
        assert_eq!(health(derive(&obs, &policy, at(1))), Health::Degraded);
        obs.current = Health::Degraded;
        obs.disk_used_pct = Some(94.0);
        assert_eq!(health(derive(&obs, &policy, at(1))), Health::Degraded, "not yet recovered");
        obs.disk_used_pct = Some(91.5);
        assert_eq!(health(derive(&obs, &policy, at(1))), Health::Healthy);
        obs.current = Health::Healthy;
        obs.disk_used_pct = Some(94.0);
        assert_eq!(health(derive(&obs, &policy, at(1))), Health::Healthy, "not degraded below 95 %");
    }

    #[test]
    fn agentless_machines_follow_their_ssh_checks() {
        let policy = HealthPolicy::default();
        let mut obs = Observations { has_ssh_endpoint: true, ..Default::default() };
        assert_eq!(health(derive(&obs, &policy, at(0))), Health::Unknown);
        obs.last_ssh_check_at = Some(at(0));
        obs.last_ssh_ok_at = Some(at(0));
        obs.disk_used_pct = Some(10.0);
        assert_eq!(health(derive(&obs, &policy, at(1))), Health::Healthy);
        obs.ssh_failures = 2;
        assert_eq!(health(derive(&obs, &policy, at(1))), Health::Healthy, "two failures are not enough");
        obs.ssh_failures = 3;
        assert_eq!(health(derive(&obs, &policy, at(1))), Health::Unreachable);
    }

    #[test]
    fn machines_away_on_purpose_raise_no_alarms() {
        assert!(raises_alarms(LifecycleState::Ready));
        assert!(!raises_alarms(LifecycleState::Maintenance));
        assert!(!raises_alarms(LifecycleState::PausedByDonor));
    }
}
