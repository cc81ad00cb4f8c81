//! Heartbeat ingest: the hottest write path of the system.
//!
//! A heartbeat is answered as soon as it is queued. A writer task gathers the queue for
//! `heartbeat_flush_millis` and stores it with one `UPDATE ... FROM unnest(...)`, keeping only
//! the newest heartbeat per machine: ten thousand heartbeats a second cost ten statements, not
//! ten thousand. It also writes each machine at most once per half heartbeat interval (a
//! newer beat waits for the next flush after that, and is never dropped), so an agent beating
//! too often cannot multiply the database's work; agents beating at their interval are all
//! written. Facts are parsed and written only when they change: this replica remembers a hash
//! of each machine's last facts. A crash loses at most one flush interval of heartbeats: the
//! next ones, ten seconds later, say the same.

use std::collections::VecDeque;
use std::collections::hash_map::Entry;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

// Seeded per process, and several times faster than SipHash on these keys.
use foldhash::{HashMap, HashMapExt};
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
    /// Per machine: a hash of the last facts seen (as sent), and their CPU count.
    facts_seen: RwLock<HashMap<MachineId, (u64, u32)>>,
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
        Self { queue, stop, writer: Mutex::new(Some(writer)), facts_seen: RwLock::new(HashMap::new()) }
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

    /// The CPU count of the machine's facts, if this replica has seen exactly these facts
    /// (`raw_hash`, see [`raw_hash`]) from it before.
    pub fn known_facts(&self, machine: MachineId, raw_hash: u64) -> Option<u32> {
        let seen = self.facts_seen.read().ok()?;
        seen.get(&machine).filter(|(hash, _)| *hash == raw_hash).map(|(_, cpus)| *cpus)
    }

    pub fn remember_facts(&self, machine: MachineId, raw_hash: u64, cpu_count: u32) {
        if let Ok(mut seen) = self.facts_seen.write() {
            seen.insert(machine, (raw_hash, cpu_count));
        }
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
/// unchanged facts without parsing them.
pub fn raw_hash(facts_json: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    facts_json.hash(&mut hasher);
    hasher.finish()
}

/// A stable hash of a machine's facts, stored with them to notice when they change.
pub fn facts_hash(facts: &Facts) -> i64 {
    let mut hasher = DefaultHasher::new();
    serde_json::to_string(facts).unwrap_or_default().hash(&mut hasher);
    hasher.finish() as i64
}

async fn write_batches(
    pool: Pool,
    queue: Arc<Mutex<HashMap<MachineId, HeartbeatRow>>>,
    flush_every: Duration,
    min_write_interval: Duration,
    stop: Arc<Notify>,
) {
    let mut writer = Writer::new(min_write_interval);
    let mut tick = tokio::time::interval(flush_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.notified() => true,
        };
        let taken = queue.lock().map(|mut queue| std::mem::take(&mut *queue)).unwrap_or_default();
        let rows = if stopping { writer.everything(taken) } else { writer.due(taken, Instant::now()) };
        store(&pool, rows).await;
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
}

impl Writer {
    fn new(min_interval: Duration) -> Self {
        Self { min_interval, deferred: HashMap::new(), written: HashMap::new(), releases: VecDeque::new() }
    }

    fn due(&mut self, taken: HashMap<MachineId, HeartbeatRow>, now: Instant) -> Vec<HeartbeatRow> {
        let mut rows = Vec::new();
        for (machine, row) in taken {
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
    fn everything(&mut self, taken: HashMap<MachineId, HeartbeatRow>) -> Vec<HeartbeatRow> {
        self.deferred.extend(taken);
        self.deferred.drain().map(|(_, row)| row).collect()
    }
}

async fn store(pool: &Pool, rows: Vec<HeartbeatRow>) {
    if rows.is_empty() {
        return;
    }
    let stored = match pool.get().await {
        Ok(mut conn) => db::machine_status::record_heartbeats(&mut conn, &rows).await.map_err(anyhow::Error::from),
        Err(e) => Err(anyhow::Error::from(e)),
    };
    if let Err(e) = stored {
        tracing::warn!(heartbeats = rows.len(), "dropping a batch of heartbeats: {e:#}");
    }
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

        assert_eq!(written(writer.due(HashMap::from_iter([(a, beat(a, 0))]), at(0))), [(a, 0)]);
        // Two more beats of `a` within its interval: held, the newest kept; `b` goes at once.
        assert!(writer.due(HashMap::from_iter([(a, beat(a, 1))]), at(1)).is_empty());
        assert_eq!(written(writer.due(HashMap::from_iter([(a, beat(a, 2)), (b, beat(b, 2))]), at(2))), [(b, 2)]);
        // When the interval has passed, the held beat goes out without a new one arriving.
        assert!(writer.due(HashMap::new(), at(4)).is_empty());
        assert_eq!(written(writer.due(HashMap::new(), at(5))), [(a, 2)]);
        // A beat at the agents' usual pace (10 s) is written as it comes.
        assert_eq!(written(writer.due(HashMap::from_iter([(a, beat(a, 15))]), at(15))), [(a, 15)]);
        // At shutdown, whatever waits goes.
        assert!(writer.due(HashMap::from_iter([(a, beat(a, 16))]), at(16)).is_empty());
        assert_eq!(written(writer.everything(HashMap::new())), [(a, 16)]);
    }
}
