//! Jobs, their output, and keeping them in step with the leases their attempts hold.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::Array;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::leases::{Lease, Scope};
use super::schema::{donations, job_output, jobs, leases};
use super::{Json, Page};
use crate::domain::DonationModel;
use crate::domain::job::after_lost_attempt;
use crate::domain::{HolderKind, JobId, JobState, LeaseId, LeaseState, MachineId};

/// The most output kept per job; older chunks go first.
pub const MAX_OUTPUT_BYTES: i64 = 16 * 1024 * 1024;

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = jobs, check_for_backend(diesel::pg::Pg))]
pub struct Job {
    pub id: JobId,
    pub state: JobState,
    pub holder_kind: HolderKind,
    pub holder_id: Uuid,
    pub holder_name: String,
    pub idempotency_key: Option<String>,
    pub request_hash: Vec<u8>,
    pub tenant: String,
    pub command: String,
    pub env: Json<BTreeMap<String, String>>,
    pub timeout_secs: i32,
    pub max_wait_secs: i32,
    pub max_attempts: i32,
    pub attempts: i32,
    pub machine_id: Option<MachineId>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub exit_code: Option<i32>,
    pub end_reason: Option<String>,
    pub output_bytes: i64,
}

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = jobs)]
pub struct NewJob {
    pub id: JobId,
    pub state: JobState,
    pub holder_kind: HolderKind,
    pub holder_id: Uuid,
    pub holder_name: String,
    pub idempotency_key: Option<String>,
    pub request_hash: Vec<u8>,
    pub tenant: String,
    pub command: String,
    pub env: Json<BTreeMap<String, String>>,
    pub timeout_secs: i32,
    pub max_wait_secs: i32,
    pub max_attempts: i32,
}

/// Writes a job; `None` if its holder already used its idempotency key.
pub async fn insert(conn: &mut AsyncPgConnection, new: &NewJob) -> QueryResult<Option<Job>> {
    diesel::insert_into(jobs::table)
        .values(new)
        .on_conflict_do_nothing()
        .returning(Job::as_returning())
        .get_result(conn)
        .await
        .optional()
}

/// Locks the holder's jobs against concurrent submission (until the transaction ends) and
/// counts those queued or running.
pub async fn lock_and_count_open(conn: &mut AsyncPgConnection, holder: Uuid) -> QueryResult<i64> {
    diesel::sql_query("SELECT pg_advisory_xact_lock(hashtextextended('fleetyard jobs of ' || $1::text, 0))")
        .bind::<diesel::sql_types::Uuid, _>(holder)
        .execute(conn)
        .await?;
    jobs::table
        .filter(jobs::holder_id.eq(holder))
        .filter(jobs::state.eq_any([JobState::Queued, JobState::Running]))
        .count()
        .get_result(conn)
        .await
}

pub async fn by_key(conn: &mut AsyncPgConnection, holder: Uuid, key: &str) -> QueryResult<Option<Job>> {
    jobs::table
        .filter(jobs::holder_id.eq(holder))
        .filter(jobs::idempotency_key.eq(key))
        .select(Job::as_select())
        .first(conn)
        .await
        .optional()
}

pub async fn find(conn: &mut AsyncPgConnection, id: JobId) -> QueryResult<Option<Job>> {
    jobs::table.find(id).select(Job::as_select()).first(conn).await.optional()
}

pub async fn lock(conn: &mut AsyncPgConnection, id: JobId) -> QueryResult<Option<Job>> {
    jobs::table.find(id).select(Job::as_select()).for_update().first(conn).await.optional()
}

/// Removes a job that was refused in the request that made it.
pub async fn delete(conn: &mut AsyncPgConnection, id: JobId) -> QueryResult<usize> {
    diesel::delete(jobs::table.find(id)).execute(conn).await
}

/// The lease of a job's latest attempt.
pub async fn current_lease(conn: &mut AsyncPgConnection, id: JobId) -> QueryResult<Option<Lease>> {
    leases::table
        .filter(leases::job_id.eq(id))
        .order(leases::queued_at.desc())
        .select(Lease::as_select())
        .first(conn)
        .await
        .optional()
}

/// Newest first. Donors see jobs that ran (or run) on their machines.
pub async fn list(
    conn: &mut AsyncPgConnection,
    scope: Scope,
    states: &[JobState],
    page: Page<JobId>,
) -> QueryResult<Vec<Job>> {
    let mut query = jobs::table.select(Job::as_select()).into_boxed();
    match scope {
        Scope::All => {}
        Scope::Holder(holder) => query = query.filter(jobs::holder_id.eq(holder)),
        Scope::Donor(donor) => {
            let on_donor = leases::table.filter(leases::donor_id.eq(donor)).select(leases::job_id.assume_not_null());
            query = query.filter(jobs::id.eq_any(on_donor));
        }
    }
    if !states.is_empty() {
        query = query.filter(jobs::state.eq_any(states.to_vec()));
    }
    if let Some(after) = page.after {
        query = query.filter(jobs::id.lt(after));
    }
    query.order(jobs::id.desc()).limit(page.fetch_limit()).load(conn).await
}

