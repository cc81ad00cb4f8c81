//! Heartbeat ingest: the hottest write path of the system.
//!
//! A heartbeat is answered as soon as it is queued. A writer task gathers the queue for
//! `heartbeat_flush_millis` and stores it with one `UPDATE ... FROM unnest(...)` (keeping only
//! the newest heartbeat per machine), so ten thousand heartbeats a second cost ten statements,
//! not ten thousand. Facts are written only when they change (this replica remembers a hash
//! per machine). A crash loses at most one flush interval of heartbeats: the next ones, ten
//! seconds later, say the same.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

use crate::db::machine_status::HeartbeatRow;
use crate::db::{self, Pool};
use crate::domain::MachineId;
use crate::domain::facts::Facts;

/// Heartbeats queued at most; beyond, agents are told to retry later.
const QUEUE_CAPACITY: usize = 200_000;
/// A batch is written early once it holds this many machines.
const MAX_BATCH: usize = 5_000;

pub struct HeartbeatIngest {
    queue: mpsc::Sender<HeartbeatRow>,
    stop: Arc<Notify>,
    writer: Mutex<Option<JoinHandle<()>>>,
    facts_seen: RwLock<HashMap<MachineId, i64>>,
}

/// The queue is full: the database is not keeping up.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("too many heartbeats are waiting to be stored")]
pub struct Overloaded;

impl HeartbeatIngest {
    /// Starts the writer task on the current tokio runtime.
    pub fn start(pool: Pool, flush_every: Duration) -> Self {
        let (queue, receiver) = mpsc::channel(QUEUE_CAPACITY);
        let stop = Arc::new(Notify::new());
        let writer = tokio::spawn(write_batches(pool, receiver, flush_every, stop.clone()));
        Self { queue, stop, writer: Mutex::new(Some(writer)), facts_seen: RwLock::new(HashMap::new()) }
    }

    /// Queues a heartbeat for the next batch.
    pub fn enqueue(&self, row: HeartbeatRow) -> Result<(), Overloaded> {
        self.queue.try_send(row).map_err(|_| Overloaded)
    }

    /// Whether these facts differ from the last ones this replica stored for the machine.
    pub fn facts_changed(&self, machine: MachineId, hash: i64) -> bool {
        self.facts_seen.read().map(|seen| seen.get(&machine) != Some(&hash)).unwrap_or(true)
    }

    pub fn remember_facts(&self, machine: MachineId, hash: i64) {
        if let Ok(mut seen) = self.facts_seen.write() {
            seen.insert(machine, hash);
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

/// A stable hash of a machine's facts, to notice when they change.
pub fn facts_hash(facts: &Facts) -> i64 {
    let mut hasher = DefaultHasher::new();
    serde_json::to_string(facts).unwrap_or_default().hash(&mut hasher);
    hasher.finish() as i64
}

async fn write_batches(
    pool: Pool,
    mut receiver: mpsc::Receiver<HeartbeatRow>,
    flush_every: Duration,
    stop: Arc<Notify>,
) {
    let mut pending: HashMap<MachineId, HeartbeatRow> = HashMap::new();
    let mut tick = tokio::time::interval(flush_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            received = receiver.recv() => match received {
                Some(row) => {
                    // Keep the newest heartbeat per machine: one row each in the batch.
                    if pending.get(&row.machine_id).is_none_or(|kept| kept.at <= row.at) {
                        pending.insert(row.machine_id, row);
                    }
                    if pending.len() >= MAX_BATCH {
                        flush(&pool, &mut pending).await;
                    }
                }
                None => {
                    flush(&pool, &mut pending).await;
                    return;
                }
            },
            _ = tick.tick() => flush(&pool, &mut pending).await,
            _ = stop.notified() => {
                // Refuse new heartbeats, store what is queued, and stop.
                receiver.close();
                while let Some(row) = receiver.recv().await {
                    pending.insert(row.machine_id, row);
                }
                flush(&pool, &mut pending).await;
                return;
            }
        }
    }
}

async fn flush(pool: &Pool, pending: &mut HashMap<MachineId, HeartbeatRow>) {
    if pending.is_empty() {
        return;
    }
    let rows: Vec<HeartbeatRow> = pending.drain().map(|(_, row)| row).collect();
    let stored = match pool.get().await {
        Ok(mut conn) => db::machine_status::record_heartbeats(&mut conn, &rows).await.map_err(anyhow::Error::from),
        Err(e) => Err(anyhow::Error::from(e)),
    };
    if let Err(e) = stored {
        tracing::warn!(heartbeats = rows.len(), "dropping a batch of heartbeats: {e:#}");
    }
}
