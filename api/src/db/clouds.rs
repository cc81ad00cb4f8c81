//! Cloud instances, the launches that make them, what is unavailable for a while, the token
//! buckets that pace calls, counts of calls, and imports.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::schema::{
    cloud_calls, cloud_imports, cloud_instances, cloud_launches, cloud_rate_buckets, cloud_unavailable,
};
use crate::domain::cloud::{Bucket, CloudErrorKind, InstanceState, LaunchState, Market, Offer, OfferKey, Unavailable};
use crate::domain::{Arch, CloudProvider, LeaseId, MachineId, UserId};

#[derive(Debug, Clone, Queryable, QueryableByName, Selectable)]
#[diesel(table_name = cloud_instances, check_for_backend(diesel::pg::Pg))]
pub struct CloudInstance {
    pub id: Uuid,
    pub state: InstanceState,
    pub account: String,
    pub provider: CloudProvider,
    pub region: String,
    pub flavour: String,
    pub market: Market,
    pub arch: Arch,
    pub cores: i32,
    pub memory_mib: i64,
    pub disk_gib: i64,
    pub hourly_micros: i64,
    pub tenant: Option<String>,
    pub lease_id: Option<LeaseId>,
    pub launch_id: Option<Uuid>,
    pub provider_id: Option<String>,
    pub machine_id: Option<MachineId>,
    pub imported: bool,
    pub created_at: DateTime<Utc>,
    pub launched_at: Option<DateTime<Utc>>,
    pub enrolled_at: Option<DateTime<Utc>>,
    pub ready_at: Option<DateTime<Utc>>,
    pub claimed_until: Option<DateTime<Utc>>,
    pub deadline: Option<DateTime<Utc>>,
    pub missing_since: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub end_reason: Option<String>,
}

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = cloud_instances)]
pub struct NewCloudInstance {
    pub id: Uuid,
    pub state: InstanceState,
    pub account: String,
    pub provider: CloudProvider,
    pub region: String,
    pub flavour: String,
    pub market: Market,
    pub arch: Arch,
    pub cores: i32,
    pub memory_mib: i64,
    pub disk_gib: i64,
    pub hourly_micros: i64,
    pub tenant: Option<String>,
    pub lease_id: Option<LeaseId>,
    pub provider_id: Option<String>,
    pub machine_id: Option<MachineId>,
    pub imported: bool,
    pub launched_at: Option<DateTime<Utc>>,
    pub ready_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Queryable, QueryableByName, Selectable)]
#[diesel(table_name = cloud_launches, check_for_backend(diesel::pg::Pg))]
pub struct CloudLaunch {
    pub id: Uuid,
    pub account: String,
    pub provider: CloudProvider,
    pub region: String,
    pub flavour: String,
    pub market: Market,
    pub image: String,
    pub count: i32,
    pub client_token: String,
    pub state: LaunchState,
    pub secret_hash: Vec<u8>,
    pub secret_expires_at: DateTime<Utc>,
    pub claimed_until: Option<DateTime<Utc>>,
    pub calls: i32,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub error_kind: Option<CloudErrorKind>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
}

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = cloud_launches)]
pub struct NewCloudLaunch {
    pub id: Uuid,
    pub account: String,
    pub provider: CloudProvider,
    pub region: String,
    pub flavour: String,
    pub market: Market,
    pub image: String,
    pub count: i32,
    pub client_token: String,
    pub state: LaunchState,
    pub secret_hash: Vec<u8>,
    pub secret_expires_at: DateTime<Utc>,
    pub claimed_until: Option<DateTime<Utc>>,
    pub calls: i32,
}

impl CloudInstance {
    /// The offer it is an instance of.
    pub fn offer_key(&self) -> OfferKey {
        OfferKey {
            account: self.account.clone(),
            region: self.region.clone(),
            flavour: self.flavour.clone(),
            market: self.market,
        }
    }
}

impl NewCloudInstance {
    /// An instance of `offer`, requested (paid by `tenant`, for `lease`; neither for the warm
    /// pool).
    pub fn requested(offer: &Offer, tenant: Option<&str>, lease: Option<LeaseId>) -> Self {
        Self {
            id: Uuid::now_v7(),
            state: InstanceState::Requested,
            account: offer.account.clone(),
            provider: offer.provider,
            region: offer.region.clone(),
            flavour: offer.flavour.clone(),
            market: offer.market,
            arch: offer.arch,
            cores: offer.cores,
            memory_mib: offer.memory_mib,
            disk_gib: offer.disk_gib,
            hourly_micros: offer.hourly_micros,
            tenant: tenant.map(str::to_owned),
            lease_id: lease,
            provider_id: None,
            machine_id: None,
            imported: false,
            launched_at: None,
            ready_at: None,
        }
    }
}

/// An arbitrary constant: the advisory lock of the warm pool's bookkeeping.
const WARM_POOL_LOCK: i64 = 0x466c_6565_7457_726d; // "FleetWrm"

