//! Leases, and what placement reads: free machines, the inventory, what is held where.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, Int4, Nullable, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::schema::leases;
use super::{Json, Page};
use crate::domain::cloud::Placement;
use crate::domain::placement::{Candidate, Demand, Requirements};
use crate::domain::usage_policy::Purpose;
use crate::domain::{
    Arch, DonationId, DonationModel, DonorId, HolderKind, JobId, Labels, LeaseId, LeaseState, LifecycleState,
    MachineId, UsagePolicy,
};

#[derive(Debug, Clone, Queryable, QueryableByName, Selectable)]
#[diesel(table_name = leases, check_for_backend(diesel::pg::Pg))]
pub struct Lease {
    pub id: LeaseId,
    pub state: LeaseState,
    pub holder_kind: HolderKind,
    pub holder_id: Uuid,
    pub holder_name: String,
    pub idempotency_key: Option<String>,
    pub request_hash: Vec<u8>,
    pub tenant: String,
    pub purpose: Purpose,
    pub priority: i32,
    pub arch: Arch,
    pub min_cores: i32,
    pub min_memory_mib: i64,
    pub min_disk_gib: i64,
    pub labels: Json<Labels>,
    pub trusted_only: bool,
    pub duration_secs: i32,
    pub ssh_public_key: Option<String>,
    pub queued_at: DateTime<Utc>,
    pub deadline: DateTime<Utc>,
    pub machine_id: Option<MachineId>,
    pub donation_id: Option<DonationId>,
    pub donor_id: Option<DonorId>,
    pub granted_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub end_reason: Option<String>,
    /// The job this lease is an attempt of, if any.
    pub job_id: Option<JobId>,
    pub placement: Placement,
    pub max_lab_wait_secs: i32,
    /// Why a queued lease is not on a cloud, or what is being launched for it.
    pub cloud_note: Option<String>,
    /// The cloud instance it was granted on.
    pub cloud_instance_id: Option<Uuid>,
}

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = leases)]
pub struct NewLease {
    pub id: LeaseId,
    pub state: LeaseState,
    pub holder_kind: HolderKind,
    pub holder_id: Uuid,
    pub holder_name: String,
    pub idempotency_key: Option<String>,
    pub request_hash: Vec<u8>,
    pub tenant: String,
    pub purpose: Purpose,
    pub priority: i32,
    pub arch: Arch,
    pub min_cores: i32,
    pub min_memory_mib: i64,
    pub min_disk_gib: i64,
    pub labels: Json<Labels>,
    pub trusted_only: bool,
    pub duration_secs: i32,
    pub ssh_public_key: Option<String>,
    pub deadline: DateTime<Utc>,
    pub job_id: Option<JobId>,
    pub placement: Placement,
    pub max_lab_wait_secs: i32,
}

/// A lease's requirements and placement terms, whether written yet or not: the columns
/// `Lease` and `NewLease` share.
macro_rules! demand_accessors {
    ($ty:ty) => {
        impl $ty {
            /// What the lease needs of a machine, as the API states it.
            pub fn requirements(&self) -> Requirements {
                Requirements {
                    arch: self.arch,
                    min_cores: self.min_cores,
                    min_memory_gib: self.min_memory_mib / 1024,
                    min_disk_gib: self.min_disk_gib,
                    labels: self.labels.0.clone(),
                }
            }

            /// What placement needs of the lease.
            pub fn demand(&self) -> Demand {
                Demand {
                    requirements: self.requirements(),
                    purpose: self.purpose,
                    duration: chrono::Duration::seconds(self.duration_secs.into()),
                    trusted_only: self.trusted_only,
                    placement: self.placement,
                }
            }
        }
    };
}

demand_accessors!(Lease);
demand_accessors!(NewLease);

/// An arbitrary constant: the advisory lock of a placement round.
const PLACEMENT_LOCK: i64 = 0x466c_6565_7450_6c61; // "FleetPla"

/// Waits for the placement lock, held until the transaction ends: one round at a time across
/// replicas.
pub async fn lock_placement(conn: &mut AsyncPgConnection) -> QueryResult<()> {
    diesel::sql_query(format!("SELECT pg_advisory_xact_lock({PLACEMENT_LOCK})")).execute(conn).await.map(drop)
}

