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
    pub resumed_at: Option<DateTime<Utc>>,
}

fn interval(duration: Duration) -> PgInterval {
    PgInterval::from_microseconds(duration.num_microseconds().unwrap_or(i64::MAX))
}

#[derive(QueryableByName)]
struct Claimed {
    #[diesel(sql_type = diesel::sql_types::Timestamptz)]
    last_started_at: DateTime<Utc>,
}

/// Claims a run of `job` for `runner` unless one started less than `min_gap` ago or another
/// is still running (its lease unexpired). Returns the claimed run's start time (which
/// [`finish`] needs), or `None` when this caller should not run it. A claim that comes more
/// than `resume_after` after the last finished run records that the job resumed after a gap.
pub async fn claim(
    conn: &mut AsyncPgConnection,
    job: &str,
    runner: &str,
    min_gap: Duration,
    lease: Duration,
    resume_after: Duration,
) -> QueryResult<Option<DateTime<Utc>>> {
    diesel::insert_into(job_runs::table).values(job_runs::job.eq(job)).on_conflict_do_nothing().execute(conn).await?;
    let claimed: Vec<Claimed> = diesel::sql_query(
        "UPDATE job_runs SET last_started_at = now(), lease_until = now() + $3, run_by = $2, runs = runs + 1,
             resumed_at = CASE WHEN last_finished_at IS NULL OR last_finished_at < now() - $5 THEN now()
                               ELSE resumed_at END
         WHERE job = $1
           AND (lease_until IS NULL OR lease_until < now())
           AND (last_started_at IS NULL OR last_started_at <= now() - $4)
         RETURNING last_started_at",
    )
    .bind::<Text, _>(job)
    .bind::<Text, _>(runner)
    .bind::<Interval, _>(interval(lease))
    .bind::<Interval, _>(interval(min_gap))
    .bind::<Interval, _>(interval(resume_after))
    .load(conn)
    .await?;
    Ok(claimed.into_iter().next().map(|c| c.last_started_at))
}

/// Records how the run claimed at `started_at` ended and releases its lease; does nothing if
/// that run's lease has lapsed and another run has the job now.
pub async fn finish(
    conn: &mut AsyncPgConnection,
    job: &str,
    started_at: DateTime<Utc>,
    outcome: &str,
    report: &Value,
) -> QueryResult<()> {
    diesel::update(job_runs::table.find(job).filter(job_runs::last_started_at.eq(started_at)))
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

pub async fn find(conn: &mut AsyncPgConnection, job: &str) -> QueryResult<Option<JobRun>> {
    job_runs::table.find(job).select(JobRun::as_select()).first(conn).await.optional()
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