/// Waits for the warm pool's lock, held until the transaction ends.
pub async fn lock_warm_pool(conn: &mut AsyncPgConnection) -> QueryResult<()> {
    diesel::sql_query(format!("SELECT pg_advisory_xact_lock({WARM_POOL_LOCK})")).execute(conn).await.map(drop)
}

/// Up to `count` of an offer's ready warm-pool instances, oldest first.
pub async fn warm_ready(
    conn: &mut AsyncPgConnection,
    offer: &(String, String, String, Market),
    count: i64,
) -> QueryResult<Vec<Uuid>> {
    diesel::sql_query(
        "SELECT id FROM cloud_instances i
         WHERE account = $1 AND region = $2 AND flavour = $3 AND market = $4 AND state = 'ready'
           AND lease_id IS NULL AND NOT imported
           AND NOT EXISTS (SELECT 1 FROM leases u WHERE u.cloud_instance_id = i.id)
         ORDER BY id LIMIT $5",
    )
    .bind::<Text, _>(&offer.0)
    .bind::<Text, _>(&offer.1)
    .bind::<Text, _>(&offer.2)
    .bind::<Text, _>(offer.3)
    .bind::<BigInt, _>(count)
    .load::<IdRow>(conn)
    .await
    .map(|rows| rows.into_iter().map(|r| r.id).collect())
}

#[derive(QueryableByName)]
struct IdRow {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    id: Uuid,
}

// ---- Instances -----------------------------------------------------------------------------

pub async fn insert_instances(conn: &mut AsyncPgConnection, rows: &[NewCloudInstance]) -> QueryResult<usize> {
    if rows.is_empty() {
        return Ok(0);
    }
    diesel::insert_into(cloud_instances::table).values(rows).execute(conn).await
}