/// Inserts queued leases; one whose idempotency key its holder already used is skipped.
/// Returns the ids inserted.
pub async fn insert_queued(conn: &mut AsyncPgConnection, new: &[NewLease]) -> QueryResult<Vec<LeaseId>> {
    if new.is_empty() {
        return Ok(Vec::new());
    }
    diesel::insert_into(leases::table)
        .values(new)
        .on_conflict_do_nothing()
        .returning(leases::id)
        .get_results(conn)
        .await
}

/// For each service-token holder among `holders`: its own cap on queued leases (`None`: the
/// configuration's) and how many leases it has queued now, besides `besides` (this round's).
/// Leases of jobs count towards the jobs' cap, not this one. Holders that are not service
/// tokens (ops) have no cap and are left out.
pub async fn queued_lease_caps(
    conn: &mut AsyncPgConnection,
    holders: &[Uuid],
    besides: &[LeaseId],
) -> QueryResult<Vec<(Uuid, Option<i32>, i64)>> {
    use super::schema::api_tokens;
    let caps: Vec<(Uuid, Option<i32>)> = api_tokens::table
        .filter(api_tokens::id.eq_any(holders))
        .filter(api_tokens::role.eq(crate::domain::Role::Ci))
        .select((api_tokens::id, api_tokens::max_queued_leases))
        .load(conn)
        .await?;
    let ids: Vec<Uuid> = caps.iter().map(|(id, _)| *id).collect();
    let counts: HashMap<Uuid, i64> = leases::table
        .filter(leases::holder_id.eq_any(&ids))
        .filter(leases::state.eq(LeaseState::Queued))
        .filter(leases::job_id.is_null())
        .filter(leases::id.ne_all(besides))
        .group_by(leases::holder_id)
        .select((leases::holder_id, diesel::dsl::count_star()))
        .load::<(Uuid, i64)>(conn)
        .await?
        .into_iter()
        .collect();
    Ok(caps.into_iter().map(|(id, cap)| (id, cap, counts.get(&id).copied().unwrap_or(0))).collect())
}

/// The leases a holder made with these idempotency keys.
pub async fn by_keys(conn: &mut AsyncPgConnection, holder: Uuid, keys: &[String]) -> QueryResult<Vec<Lease>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    leases::table
        .filter(leases::holder_id.eq(holder))
        .filter(leases::idempotency_key.eq_any(keys))
        .select(Lease::as_select())
        .load(conn)
        .await
}

pub async fn find(conn: &mut AsyncPgConnection, id: LeaseId) -> QueryResult<Option<Lease>> {
    leases::table.find(id).select(Lease::as_select()).first(conn).await.optional()
}

pub async fn lock(conn: &mut AsyncPgConnection, id: LeaseId) -> QueryResult<Option<Lease>> {
    leases::table.find(id).select(Lease::as_select()).for_update().first(conn).await.optional()
}

pub async fn load(conn: &mut AsyncPgConnection, ids: &[LeaseId]) -> QueryResult<Vec<Lease>> {
    leases::table.filter(leases::id.eq_any(ids)).select(Lease::as_select()).load(conn).await
}

/// Whose leases a listing shows.
#[derive(Debug, Clone, Copy)]
pub enum Scope {
    All,
    Holder(Uuid),
    /// Leases on a donor's machines.
    Donor(DonorId),
}

#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub states: Vec<LeaseState>,
    pub tenant: Option<String>,
    pub arch: Option<Arch>,
    pub machine_id: Option<MachineId>,
}

/// Newest first.
pub async fn list(
    conn: &mut AsyncPgConnection,
    scope: Scope,
    filter: &Filter,
    page: Page<LeaseId>,
) -> QueryResult<Vec<Lease>> {
    let mut query = leases::table.select(Lease::as_select()).into_boxed();
    match scope {
        Scope::All => {}
        Scope::Holder(holder) => query = query.filter(leases::holder_id.eq(holder)),
        Scope::Donor(donor) => query = query.filter(leases::donor_id.eq(donor)),
    }
    if !filter.states.is_empty() {
        query = query.filter(leases::state.eq_any(filter.states.clone()));
    }
    if let Some(tenant) = &filter.tenant {
        query = query.filter(leases::tenant.eq(tenant.clone()));
    }
    if let Some(arch) = filter.arch {
        query = query.filter(leases::arch.eq(arch));
    }
    if let Some(machine) = filter.machine_id {
        query = query.filter(leases::machine_id.eq(machine));
    }
    if let Some(after) = page.after {
        query = query.filter(leases::id.lt(after));
    }
    query.order(leases::id.desc()).limit(page.fetch_limit()).load(conn).await
}

