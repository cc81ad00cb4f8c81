//! Heartbeat ingest: the hottest write path of the system.
//!
//! A heartbeat is answered as soon as it is queued. A writer task gathers the queue for
//! `heartbeat_flush_millis` and stores it with one `UPDATE ... FROM unnest(...)`, keeping only
//! the newest heartbeat per machine: ten thousand heartbeats a second cost ten statements, not
//! ten thousand. It also writes each machine at most once per half heartbeat interval (a
//! newer beat waits for the next flush after that, and is never dropped), so an agent beating
//! too often cannot multiply the database's work; agents beating at their interval are all
//! written. Facts are parsed and written only when they change: this replica remembers a hash
//! of the facts each agent last sent, with its credential (`auth::agents`). A crash loses at
//! most one flush interval of heartbeats: the next ones, ten seconds later, say the same.

use std::collections::VecDeque;
use std::collections::hash_map::Entry;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// Seeded per process, and several times faster than SipHash on these keys.
use foldhash::{HashMap, HashMapExt};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::db::machine_status::HeartbeatRow;
use crate::db::{self, Pool};
use crate::domain::MachineId;
use crate::domain::facts::Facts;

/// Machines with a heartbeat waiting at most; beyond, agents are told to retry later.
const QUEUE_CAPACITY: usize = 1_000_000;

pub struct HeartbeatIngest {
    /// The newest heartbeat per machine not yet taken by the writer. Handlers insert; the
    /// writer swaps the whole map out on its tick, so no heartbeat ever wakes another thread.
    queue: Arc<Mutex<HashMap<MachineId, HeartbeatRow>>>,
    stop: Arc<Notify>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

/// The queue is full: the database is not keeping up.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("too many heartbeats are waiting to be stored")]
pub struct Overloaded;

impl HeartbeatIngest {
    /// Starts the writer task on the current tokio runtime. It stores a batch every
    /// `flush_every`, and each machine at most every `min_write_interval`.
    pub fn start(pool: Pool, flush_every: Duration, min_write_interval: Duration) -> Self {
        let queue = Arc::new(Mutex::new(HashMap::new()));
        let stop = Arc::new(Notify::new());
        let writer = tokio::spawn(write_batches(pool, queue.clone(), flush_every, min_write_interval, stop.clone()));
        Self { queue, stop, writer: Mutex::new(Some(writer)) }
    }

    /// Queues a heartbeat for the next batch (replacing an older one of the same machine).
    pub fn enqueue(&self, row: HeartbeatRow) -> Result<(), Overloaded> {
        let mut queue = self.queue.lock().map_err(|_| Overloaded)?;
        let full = queue.len() >= QUEUE_CAPACITY;
        match queue.entry(row.machine_id) {
            Entry::Occupied(mut kept) if kept.get().at <= row.at => {
                kept.insert(row);
            }
            Entry::Occupied(_) => {}
            Entry::Vacant(_) if full => return Err(Overloaded),
            Entry::Vacant(slot) => {
                slot.insert(row);
            }
        }
        Ok(())
    }

    /// Stops accepting heartbeats and waits for the last batch to be written.
    pub async fn shutdown(&self) {
        let writer = self.writer.lock().ok().and_then(|mut w| w.take());
        if let Some(writer) = writer {
            self.stop.notify_one();
            let _ = writer.await;
        }
    }
}

/// A hash of facts as sent (the agent sends them the same way each time), to recognise
/// unchanged facts without parsing them. Only the agent itself could make two of its texts
/// collide, and it could as well send its old facts again: a fast hash will do.
pub fn facts_text_hash(facts_json: &str) -> u64 {
    foldhash::fast::FixedState::default().hash_one(facts_json)
}

/// A hash of a machine's facts, stored with them to notice when they change. Stable across
/// builds and replicas (std's hasher promises neither): the first 8 bytes of a SHA-256.
pub fn facts_hash(facts: &Facts) -> i64 {
    let digest = Sha256::digest(serde_json::to_vec(facts).unwrap_or_default());
    i64::from_be_bytes(digest[..8].try_into().expect("a SHA-256 is 32 bytes"))
}

async fn write_batches(
    pool: Pool,
    queue: Arc<Mutex<HashMap<MachineId, HeartbeatRow>>>,
    flush_every: Duration,
    min_write_interval: Duration,
    stop: Arc<Notify>,
) {
    let mut writer = Writer::new(min_write_interval);
    // The map handlers fill next: last round's, emptied but with its room kept, so that the
    // queue does not grow from nothing (rehashing under the lock) every flush.
    let mut spare = HashMap::new();
    let mut tick = tokio::time::interval(flush_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.notified() => true,
        };
        let mut taken = {
            let mut queue = queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            std::mem::replace(&mut *queue, std::mem::take(&mut spare))
        };
        writer.take_back_failed(&mut taken);
        let rows = if stopping { writer.everything(&mut taken) } else { writer.due(&mut taken, Instant::now()) };
        spare = taken;
        if let Err(rows) = store(&pool, rows).await {
            // Kept for the next flush: an outage must not silently age every machine.
            writer.failed(rows);
        }
        if stopping {
            return;
        }
    }
}

/// Decides which heartbeats to write now: each machine at most once per `min_interval`; a
/// newer beat of a machine written too recently waits (the newest one) until it may go.
#[derive(Debug)]
struct Writer {
    min_interval: Duration,
    /// Beats waiting for their machine's interval to pass.
    deferred: HashMap<MachineId, HeartbeatRow>,
    /// When each machine was last written.
    written: HashMap<MachineId, Instant>,
    /// (may write again at, machine, written at), oldest first: the interval is fixed, so
    /// this is in time order and a tick only looks at what has come due.
    releases: VecDeque<(Instant, MachineId, Instant)>,
    /// Beats whose write failed, to try again at the next flush.
    retry: Vec<HeartbeatRow>,
}