pub async fn find_instance(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<CloudInstance>> {
    cloud_instances::table.find(id).select(CloudInstance::as_select()).first(conn).await.optional()
}

/// Instances that are not over (requested to terminating): what placement weighs.
pub async fn open_instances(conn: &mut AsyncPgConnection) -> QueryResult<Vec<CloudInstance>> {
    cloud_instances::table
        .filter(cloud_instances::ended_at.is_null())
        .select(CloudInstance::as_select())
        .load(conn)
        .await
}

/// The instance a queued lease waits for, if one is on its way.
pub async fn waited_for_by(conn: &mut AsyncPgConnection, lease: LeaseId) -> QueryResult<Option<CloudInstance>> {
    cloud_instances::table
        .filter(cloud_instances::lease_id.eq(lease))
        .order(cloud_instances::id.desc())
        .select(CloudInstance::as_select())
        .first(conn)
        .await
        .optional()
}

/// [`waited_for_by`] for many leases: each one's newest instance.
pub async fn waited_for_by_each(
    conn: &mut AsyncPgConnection,
    leases: &[LeaseId],
) -> QueryResult<std::collections::HashMap<LeaseId, CloudInstance>> {
    if leases.is_empty() {
        return Ok(Default::default());
    }
    let found: Vec<CloudInstance> = cloud_instances::table
        .filter(cloud_instances::lease_id.eq_any(leases))
        .distinct_on(cloud_instances::lease_id)
        .order((cloud_instances::lease_id, cloud_instances::id.desc()))
        .select(CloudInstance::as_select())
        .load(conn)
        .await?;
    Ok(found.into_iter().filter_map(|i| Some((i.lease_id?, i))).collect())
}

/// Whose listing; all when `None`.
#[derive(Debug, Clone, Default)]
pub struct InstanceFilter {
    pub states: Vec<InstanceState>,
    pub account: Option<String>,
    pub lease_id: Option<LeaseId>,
}

/// Newest first, keyset-paged on the id.
pub async fn list_instances(
    conn: &mut AsyncPgConnection,
    filter: &InstanceFilter,
    page: super::Page<Uuid>,
) -> QueryResult<Vec<CloudInstance>> {
    let mut query = cloud_instances::table.select(CloudInstance::as_select()).into_boxed();
    if !filter.states.is_empty() {
        query = query.filter(cloud_instances::state.eq_any(filter.states.clone()));
    }
    if let Some(account) = &filter.account {
        query = query.filter(cloud_instances::account.eq(account.clone()));
    }
    if let Some(lease) = filter.lease_id {
        query = query.filter(cloud_instances::lease_id.eq(lease));
    }
    if let Some(after) = page.after {
        query = query.filter(cloud_instances::id.lt(after));
    }
    query.order(cloud_instances::id.desc()).limit(page.fetch_limit()).load(conn).await
}

/// Requested instances still wanted (for the warm pool, or for a lease still queued), locked
/// for this replica to launch (others skip them), oldest first.
pub async fn claim_requested(conn: &mut AsyncPgConnection, limit: i64) -> QueryResult<Vec<CloudInstance>> {
    diesel::sql_query(
        "SELECT i.* FROM cloud_instances i LEFT JOIN leases l ON l.id = i.lease_id
         WHERE i.state = 'requested' AND (i.lease_id IS NULL OR l.state = 'queued')
         ORDER BY i.created_at LIMIT $1 FOR UPDATE OF i SKIP LOCKED",
    )
    .bind::<BigInt, _>(limit)
    .load(conn)
    .await
}

/// Moves instances into a launch: its call may be made once this commits.
pub async fn set_launching(conn: &mut AsyncPgConnection, ids: &[Uuid], launch: Uuid) -> QueryResult<usize> {
    diesel::update(cloud_instances::table.filter(cloud_instances::id.eq_any(ids)))
        .set((cloud_instances::state.eq(InstanceState::Launching), cloud_instances::launch_id.eq(launch)))
        .execute(conn)
        .await
}

/// A launch's instances, in the order they were put into it (unlocked, to build its request).
pub async fn of_launch_unlocked(conn: &mut AsyncPgConnection, launch: Uuid) -> QueryResult<Vec<CloudInstance>> {
    cloud_instances::table
        .filter(cloud_instances::launch_id.eq(launch))
        .order(cloud_instances::id.asc())
        .select(CloudInstance::as_select())
        .load(conn)
        .await
}

/// A launch's instances, in the order they were put into it, locked.
pub async fn of_launch(conn: &mut AsyncPgConnection, launch: Uuid) -> QueryResult<Vec<CloudInstance>> {
    cloud_instances::table
        .filter(cloud_instances::launch_id.eq(launch))
        .order(cloud_instances::id.asc())
        .select(CloudInstance::as_select())
        .for_update()
        .load(conn)
        .await
}

/// Keeps a launch's secret working at least until `until` (its instances' boot deadline).
pub async fn keep_secret_until(conn: &mut AsyncPgConnection, launch: Uuid, until: DateTime<Utc>) -> QueryResult<usize> {
    diesel::update(cloud_launches::table.find(launch).filter(cloud_launches::secret_expires_at.lt(until)))
        .set(cloud_launches::secret_expires_at.eq(until))
        .execute(conn)
        .await
}

/// The cloud created it: it boots until `deadline`, on `machine`.
pub async fn set_booting(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    provider_id: &str,
    machine: MachineId,
    deadline: DateTime<Utc>,
) -> QueryResult<usize> {
    diesel::update(cloud_instances::table.find(id))
        .set((
            cloud_instances::state.eq(InstanceState::Booting),
            cloud_instances::provider_id.eq(provider_id),
            cloud_instances::machine_id.eq(machine),
            cloud_instances::launched_at.eq(diesel::dsl::now),
            cloud_instances::deadline.eq(deadline),
        ))
        .execute(conn)
        .await
}

/// Ends instances that never existed, or whose end is confirmed, keeping the reason an
/// earlier step gave (why it was to be terminated).
pub async fn end(conn: &mut AsyncPgConnection, ids: &[Uuid], state: InstanceState, reason: &str) -> QueryResult<usize> {
    if ids.is_empty() {
        return Ok(0);
    }
    diesel::sql_query(
        "UPDATE cloud_instances SET state = $2, ended_at = now(), end_reason = coalesce(end_reason, $3),
             claimed_until = NULL
         WHERE id = ANY ($1) AND ended_at IS NULL",
    )
    .bind::<Array<diesel::sql_types::Uuid>, _>(ids)
    .bind::<Text, _>(state)
    .bind::<Text, _>(reason)
    .execute(conn)
    .await
}

pub async fn find_by_provider_id(
    conn: &mut AsyncPgConnection,
    account: &str,
    region: &str,
    provider_id: &str,
) -> QueryResult<Option<CloudInstance>> {
    cloud_instances::table
        .filter(cloud_instances::account.eq(account))
        .filter(cloud_instances::region.eq(region))
        .filter(cloud_instances::provider_id.eq(provider_id))
        .select(CloudInstance::as_select())
        .first(conn)
        .await
        .optional()
}

pub async fn set_machine(conn: &mut AsyncPgConnection, id: Uuid, machine: MachineId) -> QueryResult<usize> {
    diesel::update(cloud_instances::table.find(id)).set(cloud_instances::machine_id.eq(machine)).execute(conn).await
}

/// Never-used instances that no lease holds, by offer: the warm pool, and what is on its way
/// to it.
pub async fn warm_counts(
    conn: &mut AsyncPgConnection,
) -> QueryResult<std::collections::HashMap<(String, String, String, Market), i64>> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = Text)]
        account: String,
        #[diesel(sql_type = Text)]
        region: String,
        #[diesel(sql_type = Text)]
        flavour: String,
        #[diesel(sql_type = Text)]
        market: Market,
        #[diesel(sql_type = BigInt)]
        count: i64,
    }
    let rows: Vec<Row> = diesel::sql_query(
        "SELECT account, region, flavour, market, count(*) AS count FROM cloud_instances i
         WHERE ended_at IS NULL AND NOT imported AND lease_id IS NULL
           AND state IN ('requested', 'launching', 'booting', 'ready')
           AND NOT EXISTS (SELECT 1 FROM leases u WHERE u.cloud_instance_id = i.id)
         GROUP BY account, region, flavour, market",
    )
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(|r| ((r.account, r.region, r.flavour, r.market), r.count)).collect())
}