/// Ends granted leases whose time is up. Returns them.
pub async fn reclaim_expired(conn: &mut AsyncPgConnection) -> QueryResult<Vec<Lease>> {
    diesel::sql_query(
        "UPDATE leases SET state = 'expired', ended_at = now(), end_reason = 'its time ran out'
         WHERE state = 'granted' AND expires_at <= now() RETURNING *",
    )
    .load(conn)
    .await
}

/// Fails granted leases whose machine left the pool (maintenance, paused, withdrawn...), went
/// silent or was quarantined. A machine that lost a lease by going silent or being
/// quarantined counts it against its reliability. Returns the failed leases.
pub async fn fail_lost(conn: &mut AsyncPgConnection) -> QueryResult<Vec<Lease>> {
    diesel::sql_query(
        "WITH lost AS (
             UPDATE leases AS l SET state = 'failed', ended_at = now(), end_reason = CASE
                 WHEN m.quarantined_at IS NOT NULL THEN 'its machine was quarantined'
                 WHEN m.health = 'unreachable' THEN 'its machine became unreachable'
                 ELSE 'its machine left the pool (' || m.lifecycle || ')' END
             FROM machines m
             WHERE m.id = l.machine_id AND l.state = 'granted'
               AND (m.lifecycle <> 'ready' OR m.health = 'unreachable' OR m.quarantined_at IS NOT NULL)
             RETURNING l.*, (m.health = 'unreachable' OR m.quarantined_at IS NOT NULL) AS machine_failed),
         counted AS (
             UPDATE machine_status s SET lost_leases = lost_leases + 1
             FROM lost WHERE s.machine_id = lost.machine_id AND lost.machine_failed)
         SELECT * FROM lost",
    )
    .load(conn)
    .await
}

/// Fails queued leases that waited past their deadline. Returns them.
pub async fn fail_overdue(conn: &mut AsyncPgConnection) -> QueryResult<Vec<Lease>> {
    diesel::sql_query(
        "UPDATE leases SET state = 'failed', ended_at = now(),
             end_reason = 'no machine became free before its deadline'
         WHERE state = 'queued' AND deadline <= now() RETURNING *",
    )
    .load(conn)
    .await
}

/// The queue, oldest first, at most `limit`.
pub async fn queued(conn: &mut AsyncPgConnection, limit: i64) -> QueryResult<Vec<Lease>> {
    leases::table
        .filter(leases::state.eq(LeaseState::Queued))
        .order(leases::queued_at.asc())
        .limit(limit)
        .select(Lease::as_select())
        .load(conn)
        .await
}

/// Removes leases that were never answered as accepted (refused in the round that wrote them).
pub async fn delete(conn: &mut AsyncPgConnection, ids: &[LeaseId]) -> QueryResult<usize> {
    diesel::delete(leases::table.filter(leases::id.eq_any(ids)).filter(leases::state.eq(LeaseState::Queued)))
        .execute(conn)
        .await
}

/// A placement decision.
#[derive(Debug, Clone, Copy)]
pub struct Grant {
    pub lease: LeaseId,
    pub machine: MachineId,
    /// `None` on a machine rented from a cloud.
    pub donation: Option<DonationId>,
    pub donor: Option<DonorId>,
}

