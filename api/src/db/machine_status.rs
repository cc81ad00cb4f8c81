//! The live state of machines: heartbeats, reported facts, SSH checks.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, Bool, Float4, Int4, Int8, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::Json;
use super::schema::{machine_status, machines};
use crate::domain::facts::{Facts, Mismatch};
use crate::domain::{Arch, Health, LifecycleState, MachineId, SiteId};

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = machine_status, check_for_backend(diesel::pg::Pg))]
pub struct MachineStatus {
    pub machine_id: MachineId,
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    pub agent_version: Option<String>,
    pub load1: Option<f32>,
    pub disk_used_pct: Option<f32>,
    pub clock_skew_ms: Option<i32>,
    pub uptime_secs: Option<i64>,
    pub overloaded_since: Option<DateTime<Utc>>,
    pub facts: Option<Json<Facts>>,
    pub facts_source: Option<String>,
    pub facts_hash: Option<i64>,
    pub facts_at: Option<DateTime<Utc>>,
    pub mismatches: Json<Vec<Mismatch>>,
    pub last_ssh_check_at: Option<DateTime<Utc>>,
    pub last_ssh_ok_at: Option<DateTime<Utc>>,
    pub ssh_failures: i32,
    pub ssh_error: Option<String>,
    pub ssh_host_key: Option<String>,
    pub ssh_host_key_fingerprint: Option<String>,
    pub probe_requested_at: Option<DateTime<Utc>>,
    /// What placement weighs: use so far, and signs of an unreliable machine.
    pub leases_granted: i64,
    pub unreachable_episodes: i32,
    pub lost_leases: i32,
    pub crashed_jobs: i32,
}

pub async fn find(conn: &mut AsyncPgConnection, id: MachineId) -> QueryResult<Option<MachineStatus>> {
    machine_status::table.find(id).select(MachineStatus::as_select()).first(conn).await.optional()
}

pub async fn lock(conn: &mut AsyncPgConnection, id: MachineId) -> QueryResult<Option<MachineStatus>> {
    machine_status::table.find(id).select(MachineStatus::as_select()).for_update().first(conn).await.optional()
}

/// One heartbeat, as the batch writer stores it.
#[derive(Debug, Clone)]
pub struct HeartbeatRow {
    pub machine_id: MachineId,
    /// When the receiving replica got it (by its own clock; only its age is stored).
    pub at: DateTime<Utc>,
    pub agent_version: String,
    pub load1: f32,
    pub disk_used_pct: f32,
    pub clock_skew_ms: i32,
    pub uptime_secs: i64,
    pub overloaded: bool,
}

/// Stores a batch of heartbeats (at most one per machine) in one statement. Each row says how
/// long ago (milliseconds, by the receiving replica's clock) its heartbeat arrived; the time
/// stored is the database's `now()` minus that, so replicas whose clocks differ still agree.
/// A heartbeat older than the one already stored (another replica's, written first) is ignored.
/// The age is applied as a multiple of an interval: `make_interval` over a numeric division
/// cost PostgreSQL about 0.25 µs more per row (7.1 against 6.6 ms per batch of 2,000).
pub async fn record_heartbeats(conn: &mut AsyncPgConnection, rows: &[HeartbeatRow]) -> QueryResult<usize> {
    if rows.is_empty() {
        return Ok(0);
    }
    let received = chrono::Utc::now();
    diesel::sql_query(
        "UPDATE machine_status AS s SET
             last_heartbeat_at = v.at, agent_version = v.agent_version, load1 = v.load1,
             disk_used_pct = v.disk_used_pct, clock_skew_ms = v.clock_skew_ms, uptime_secs = v.uptime_secs,
             overloaded_since = CASE WHEN v.overloaded THEN coalesce(s.overloaded_since, v.at) END
         FROM (SELECT id, now() - age_ms * interval '1 millisecond' AS at, agent_version, load1,
                      disk_used_pct, clock_skew_ms, uptime_secs, overloaded
               FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::real[], $5::real[], $6::int[], $7::bigint[], $8::bool[])
                   AS u(id, age_ms, agent_version, load1, disk_used_pct, clock_skew_ms, uptime_secs, overloaded)) AS v
         WHERE s.machine_id = v.id AND (s.last_heartbeat_at IS NULL OR s.last_heartbeat_at < v.at)",
    )
    .bind::<Array<diesel::sql_types::Uuid>, _>(rows.iter().map(|r| r.machine_id.0).collect::<Vec<Uuid>>())
    .bind::<Array<Int8>, _>(rows.iter().map(|r| (received - r.at).num_milliseconds().max(0)).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(rows.iter().map(|r| r.agent_version.as_str()).collect::<Vec<_>>())
    .bind::<Array<Float4>, _>(rows.iter().map(|r| r.load1).collect::<Vec<_>>())
    .bind::<Array<Float4>, _>(rows.iter().map(|r| r.disk_used_pct).collect::<Vec<_>>())
    .bind::<Array<Int4>, _>(rows.iter().map(|r| r.clock_skew_ms).collect::<Vec<_>>())
    .bind::<Array<Int8>, _>(rows.iter().map(|r| r.uptime_secs).collect::<Vec<_>>())
    .bind::<Array<Bool>, _>(rows.iter().map(|r| r.overloaded).collect::<Vec<_>>())
    .execute(conn)
    .await
}