/// Marks instances for termination (the worker makes the call), unless they are imported or
/// already over. Returns those marked.
pub async fn mark_terminating(conn: &mut AsyncPgConnection, ids: &[Uuid], reason: &str) -> QueryResult<Vec<Uuid>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    diesel::update(
        cloud_instances::table
            .filter(cloud_instances::id.eq_any(ids))
            .filter(cloud_instances::imported.eq(false))
            .filter(cloud_instances::state.eq_any([InstanceState::Booting, InstanceState::Ready])),
    )
    .set((cloud_instances::state.eq(InstanceState::Terminating), cloud_instances::end_reason.eq(reason)))
    .returning(cloud_instances::id)
    .get_results(conn)
    .await
}

/// Instances to terminate that no replica is terminating, claimed for `secs`.
pub async fn claim_terminating(conn: &mut AsyncPgConnection, secs: i64) -> QueryResult<Vec<CloudInstance>> {
    diesel::sql_query(
        "UPDATE cloud_instances SET claimed_until = now() + make_interval(secs => $1)
         WHERE id IN (SELECT id FROM cloud_instances
                      WHERE state = 'terminating' AND (claimed_until IS NULL OR claimed_until < now())
                      ORDER BY id LIMIT 500 FOR UPDATE SKIP LOCKED)
         RETURNING *",
    )
    .bind::<BigInt, _>(secs)
    .load(conn)
    .await
}

/// Booting instances whose machine's agent has beaten (the machine is healthy), to become
/// ready; and those past their boot deadline.
pub async fn booted(conn: &mut AsyncPgConnection, lock: bool) -> QueryResult<Vec<CloudInstance>> {
    diesel::sql_query(format!(
        "SELECT i.* FROM cloud_instances i JOIN machines m ON m.id = i.machine_id
         WHERE i.state = 'booting' AND m.health = 'healthy' AND m.lifecycle = 'onboarding' {}",
        if lock { "FOR UPDATE OF i SKIP LOCKED" } else { "" }
    ))
    .load(conn)
    .await
}

pub async fn boot_overdue(conn: &mut AsyncPgConnection) -> QueryResult<Vec<CloudInstance>> {
    diesel::sql_query(
        "SELECT * FROM cloud_instances WHERE state = 'booting' AND deadline < now() FOR UPDATE SKIP LOCKED",
    )
    .load(conn)
    .await
}

pub async fn set_ready(conn: &mut AsyncPgConnection, ids: &[Uuid]) -> QueryResult<usize> {
    diesel::update(cloud_instances::table.filter(cloud_instances::id.eq_any(ids)))
        .set((cloud_instances::state.eq(InstanceState::Ready), cloud_instances::ready_at.eq(diesel::dsl::now)))
        .execute(conn)
        .await
}

/// Instances no lease needs any more, in four kinds:
/// - `requested` for a lease that is no longer queued: never launched;
/// - `ready`, used (a lease was granted on it) and holding no granted lease: its lease ended;
/// - `ready`, never used, bound to a lease that is no longer queued: nobody is waiting for it;
/// - `booting` or `ready` whose machine ops retired, or `ready` whose agent fell silent
///   (`broken`): of no use to anyone.
///
/// Imported servers are never among them.
#[derive(Debug, Clone, QueryableByName)]
pub struct Unneeded {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    pub id: Uuid,
    #[diesel(sql_type = Text)]
    pub state: InstanceState,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    pub used: bool,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    pub broken: bool,
    #[diesel(sql_type = Text)]
    pub account: String,
    #[diesel(sql_type = Text)]
    pub region: String,
    #[diesel(sql_type = Text)]
    pub flavour: String,
    #[diesel(sql_type = Text)]
    pub market: Market,
}

pub async fn unneeded(conn: &mut AsyncPgConnection) -> QueryResult<Vec<Unneeded>> {
    diesel::sql_query(
        "SELECT * FROM (
             SELECT i.id, i.state, i.account, i.region, i.flavour, i.market,
                    EXISTS (SELECT 1 FROM leases u WHERE u.cloud_instance_id = i.id) AS used,
                    (m.lifecycle = 'retired' OR (i.state = 'ready' AND m.health = 'unreachable')) AS broken,
                    l.state AS lease_state,
                    EXISTS (SELECT 1 FROM leases g WHERE g.machine_id = i.machine_id AND g.state = 'granted') AS serving
             FROM cloud_instances i
             LEFT JOIN leases l ON l.id = i.lease_id
             LEFT JOIN machines m ON m.id = i.machine_id
             WHERE NOT i.imported AND i.state IN ('requested', 'booting', 'ready')
         ) c
         WHERE (c.state = 'requested' AND c.lease_state IS NOT NULL AND c.lease_state <> 'queued')
            OR (c.state <> 'requested' AND c.broken IS TRUE AND NOT c.serving)
            OR (c.state = 'ready' AND NOT c.serving AND (c.used OR (c.lease_state IS NOT NULL AND c.lease_state <> 'queued')))",
    )
    .load(conn)
    .await
}

