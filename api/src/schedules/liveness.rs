//! The liveness sweep: derives every monitored machine's health from what it last reported.
//! An agent that fell silent on a machine with an SSH endpoint is not judged yet: the sweep
//! asks for an SSH check (the SSH round does it), so a flaky agent or link does not make a
//! working machine "unreachable". After the sweep itself was away (servers or database down),
//! silence is not held against agents until they have had time to come back.

use chrono::{Duration, Utc};
use diesel_async::AsyncConnection;
use serde::Serialize;

use crate::db::audit::Actor;
use crate::db::job_runs;
use crate::db::machine_status::{self, Monitored};
use crate::domain::health::{AGENT_MAX_BACKOFF_SECS, MONITORED, Observations, Verdict, derive};
use crate::domain::{Health, MachineId};
use crate::monitoring;
use crate::state::AppState;

#[derive(Debug, Default, Serialize)]
pub struct LivenessReport {
    pub machines: usize,
    pub health_changed: usize,
    /// Silent agents on machines with an SSH endpoint, handed to the SSH round to confirm.
    pub probes_requested: usize,
    /// Silent agents not judged because the sweep only just resumed after a gap.
    pub held_after_resume: usize,
}

pub async fn sweep(state: &AppState) -> anyhow::Result<LivenessReport> {
    let now = Utc::now();
    let policy = state.config.health_policy();
    let (machines, grace_until) = {
        let mut conn = state.pool.get().await?;
        let machines = machine_status::monitored(&mut conn, MONITORED, None).await?;
        let resumed =
            job_runs::find(&mut conn, super::Schedule::LivenessSweep.name()).await?.and_then(|r| r.resumed_at);
        (machines, resumed.map(|at| at + policy.silence() + Duration::seconds(AGENT_MAX_BACKOFF_SECS)))
    };
    let hold_silence = grace_until.is_some_and(|until| now < until);
    let mut report = LivenessReport { machines: machines.len(), ..Default::default() };
    for machine in machines {
        match derive(&observations(&machine), &policy, now) {
            Verdict::ConfirmOverSsh => {
                if machine.probe_requested_at.is_none() {
                    let mut conn = state.pool.get().await?;
                    machine_status::request_probe(&mut conn, machine.id).await?;
                }
                report.probes_requested += 1;
            }
            Verdict::Health(Health::Unreachable, _) if hold_silence && machine.last_heartbeat_at.is_some() => {
                report.held_after_resume += 1;
            }
            Verdict::Health(..) => {
                if settle(state, machine.id, "liveness-sweep").await? {
                    report.health_changed += 1;
                }
            }
        }
    }
    if report.health_changed > 0 {
        // A machine back in health can take waiting leases now; one gone silent loses its own.
        state.scheduler.wake();
    }
    Ok(report)
}

/// Applies the health a machine's observations call for now, read afresh (a check may have
/// taken a while; the machine may have reported meanwhile). Returns whether it changed.
pub async fn settle(state: &AppState, id: MachineId, actor: &str) -> anyhow::Result<bool> {
    let mut conn = state.pool.get().await?;
    let Some(machine) = machine_status::monitored(&mut conn, MONITORED, Some(id)).await?.pop() else {
        return Ok(false);
    };
    let Verdict::Health(health, reason) = derive(&observations(&machine), &state.config.health_policy(), Utc::now())
    else {
        return Ok(false);
    };
    if health == machine.health {
        if machine.health_reason.as_deref() != Some(reason.as_str()) {
            machine_status::set_health_reason(&mut conn, machine.id, &reason).await?;
        }
        return Ok(false);
    }
    let actor = Actor::system(actor);
    let from = machine.health;
    let changed = conn
        .transaction::<_, diesel::result::Error, _>(async |conn| {
            monitoring::change_health(conn, id, from, health, &reason, &actor).await
        })
        .await?;
    Ok(changed)
}

fn observations(m: &Monitored) -> Observations {
    Observations {
        current: m.health,
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
