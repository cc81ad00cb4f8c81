//! Background-job runs. A replica claims a run by updating the job's row, so each scheduled
//! run happens once however many replicas fire at that moment.

use chrono::{DateTime, Duration, Utc};
use diesel::data_types::PgInterval;
use diesel::prelude::*;
use diesel::sql_types::{Interval, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde_json::Value;

use super::schema::job_runs;

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = job_runs, check_for_backend(diesel::pg::Pg))]
pub struct JobRun {
    pub job: String,
    pub last_started_at: Option<DateTime<Utc>>,
    pub last_finished_at: Option<DateTime<Utc>>,
    pub lease_until: Option<DateTime<Utc>>,
    pub run_by: Option<String>,
    pub runs: i64,
    pub last_outcome: Option<String>,
    pub last_report: Option<Value>,
}

fn interval(duration: Duration) -> PgInterval {
    PgInterval::from_microseconds(duration.num_microseconds().unwrap_or(i64::MAX))
}

/// Claims a run of `job` for `runner` unless one started less than `min_gap` ago or another
/// is still running (its lease unexpired). Returns whether this caller should run it.
pub async fn claim(
    conn: &mut AsyncPgConnection,
    job: &str,
    runner: &str,
    min_gap: Duration,
    lease: Duration,
) -> QueryResult<bool> {
    diesel::insert_into(job_runs::table).values(job_runs::job.eq(job)).on_conflict_do_nothing().execute(conn).await?;
    let claimed = diesel::sql_query(
        "UPDATE job_runs SET last_started_at = now(), lease_until = now() + $3, run_by = $2, runs = runs + 1
         WHERE job = $1
           AND (lease_until IS NULL OR lease_until < now())
           AND (last_started_at IS NULL OR last_started_at <= now() - $4)",
    )
    .bind::<Text, _>(job)
    .bind::<Text, _>(runner)
    .bind::<Interval, _>(interval(lease))
    .bind::<Interval, _>(interval(min_gap))
    .execute(conn)
    .await?;
    Ok(claimed == 1)
}

/// Records how a claimed run ended and releases its lease.
pub async fn finish(conn: &mut AsyncPgConnection, job: &str, outcome: &str, report: &Value) -> QueryResult<()> {
    diesel::update(job_runs::table.find(job))
        .set((
            job_runs::last_finished_at.eq(diesel::dsl::now),
            job_runs::lease_until.eq(None::<DateTime<Utc>>),
            job_runs::last_outcome.eq(outcome),
            job_runs::last_report.eq(report),
        ))
        .execute(conn)
        .await
        .map(drop)
}

/// Records a run of a job that is not claimed (it shares its work out item by item).
pub async fn record(
    conn: &mut AsyncPgConnection,
    job: &str,
    runner: &str,
    outcome: &str,
    report: &Value,
) -> QueryResult<()> {
    diesel::insert_into(job_runs::table)
        .values((
            job_runs::job.eq(job),
            job_runs::last_started_at.eq(diesel::dsl::now),
            job_runs::last_finished_at.eq(diesel::dsl::now),
            job_runs::run_by.eq(runner),
            job_runs::runs.eq(1),
            job_runs::last_outcome.eq(outcome),
            job_runs::last_report.eq(report),
        ))
        .on_conflict(job_runs::job)
        .do_update()
        .set((
            job_runs::last_started_at.eq(diesel::dsl::now),
            job_runs::last_finished_at.eq(diesel::dsl::now),
            job_runs::run_by.eq(runner),
            job_runs::runs.eq(job_runs::runs + 1),
            job_runs::last_outcome.eq(outcome),
            job_runs::last_report.eq(report),
        ))
        .execute(conn)
        .await
        .map(drop)
}

pub async fn list(conn: &mut AsyncPgConnection) -> QueryResult<Vec<JobRun>> {
    job_runs::table.select(JobRun::as_select()).order(job_runs::job).load(conn).await
}
