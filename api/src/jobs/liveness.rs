//! The liveness sweep: derives every monitored machine's health from what it last reported.
//! An agent that fell silent on a machine with an SSH endpoint is checked over SSH first, so
//! a flaky agent or link does not make a working machine "unreachable".

use chrono::{DateTime, Utc};
use diesel_async::AsyncConnection;
use serde::Serialize;

use super::ssh_checks::{self, CheckResult};
use crate::db::audit::Actor;
use crate::db::machine_status::{self, Monitored};
use crate::domain::health::{MONITORED, Observations, Verdict, derive};
use crate::monitoring;
use crate::state::AppState;

#[derive(Debug, Default, Serialize)]
pub struct LivenessReport {
    pub machines: usize,
    pub health_changed: usize,
    pub confirmed_over_ssh: usize,
}

pub async fn sweep(state: &AppState) -> anyhow::Result<LivenessReport> {
    let machines = {
        let mut conn = state.pool.get().await?;
        machine_status::monitored(&mut conn, MONITORED).await?
    };
    let now = Utc::now();
    let policy = state.config.health_policy();
    let mut report = LivenessReport { machines: machines.len(), ..Default::default() };
    let mut to_confirm = Vec::new();
    for machine in machines {
        match derive(&observations(&machine), &policy, now) {
            Verdict::ConfirmOverSsh => to_confirm.push(machine),
            Verdict::Health(..) => {
                if settle(state, &machine, now, "liveness-sweep").await? {
                    report.health_changed += 1;
                }
            }
        }
    }
    if !to_confirm.is_empty() {
        let key = state.ssh_key().await?;
        for (mut machine, result) in ssh_checks::check_many(state, &key.prober, to_confirm).await {
            report.confirmed_over_ssh += 1;
            let checked_at = Utc::now();
            machine.last_ssh_check_at = Some(checked_at);
            if result == CheckResult::Reachable {
                machine.last_ssh_ok_at = Some(checked_at);
            }
            if settle(state, &machine, checked_at, "liveness-sweep").await? {
                report.health_changed += 1;
            }
        }
    }
    Ok(report)
}

/// Applies the health `machine`'s observations call for at `now`; returns whether it changed.
pub async fn settle(state: &AppState, machine: &Monitored, now: DateTime<Utc>, actor: &str) -> anyhow::Result<bool> {
    let Verdict::Health(health, reason) = derive(&observations(machine), &state.config.health_policy(), now) else {
        return Ok(false);
    };
    let mut conn = state.pool.get().await?;
    if health == machine.health {
        if machine.health_reason.as_deref() != Some(reason.as_str()) {
            machine_status::set_health_reason(&mut conn, machine.id, &reason).await?;
        }
        return Ok(false);
    }
    let actor = Actor::system(actor);
    let (id, from) = (machine.id, machine.health);
    let changed = conn
        .transaction::<_, diesel::result::Error, _>(async |conn| {
            monitoring::change_health(conn, id, from, health, &reason, &actor).await
        })
        .await?;
    Ok(changed)
}

fn observations(m: &Monitored) -> Observations {
    Observations {
        last_heartbeat_at: m.last_heartbeat_at,
        disk_used_pct: m.disk_used_pct,
        clock_skew_ms: m.clock_skew_ms,
        overloaded_since: m.overloaded_since,
        has_ssh_endpoint: m.ssh_host.is_some() && !m.quarantined,
        last_ssh_check_at: m.last_ssh_check_at,
        last_ssh_ok_at: m.last_ssh_ok_at,
        ssh_failures: m.ssh_failures,
    }
}
