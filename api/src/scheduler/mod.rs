//! The lease scheduler: placement rounds, batched.
//!
//! Handlers do not write lease requests themselves: they hand them to this replica's
//! scheduler task and wait for the answer. The task gathers whatever arrived since its last
//! round and runs one round for all of it, in one transaction:
//!
//! 1. take the placement lock (`pg_advisory_xact_lock`): one round at a time across replicas;
//! 2. reclaim expired leases, fail those whose machine left the pool or went silent, and
//!    those that waited past their deadline; move the jobs of those attempts along
//!    (`db::jobs::follow_leases`: queued again, or failed);
//! 3. answer retries (same holder, same `Idempotency-Key`) with the lease they made;
//! 4. write the new requests into the queue;
//! 5. read the queue, the free machines and what is held where, and let
//!    [`placement::plan`] decide; leases whose cloud instance is ready take it;
//! 6. refuse new requests that no machine in the inventory, and no cloud offer, could ever
//!    take;
//! 7. burst ([`burst`]): leases the labs cannot place within their tolerance get a cloud
//!    instance *intent* (a `requested` row, never a cloud call), the cheapest offer that fits
//!    within the caps and the tenant's budget; the cloud worker launches them after the
//!    round commits. Why a lease is not on a cloud is written on it;
//! 8. grant what was planned, in one statement, and mark the jobs of granted attempts running.
//!
//! Between rounds the task keeps what it read ([`Snapshot`]: free machines, holdings, the
//! inventory) for as long as the database's placement epoch is where this replica left it.
//!
//! A round runs when a request arrives, when [`Scheduler::wake`] is called (a lease ended, a
//! machine became ready), and every `scheduler_tick_millis` otherwise (another replica's
//! change, a donor's window opening). Batching is what makes this fast: one commit grants
//! as many leases as arrived meanwhile. The partial unique index on granted leases per
//! machine is the last word on double booking, whatever the lock does.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use tokio::sync::{Notify, mpsc, oneshot, watch};

mod burst;

use crate::config::Config;
use crate::db;
use crate::db::leases::{Connection, Grant, Lease, NewLease};
use crate::domain::cloud::Placement;
use crate::domain::placement::{self, Candidate, Holdings};
use crate::domain::queue::Waiting;
use crate::domain::{LeaseId, MachineId, Problem};
use crate::error::ApiError;
use crate::error_code::ErrorCode;

/// The most requests one round takes in; the rest wait for the next.
const MAX_BATCH: usize = 2_000;
/// The most queued leases one round considers, oldest first.
const MAX_QUEUE: i64 = 10_000;
/// Requests waiting for a round on this replica, at most; beyond, callers are told to retry.
const MAX_WAITING: usize = 20_000;

/// What a round answers a request.
#[derive(Debug)]
pub enum Answer {
    /// Written in this round: granted (with how to reach the machine) or queued.
    Accepted(Lease, Option<Connection>),
    /// A retry of a request already written: the lease it made, as it stands.
    Replayed(Lease),
    /// Nothing could ever take it (`unsatisfiable`), or only a cloud could and the tenant's
    /// budget does not allow it (`cloud-budget-exhausted`); nothing was written.
    Refused { code: ErrorCode, reason: String },
}

struct Request {
    lease: NewLease,
    reply: oneshot::Sender<Result<Answer, ApiError>>,
}

/// This replica's handle on the scheduler task.
pub struct Scheduler {
    intake: mpsc::Sender<Request>,
    wake: Arc<Notify>,
    rounds: watch::Receiver<u64>,
}

impl Scheduler {
    /// Starts the scheduler task (needs a tokio runtime). `cloud_bell` wakes the cloud worker
    /// after a round that wrote cloud intents.
    pub fn start(pool: db::Pool, config: Arc<Config>, cloud_bell: Arc<Notify>) -> Self {
        let (intake, requests) = mpsc::channel(MAX_WAITING);
        let wake = Arc::new(Notify::new());
        let (rounds_tx, rounds) = watch::channel(0);
        tokio::spawn(run(pool, config, requests, wake.clone(), rounds_tx, cloud_bell));
        Scheduler { intake, wake, rounds }
    }

