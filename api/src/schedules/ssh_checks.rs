//! SSH check rounds: machines without a reporting agent, machines awaiting an onboarding
//! probe, and machines whose silent agent the liveness sweep wants confirmed are checked over
//! SSH. Checks share the process-wide limits in `AppState::ssh_limits` (one for all checks,
//! one per site, never two of one machine), so an unreachable site only ever holds up its own
//! machines; every check has time limits on connecting and on its command. A round takes at
//! most a few rounds' worth of machines per site, so it ends well within its lease; the rest
//! come next round.

use std::collections::HashMap;

use chrono::{Duration, Utc};
use diesel_async::AsyncConnection;
use serde::Serialize;
use tokio::task::JoinSet;

use super::liveness;
use crate::db::audit::Actor;
use crate::db::machine_status::{Monitored, SshCheckOutcome};
use crate::db::{self, machine_status};
use crate::domain::health::MONITORED;
use crate::heartbeats::facts_hash;
use crate::monitoring::{self, FactsSource};
use crate::probe::{ProbeError, SshProber, SshTarget};
use crate::state::AppState;

/// A round checks at most this many machines per site for each check the site may run at
/// once: with the default time limits, well under the round's lease.
const ROUNDS_OF_CHECKS_PER_SITE: usize = 8;

#[derive(Debug, Default, Serialize)]
pub struct SshRoundReport {
    pub checked: usize,
    pub reachable: usize,
    pub failed: usize,
    pub quarantined: usize,
    pub health_changed: usize,
    /// Due, but left for the next round (the per-site share was full, or already being checked).
    pub deferred: usize,
}

/// What one check concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckResult {
    Reachable,
    Failed(String),
    HostKeyChanged,
}

/// One round: checks the machines that are due, then updates their health.
pub async fn round(state: &AppState) -> anyhow::Result<SshRoundReport> {
    let policy = state.config.health_policy();
    let interval = Duration::seconds(state.config.ssh_check_interval_secs as i64);
    let now = Utc::now();
    let machines = {
        let mut conn = state.pool.get().await?;
        machine_status::monitored(&mut conn, MONITORED, None).await?
    };
    let agent_reporting = |m: &Monitored| m.last_heartbeat_at.is_some_and(|at| now - at < policy.silence());
    let mut due: Vec<Monitored> = machines
        .into_iter()
        .filter(|m| m.ssh_host.is_some() && !m.quarantined)
        .filter(|m| {
            m.probe_requested_at.is_some()
                || (!agent_reporting(m) && m.last_ssh_check_at.is_none_or(|at| now - at >= interval))
        })
        .collect();
    // Requested probes first, then the longest unchecked.
    due.sort_by_key(|m| (m.probe_requested_at.is_none(), m.last_ssh_check_at));
    let share = state.config.ssh_site_concurrency * ROUNDS_OF_CHECKS_PER_SITE;
    let mut taken: HashMap<_, usize> = HashMap::new();
    let mut report = SshRoundReport::default();
    let due: Vec<Monitored> = due
        .into_iter()
        .filter(|m| {
            let count = taken.entry(m.site_id).or_default();
            *count += 1;
            let fits = *count <= share;
            report.deferred += usize::from(!fits);
            fits
        })
        .collect();
    if due.is_empty() {
        return Ok(report);
    }
    let key = state.ssh_key().await?;
    for (machine, result) in check_many(state, &key.prober, due).await {
        report.checked += 1;
        match result {
            None => {
                report.checked -= 1;
                report.deferred += 1;
                continue;
            }
            Some(CheckResult::Reachable) => report.reachable += 1,
            Some(CheckResult::Failed(_)) => report.failed += 1,
            Some(CheckResult::HostKeyChanged) => report.quarantined += 1,
        }
        if liveness::settle(state, machine.id, "ssh-checks").await? {
            report.health_changed += 1;
        }
    }
    if report.health_changed > 0 {
        // As in the liveness sweep: placement acts on health changes at once.
        state.scheduler.wake();
    }
    Ok(report)
}

/// Checks `machines` concurrently within the process-wide limits. A machine already being
/// checked (by another round or job in this process) is skipped: `None`.
pub async fn check_many(
    state: &AppState,
    prober: &SshProber,
    machines: Vec<Monitored>,
) -> Vec<(Monitored, Option<CheckResult>)> {
    let mut running = JoinSet::new();
    let mut results = Vec::new();
    for machine in machines {
        let Some(in_flight) = state.ssh_limits.begin(machine.id) else {
            results.push((machine, None));
            continue;
        };
        let (state, prober) = (state.clone(), prober.clone());
        running.spawn(async move {
            let _in_flight = in_flight;
            let _permits = state.ssh_limits.permit(machine.site_id).await;
            let result = check_one(&state, &prober, &machine).await;
            (machine, Some(result))
        });
    }
    while let Some(joined) = running.join_next().await {
        match joined {
            Ok(result) => results.push(result),
            Err(e) => tracing::error!("an SSH check panicked: {e}"),
        }
    }
    results
}

/// Checks one machine and records what it found. A changed host key quarantines it; a
/// machine without an agent gets its facts from the probe.
pub async fn check_one(state: &AppState, prober: &SshProber, machine: &Monitored) -> CheckResult {
    if machine.quarantined {
        return CheckResult::Failed("quarantined: not contacted until ops lift the quarantine".into());
    }
    let (Some(host), Some(port), Some(user)) = (&machine.ssh_host, machine.ssh_port, &machine.ssh_user) else {
        return CheckResult::Failed("no SSH endpoint".into());
    };
    let target = SshTarget { host: host.clone(), port: u16::try_from(port).unwrap_or(22), user: user.clone() };
    let outcome = prober.probe(&target, machine.pinned_host_key.as_deref()).await;
    let actor = Actor::system("ssh-checks");
    let recorded = async {
        let mut conn = state.pool.get().await?;
        conn.transaction::<_, anyhow::Error, _>(async |conn| {
            Ok(match &outcome {
                Ok(report) => {
                    let reached = SshCheckOutcome::Reachable {
                        host_key: &report.host_key,
                        fingerprint: &report.host_key_fingerprint,
                        disk_used_pct: report.metrics.disk_used_pct,
                        load1: report.metrics.load1,
                    };
                    machine_status::record_ssh_check(conn, machine.id, &reached).await?;
                    if machine.last_heartbeat_at.is_none()
                        && let Some(declared) = db::machines::find(conn, machine.id).await?
                    {
                        let hash = facts_hash(&report.facts);
                        monitoring::store_facts(conn, &declared, &report.facts, FactsSource::Ssh, hash, &actor).await?;
                    }
                    CheckResult::Reachable
                }
                Err(ProbeError::HostKeyChanged { pinned, presented, .. }) => {
                    let error = format!("the SSH host key changed from {pinned} to {presented}");
                    machine_status::record_ssh_check(conn, machine.id, &SshCheckOutcome::Failed { error: &error })
                        .await?;
                    monitoring::quarantine(conn, machine.id, &error, &actor).await?;
                    CheckResult::HostKeyChanged
                }
                Err(error) => {
                    let error = error.to_string();
                    machine_status::record_ssh_check(conn, machine.id, &SshCheckOutcome::Failed { error: &error })
                        .await?;
                    CheckResult::Failed(error)
                }
            })
        })
        .await
    };
    match recorded.await {
        Ok(result) => result,
        Err(e) => {
            tracing::error!(machine = %machine.id, "recording an SSH check: {e:#}");
            CheckResult::Failed(format!("could not record the check: {e}"))
        }
    }
}
