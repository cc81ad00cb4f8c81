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

/// Heartbeats waiting for the next flush at most; beyond, agents are told to retry later.
const QUEUE_CAPACITY: usize = 1_000_000;

pub struct HeartbeatIngest {
    /// Heartbeats not yet taken by the writer, as they came. Handlers only append to it (no
    /// hashing, nothing to look up while holding the lock); the writer swaps the whole list
    /// out on its tick and keeps the newest beat per machine, so no heartbeat ever wakes
    /// another thread.
    queue: Arc<Mutex<Vec<HeartbeatRow>>>,
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
        let queue = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(Notify::new());
        let writer = tokio::spawn(write_batches(pool, queue.clone(), flush_every, min_write_interval, stop.clone()));
        Self { queue, stop, writer: Mutex::new(Some(writer)) }
    }

    /// Queues a heartbeat for the next batch.
    pub fn enqueue(&self, row: HeartbeatRow) -> Result<(), Overloaded> {
        let mut queue = self.queue.lock().map_err(|_| Overloaded)?;
        if queue.len() >= QUEUE_CAPACITY {
            return Err(Overloaded);
        }
        queue.push(row);
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
    queue: Arc<Mutex<Vec<HeartbeatRow>>>,
    flush_every: Duration,
    min_write_interval: Duration,
    stop: Arc<Notify>,
) {
    let mut writer = Writer::new(min_write_interval);
    // The list handlers fill next: last round's, emptied but with its room kept, so that the
    // queue does not grow from nothing (copying under the lock) every flush.
    let mut spare = Vec::new();
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
        let now = Instant::now();
        let rows = if stopping { writer.everything(&mut taken, now) } else { writer.due(&mut taken, now) };
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

/// Decides which heartbeats to write now: only the newest beat of each machine, and each
/// machine at most once per `min_interval`; a newer beat of a machine written too recently
/// waits (the newest one) until it may go.
#[derive(Debug)]
struct Writer {
    min_interval: Duration,
    /// Machines written within the last `min_interval`: everything the writer knows of a
    /// machine is in one entry, found with one lookup per beat.
    machines: HashMap<MachineId, Written>,
    /// (may write again at, machine, written at), oldest first: the interval is fixed, so
    /// this is in time order and a flush only looks at what has come due.
    releases: VecDeque<(Instant, MachineId, Instant)>,
    /// Counts calls of `due`, to tell this batch's rows from an earlier batch's.
    batch: u64,
    /// Beats whose write failed, to try again at the next flush.
    retry: Vec<HeartbeatRow>,
}

/// A machine written recently.
#[derive(Debug)]
struct Written {
    at: Instant,
    /// Its newest beat since, if any.
    newer: Newer,
}

#[derive(Debug)]
enum Newer {
    None,
    /// In the rows of batch `batch`, at `index` (where a later beat of the same flush goes).
    InBatch {
        batch: u64,
        index: usize,
    },
    /// Waiting for the machine's interval to pass.
    Waiting(HeartbeatRow),
}

impl Writer {
    fn new(min_interval: Duration) -> Self {
        Self { min_interval, machines: HashMap::new(), releases: VecDeque::new(), batch: 0, retry: Vec::new() }
    }

    /// Rows whose write failed: not counted as written, and tried again with the next batch.
    fn failed(&mut self, rows: Vec<HeartbeatRow>) {
        for row in &rows {
            self.machines.remove(&row.machine_id);
        }
        self.retry = rows;
    }

    /// Puts the failed rows back with the newly queued ones (a newer beat of a machine wins).
    fn take_back_failed(&mut self, taken: &mut Vec<HeartbeatRow>) {
        taken.append(&mut self.retry);
    }

    /// The rows to write now, taking every beat out of `taken`.
    fn due(&mut self, taken: &mut Vec<HeartbeatRow>, now: Instant) -> Vec<HeartbeatRow> {
        self.batch += 1;
        let batch = self.batch;
        let mut rows: Vec<HeartbeatRow> = Vec::new();
        let release_at = now + self.min_interval;
        let Self { machines, releases, .. } = self;
        let written = |rows: &mut Vec<HeartbeatRow>, releases: &mut VecDeque<_>, row: HeartbeatRow| {
            releases.push_back((release_at, row.machine_id, now));
            rows.push(row);
            Written { at: now, newer: Newer::InBatch { batch, index: rows.len() - 1 } }
        };
        // Machines whose interval has passed: a beat that waited goes now; a machine with
        // none is forgotten, and its next beat goes as it comes.
        while let Some(&(may_write_at, machine, written_at)) = releases.front() {
            if may_write_at > now {
                break;
            }
            releases.pop_front();
            let Entry::Occupied(mut entry) = machines.entry(machine) else { continue };
            if entry.get().at != written_at {
                continue; // written again since; that write has its own release
            }
            match std::mem::replace(&mut entry.get_mut().newer, Newer::None) {
                Newer::Waiting(row) => *entry.get_mut() = written(&mut rows, releases, row),
                _ => drop(entry.remove()),
            }
        }
        // Every machine still known was written less than an interval ago.
        for row in taken.drain(..) {
            match machines.entry(row.machine_id) {
                Entry::Vacant(entry) => {
                    entry.insert(written(&mut rows, releases, row));
                }
                Entry::Occupied(mut entry) => match &mut entry.get_mut().newer {
                    Newer::InBatch { batch: of, index } if *of == batch => {
                        if rows[*index].at <= row.at {
                            rows[*index] = row;
                        }
                    }
                    Newer::Waiting(waiting) => {
                        if waiting.at <= row.at {
                            *waiting = row;
                        }
                    }
                    newer => *newer = Newer::Waiting(row),
                },
            }
        }
        rows
    }

    /// Everything queued or waiting (at shutdown).
    fn everything(&mut self, taken: &mut Vec<HeartbeatRow>, now: Instant) -> Vec<HeartbeatRow> {
        let mut rows = self.due(taken, now);
        rows.extend(self.machines.drain().filter_map(|(_, written)| match written.newer {
            Newer::Waiting(row) => Some(row),
            _ => None,
        }));
        rows
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

    fn written(rows: Vec<HeartbeatRow>) -> Vec<(MachineId, i64)> {
        rows.iter().map(|r| (r.machine_id, r.at.timestamp() - 1_800_000_000)).collect()
    }

    #[test]
    fn a_machine_is_written_at_most_once_per_interval_and_its_newest_beat_is_kept() {
        let mut writer = Writer::new(Duration::from_secs(5));
        let (a, b) = (MachineId::generate(), MachineId::generate());
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);

        assert_eq!(written(writer.due(&mut vec![beat(a, 0)], at(0))), [(a, 0)]);
        // Two more beats of `a` within its interval: held, the newest kept; `b` goes at once.
        assert!(writer.due(&mut vec![beat(a, 1)], at(1)).is_empty());
        assert_eq!(written(writer.due(&mut vec![beat(a, 2), beat(b, 2)], at(2))), [(b, 2)]);
        // When the interval has passed, the held beat goes out without a new one arriving.
        assert!(writer.due(&mut Vec::new(), at(4)).is_empty());
        assert_eq!(written(writer.due(&mut Vec::new(), at(5))), [(a, 2)]);
        // A beat at the agents' usual pace (10 s) is written as it comes.
        assert_eq!(written(writer.due(&mut vec![beat(a, 15)], at(15))), [(a, 15)]);
        // At shutdown, whatever waits goes.
        assert!(writer.due(&mut vec![beat(a, 16)], at(16)).is_empty());
        assert_eq!(written(writer.everything(&mut vec![beat(b, 16)], at(16))), [(b, 16), (a, 16)]);
    }

    #[test]
    fn of_several_beats_in_one_flush_only_the_newest_is_written() {
        let mut writer = Writer::new(Duration::from_secs(5));
        let (a, b) = (MachineId::generate(), MachineId::generate());
        let t0 = Instant::now();
        // Two replicas' clocks, or a slow handler: beats need not arrive in order.
        let mut taken = vec![beat(a, 1), beat(b, 1), beat(a, 3), beat(a, 2), beat(b, 0)];
        assert_eq!(written(writer.due(&mut taken, t0)), [(a, 3), (b, 1)]);
        assert!(taken.is_empty());
        // Held beats too: the newest waits, whatever the order.
        let mut taken = vec![beat(a, 5), beat(a, 7), beat(a, 6)];
        assert!(writer.due(&mut taken, t0 + Duration::from_secs(1)).is_empty());
        assert_eq!(written(writer.due(&mut Vec::new(), t0 + Duration::from_secs(5))), [(a, 7)]);
    }

    #[test]
    fn beats_whose_write_failed_are_written_with_the_next_batch() {
        let mut writer = Writer::new(Duration::from_secs(5));
        let a = MachineId::generate();
        let t0 = Instant::now();
        let rows = writer.due(&mut vec![beat(a, 0)], t0);
        writer.failed(rows);
        // The database is back 100 ms later: the beat goes, though its machine "was just written".
        let mut taken = Vec::new();
        writer.take_back_failed(&mut taken);
        assert_eq!(written(writer.due(&mut taken, t0 + Duration::from_millis(100))), [(a, 0)]);
        // A newer beat that came meanwhile wins over the failed one.
        let rows = writer.due(&mut Vec::new(), t0 + Duration::from_secs(5));
        assert!(rows.is_empty());
        let rows = writer.due(&mut vec![beat(a, 10)], t0 + Duration::from_secs(10));
        writer.failed(rows);
        let mut taken = vec![beat(a, 11)];
        writer.take_back_failed(&mut taken);
        assert_eq!(written(writer.due(&mut taken, t0 + Duration::from_secs(11))), [(a, 11)]);
    }

    #[test]
    fn machines_that_went_quiet_are_forgotten() {
        let mut writer = Writer::new(Duration::from_secs(5));
        let t0 = Instant::now();
        let mut taken: Vec<_> = (0..100).map(|_| beat(MachineId::generate(), 0)).collect();
        assert_eq!(writer.due(&mut taken, t0).len(), 100);
        assert_eq!(writer.machines.len(), 100);
        writer.due(&mut Vec::new(), t0 + Duration::from_secs(5));
        assert!(writer.machines.is_empty() && writer.releases.is_empty());
    }
}
