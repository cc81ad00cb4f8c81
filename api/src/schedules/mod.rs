//! Every background schedule, in one place. Each runs an idempotent async function that tests
//! call directly; tokio-cron-scheduler only decides when. (Not to be confused with the build
//! and test jobs the lease scheduler places on machines.)
//!
//! With several replicas, an *exclusive* job runs once per scheduled time: a replica runs it
//! only after claiming the job's row in `job_runs`, which refuses a second claim until most of
//! a period has passed and while the previous run's lease holds. Webhook delivery is not
//! exclusive: its work items are claimed one by one (`SKIP LOCKED`), so replicas share it.

pub mod cloud_reconcile;
pub mod enrollment_expiry;
pub mod liveness;
pub mod outbox_retention;
pub mod reminders;
pub mod ssh_checks;
pub mod webhooks;

use anyhow::Context;
use chrono::{Duration, Utc};
use croner::parser::{CronParser, Seconds};
use serde_json::Value;
use tokio_cron_scheduler::{Job, JobScheduler};

use crate::config::{ScheduleSetting, SchedulesConfig};
use crate::db;
use crate::state::AppState;

/// The background schedules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    /// Derives health from heartbeats; confirms silent agents over SSH before declaring them
    /// unreachable.
    LivenessSweep,
    /// Probes machines without a reporting agent (and those awaiting an onboarding probe).
    SshChecks,
    /// Reminders 30, 7 and 1 days before loans fall due and usage-right terms end.
    Reminders,
    /// Clears enrollment tokens that expired unused.
    EnrollmentExpiry,
    /// Delivers queued webhook events, retrying with backoff.
    WebhookDelivery,
    /// Prunes finished webhook deliveries and old events.
    OutboxRetention,
    /// Makes the clouds and the database agree: orphans terminated, lost instances noticed.
    CloudReconcile,
}

impl Schedule {
    pub const ALL: [Schedule; 7] = [
        Schedule::LivenessSweep,
        Schedule::SshChecks,
        Schedule::Reminders,
        Schedule::EnrollmentExpiry,
        Schedule::WebhookDelivery,
        Schedule::OutboxRetention,
        Schedule::CloudReconcile,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Schedule::LivenessSweep => "liveness-sweep",
            Schedule::SshChecks => "ssh-checks",
            Schedule::Reminders => "reminders",
            Schedule::EnrollmentExpiry => "enrollment-expiry",
            Schedule::WebhookDelivery => "webhook-delivery",
            Schedule::OutboxRetention => "outbox-retention",
            Schedule::CloudReconcile => "cloud-reconcile",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.name() == name)
    }

    pub fn setting(self, schedules: &SchedulesConfig) -> &ScheduleSetting {
        match self {
            Schedule::LivenessSweep => &schedules.liveness_sweep,
            Schedule::SshChecks => &schedules.ssh_checks,
            Schedule::Reminders => &schedules.reminders,
            Schedule::EnrollmentExpiry => &schedules.enrollment_expiry,
            Schedule::WebhookDelivery => &schedules.webhook_delivery,
            Schedule::OutboxRetention => &schedules.outbox_retention,
            Schedule::CloudReconcile => &schedules.cloud_reconcile,
        }
    }

    fn exclusive(self) -> bool {
        self != Schedule::WebhookDelivery
    }

    /// The longest a run may take before another replica may start one. An SSH round's
    /// work per site is bounded (see `ssh_checks`) so that it ends well within its lease.
    fn lease(self) -> Duration {
        match self {
            Schedule::SshChecks | Schedule::Reminders | Schedule::OutboxRetention => Duration::minutes(10),
            _ => Duration::minutes(2),
        }
    }

    async fn execute(self, state: &AppState) -> anyhow::Result<Value> {
        Ok(match self {
            Schedule::LivenessSweep => serde_json::to_value(liveness::sweep(state).await?)?,
            Schedule::SshChecks => serde_json::to_value(ssh_checks::round(state).await?)?,
            Schedule::Reminders => serde_json::to_value(reminders::send(state, Utc::now().date_naive()).await?)?,
            Schedule::EnrollmentExpiry => serde_json::to_value(enrollment_expiry::clear(state).await?)?,
            Schedule::WebhookDelivery => serde_json::to_value(webhooks::deliver_due(state).await?)?,
            Schedule::OutboxRetention => serde_json::to_value(outbox_retention::prune(state).await?)?,
            Schedule::CloudReconcile => serde_json::to_value(cloud_reconcile::reconcile(state).await?)?,
        })
    }
}