/// Lets go of an unused instance's lease: it joins the warm pool, and nobody pays for it until
/// a lease takes it.
pub async fn unbind(conn: &mut AsyncPgConnection, ids: &[Uuid]) -> QueryResult<usize> {
    diesel::update(cloud_instances::table.filter(cloud_instances::id.eq_any(ids)))
        .set((cloud_instances::lease_id.eq(None::<LeaseId>), cloud_instances::tenant.eq(None::<String>)))
        .execute(conn)
        .await
}

/// A ready instance bound to a queued lease: the lease takes it in the next round.
#[derive(Debug, Clone, QueryableByName)]
pub struct BoundReady {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    pub instance: Uuid,
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    pub lease: LeaseId,
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    pub machine: MachineId,
}

pub async fn bound_ready(conn: &mut AsyncPgConnection) -> QueryResult<Vec<BoundReady>> {
    diesel::sql_query(
        "SELECT i.id AS instance, i.lease_id AS lease, i.machine_id AS machine
         FROM cloud_instances i JOIN leases l ON l.id = i.lease_id JOIN machines m ON m.id = i.machine_id
         WHERE i.state = 'ready' AND l.state = 'queued'
           AND m.lifecycle = 'ready' AND m.health = 'healthy' AND m.quarantined_at IS NULL
           AND NOT EXISTS (SELECT 1 FROM leases g WHERE g.machine_id = m.id AND g.state = 'granted')",
    )
    .load(conn)
    .await
}

/// Records which instance each lease was granted on (for its cost), and binds warm-pool
/// instances to the lease that took them, which now pays for them.
pub async fn note_grants(conn: &mut AsyncPgConnection, leases: &[LeaseId]) -> QueryResult<usize> {
    if leases.is_empty() {
        return Ok(0);
    }
    let ids: Vec<Uuid> = leases.iter().map(|l| l.0).collect();
    // A lease given another machine lets go of the instance it was waiting for (a lease holds
    // at most one): that one joins the warm pool, or is terminated, as unneeded.
    diesel::sql_query(
        "UPDATE cloud_instances i SET lease_id = NULL
         FROM leases l
         WHERE i.lease_id = l.id AND l.id = ANY ($1) AND i.ended_at IS NULL
           AND i.machine_id IS DISTINCT FROM l.machine_id",
    )
    .bind::<Array<diesel::sql_types::Uuid>, _>(&ids)
    .execute(conn)
    .await?;
    diesel::sql_query(
        "WITH g AS (
             UPDATE leases l SET cloud_instance_id = i.id, cloud_note = NULL
             FROM cloud_instances i
             WHERE l.id = ANY ($1) AND i.machine_id = l.machine_id AND i.ended_at IS NULL
             RETURNING l.id AS lease, l.tenant, i.id AS instance)
         UPDATE cloud_instances i SET lease_id = g.lease, tenant = CASE WHEN i.imported THEN NULL ELSE g.tenant END
         FROM g WHERE i.id = g.instance",
    )
    .bind::<Array<diesel::sql_types::Uuid>, _>(ids)
    .execute(conn)
    .await
}

/// The instances Fleetyard knows in one account's region, with a cloud id.
pub async fn known_in(conn: &mut AsyncPgConnection, account: &str, region: &str) -> QueryResult<Vec<CloudInstance>> {
    cloud_instances::table
        .filter(cloud_instances::account.eq(account))
        .filter(cloud_instances::region.eq(region))
        .filter(cloud_instances::provider_id.is_not_null())
        .filter(
            cloud_instances::ended_at
                .is_null()
                .or(cloud_instances::ended_at.gt(Utc::now() - chrono::Duration::days(1))),
        )
        .select(CloudInstance::as_select())
        .load(conn)
        .await
}

pub async fn set_missing(conn: &mut AsyncPgConnection, ids: &[Uuid], missing: bool) -> QueryResult<usize> {
    if ids.is_empty() {
        return Ok(0);
    }
    let target = cloud_instances::table.filter(cloud_instances::id.eq_any(ids));
    if missing {
        diesel::update(target.filter(cloud_instances::missing_since.is_null()))
            .set(cloud_instances::missing_since.eq(diesel::dsl::now))
            .execute(conn)
            .await
    } else {
        diesel::update(target.filter(cloud_instances::missing_since.is_not_null()))
            .set(cloud_instances::missing_since.eq(None::<DateTime<Utc>>))
            .execute(conn)
            .await
    }
}

/// Records that an instance's agent enrolled.
pub async fn set_enrolled(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<usize> {
    diesel::update(cloud_instances::table.find(id))
        .set(cloud_instances::enrolled_at.eq(diesel::dsl::now))
        .execute(conn)
        .await
}

/// What a tenant's instances cost this month and may still cost: rows for `spend`.
#[derive(Debug, Clone, QueryableByName)]
pub struct Spending {
    #[diesel(sql_type = Text)]
    pub tenant: String,
    #[diesel(sql_type = BigInt)]
    pub hourly_micros: i64,
    #[diesel(sql_type = diesel::sql_types::Timestamptz)]
    pub since: DateTime<Utc>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>)]
    pub ended_at: Option<DateTime<Utc>>,
    /// For an instance not over yet: the lease's length, which bounds what it may still cost.
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Integer>)]
    pub lease_secs: Option<i32>,
}