/// Whether a donor's machines ever held one of this job's attempts (`None`: never), and if
/// so, whether one of them was a machine the donor operates (a usage-right donation's).
pub async fn ran_on_donor(
    conn: &mut AsyncPgConnection,
    id: JobId,
    donor: crate::domain::DonorId,
) -> QueryResult<Option<bool>> {
    let models: Vec<DonationModel> = leases::table
        .inner_join(donations::table.on(leases::donation_id.eq(donations::id.nullable())))
        .filter(leases::job_id.eq(id))
        .filter(leases::donor_id.eq(donor))
        .select(donations::model)
        .load(conn)
        .await?;
    Ok((!models.is_empty()).then(|| models.iter().any(|m| m.donor_operates())))
}

/// Of `ids`, the jobs that ran on a machine `donor` operates (a usage-right donation's).
pub async fn operated_by_donor(
    conn: &mut AsyncPgConnection,
    donor: crate::domain::DonorId,
    ids: &[JobId],
) -> QueryResult<std::collections::HashSet<JobId>> {
    let ran: Vec<Option<JobId>> = leases::table
        .inner_join(donations::table.on(leases::donation_id.eq(donations::id.nullable())))
        .filter(leases::job_id.eq_any(ids))
        .filter(leases::donor_id.eq(donor))
        .filter(donations::model.eq(DonationModel::UsageRight))
        .select(leases::job_id)
        .load(conn)
        .await?;
    Ok(ran.into_iter().flatten().collect())
}

/// Ends a job.
pub async fn finish(
    conn: &mut AsyncPgConnection,
    id: JobId,
    state: JobState,
    exit_code: Option<i32>,
    reason: Option<&str>,
) -> QueryResult<Job> {
    diesel::update(jobs::table.find(id))
        .set((
            jobs::state.eq(state),
            jobs::finished_at.eq(diesel::dsl::now),
            jobs::exit_code.eq(exit_code),
            jobs::end_reason.eq(reason),
        ))
        .returning(Job::as_returning())
        .get_result(conn)
        .await
}

/// Keeps jobs in step with what a placement round did to their leases:
/// - an attempt's lease granted: the job runs there;
/// - an attempt's lease lost (machine gone, silent, quarantined, or its time ran out without a
///   report): the job is queued again with a new lease while attempts remain, else it fails;
/// - an attempt's lease failed in the queue (deadline passed): the job fails.
///
/// Returns the new leases queued for retried jobs.
pub async fn follow_leases(
    conn: &mut AsyncPgConnection,
    granted: &[Lease],
    lost: &[Lease],
    gave_up: &[Lease],
) -> QueryResult<Vec<LeaseId>> {
    let running: Vec<(Uuid, Uuid)> = granted.iter().filter_map(|l| Some((l.job_id?.0, l.machine_id?.0))).collect();
    if !running.is_empty() {
        let (ids, machines): (Vec<Uuid>, Vec<Uuid>) = running.into_iter().unzip();
        diesel::sql_query(
            "UPDATE jobs j SET state = 'running', machine_id = r.machine, started_at = now()
             FROM unnest($1::uuid[], $2::uuid[]) AS r(job, machine)
             WHERE j.id = r.job AND j.state = 'queued'",
        )
        .bind::<Array<diesel::sql_types::Uuid>, _>(ids)
        .bind::<Array<diesel::sql_types::Uuid>, _>(machines)
        .execute(conn)
        .await?;
    }
    let mut requeued = Vec::new();
    for lease in lost {
        let Some(job_id) = lease.job_id else { continue };
        let Some(job) = lock(conn, job_id).await? else { continue };
        if job.state != JobState::Running {
            continue;
        }
        let why = lease.end_reason.as_deref().unwrap_or("its machine was lost");
        match after_lost_attempt(job.attempts, job.max_attempts, why) {
            Ok(note) => {
                let again = LeaseId::generate();
                diesel::sql_query(
                    "INSERT INTO leases (id, state, holder_kind, holder_id, holder_name, request_hash, tenant, purpose,
                         priority, arch, min_cores, min_memory_mib, min_disk_gib, labels, trusted_only, duration_secs,
                         deadline, job_id, placement, max_lab_wait_secs)
                     SELECT $1, 'queued', holder_kind, holder_id, holder_name, request_hash, tenant, purpose,
                         priority, arch, min_cores, min_memory_mib, min_disk_gib, labels, trusted_only, duration_secs,
                         now() + make_interval(secs => $3), job_id, placement, max_lab_wait_secs
                     FROM leases WHERE id = $2",
                )
                .bind::<diesel::sql_types::Uuid, _>(again.0)
                .bind::<diesel::sql_types::Uuid, _>(lease.id.0)
                .bind::<diesel::sql_types::Integer, _>(job.max_wait_secs)
                .execute(conn)
                .await?;
                diesel::update(jobs::table.find(job_id))
                    .set((
                        jobs::state.eq(JobState::Queued),
                        jobs::attempts.eq(job.attempts + 1),
                        jobs::machine_id.eq(None::<MachineId>),
                        jobs::end_reason.eq(note),
                    ))
                    .execute(conn)
                    .await?;
                requeued.push(again);
            }
            Err(reason) => {
                finish(conn, job_id, JobState::Failed, None, Some(&reason)).await?;
            }
        }
    }
    let overdue: Vec<Uuid> = gave_up.iter().filter_map(|l| l.job_id.map(|j| j.0)).collect();
    if !overdue.is_empty() {
        diesel::sql_query(
            "UPDATE jobs SET state = 'failed', finished_at = now(),
                 end_reason = 'no machine became free before its deadline'
             WHERE id = ANY ($1) AND state = 'queued'",
        )
        .bind::<Array<diesel::sql_types::Uuid>, _>(overdue)
        .execute(conn)
        .await?;
    }
    Ok(requeued)
}