/// Stores the facts a machine reported or showed, and how they compare with its declaration.
pub async fn record_facts(
    conn: &mut AsyncPgConnection,
    id: MachineId,
    facts: &Facts,
    source: &str,
    hash: i64,
    mismatches: &[Mismatch],
) -> QueryResult<()> {
    diesel::update(machine_status::table.find(id))
        .set((
            machine_status::facts.eq(Json(facts)),
            machine_status::facts_source.eq(source),
            machine_status::facts_hash.eq(hash),
            machine_status::facts_at.eq(diesel::dsl::now),
            machine_status::mismatches.eq(Json(mismatches)),
        ))
        .execute(conn)
        .await
        .map(drop)
}

/// What one SSH check found.
#[derive(Debug, Clone)]
pub enum SshCheckOutcome<'a> {
    Reachable { host_key: &'a str, fingerprint: &'a str, disk_used_pct: f32, load1: f32 },
    Failed { error: &'a str },
}

pub async fn record_ssh_check(
    conn: &mut AsyncPgConnection,
    id: MachineId,
    outcome: &SshCheckOutcome<'_>,
) -> QueryResult<()> {
    let target = machine_status::table.find(id);
    let now = diesel::dsl::now;
    match outcome {
        SshCheckOutcome::Reachable { host_key, fingerprint, disk_used_pct, load1 } => {
            diesel::update(target)
                .set((
                    machine_status::last_ssh_check_at.eq(now),
                    machine_status::last_ssh_ok_at.eq(now),
                    machine_status::ssh_failures.eq(0),
                    machine_status::ssh_error.eq(None::<String>),
                    machine_status::ssh_host_key.eq(*host_key),
                    machine_status::ssh_host_key_fingerprint.eq(*fingerprint),
                    machine_status::probe_requested_at.eq(None::<DateTime<Utc>>),
                    machine_status::disk_used_pct.eq(*disk_used_pct),
                    machine_status::load1.eq(*load1),
                ))
                .execute(conn)
                .await
        }
        SshCheckOutcome::Failed { error } => {
            diesel::update(target)
                .set((
                    machine_status::last_ssh_check_at.eq(now),
                    machine_status::ssh_failures.eq(machine_status::ssh_failures + 1),
                    machine_status::ssh_error.eq(*error),
                    machine_status::probe_requested_at.eq(None::<DateTime<Utc>>),
                ))
                .execute(conn)
                .await
        }
    }
    .map(drop)
}

/// Asks for an SSH probe of the machine at the next round, unless one is already asked for.
/// Returns whether this asked.
pub async fn request_probe(conn: &mut AsyncPgConnection, id: MachineId) -> QueryResult<bool> {
    diesel::update(machine_status::table.find(id).filter(machine_status::probe_requested_at.is_null()))
        .set(machine_status::probe_requested_at.eq(diesel::dsl::now))
        .execute(conn)
        .await
        .map(|rows| rows == 1)
}

/// Forgets the pinned host key: the next contact pins whatever the machine presents.
pub async fn forget_host_key(conn: &mut AsyncPgConnection, id: MachineId) -> QueryResult<()> {
    diesel::update(machine_status::table.find(id))
        .set((
            machine_status::ssh_host_key.eq(None::<String>),
            machine_status::ssh_host_key_fingerprint.eq(None::<String>),
        ))
        .execute(conn)
        .await
        .map(drop)
}