/// Every instance of these tenants that ran this month or still runs.
pub async fn spending(
    conn: &mut AsyncPgConnection,
    tenants: &[String],
    month_start: DateTime<Utc>,
) -> QueryResult<Vec<Spending>> {
    diesel::sql_query(
        "SELECT i.tenant, i.hourly_micros, coalesce(i.launched_at, i.created_at) AS since, i.ended_at,
                l.duration_secs AS lease_secs
         FROM cloud_instances i LEFT JOIN leases l ON l.id = i.lease_id
         WHERE i.tenant = ANY ($1) AND NOT i.imported AND i.state <> 'failed'
           AND (i.ended_at IS NULL OR i.ended_at >= $2)",
    )
    .bind::<Array<Text>, _>(tenants)
    .bind::<diesel::sql_types::Timestamptz, _>(month_start)
    .load(conn)
    .await
}

/// Every instance, imported or not, that ran this month: for spend by provider and tenant.
#[derive(Debug, Clone, QueryableByName)]
pub struct Billed {
    #[diesel(sql_type = Text)]
    pub account: String,
    #[diesel(sql_type = Text)]
    pub provider: CloudProvider,
    #[diesel(sql_type = diesel::sql_types::Nullable<Text>)]
    pub tenant: Option<String>,
    #[diesel(sql_type = BigInt)]
    pub hourly_micros: i64,
    #[diesel(sql_type = diesel::sql_types::Timestamptz)]
    pub since: DateTime<Utc>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>)]
    pub ended_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Text)]
    pub state: InstanceState,
}

pub async fn billed_since(conn: &mut AsyncPgConnection, month_start: DateTime<Utc>) -> QueryResult<Vec<Billed>> {
    diesel::sql_query(
        "SELECT account, provider, tenant, hourly_micros, coalesce(launched_at, created_at) AS since, ended_at, state
         FROM cloud_instances WHERE launched_at IS NOT NULL AND (ended_at IS NULL OR ended_at >= $1)",
    )
    .bind::<diesel::sql_types::Timestamptz, _>(month_start)
    .load(conn)
    .await
}

// ---- Launches ------------------------------------------------------------------------------

/// Records a launch, claimed for `claim_secs` by the database's clock (which every replica's
/// claims are compared with).
pub async fn insert_launch(
    conn: &mut AsyncPgConnection,
    launch: &NewCloudLaunch,
    claim_secs: i64,
) -> QueryResult<CloudLaunch> {
    let id = diesel::insert_into(cloud_launches::table)
        .values(launch)
        .returning(cloud_launches::id)
        .get_result::<Uuid>(conn)
        .await?;
    diesel::sql_query(
        "UPDATE cloud_launches SET claimed_until = now() + make_interval(secs => $2) WHERE id = $1 RETURNING *",
    )
    .bind::<diesel::sql_types::Uuid, _>(id)
    .bind::<BigInt, _>(claim_secs)
    .get_result(conn)
    .await
}

/// Launches whose call was left mid-way (a replica died, or timed out), claimed to resume
/// with the same token.
pub async fn claim_stale_launches(conn: &mut AsyncPgConnection, secs: i64) -> QueryResult<Vec<CloudLaunch>> {
    diesel::sql_query(
        "UPDATE cloud_launches SET claimed_until = now() + make_interval(secs => $1), calls = calls + 1
         WHERE id IN (SELECT id FROM cloud_launches WHERE state = 'calling' AND claimed_until < now()
                      ORDER BY created_at LIMIT 20 FOR UPDATE SKIP LOCKED)
         RETURNING *",
    )
    .bind::<BigInt, _>(secs)
    .load(conn)
    .await
}