/// Jobs running on a machine, for its agent.
pub async fn running_on(conn: &mut AsyncPgConnection, machine: MachineId) -> QueryResult<Vec<(Job, LeaseId)>> {
    let rows: Vec<(Job, LeaseId)> = jobs::table
        .inner_join(leases::table.on(leases::job_id.eq(jobs::id.nullable())))
        .filter(leases::machine_id.eq(machine))
        .filter(leases::state.eq(LeaseState::Granted))
        .filter(jobs::state.eq(JobState::Running))
        .select((Job::as_select(), leases::id))
        .load(conn)
        .await?;
    Ok(rows)
}

/// Appends output of an attempt, then drops the oldest chunks past the cap.
pub async fn append_output(conn: &mut AsyncPgConnection, id: JobId, attempt: i32, data: &[u8]) -> QueryResult<()> {
    diesel::insert_into(job_output::table)
        .values((job_output::job_id.eq(id), job_output::attempt.eq(attempt), job_output::data.eq(data)))
        .execute(conn)
        .await?;
    let total: i64 = diesel::update(jobs::table.find(id))
        .set(jobs::output_bytes.eq(jobs::output_bytes + data.len() as i64))
        .returning(jobs::output_bytes)
        .get_result(conn)
        .await?;
    if total > MAX_OUTPUT_BYTES {
        diesel::sql_query(
            "DELETE FROM job_output WHERE job_id = $1 AND seq IN (
                 SELECT seq FROM (
                     SELECT seq, sum(length(data)) OVER (ORDER BY seq DESC) AS kept FROM job_output WHERE job_id = $1
                 ) newest WHERE kept > $2)",
        )
        .bind::<diesel::sql_types::Uuid, _>(id.0)
        .bind::<diesel::sql_types::BigInt, _>(MAX_OUTPUT_BYTES)
        .execute(conn)
        .await?;
    }
    Ok(())
}

/// The last `tail` bytes of a job's kept output, and how many bytes it printed in all.
pub async fn output_tail(conn: &mut AsyncPgConnection, id: JobId, tail: i64) -> QueryResult<(Vec<u8>, i64)> {
    #[derive(QueryableByName)]
    struct Chunk {
        #[diesel(sql_type = diesel::sql_types::Binary)]
        data: Vec<u8>,
    }
    let chunks: Vec<Chunk> = diesel::sql_query(
        "SELECT data FROM (
             SELECT seq, data, sum(length(data)) OVER (ORDER BY seq DESC) - length(data) AS after
             FROM job_output WHERE job_id = $1
         ) c WHERE after < $2 ORDER BY seq",
    )
    .bind::<diesel::sql_types::Uuid, _>(id.0)
    .bind::<diesel::sql_types::BigInt, _>(tail)
    .load(conn)
    .await?;
    let mut bytes: Vec<u8> = chunks.into_iter().flat_map(|c| c.data).collect();
    if bytes.len() as i64 > tail {
        bytes.drain(..bytes.len() - tail as usize);
    }
    let total: i64 = jobs::table.find(id).select(jobs::output_bytes).first(conn).await?;
    Ok((bytes, total))
}