/// Grants queued leases their machines, each for its duration from the database's now, and
/// counts the grant on the machine. The unique index on granted leases per machine makes a
/// double booking fail the whole statement rather than happen.
pub async fn grant(conn: &mut AsyncPgConnection, grants: &[Grant]) -> QueryResult<Vec<Lease>> {
    if grants.is_empty() {
        return Ok(Vec::new());
    }
    let lease: Vec<Uuid> = grants.iter().map(|g| g.lease.0).collect();
    let machine: Vec<Uuid> = grants.iter().map(|g| g.machine.0).collect();
    let donation: Vec<Option<Uuid>> = grants.iter().map(|g| g.donation.map(|d| d.0)).collect();
    let donor: Vec<Option<Uuid>> = grants.iter().map(|g| g.donor.map(|d| d.0)).collect();
    let granted: Vec<Lease> = diesel::sql_query(
        "UPDATE leases AS l SET state = 'granted', machine_id = g.machine, donation_id = g.donation,
             donor_id = g.donor, granted_at = now(), expires_at = now() + make_interval(secs => l.duration_secs)
         FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[]) AS g(lease, machine, donation, donor)
         WHERE l.id = g.lease AND l.state = 'queued'
         RETURNING l.*",
    )
    .bind::<Array<diesel::sql_types::Uuid>, _>(&lease)
    .bind::<Array<diesel::sql_types::Uuid>, _>(&machine)
    .bind::<Array<Nullable<diesel::sql_types::Uuid>>, _>(&donation)
    .bind::<Array<Nullable<diesel::sql_types::Uuid>>, _>(&donor)
    .load(conn)
    .await?;
    diesel::sql_query(
        "UPDATE machine_status SET leases_granted = leases_granted + 1 WHERE machine_id = ANY ($1::uuid[])",
    )
    .bind::<Array<diesel::sql_types::Uuid>, _>(&machine)
    .execute(conn)
    .await?;
    Ok(granted)
}

/// Ends one lease (released by its holder, or cancelled while queued).
pub async fn end(conn: &mut AsyncPgConnection, id: LeaseId, state: LeaseState, reason: &str) -> QueryResult<Lease> {
    diesel::update(leases::table.find(id))
        .set((leases::state.eq(state), leases::ended_at.eq(diesel::dsl::now), leases::end_reason.eq(reason)))
        .returning(Lease::as_returning())
        .get_result(conn)
        .await
}

pub async fn set_expiry(conn: &mut AsyncPgConnection, id: LeaseId, expires_at: DateTime<Utc>) -> QueryResult<Lease> {
    diesel::update(leases::table.find(id))
        .set(leases::expires_at.eq(expires_at))
        .returning(Lease::as_returning())
        .get_result(conn)
        .await
}

/// Leases held now, by donation, donor and tenant.
#[derive(Debug, Clone, QueryableByName)]
pub struct Held {
    #[diesel(sql_type = Nullable<diesel::sql_types::Uuid>)]
    pub donation_id: Option<DonationId>,
    #[diesel(sql_type = Nullable<diesel::sql_types::Uuid>)]
    pub donor_id: Option<DonorId>,
    #[diesel(sql_type = Text)]
    pub tenant: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub count: i64,
}

pub async fn held(conn: &mut AsyncPgConnection) -> QueryResult<Vec<Held>> {
    diesel::sql_query(
        "SELECT donation_id, donor_id, tenant, count(*) AS count FROM leases
         WHERE state = 'granted' GROUP BY donation_id, donor_id, tenant",
    )
    .load(conn)
    .await
}

#[derive(Debug, Clone, QueryableByName)]
struct MachineRow {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    id: MachineId,
    #[diesel(sql_type = Nullable<diesel::sql_types::Uuid>)]
    donor_id: Option<DonorId>,
    #[diesel(sql_type = Nullable<diesel::sql_types::Uuid>)]
    donation_id: Option<DonationId>,
    #[diesel(sql_type = Text)]
    arch: Arch,
    #[diesel(sql_type = Int4)]
    cpu_cores: i32,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    memory_mib: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    disk_gib: i64,
    #[diesel(sql_type = diesel::sql_types::Jsonb)]
    labels: Json<Labels>,
    #[diesel(sql_type = Nullable<Text>)]
    model: Option<DonationModel>,
    #[diesel(sql_type = Nullable<diesel::sql_types::Jsonb>)]
    usage_policy: Option<Json<UsagePolicy>>,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    leases_granted: i64,
    #[diesel(sql_type = Int4)]
    unreachable_episodes: i32,
    #[diesel(sql_type = Int4)]
    lost_leases: i32,
    #[diesel(sql_type = Int4)]
    crashed_jobs: i32,
    #[diesel(sql_type = Nullable<Text>)]
    ssh_host: Option<String>,
    #[diesel(sql_type = Nullable<Int4>)]
    ssh_port: Option<i32>,
    #[diesel(sql_type = Nullable<Text>)]
    ssh_user: Option<String>,
}