/// Locks a launch to record what its call achieved.
pub async fn lock_launch(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<CloudLaunch>> {
    cloud_launches::table.find(id).select(CloudLaunch::as_select()).for_update().first(conn).await.optional()
}

pub async fn finish_launch(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    state: LaunchState,
    error: Option<(CloudErrorKind, &str, &str)>,
) -> QueryResult<usize> {
    diesel::update(cloud_launches::table.find(id))
        .set((
            cloud_launches::state.eq(state),
            cloud_launches::finished_at.eq(diesel::dsl::now),
            cloud_launches::claimed_until.eq(None::<DateTime<Utc>>),
            cloud_launches::error_kind.eq(error.map(|e| e.0)),
            cloud_launches::error_code.eq(error.map(|e| e.1)),
            cloud_launches::error_message.eq(error.map(|e| e.2)),
        ))
        .execute(conn)
        .await
}

/// The launch whose user data carries this secret, locked.
pub async fn launch_by_secret(conn: &mut AsyncPgConnection, hash: &[u8]) -> QueryResult<Option<CloudLaunch>> {
    cloud_launches::table
        .filter(cloud_launches::secret_hash.eq(hash))
        .select(CloudLaunch::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()
}

/// Stops a launch's secret working (every instance enrolled, or its boot timeout passed).
pub async fn burn_secret(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<usize> {
    diesel::update(cloud_launches::table.find(id).filter(cloud_launches::secret_expires_at.gt(diesel::dsl::now)))
        .set(cloud_launches::secret_expires_at.eq(diesel::dsl::now))
        .execute(conn)
        .await
}

/// Launches still in flight or unresolved in one account's region, by id.
pub async fn unsettled_launches(
    conn: &mut AsyncPgConnection,
    account: &str,
    region: &str,
) -> QueryResult<Vec<CloudLaunch>> {
    cloud_launches::table
        .filter(cloud_launches::account.eq(account))
        .filter(cloud_launches::region.eq(region))
        .filter(cloud_launches::state.eq_any([LaunchState::Calling, LaunchState::Unknown]))
        .select(CloudLaunch::as_select())
        .load(conn)
        .await
}

// ---- Unavailable offers ---------------------------------------------------------------------

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = cloud_unavailable, check_for_backend(diesel::pg::Pg))]
struct UnavailableRow {
    account: String,
    region: Option<String>,
    flavour: Option<String>,
    market: Option<Market>,
    kind: CloudErrorKind,
    reason: String,
    until: DateTime<Utc>,
}

/// What is unavailable now.
pub async fn unavailable(conn: &mut AsyncPgConnection) -> QueryResult<Vec<Unavailable>> {
    let rows: Vec<UnavailableRow> = cloud_unavailable::table
        .filter(cloud_unavailable::until.gt(diesel::dsl::now))
        .select(UnavailableRow::as_select())
        .load(conn)
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| Unavailable {
            account: r.account,
            region: r.region,
            flavour: r.flavour,
            market: r.market,
            kind: r.kind,
            reason: r.reason,
            until: r.until,
        })
        .collect())
}

pub async fn add_unavailable(conn: &mut AsyncPgConnection, u: &Unavailable) -> QueryResult<usize> {
    diesel::delete(cloud_unavailable::table.filter(cloud_unavailable::until.lt(diesel::dsl::now)))
        .execute(conn)
        .await?;
    diesel::insert_into(cloud_unavailable::table)
        .values((
            cloud_unavailable::account.eq(&u.account),
            cloud_unavailable::region.eq(&u.region),
            cloud_unavailable::flavour.eq(&u.flavour),
            cloud_unavailable::market.eq(u.market),
            cloud_unavailable::kind.eq(u.kind),
            cloud_unavailable::reason.eq(&u.reason),
            cloud_unavailable::until.eq(u.until),
        ))
        .execute(conn)
        .await
}

// ---- Rate limits and call counts -----------------------------------------------------------

/// A bucket's state.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = cloud_rate_buckets, check_for_backend(diesel::pg::Pg))]
pub struct BucketRow {
    pub account: String,
    pub region: String,
    pub bucket: String,
    pub tokens: f64,
    pub updated_at: DateTime<Utc>,
}

/// Takes `want` tokens from a bucket if it has them, refilling it first; returns how long to
/// wait otherwise (zero: taken). Every replica shares the row, locked while it is read.
pub async fn take_tokens(
    conn: &mut AsyncPgConnection,
    account: &str,
    region: &str,
    bucket: &str,
    settings: Bucket,
    want: f64,
    now: DateTime<Utc>,
) -> QueryResult<chrono::Duration> {
    diesel::insert_into(cloud_rate_buckets::table)
        .values((
            cloud_rate_buckets::account.eq(account),
            cloud_rate_buckets::region.eq(region),
            cloud_rate_buckets::bucket.eq(bucket),
            cloud_rate_buckets::tokens.eq(settings.burst),
            cloud_rate_buckets::updated_at.eq(now),
        ))
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    let key = cloud_rate_buckets::table.find((account, region, bucket));
    let row: BucketRow = key.select(BucketRow::as_select()).for_update().first(conn).await?;
    let tokens = settings.refill(row.tokens, row.updated_at, now);
    let wait = settings.wait_for(tokens, want);
    let left = if wait.is_zero() { (tokens - want.min(settings.burst)).max(0.0) } else { tokens };
    diesel::update(key)
        .set((cloud_rate_buckets::tokens.eq(left), cloud_rate_buckets::updated_at.eq(now)))
        .execute(conn)
        .await?;
    Ok(wait)
}

/// Takes a launch's tokens from both of its buckets (calls and instances), or neither: how
/// long to wait when either lacks them.
pub async fn take_launch_tokens(
    conn: &mut AsyncPgConnection,
    account: &str,
    region: &str,
    (call_bucket, instance_bucket): (Bucket, Bucket),
    instances: f64,
    now: DateTime<Utc>,
) -> QueryResult<chrono::Duration> {
    let calls = take_tokens(conn, account, region, "launch_calls", call_bucket, 1.0, now).await?;
    if !calls.is_zero() {
        return Ok(calls);
    }
    let wait = take_tokens(conn, account, region, "launch_instances", instance_bucket, instances, now).await?;
    if !wait.is_zero() {
        // Give the call's token back: no call is made.
        diesel::update(cloud_rate_buckets::table.find((account, region, "launch_calls")))
            .set(cloud_rate_buckets::tokens.eq(cloud_rate_buckets::tokens + 1.0))
            .execute(conn)
            .await?;
    }
    Ok(wait)
}

