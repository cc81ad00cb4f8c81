//! What the ops dashboard and the donors' usage report read: counts, utilisation over time,
//! machines out of reach, the review queue, agreements ending soon, the lease queue, and lease
//! hours and jobs per donor and month. Read-only, each one statement.

use chrono::{DateTime, NaiveDate, Utc};
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Date, Double, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::domain::DonorId;

/// How many machines have each value of one dimension (`arch`, `lifecycle`, `health`,
/// `site`, `model`).
#[derive(Debug, QueryableByName)]
pub struct Count {
    #[diesel(sql_type = Text)]
    pub dimension: String,
    #[diesel(sql_type = Text)]
    pub key: String,
    #[diesel(sql_type = BigInt)]
    pub machines: i64,
}

pub async fn machine_counts(conn: &mut AsyncPgConnection) -> diesel::QueryResult<Vec<Count>> {
    diesel::sql_query(
        "SELECT 'arch' AS dimension, arch AS key, count(*) AS machines FROM machines GROUP BY arch
         UNION ALL SELECT 'lifecycle', lifecycle, count(*) FROM machines GROUP BY lifecycle
         UNION ALL SELECT 'health', health, count(*) FROM machines GROUP BY health
         UNION ALL SELECT 'site', coalesce(s.name, '-'), count(*)
                   FROM machines m LEFT JOIN sites s ON s.id = m.site_id GROUP BY s.name
         UNION ALL SELECT 'model', coalesce(d.model, 'cloud'), count(*)
                   FROM machines m LEFT JOIN donations d ON d.id = m.donation_id GROUP BY d.model",
    )
    .load(conn)
    .await
}

/// Hours leased per architecture and day (UTC), over the `days` days up to today.
#[derive(Debug, QueryableByName)]
pub struct LeasedHours {
    #[diesel(sql_type = Date)]
    pub day: NaiveDate,
    #[diesel(sql_type = Text)]
    pub arch: String,
    #[diesel(sql_type = Double)]
    pub hours: f64,
}

/// The leases that ended are added up as they end (`leased_hours_daily`, kept by a trigger);
/// those still running are added up here, up to now.
pub async fn leased_hours_by_day(conn: &mut AsyncPgConnection, days: i32) -> diesel::QueryResult<Vec<LeasedHours>> {
    diesel::sql_query(
        "WITH span AS (SELECT date_trunc('day', now() AT TIME ZONE 'UTC') - make_interval(days => $1 - 1) AS first,
                              now() AT TIME ZONE 'UTC' AS last)
         SELECT day, arch, sum(hours)::float8 AS hours FROM (
             SELECT day, arch, hours FROM leased_hours_daily WHERE day >= (SELECT first::date FROM span)
             UNION ALL
             SELECT d::date, l.arch,
                    extract(epoch FROM least(span.last, d + interval '1 day') - greatest(l.g, d))::float8 / 3600.0
             FROM span,
                  (SELECT arch, granted_at AT TIME ZONE 'UTC' AS g FROM leases
                   WHERE state = 'granted' AND granted_at IS NOT NULL AND ended_at IS NULL) l,
                  generate_series(date_trunc('day', greatest(l.g, span.first)), span.last, interval '1 day') AS d
             WHERE least(span.last, d + interval '1 day') > greatest(l.g, d)) x
         GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .bind::<diesel::sql_types::Integer, _>(days)
    .load(conn)
    .await
}

/// Machines in the pool (ready to be leased, or leased) per architecture now.
#[derive(Debug, QueryableByName)]
pub struct PoolSize {
    #[diesel(sql_type = Text)]
    pub arch: String,
    #[diesel(sql_type = BigInt)]
    pub machines: i64,
}

pub async fn pool_sizes(conn: &mut AsyncPgConnection) -> diesel::QueryResult<Vec<PoolSize>> {
    diesel::sql_query("SELECT arch, count(*) AS machines FROM machines WHERE lifecycle = 'ready' GROUP BY arch")
        .load(conn)
        .await
}