    /// Puts a request into the next round and waits for its answer.
    pub async fn submit(&self, lease: NewLease) -> Result<Answer, ApiError> {
        let (reply, answer) = oneshot::channel();
        self.intake.try_send(Request { lease, reply }).map_err(|_| {
            ApiError::unavailable(
                ErrorCode::Busy,
                "the scheduler has too many requests waiting; retry shortly with the same Idempotency-Key",
            )
        })?;
        answer.await.map_err(|_| ApiError::internal(anyhow::anyhow!("the scheduler task stopped")))?
    }

    /// Asks for a round soon: a lease ended or a machine became free.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Changes after every round on this replica.
    pub fn rounds(&self) -> watch::Receiver<u64> {
        self.rounds.clone()
    }
}

async fn run(
    pool: db::Pool,
    config: Arc<Config>,
    mut requests: mpsc::Receiver<Request>,
    wake: Arc<Notify>,
    rounds: watch::Sender<u64>,
    cloud_bell: Arc<Notify>,
) {
    let tick = Duration::from_millis(config.scheduler_tick_millis);
    let mut snapshot = None;
    loop {
        let mut batch = Vec::new();
        tokio::select! {
            first = requests.recv() => match first {
                Some(request) => batch.push(request),
                None => return, // every handle is gone: the server is stopping
            },
            () = wake.notified() => {}
            () = tokio::time::sleep(tick) => {}
        }
        while batch.len() < MAX_BATCH {
            match requests.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        let (leases, replies): (Vec<NewLease>, Vec<_>) = batch.into_iter().map(|r| (r.lease, r.reply)).unzip();
        let answers = match pool.get().await {
            Ok(mut conn) => round_with(&mut conn, &config, leases, &mut snapshot).await,
            Err(e) => Err(ApiError::from(e)),
        };
        match answers {
            Ok(report) => {
                if report.cloud_intents > 0 {
                    cloud_bell.notify_one();
                }
                for (reply, answer) in replies.into_iter().zip(report.answers) {
                    let _ = reply.send(answer);
                }
            }
            Err(e) => {
                tracing::warn!(code = %e.code(), "placement round failed: {e}");
                for reply in replies {
                    let _ = reply.send(Err(e.to_shared()));
                }
            }
        }
        rounds.send_modify(|n| *n += 1);
    }
}

/// What a round did.
#[derive(Debug, Default)]
pub struct Report {
    /// One per request given, in order.
    pub answers: Vec<Result<Answer, ApiError>>,
    pub granted: usize,
    pub expired: usize,
    /// Granted leases whose machine left the pool, went silent or was quarantined.
    pub lost: usize,
    pub overdue: usize,
    /// Cloud instances this round asked the cloud worker to launch.
    pub cloud_intents: usize,
}

/// Where each request of a round stands while the round runs.
enum Slot {
    /// Answered already (a retry of an earlier round's request).
    Answered(Box<Result<Answer, ApiError>>),
    /// New: its index among the leases written this round.
    Fresh(usize),
    /// The same holder and key as an earlier request of this round.
    Repeat(usize),
}

/// An epoch no database ever has: the snapshot is read again next round.
const STALE: i64 = -1;

/// What placement read, kept between rounds while nothing it depends on changed (the
/// database's placement epoch says so).
pub struct Snapshot {
    epoch: i64,
    /// Free machines, and how to reach each (same order).
    free: Vec<Candidate>,
    connections: Vec<Option<Connection>>,
    holdings: Holdings,
    /// The whole inventory, read when a request first needs judging against it.
    inventory: Option<Vec<Candidate>>,
}

/// One placement round for `new` requests (possibly none), reading everything afresh.
/// Idempotent; tests call it directly.
pub async fn round(conn: &mut AsyncPgConnection, config: &Config, new: Vec<NewLease>) -> Result<Report, ApiError> {
    round_with(conn, config, new, &mut None).await
}

/// One placement round, reusing `snapshot` if it is still current and leaving the updated
/// one there (none if the round failed).
pub async fn round_with(
    conn: &mut AsyncPgConnection,
    config: &Config,
    new: Vec<NewLease>,
    snapshot: &mut Option<Snapshot>,
) -> Result<Report, ApiError> {
    let cached = snapshot.take();
    let (report, kept) = conn
        .transaction::<_, ApiError, _>(async move |conn| {
            db::leases::lock_placement(conn).await?;
            let (mut snap, ended) = reclaim(conn, cached).await?;
            let (slots, fresh) = sort_out_retries(conn, new).await?;
            let inserted = db::leases::insert_queued(conn, &fresh).await?;
            if inserted.len() != fresh.len() {
                // Another replica wrote the same key between the look-up and the insert: its
                // round committed first, so a retry finds that lease.
                return Err(ApiError::conflict(
                    ErrorCode::IdempotencyRace,
                    "a request with this Idempotency-Key was being handled by another replica; retry it",
                ));
            }

            // A service token past its cap on queued leases is told to come back later.
            let capped = cap_queues(conn, config, &fresh).await?;

            // Place: leases whose cloud instance is ready take it; the plan gives out the rest.
            let mut queue = db::leases::queued(conn, MAX_QUEUE).await?;
            queue.retain(|l| !capped.contains_key(&l.id));
            let (planned, bound) = plan_queue(conn, config, &snap, &queue).await?;
            let placed: HashSet<LeaseId> =
                planned.iter().map(|(id, _)| *id).chain(bound.iter().map(|b| b.lease)).collect();

            // Refuse what nothing could ever take; send to a cloud what the labs cannot place
            // soon enough.
            let mut refused = judge(conn, config, &mut snap, &fresh, &placed).await?;
            refused.extend(capped);
            let burst = burst::run(conn, config, &queue, &placed, &fresh, &mut refused).await?;
            for lease in queue.iter_mut() {
                if let Some(note) = burst.notes.get(&lease.id) {
                    lease.cloud_note.clone_from(note);
                }
            }
            let ids: Vec<LeaseId> = refused.keys().copied().collect();
            db::leases::delete(conn, &ids).await?;

            let granted = grant(conn, config, &mut snap, &planned, &bound).await?;
            let granted_count = granted.len();
            // Requests that would not wait (`max_wait_minutes: 0`) and got nothing fail now.
            let gave_up = db::leases::fail_overdue(conn).await?;
            db::jobs::follow_leases(conn, &granted, &[], &gave_up).await?;

            let connection_of = take_from_snapshot(&mut snap, &planned, &queue);
            let answers = answer(conn, slots, &fresh, refused, granted, gave_up, &queue, &connection_of).await?;
            let report = Report {
                answers,
                granted: granted_count,
                expired: ended.expired,
                lost: ended.lost,
                overdue: ended.overdue,
                cloud_intents: burst.intents,
            };
            Ok((report, snap))
        })
        .await?;
    *snapshot = Some(kept);
    Ok(report)
}

/// What ended since the last round.
struct Ended {
    expired: usize,
    lost: usize,
    overdue: usize,
}

/// Phase 2: ends expired leases, those whose machine left the pool (when the epoch moved) and
/// those that waited too long; moves their jobs along. Returns what placement reads: the
/// cached snapshot if still current, else a fresh one.
async fn reclaim(conn: &mut AsyncPgConnection, cached: Option<Snapshot>) -> Result<(Snapshot, Ended), ApiError> {
    let expired = db::leases::reclaim_expired(conn).await?;
    let ended: Vec<MachineId> = expired.iter().filter_map(|l| l.machine_id).collect();
    db::leases::announce_work(conn, &ended).await?;

    // What placement reads: as last time if nothing changed since, else afresh.
    let epoch = db::leases::placement_epoch(conn).await?;
    let (snap, lost) = match cached {
        Some(snap) if snap.epoch == epoch => (snap, Vec::new()),
        _ => {
            let lost = db::leases::fail_lost(conn).await?;
            let ended: Vec<MachineId> = lost.iter().filter_map(|l| l.machine_id).collect();
            db::leases::announce_work(conn, &ended).await?;
            (read_snapshot(conn).await?, lost)
        }
    };
    // Jobs whose attempt ended with its lease go back to the queue (or fail).
    let ended_attempts: Vec<Lease> = expired.iter().chain(&lost).filter(|l| l.job_id.is_some()).cloned().collect();
    db::jobs::follow_leases(conn, &[], &ended_attempts, &[]).await?;
    let overdue = db::leases::fail_overdue(conn).await?;
    db::jobs::follow_leases(conn, &[], &[], &overdue).await?;
    Ok((snap, Ended { expired: expired.len(), lost: lost.len(), overdue: overdue.len() }))
}

/// Phase 3: a key its holder already used answers with that lease; the rest are new.
async fn sort_out_retries(
    conn: &mut AsyncPgConnection,
    new: Vec<NewLease>,
) -> Result<(Vec<Slot>, Vec<NewLease>), ApiError> {
    let known = known_keys(conn, &new).await?;
    let mut slots = Vec::with_capacity(new.len());
    let mut fresh: Vec<NewLease> = Vec::new();
    let mut first_with_key: HashMap<(uuid::Uuid, String), usize> = HashMap::new();
    for lease in new {
        let key = lease.idempotency_key.clone().map(|k| (lease.holder_id, k));
        match key {
            Some(key) if known.contains_key(&key) => {
                slots.push(Slot::Answered(Box::new(replay(known[&key].clone(), &lease))))
            }
            Some(key) if first_with_key.contains_key(&key) => {
                let first = first_with_key[&key];
                slots.push(if fresh[first].request_hash == lease.request_hash {
                    Slot::Repeat(first)
                } else {
                    Slot::Answered(Box::new(Err(key_reused())))
                });
            }
            key => {
                if let Some(key) = key {
                    first_with_key.insert(key, fresh.len());
                }
                slots.push(Slot::Fresh(fresh.len()));
                fresh.push(lease);
            }
        }
    }
    Ok((slots, fresh))
}

/// Phase 5: the plan for the queue. Leases whose cloud instance is ready take it (returned as
/// bound); the rest are planned onto the snapshot's free machines (lease, index into `free`).
async fn plan_queue(
    conn: &mut AsyncPgConnection,
    config: &Config,
    snap: &Snapshot,
    queue: &[Lease],
) -> Result<(Vec<(LeaseId, usize)>, Vec<db::clouds::BoundReady>), ApiError> {
    let clouds = !config.clouds.accounts.is_empty();
    let bound = if clouds { db::clouds::bound_ready(conn).await? } else { Vec::new() };
    let bound_leases: HashSet<LeaseId> = bound.iter().map(|b| b.lease).collect();
    let waiting = queue
        .iter()
        .filter(|l| !bound_leases.contains(&l.id))
        .map(|l| {
            let mut demand = l.demand();
            // A tenant with no cloud budget is not handed a cloud machine either (a warm or an
            // imported one) by the plan.
            if clouds && demand.placement == Placement::Any && config.clouds.budget_of(&l.tenant) <= 0 {
                demand.placement = Placement::Lab;
            }
            (waiting_of(l), demand)
        })
        .collect();
    let weights = &config.tenant_weights;
    let planned = placement::plan(
        waiting,
        &snap.free,
        snap.holdings.clone(),
        |t| weights.get(t).copied().unwrap_or(1.0),
        Utc::now(),
    );
    Ok((planned, bound))
}

/// Phase 8: writes the grants (planned and bound), tells the machines' agents, and moves the
/// placement epoch on, keeping this replica's snapshot current when nothing else changed.
async fn grant(
    conn: &mut AsyncPgConnection,
    config: &Config,
    snap: &mut Snapshot,
    planned: &[(LeaseId, usize)],
    bound: &[db::clouds::BoundReady],
) -> Result<Vec<Lease>, ApiError> {
    let mut grants: Vec<Grant> = planned
        .iter()
        .map(|(lease, i)| Grant {
            lease: *lease,
            machine: snap.free[*i].machine_id,
            donation: snap.free[*i].donation_id,
            donor: snap.free[*i].donor_id,
        })
        .collect();
    grants.extend(bound.iter().map(|b| Grant { lease: b.lease, machine: b.machine, donation: None, donor: None }));
    let granted = db::leases::grant(conn, &grants).await?;
    if !config.clouds.accounts.is_empty() && grants.iter().any(|g| g.donation.is_none()) {
        let ids: Vec<LeaseId> = granted.iter().filter(|l| l.donation_id.is_none()).map(|l| l.id).collect();
        db::clouds::note_grants(conn, &ids).await?;
    }
    let busy: Vec<MachineId> = granted.iter().filter_map(|l| l.machine_id).collect();
    db::leases::announce_work(conn, &busy).await?;
    if !granted.is_empty() {
        // Other replicas' snapshots are stale now. This one stays current (it is updated by
        // the round) unless something else changed meanwhile.
        let bumped = db::leases::bump_placement_epoch(conn).await?;
        snap.epoch = if bumped == snap.epoch + 1 { bumped } else { STALE };
    }
    Ok(granted)
}

/// Phase 6: new requests left unplaced that nothing could ever take, with the reason: no
/// machine in the inventory (for requests that may use the labs) and no cloud offer (for
/// requests that may use a cloud).
async fn judge(
    conn: &mut AsyncPgConnection,
    config: &Config,
    snap: &mut Snapshot,
    fresh: &[NewLease],
    placed: &HashSet<LeaseId>,
) -> Result<HashMap<LeaseId, Refusal>, ApiError> {
    let mut refused = HashMap::new();
    let unplaced: Vec<&NewLease> = fresh.iter().filter(|l| !placed.contains(&l.id)).collect();
    if unplaced.is_empty() {
        return Ok(refused);
    }
    if snap.inventory.is_none() {
        snap.inventory = Some(db::leases::inventory(conn).await?);
    }
    let inventory = snap.inventory.as_deref().unwrap_or_default();
    for lease in unplaced {
        let demand = lease.demand();
        if let Some(reason) = burst::never(config, inventory, &demand) {
            refused.insert(lease.id, Refusal { code: ErrorCode::Unsatisfiable, reason });
        }
    }
    Ok(refused)
}

/// The new requests beyond their service token's cap on queued leases (its own, or the
/// configuration's), in the order they came. Counted under the placement lock, so concurrent
/// requests cannot all slip under the cap.
async fn cap_queues(
    conn: &mut AsyncPgConnection,
    config: &Config,
    fresh: &[NewLease],
) -> Result<HashMap<LeaseId, Refusal>, ApiError> {
    let holders: Vec<uuid::Uuid> = fresh
        .iter()
        .filter(|l| l.job_id.is_none() && l.holder_kind == crate::domain::HolderKind::Service)
        .map(|l| l.holder_id)
        .collect();
    if holders.is_empty() {
        return Ok(HashMap::new());
    }
    let ids: Vec<LeaseId> = fresh.iter().map(|l| l.id).collect();
    let mut room: HashMap<uuid::Uuid, (i64, i64)> = db::leases::queued_lease_caps(conn, &holders, &ids)
        .await?
        .into_iter()
        .map(|(holder, cap, queued)| (holder, (i64::from(cap.unwrap_or(config.auth.max_queued_leases)), queued)))
        .collect();
    let mut capped = HashMap::new();
    for lease in fresh.iter().filter(|l| l.job_id.is_none()) {
        if let Some((cap, queued)) = room.get_mut(&lease.holder_id) {
            if *queued >= *cap {
                let reason = format!(
                    "this service token may have at most {cap} leases queued at once; retry once some are granted"
                );
                capped.insert(lease.id, Refusal { code: ErrorCode::QueueCapReached, reason });
            } else {
                *queued += 1;
            }
        }
    }
    Ok(capped)
}

/// Why a new request is refused.
#[derive(Debug, Clone)]
pub(crate) struct Refusal {
    pub code: ErrorCode,
    pub reason: String,
}

/// Takes the machines this round granted out of the snapshot, as the round leaves them, and
/// returns how to reach each lease's machine.
fn take_from_snapshot(
    snap: &mut Snapshot,
    planned: &[(LeaseId, usize)],
    queue: &[Lease],
) -> HashMap<LeaseId, Option<Connection>> {
    let mut connection_of: HashMap<LeaseId, Option<Connection>> = HashMap::with_capacity(planned.len());
    let mut taken: Vec<(usize, LeaseId)> = planned.iter().map(|(lease, i)| (*i, *lease)).collect();
    taken.sort_unstable_by_key(|t| std::cmp::Reverse(t.0));
    let tenant_of: HashMap<LeaseId, &str> = queue.iter().map(|l| (l.id, l.tenant.as_str())).collect();
    for (i, lease) in taken {
        let machine = snap.free.swap_remove(i);
        connection_of.insert(lease, snap.connections.swap_remove(i));
        snap.holdings.add(&machine, tenant_of[&lease]);
    }
    connection_of
}

/// The answer to each request of the round, in order.
#[allow(clippy::too_many_arguments)]
async fn answer(
    conn: &mut AsyncPgConnection,
    slots: Vec<Slot>,
    fresh: &[NewLease],
    mut refused: HashMap<LeaseId, Refusal>,
    granted: Vec<Lease>,
    gave_up: Vec<Lease>,
    queue: &[Lease],
    connection_of: &HashMap<LeaseId, Option<Connection>>,
) -> Result<Vec<Result<Answer, ApiError>>, ApiError> {
    // The new requests as they now stand.
    let mut now_standing: HashMap<LeaseId, Lease> = granted.into_iter().chain(gave_up).map(|l| (l.id, l)).collect();
    for lease in queue {
        now_standing.entry(lease.id).or_insert_with(|| lease.clone());
    }
    let mut written: Vec<Result<Written, ApiError>> = Vec::with_capacity(fresh.len());
    for lease in fresh {
        written.push(if let Some(refusal) = refused.remove(&lease.id) {
            Ok(Written::Refused(refusal))
        } else if let Some(standing) = now_standing.remove(&lease.id) {
            Ok(Written::Lease(Box::new(standing)))
        } else {
            // Beyond the part of the queue this round read, or granted a cloud instance: read.
            db::leases::find(conn, lease.id)
                .await?
                .map(|l| Written::Lease(Box::new(l)))
                .ok_or_else(|| ApiError::not_found(ErrorCode::LeaseNotFound))
        });
    }
    Ok(slots
        .into_iter()
        .map(|slot| match slot {
            Slot::Answered(answer) => *answer,
            Slot::Fresh(i) => shared(&written[i]).map(|w| match w {
                Written::Lease(lease) => {
                    let connection = connection_of.get(&lease.id).cloned().flatten();
                    Answer::Accepted(*lease, connection)
                }
                Written::Refused(r) => Answer::Refused { code: r.code, reason: r.reason },
            }),
            Slot::Repeat(i) => shared(&written[i]).map(|w| match w {
                Written::Lease(lease) => Answer::Replayed(*lease),
                Written::Refused(r) => Answer::Refused { code: r.code, reason: r.reason },
            }),
        })
        .collect())
}

/// A new request after the round: a lease, or refused.
#[derive(Debug, Clone)]
enum Written {
    Lease(Box<Lease>),
    Refused(Refusal),
}

/// Reads what placement needs afresh.
async fn read_snapshot(conn: &mut AsyncPgConnection) -> Result<Snapshot, ApiError> {
    // Read after any lost leases were failed, so their machines count as free again.
    let epoch = db::leases::placement_epoch(conn).await?;
    let (free, connections) = db::leases::free_machines(conn).await?;
    let mut holdings = Holdings::default();
    for h in db::leases::held(conn).await? {
        if let Some(donation) = h.donation_id {
            *holdings.by_donation.entry(donation).or_default() += h.count;
        }
        if let Some(donor) = h.donor_id {
            *holdings.by_donor.entry(donor).or_default() += h.count;
        }
        *holdings.by_tenant.entry(h.tenant).or_default() += h.count;
    }
    Ok(Snapshot { epoch, free, connections, holdings, inventory: None })
}

/// Leases already made with the keys these requests carry.
async fn known_keys(
    conn: &mut AsyncPgConnection,
    new: &[NewLease],
) -> Result<HashMap<(uuid::Uuid, String), Lease>, ApiError> {
    let mut by_holder: HashMap<uuid::Uuid, Vec<String>> = HashMap::new();
    for lease in new {
        if let Some(key) = &lease.idempotency_key {
            by_holder.entry(lease.holder_id).or_default().push(key.clone());
        }
    }
    let mut known = HashMap::new();
    for (holder, keys) in by_holder {
        for lease in db::leases::by_keys(conn, holder, &keys).await? {
            let key = lease.idempotency_key.clone().unwrap_or_default();
            known.insert((holder, key), lease);
        }
    }
    Ok(known)
}

/// A retry gets the lease its key made, provided it asks for the same thing.
fn replay(existing: Lease, retry: &NewLease) -> Result<Answer, ApiError> {
    if existing.request_hash == retry.request_hash { Ok(Answer::Replayed(existing)) } else { Err(key_reused()) }
}

fn shared(written: &Result<Written, ApiError>) -> Result<Written, ApiError> {
    match written {
        Ok(w) => Ok(w.clone()),
        Err(e) => Err(e.to_shared()),
    }
}

fn key_reused() -> ApiError {
    ApiError::invalid_field("Idempotency-Key", Problem::KeyReused)
}

fn waiting_of(lease: &Lease) -> Waiting {
    Waiting { id: lease.id, tenant: lease.tenant.clone(), priority: lease.priority, queued_at: lease.queued_at }
}