/// How a lease holder reaches a machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    pub host: String,
    pub port: i32,
    pub user: String,
}

impl MachineRow {
    fn connection(&self) -> Option<Connection> {
        Some(Connection {
            host: self.ssh_host.clone()?,
            port: self.ssh_port.unwrap_or(22),
            user: self.ssh_user.clone().unwrap_or_default(),
        })
    }
}

const MACHINE_COLUMNS: &str = "m.id, m.donor_id, m.donation_id, m.arch, m.cpu_cores, m.memory_mib, m.disk_gib,
    m.labels, d.model, d.usage_policy, s.leases_granted, s.unreachable_episodes, s.lost_leases, s.crashed_jobs,
    m.ssh_host, m.ssh_port, m.ssh_user
    FROM machines m LEFT JOIN donations d ON d.id = m.donation_id JOIN machine_status s ON s.machine_id = m.id";

fn candidates_of(rows: Vec<MachineRow>) -> Vec<Candidate> {
    // Machines of one donation share its policy.
    let mut policies: std::collections::HashMap<DonationId, Arc<UsagePolicy>> = std::collections::HashMap::new();
    rows.into_iter()
        .map(|r| {
            let policy = match (r.model, r.usage_policy, r.donation_id) {
                (Some(DonationModel::UsageRight), Some(Json(policy)), Some(donation)) => {
                    Some(policies.entry(donation).or_insert_with(|| Arc::new(policy)).clone())
                }
                // A usage-right donation without terms allows nothing; the model requires them.
                (Some(DonationModel::UsageRight), _, _) => Some(Arc::new(UsagePolicy {
                    purposes: Vec::new(),
                    time_zone: None,
                    windows: Vec::new(),
                    max_concurrent_leases: 0,
                    max_lease_minutes: 0,
                })),
                _ => None,
            };
            Candidate {
                machine_id: r.id,
                donor_id: r.donor_id,
                donation_id: r.donation_id,
                cloud: r.donation_id.is_none(),
                arch: r.arch,
                cores: r.cpu_cores,
                memory_mib: r.memory_mib,
                disk_gib: r.disk_gib,
                labels: r.labels.0,
                trusted: matches!(r.model, Some(DonationModel::Ownership | DonationModel::Loan)),
                policy,
                leases_granted: r.leases_granted,
                unreachable_episodes: r.unreachable_episodes,
                lost_leases: r.lost_leases,
                crashed_jobs: r.crashed_jobs,
            }
        })
        .collect()
}

/// Machines that could take a lease right now (ready, healthy, not quarantined, not leased,
/// and not a cloud instance launched for a lease still waiting for it, one that served a
/// lease already, or one on its way out), with how a holder would reach each.
pub async fn free_machines(conn: &mut AsyncPgConnection) -> QueryResult<(Vec<Candidate>, Vec<Option<Connection>>)> {
    let rows: Vec<MachineRow> = diesel::sql_query(format!(
        "SELECT {MACHINE_COLUMNS}
         WHERE m.lifecycle = 'ready' AND m.health = 'healthy' AND m.quarantined_at IS NULL
           AND NOT EXISTS (SELECT 1 FROM leases l WHERE l.machine_id = m.id AND l.state = 'granted')
           AND NOT EXISTS (SELECT 1 FROM cloud_instances i LEFT JOIN leases w ON w.id = i.lease_id
                           WHERE i.machine_id = m.id AND (w.state = 'queued' OR i.state <> 'ready'
                               OR (NOT i.imported AND EXISTS (
                                   SELECT 1 FROM leases u WHERE u.cloud_instance_id = i.id))))"
    ))
    .load(conn)
    .await?;
    let connections = rows.iter().map(MachineRow::connection).collect();
    Ok((candidates_of(rows), connections))
}

#[derive(QueryableByName)]
struct Epoch {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    epoch: i64,
}

/// Bumps the placement epoch (after a round's own grants, which other replicas must hear of)
/// and returns the new value.
pub async fn bump_placement_epoch(conn: &mut AsyncPgConnection) -> QueryResult<i64> {
    let row: Epoch =
        diesel::sql_query("UPDATE placement_epoch SET epoch = epoch + 1 RETURNING epoch").get_result(conn).await?;
    Ok(row.epoch)
}