/// A machine out of reach, and since when.
#[derive(Debug, QueryableByName)]
pub struct Unreachable {
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    #[diesel(sql_type = Nullable<Text>)]
    pub hostname: Option<String>,
    #[diesel(sql_type = Text)]
    pub arch: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub site: Option<String>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub since: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub last_seen: Option<DateTime<Utc>>,
    #[diesel(sql_type = BigInt)]
    pub total: i64,
}

pub async fn unreachable(conn: &mut AsyncPgConnection, limit: i64) -> diesel::QueryResult<Vec<Unreachable>> {
    diesel::sql_query(
        "SELECT m.id, m.hostname, m.arch, s.name AS site, m.health_changed_at AS since,
                greatest(ms.last_heartbeat_at, ms.last_ssh_ok_at) AS last_seen, count(*) OVER () AS total
         FROM machines m LEFT JOIN machine_status ms ON ms.machine_id = m.id LEFT JOIN sites s ON s.id = m.site_id
         WHERE m.health = 'unreachable'
         ORDER BY m.health_changed_at NULLS FIRST, m.id LIMIT $1",
    )
    .bind::<BigInt, _>(limit)
    .load(conn)
    .await
}

/// A donation: waiting for review, or with its agreement ending soon.
#[derive(Debug, QueryableByName)]
pub struct DonationLine {
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    #[diesel(sql_type = Text)]
    pub donor: String,
    #[diesel(sql_type = Text)]
    pub model: String,
    #[diesel(sql_type = Text)]
    pub agreement_ref: String,
    #[diesel(sql_type = Timestamptz)]
    pub created_at: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Date>)]
    pub ends_on: Option<NaiveDate>,
    #[diesel(sql_type = BigInt)]
    pub machines: i64,
    #[diesel(sql_type = BigInt)]
    pub total: i64,
}

pub async fn waiting_for_review(conn: &mut AsyncPgConnection, limit: i64) -> diesel::QueryResult<Vec<DonationLine>> {
    diesel::sql_query(
        "SELECT d.id, dn.name AS donor, d.model, d.agreement_ref, d.created_at, d.ends_on,
                (SELECT count(*) FROM machines m WHERE m.donation_id = d.id) AS machines, count(*) OVER () AS total
         FROM donations d JOIN donors dn ON dn.id = d.donor_id
         WHERE d.status = 'submitted' ORDER BY d.created_at, d.id LIMIT $1",
    )
    .bind::<BigInt, _>(limit)
    .load(conn)
    .await
}

/// Approved or paused donations whose agreement ends within `days` days.
pub async fn ending_within(
    conn: &mut AsyncPgConnection,
    days: i32,
    limit: i64,
) -> diesel::QueryResult<Vec<DonationLine>> {
    diesel::sql_query(
        "SELECT d.id, dn.name AS donor, d.model, d.agreement_ref, d.created_at, d.ends_on,
                (SELECT count(*) FROM machines m WHERE m.donation_id = d.id) AS machines, count(*) OVER () AS total
         FROM donations d JOIN donors dn ON dn.id = d.donor_id
         WHERE d.status IN ('approved', 'paused') AND d.ends_on IS NOT NULL
           AND d.ends_on <= current_date + $1
         ORDER BY d.ends_on, d.id LIMIT $2",
    )
    .bind::<diesel::sql_types::Integer, _>(days)
    .bind::<BigInt, _>(limit)
    .load(conn)
    .await
}

/// The lease queue of one architecture: how many wait, the longest wait, and how long the
/// leases granted in the last day waited.
#[derive(Debug, QueryableByName)]
pub struct QueueLine {
    #[diesel(sql_type = Text)]
    pub arch: String,
    #[diesel(sql_type = BigInt)]
    pub waiting: i64,
    #[diesel(sql_type = Nullable<Double>)]
    pub longest_wait_secs: Option<f64>,
    #[diesel(sql_type = BigInt)]
    pub granted_last_day: i64,
    #[diesel(sql_type = Nullable<Double>)]
    pub mean_wait_secs: Option<f64>,
    #[diesel(sql_type = Nullable<Double>)]
    pub p95_wait_secs: Option<f64>,
}