/// A monitored machine with what its health is derived from.
#[derive(Debug, Clone, Queryable)]
pub struct Monitored {
    pub id: MachineId,
    pub site_id: SiteId,
    pub lifecycle: LifecycleState,
    pub health: Health,
    pub health_reason: Option<String>,
    pub arch: Arch,
    pub cpu_cores: i32,
    pub ssh_host: Option<String>,
    pub ssh_port: Option<i32>,
    pub ssh_user: Option<String>,
    pub quarantined: bool,
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    pub load1: Option<f32>,
    pub disk_used_pct: Option<f32>,
    pub clock_skew_ms: Option<i32>,
    pub overloaded_since: Option<DateTime<Utc>>,
    pub last_ssh_check_at: Option<DateTime<Utc>>,
    pub last_ssh_ok_at: Option<DateTime<Utc>>,
    pub ssh_failures: i32,
    pub pinned_host_key: Option<String>,
    pub probe_requested_at: Option<DateTime<Utc>>,
}

/// Every machine whose health is derived (or only `only`), with its observations.
pub async fn monitored(
    conn: &mut AsyncPgConnection,
    states: &[LifecycleState],
    only: Option<MachineId>,
) -> QueryResult<Vec<Monitored>> {
    let mut query = machines::table.inner_join(machine_status::table).into_boxed();
    if let Some(id) = only {
        query = query.filter(machines::id.eq(id));
    }
    query
        .filter(machines::lifecycle.eq_any(states))
        .select((
            machines::id,
            machines::site_id,
            machines::lifecycle,
            machines::health,
            machines::health_reason,
            machines::arch,
            machines::cpu_cores,
            machines::ssh_host,
            machines::ssh_port,
            machines::ssh_user,
            machines::quarantined_at.is_not_null(),
            machine_status::last_heartbeat_at,
            machine_status::load1,
            machine_status::disk_used_pct,
            machine_status::clock_skew_ms,
            machine_status::overloaded_since,
            machine_status::last_ssh_check_at,
            machine_status::last_ssh_ok_at,
            machine_status::ssh_failures,
            machine_status::ssh_host_key,
            machine_status::probe_requested_at,
        ))
        .order(machines::id)
        .load(conn)
        .await
}

/// Changes a machine's health if it still is `expected`; returns the machine if it changed.
pub async fn set_health(
    conn: &mut AsyncPgConnection,
    id: MachineId,
    expected: Health,
    health: Health,
    reason: &str,
) -> QueryResult<Option<super::machines::Machine>> {
    use super::machines::Machine;
    diesel::update(machines::table.find(id).filter(machines::health.eq(expected)))
        .set((
            machines::health.eq(health),
            machines::health_reason.eq(reason),
            machines::health_changed_at.eq(diesel::dsl::now),
        ))
        .returning(Machine::as_returning())
        .get_result(conn)
        .await
        .optional()
}

/// Keeps the reason current without calling it a change of health.
pub async fn set_health_reason(conn: &mut AsyncPgConnection, id: MachineId, reason: &str) -> QueryResult<()> {
    diesel::update(machines::table.find(id)).set(machines::health_reason.eq(reason)).execute(conn).await.map(drop)
}

/// Quarantines a machine (or lifts the quarantine, with `None`); returns it as it now is.
pub async fn set_quarantine(
    conn: &mut AsyncPgConnection,
    id: MachineId,
    reason: Option<&str>,
) -> QueryResult<super::machines::Machine> {
    use super::machines::Machine;
    diesel::update(machines::table.find(id))
        .set((
            machines::quarantined_at.eq(reason.map(|_| Utc::now())),
            machines::quarantine_reason.eq(reason),
            machines::updated_at.eq(diesel::dsl::now),
        ))
        .returning(Machine::as_returning())
        .get_result(conn)
        .await
}

/// One more job died on this machine by a signal.
pub async fn count_crashed_job(conn: &mut AsyncPgConnection, id: MachineId) -> QueryResult<()> {
    diesel::update(machine_status::table.find(id))
        .set(machine_status::crashed_jobs.eq(machine_status::crashed_jobs + 1))
        .execute(conn)
        .await
        .map(drop)
}

/// One more time this machine went silent.
pub async fn count_unreachable_episode(conn: &mut AsyncPgConnection, id: MachineId) -> QueryResult<()> {
    diesel::update(machine_status::table.find(id))
        .set(machine_status::unreachable_episodes.eq(machine_status::unreachable_episodes + 1))
        .execute(conn)
        .await
        .map(drop)
}