/// The counter every change to what placement reads bumps (see the migration).
pub async fn placement_epoch(conn: &mut AsyncPgConnection) -> QueryResult<i64> {
    let row: Epoch = diesel::sql_query("SELECT epoch FROM placement_epoch").get_result(conn).await?;
    Ok(row.epoch)
}

/// Every machine that is or may become usable: accepted and not gone for good. What no machine
/// here could take, no amount of waiting will grant.
pub async fn inventory(conn: &mut AsyncPgConnection) -> QueryResult<Vec<Candidate>> {
    let states: Vec<&str> = CAPACITY.iter().map(|s| s.as_str()).collect();
    let rows: Vec<MachineRow> = diesel::sql_query(format!("SELECT {MACHINE_COLUMNS} WHERE m.lifecycle = ANY ($1)"))
        .bind::<Array<Text>, _>(states)
        .load(conn)
        .await?;
    Ok(candidates_of(rows))
}

/// The lifecycle states of machines that count as capacity.
const CAPACITY: [LifecycleState; 7] = [
    LifecycleState::Approved,
    LifecycleState::InTransit,
    LifecycleState::Received,
    LifecycleState::Onboarding,
    LifecycleState::Ready,
    LifecycleState::Maintenance,
    LifecycleState::PausedByDonor,
];

/// Where a queued lease stands: how many queued leases for the same architecture are ahead
/// of it (higher priority, or equal and older), and when granted leases on machines of that
/// architecture end, soonest first (as many as are ahead, plus one).
pub async fn queue_standing(conn: &mut AsyncPgConnection, lease: &Lease) -> QueryResult<(i64, Vec<DateTime<Utc>>)> {
    let ahead: i64 = leases::table
        .filter(leases::state.eq(LeaseState::Queued))
        .filter(leases::arch.eq(lease.arch))
        .filter(leases::id.ne(lease.id))
        .filter(
            leases::priority
                .gt(lease.priority)
                .or(leases::priority.eq(lease.priority).and(leases::queued_at.le(lease.queued_at))),
        )
        .count()
        .get_result(conn)
        .await?;
    let ends: Vec<Option<DateTime<Utc>>> = leases::table
        .filter(leases::state.eq(LeaseState::Granted))
        .filter(leases::arch.eq(lease.arch))
        .order(leases::expires_at.asc())
        .limit(ahead + 1)
        .select(leases::expires_at)
        .load(conn)
        .await?;
    Ok((ahead, ends.into_iter().flatten().collect()))
}

/// [`queue_standing`] for many queued leases in one query: for each, how many leases of its
/// architecture are ahead of it, and when the granted lease that many ends from now ends
/// (its estimated start).
pub async fn queue_standings(
    conn: &mut AsyncPgConnection,
    ids: &[LeaseId],
) -> QueryResult<HashMap<LeaseId, (i64, Option<DateTime<Utc>>)>> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Uuid)]
        id: Uuid,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        ahead: i64,
        #[diesel(sql_type = Nullable<diesel::sql_types::Timestamptz>)]
        estimated_start_at: Option<DateTime<Utc>>,
    }
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    // Ahead of a lease: every other queued lease of its architecture with a higher priority, or
    // the same priority and queued no later (a RANGE frame counts those peers).
    let rows: Vec<Row> = diesel::sql_query(
        "WITH ranked AS ( \
           SELECT id, arch, count(*) OVER (PARTITION BY arch ORDER BY priority DESC, queued_at ASC \
             RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) - 1 AS ahead \
           FROM leases WHERE state = 'queued'), \
         ends AS ( \
           SELECT arch, expires_at, row_number() OVER (PARTITION BY arch ORDER BY expires_at) - 1 AS n \
           FROM leases WHERE state = 'granted' AND expires_at IS NOT NULL) \
         SELECT r.id, r.ahead, e.expires_at AS estimated_start_at \
         FROM ranked r LEFT JOIN ends e ON e.arch = r.arch AND e.n = r.ahead \
         WHERE r.id = ANY($1)",
    )
    .bind::<Array<diesel::sql_types::Uuid>, _>(ids.iter().map(|id| id.0).collect::<Vec<_>>())
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(|r| (LeaseId(r.id), (r.ahead, r.estimated_start_at))).collect())
}