impl Writer {
    fn new(min_interval: Duration) -> Self {
        Self {
            min_interval,
            deferred: HashMap::new(),
            written: HashMap::new(),
            releases: VecDeque::new(),
            retry: Vec::new(),
        }
    }

    /// Rows whose write failed: not counted as written, and tried again with the next batch.
    fn failed(&mut self, rows: Vec<HeartbeatRow>) {
        for row in &rows {
            self.written.remove(&row.machine_id);
        }
        self.retry = rows;
    }

    /// Puts the failed rows back with the newly queued ones (a newer beat of a machine wins).
    fn take_back_failed(&mut self, taken: &mut HashMap<MachineId, HeartbeatRow>) {
        for row in self.retry.drain(..) {
            if taken.get(&row.machine_id).is_none_or(|newer| newer.at < row.at) {
                taken.insert(row.machine_id, row);
            }
        }
    }

    /// The rows to write now, taking every beat out of `taken`.
    fn due(&mut self, taken: &mut HashMap<MachineId, HeartbeatRow>, now: Instant) -> Vec<HeartbeatRow> {
        let mut rows = Vec::with_capacity(taken.len());
        for (machine, row) in taken.drain() {
            let recent = self.written.get(&machine).is_some_and(|at| now.duration_since(*at) < self.min_interval);
            if recent {
                self.deferred.insert(machine, row);
            } else {
                self.deferred.remove(&machine);
                rows.push(row);
            }
        }
        while let Some(&(release_at, machine, written_at)) = self.releases.front() {
            if release_at > now {
                break;
            }
            self.releases.pop_front();
            if self.written.get(&machine) == Some(&written_at)
                && let Some(row) = self.deferred.remove(&machine)
            {
                rows.push(row);
            }
        }
        for row in &rows {
            self.written.insert(row.machine_id, now);
            self.releases.push_back((now + self.min_interval, row.machine_id, now));
        }
        rows
    }

    /// Everything queued or deferred (at shutdown).
    fn everything(&mut self, taken: &mut HashMap<MachineId, HeartbeatRow>) -> Vec<HeartbeatRow> {
        self.deferred.extend(taken.drain());
        self.deferred.drain().map(|(_, row)| row).collect()
    }
}

/// Writes `rows`; gives them back if that failed.
async fn store(pool: &Pool, rows: Vec<HeartbeatRow>) -> Result<(), Vec<HeartbeatRow>> {
    if rows.is_empty() {
        return Ok(());
    }
    let stored = match pool.get().await {
        Ok(mut conn) => db::machine_status::record_heartbeats(&mut conn, &rows).await.map_err(anyhow::Error::from),
        Err(e) => Err(anyhow::Error::from(e)),
    };
    stored.map(drop).map_err(|e| {
        tracing::warn!(heartbeats = rows.len(), "storing heartbeats failed; trying again at the next flush: {e:#}");
        rows
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(machine: MachineId, secs: i64) -> HeartbeatRow {
        HeartbeatRow {
            machine_id: machine,
            at: chrono::DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap(),
            agent_version: "t".into(),
            load1: 0.0,
            disk_used_pct: 0.0,
            clock_skew_ms: 0,
            uptime_secs: 0,
            overloaded: false,
        }
    }

    #[test]
    fn a_machine_is_written_at_most_once_per_interval_and_its_newest_beat_is_kept() {
        let mut writer = Writer::new(Duration::from_secs(5));
        let (a, b) = (MachineId::generate(), MachineId::generate());
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let written = |rows: Vec<HeartbeatRow>| {
            rows.iter().map(|r| (r.machine_id, r.at.timestamp() - 1_800_000_000)).collect::<Vec<_>>()
        };

        assert_eq!(written(writer.due(&mut HashMap::from_iter([(a, beat(a, 0))]), at(0))), [(a, 0)]);
        // Two more beats of `a` within its interval: held, the newest kept; `b` goes at once.
        assert!(writer.due(&mut HashMap::from_iter([(a, beat(a, 1))]), at(1)).is_empty());
        assert_eq!(written(writer.due(&mut HashMap::from_iter([(a, beat(a, 2)), (b, beat(b, 2))]), at(2))), [(b, 2)]);
        // When the interval has passed, the held beat goes out without a new one arriving.
        assert!(writer.due(&mut HashMap::new(), at(4)).is_empty());
        assert_eq!(written(writer.due(&mut HashMap::new(), at(5))), [(a, 2)]);
        // A beat at the agents' usual pace (10 s) is written as it comes.
        assert_eq!(written(writer.due(&mut HashMap::from_iter([(a, beat(a, 15))]), at(15))), [(a, 15)]);
        // At shutdown, whatever waits goes.
        assert!(writer.due(&mut HashMap::from_iter([(a, beat(a, 16))]), at(16)).is_empty());
        assert_eq!(written(writer.everything(&mut HashMap::new())), [(a, 16)]);
    }

    #[test]
    fn beats_whose_write_failed_are_written_with_the_next_batch() {
        let mut writer = Writer::new(Duration::from_secs(5));
        let a = MachineId::generate();
        let t0 = Instant::now();
        let rows = writer.due(&mut HashMap::from_iter([(a, beat(a, 0))]), t0);
        writer.failed(rows);
        // The database is back 100 ms later: the beat goes, though its machine "was just written".
        let mut taken = HashMap::new();
        writer.take_back_failed(&mut taken);
        let again = writer.due(&mut taken, t0 + Duration::from_millis(100));
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].machine_id, a);
    }
}