/// What became of a request to run a job.
#[derive(Debug, Clone, PartialEq)]
pub enum RunOutcome {
    /// This replica ran it; here is its report.
    Ran(Value),
    /// Another replica ran it for this period, or is running it.
    Skipped,
}

/// Runs `kind` now on behalf of `replica`, unless (for an exclusive job) another replica has
/// it for this period.
pub async fn run(state: &AppState, kind: Schedule, replica: &str) -> anyhow::Result<RunOutcome> {
    let mut claimed = None;
    if kind.exclusive() {
        let period = period(&kind.setting(&state.config.schedules).schedule)?;
        let mut conn = state.pool.get().await.context("claiming a job run")?;
        // Three quarters of a period between runs: replicas firing the same schedule with
        // clocks a little apart run it once, and no period is skipped. No finished run for
        // three periods means the job (and so the servers, or the database) was away.
        claimed =
            db::job_runs::claim(&mut conn, kind.name(), replica, period * 3 / 4, kind.lease(), period * 3).await?;
        if claimed.is_none() {
            return Ok(RunOutcome::Skipped);
        }
    }
    let result = kind.execute(state).await;
    let (outcome, report) = match &result {
        Ok(report) => ("ok", report.clone()),
        Err(e) => ("failed", Value::String(format!("{e:#}"))),
    };
    let mut conn = state.pool.get().await.context("recording a job run")?;
    match claimed {
        Some(started_at) => db::job_runs::finish(&mut conn, kind.name(), started_at, outcome, &report).await?,
        None => db::job_runs::record(&mut conn, kind.name(), replica, outcome, &report).await?,
    }
    result.map(RunOutcome::Ran)
}

/// The time between two scheduled runs.
fn period(schedule: &str) -> anyhow::Result<Duration> {
    let cron = parse(schedule)?;
    let now = Utc::now();
    let next = cron.find_next_occurrence(&now, false)?;
    let after = cron.find_next_occurrence(&next, false)?;
    Ok(after - next)
}

fn parse(schedule: &str) -> anyhow::Result<croner::Cron> {
    CronParser::builder()
        .seconds(Seconds::Required)
        .build()
        .parse(schedule)
        .with_context(|| format!("`{schedule}` is not a cron schedule with seconds (sec min hour day month weekday)"))
}

/// A name for this replica in `job_runs`: host and process.
pub fn replica_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_default();
    format!("{host}:{}", std::process::id())
}

/// Starts every enabled schedule; returns the running scheduler (None when all are off).
pub async fn start(state: AppState) -> anyhow::Result<Option<JobScheduler>> {
    if !state.config.schedules.enabled {
        tracing::info!("background schedules are switched off on this replica");
        return Ok(None);
    }
    let scheduler = JobScheduler::new().await?;
    let replica = replica_name();
    for kind in Schedule::ALL {
        let setting = kind.setting(&state.config.schedules);
        if !setting.enabled {
            tracing::info!(job = kind.name(), "switched off");
            continue;
        }
        parse(&setting.schedule)?;
        let (state, replica) = (state.clone(), replica.clone());
        let job = Job::new_async(setting.schedule.as_str(), move |_, _| {
            let (state, replica) = (state.clone(), replica.clone());
            Box::pin(async move {
                match run(&state, kind, &replica).await {
                    Ok(RunOutcome::Ran(report)) => tracing::debug!(job = kind.name(), %report, "ran"),
                    Ok(RunOutcome::Skipped) => tracing::debug!(job = kind.name(), "another replica has this run"),
                    Err(e) => tracing::error!(job = kind.name(), "failed: {e:#}"),
                }
            })
        })?;
        scheduler.add(job).await?;
        tracing::info!(job = kind.name(), schedule = %setting.schedule, "scheduled");
    }
    scheduler.start().await?;
    Ok(Some(scheduler))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_come_from_the_schedule() {
        assert_eq!(period("*/4 * * * * *").unwrap(), Duration::seconds(4));
        assert_eq!(period("0 0 8 * * *").unwrap(), Duration::hours(24));
        assert!(period("every now and then").is_err());
    }

    #[test]
    fn every_default_schedule_parses() {
        let schedules = SchedulesConfig::default();
        for kind in Schedule::ALL {
            assert!(parse(&kind.setting(&schedules).schedule).is_ok(), "{}", kind.name());
            assert_eq!(Schedule::from_name(kind.name()), Some(kind));
        }
    }
}