pub async fn buckets(conn: &mut AsyncPgConnection) -> QueryResult<Vec<BucketRow>> {
    cloud_rate_buckets::table.select(BucketRow::as_select()).load(conn).await
}

/// How a call went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome<'a> {
    Ok,
    Failed { throttled: bool, error: &'a str },
}

pub async fn count_call(
    conn: &mut AsyncPgConnection,
    account: &str,
    region: &str,
    operation: &str,
    outcome: CallOutcome<'_>,
) -> QueryResult<()> {
    let (ok, failed, throttled, error) = match outcome {
        CallOutcome::Ok => (1i64, 0i64, 0i64, None),
        CallOutcome::Failed { throttled, error } => (0, 1, i64::from(throttled), Some(error)),
    };
    diesel::sql_query(
        "INSERT INTO cloud_calls (account, region, operation, ok, failed, throttled, last_error, last_error_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, CASE WHEN $7 IS NULL THEN NULL ELSE now() END)
         ON CONFLICT (account, region, operation) DO UPDATE SET
             ok = cloud_calls.ok + $4, failed = cloud_calls.failed + $5, throttled = cloud_calls.throttled + $6,
             last_error = coalesce($7, cloud_calls.last_error),
             last_error_at = CASE WHEN $7 IS NULL THEN cloud_calls.last_error_at ELSE now() END",
    )
    .bind::<Text, _>(account)
    .bind::<Text, _>(region)
    .bind::<Text, _>(operation)
    .bind::<BigInt, _>(ok)
    .bind::<BigInt, _>(failed)
    .bind::<BigInt, _>(throttled)
    .bind::<diesel::sql_types::Nullable<Text>, _>(error)
    .execute(conn)
    .await
    .map(drop)
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = cloud_calls, check_for_backend(diesel::pg::Pg))]
pub struct CallCount {
    pub account: String,
    pub region: String,
    pub operation: String,
    pub ok: i64,
    pub failed: i64,
    pub throttled: i64,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
}

pub async fn call_counts(conn: &mut AsyncPgConnection) -> QueryResult<Vec<CallCount>> {
    cloud_calls::table.select(CallCount::as_select()).load(conn).await
}

// ---- Imports -------------------------------------------------------------------------------

#[derive(Debug, Clone, Queryable, QueryableByName, Selectable)]
#[diesel(table_name = cloud_imports, check_for_backend(diesel::pg::Pg))]
pub struct CloudImport {
    pub id: Uuid,
    pub account: String,
    pub region: String,
    pub instance_ids: Vec<String>,
    pub tag_key: Option<String>,
    pub tag_value: Option<String>,
    pub state: String,
    pub requested_by: Option<UserId>,
    pub created_at: DateTime<Utc>,
    pub claimed_until: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub machine_ids: Vec<Uuid>,
    pub error: Option<String>,
}

pub async fn insert_import(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    account: &str,
    region: &str,
    instance_ids: &[String],
    tag: Option<(&str, &str)>,
    requested_by: Option<UserId>,
) -> QueryResult<CloudImport> {
    diesel::insert_into(cloud_imports::table)
        .values((
            cloud_imports::id.eq(id),
            cloud_imports::account.eq(account),
            cloud_imports::region.eq(region),
            cloud_imports::instance_ids.eq(instance_ids),
            cloud_imports::tag_key.eq(tag.map(|t| t.0)),
            cloud_imports::tag_value.eq(tag.map(|t| t.1)),
            cloud_imports::state.eq("pending"),
            cloud_imports::requested_by.eq(requested_by),
        ))
        .returning(CloudImport::as_returning())
        .get_result(conn)
        .await
}

pub async fn find_import(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<CloudImport>> {
    cloud_imports::table.find(id).select(CloudImport::as_select()).first(conn).await.optional()
}

pub async fn claim_imports(conn: &mut AsyncPgConnection, secs: i64) -> QueryResult<Vec<CloudImport>> {
    diesel::sql_query(
        "UPDATE cloud_imports SET claimed_until = now() + make_interval(secs => $1)
         WHERE id IN (SELECT id FROM cloud_imports WHERE state = 'pending'
                      AND (claimed_until IS NULL OR claimed_until < now())
                      ORDER BY created_at LIMIT 5 FOR UPDATE SKIP LOCKED)
         RETURNING *",
    )
    .bind::<BigInt, _>(secs)
    .load(conn)
    .await
}

pub async fn finish_import(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    machines: &[Uuid],
    error: Option<&str>,
) -> QueryResult<usize> {
    diesel::update(cloud_imports::table.find(id))
        .set((
            cloud_imports::state.eq(if error.is_some() { "failed" } else { "done" }),
            cloud_imports::finished_at.eq(diesel::dsl::now),
            cloud_imports::machine_ids.eq(machines),
            cloud_imports::error.eq(error),
        ))
        .execute(conn)
        .await
}