/// The channel work changes are announced on (see `work.rs`).
const WORK_CHANNEL: &str = "fleetyard_work";

/// Starts receiving work announcements on this connection.
pub async fn listen_for_work(conn: &mut AsyncPgConnection) -> QueryResult<()> {
    diesel::sql_query(format!("LISTEN {WORK_CHANNEL}")).execute(conn).await.map(drop)
}

/// Tells every replica that these machines' work changed; sent when the transaction commits.
pub async fn announce_work(conn: &mut AsyncPgConnection, machines: &[MachineId]) -> QueryResult<()> {
    if machines.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = machines.iter().map(|m| m.0).collect();
    diesel::sql_query(format!("SELECT pg_notify('{WORK_CHANNEL}', id::text) FROM unnest($1::uuid[]) AS id"))
        .bind::<Array<diesel::sql_types::Uuid>, _>(ids)
        .execute(conn)
        .await
        .map(drop)
}

/// The leases a machine holds now (at most one), for its agent.
pub async fn held_by_machine(conn: &mut AsyncPgConnection, machine: MachineId) -> QueryResult<Vec<Lease>> {
    leases::table
        .filter(leases::machine_id.eq(machine))
        .filter(leases::state.eq(LeaseState::Granted))
        .select(Lease::as_select())
        .load(conn)
        .await
}

/// When granted leases on donated machines end, by architecture, soonest first: when the labs
/// can be expected to take the next waiting leases.
pub async fn lab_lease_ends(
    conn: &mut AsyncPgConnection,
) -> QueryResult<std::collections::HashMap<Arch, Vec<DateTime<Utc>>>> {
    #[derive(QueryableByName)]
    struct End {
        #[diesel(sql_type = Text)]
        arch: Arch,
        #[diesel(sql_type = diesel::sql_types::Timestamptz)]
        expires_at: DateTime<Utc>,
    }
    let rows: Vec<End> = diesel::sql_query(
        "SELECT arch, expires_at FROM leases
         WHERE state = 'granted' AND donation_id IS NOT NULL ORDER BY expires_at",
    )
    .load(conn)
    .await?;
    let mut ends: std::collections::HashMap<Arch, Vec<DateTime<Utc>>> = std::collections::HashMap::new();
    for row in rows {
        ends.entry(row.arch).or_default().push(row.expires_at);
    }
    Ok(ends)
}

/// Records, for queued leases, why they are not on a cloud or what is launched for them.
pub async fn set_cloud_notes(conn: &mut AsyncPgConnection, notes: &[(LeaseId, Option<String>)]) -> QueryResult<usize> {
    if notes.is_empty() {
        return Ok(0);
    }
    let ids: Vec<Uuid> = notes.iter().map(|(id, _)| id.0).collect();
    let texts: Vec<Option<String>> = notes.iter().map(|(_, note)| note.clone()).collect();
    diesel::sql_query(
        "UPDATE leases l SET cloud_note = n.note
         FROM unnest($1::uuid[], $2::text[]) AS n(id, note) WHERE l.id = n.id AND l.state = 'queued'",
    )
    .bind::<Array<diesel::sql_types::Uuid>, _>(ids)
    .bind::<Array<Nullable<Text>>, _>(texts)
    .execute(conn)
    .await
}

/// Puts the plain leases granted on these machines (which were lost) back in the queue, as if
/// never granted, with `note`; a job's attempt is left to fail with its machine, so that the
/// job is queued again by its own rules.
pub async fn requeue_on(conn: &mut AsyncPgConnection, machines: &[MachineId], note: &str) -> QueryResult<usize> {
    if machines.is_empty() {
        return Ok(0);
    }
    let ids: Vec<Uuid> = machines.iter().map(|m| m.0).collect();
    diesel::sql_query(
        "UPDATE leases SET state = 'queued', machine_id = NULL, donation_id = NULL, donor_id = NULL,
             granted_at = NULL, expires_at = NULL, cloud_instance_id = NULL, cloud_note = $2,
             deadline = now() + (deadline - queued_at)
         WHERE machine_id = ANY ($1) AND state = 'granted' AND job_id IS NULL",
    )
    .bind::<Array<diesel::sql_types::Uuid>, _>(ids)
    .bind::<Text, _>(note)
    .execute(conn)
    .await
}