pub async fn queue_by_arch(conn: &mut AsyncPgConnection) -> diesel::QueryResult<Vec<QueueLine>> {
    diesel::sql_query(
        "WITH waiting AS (
             SELECT arch, count(*) AS waiting, extract(epoch FROM now() - min(queued_at))::float8 AS longest
             FROM leases WHERE state = 'queued' GROUP BY arch),
         granted AS (
             SELECT arch, count(*) AS granted,
                    avg(extract(epoch FROM granted_at - queued_at))::float8 AS mean,
                    percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM granted_at - queued_at))::float8 AS p95
             FROM leases WHERE granted_at IS NOT NULL AND granted_at > now() - interval '1 day' GROUP BY arch)
         SELECT coalesce(w.arch, g.arch) AS arch, coalesce(w.waiting, 0) AS waiting, w.longest AS longest_wait_secs,
                coalesce(g.granted, 0) AS granted_last_day, g.mean AS mean_wait_secs, g.p95 AS p95_wait_secs
         FROM waiting w FULL JOIN granted g ON g.arch = w.arch ORDER BY 1",
    )
    .load(conn)
    .await
}

/// Cloud instances running now per provider.
#[derive(Debug, QueryableByName)]
pub struct Running {
    #[diesel(sql_type = Text)]
    pub provider: String,
    #[diesel(sql_type = BigInt)]
    pub instances: i64,
}

pub async fn cloud_running(conn: &mut AsyncPgConnection) -> diesel::QueryResult<Vec<Running>> {
    diesel::sql_query(
        "SELECT provider, count(*) AS instances FROM cloud_instances
         WHERE ended_at IS NULL AND state NOT IN ('failed', 'terminated') GROUP BY provider ORDER BY provider",
    )
    .load(conn)
    .await
}

/// A donor's machines' leased hours and jobs in one month, per architecture.
#[derive(Debug, QueryableByName)]
pub struct Usage {
    #[diesel(sql_type = Text)]
    pub arch: String,
    #[diesel(sql_type = BigInt)]
    pub leases: i64,
    #[diesel(sql_type = Double)]
    pub hours: f64,
    #[diesel(sql_type = BigInt)]
    pub jobs: i64,
    #[diesel(sql_type = BigInt)]
    pub jobs_succeeded: i64,
}

pub async fn donor_usage(
    conn: &mut AsyncPgConnection,
    donor: DonorId,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> diesel::QueryResult<Vec<Usage>> {
    diesel::sql_query(
        "WITH used AS (
             SELECT l.arch, l.job_id,
                    extract(epoch FROM least(coalesce(l.ended_at, now()), $3) - greatest(l.granted_at, $2))::float8 AS secs
             FROM leases l
             WHERE l.donor_id = $1 AND l.granted_at IS NOT NULL AND l.granted_at < $3
               AND (l.ended_at IS NULL OR l.ended_at > $2))
         SELECT u.arch, count(*) AS leases, coalesce(sum(greatest(u.secs, 0)), 0)::float8 / 3600.0 AS hours,
                count(DISTINCT u.job_id) AS jobs,
                count(DISTINCT j.id) FILTER (WHERE j.state = 'succeeded') AS jobs_succeeded
         FROM used u LEFT JOIN jobs j ON j.id = u.job_id
         GROUP BY u.arch ORDER BY u.arch",
    )
    .bind::<diesel::sql_types::Uuid, _>(donor.0)
    .bind::<Timestamptz, _>(from)
    .bind::<Timestamptz, _>(to)
    .load(conn)
    .await
}
