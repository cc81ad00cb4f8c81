//! The work bell: wakes an agent's long poll (`GET /agent/work`) the moment its machine's work
//! changes, whichever replica made the change.
//!
//! Changes are announced with PostgreSQL's `NOTIFY fleetyard_work, '<machine id>'` inside the
//! transaction that makes them (`db::leases::announce_work`), so the announcement is sent on
//! commit and never for a change that rolled back. Each replica keeps one connection that
//! `LISTEN`s and rings the bell of the machine named. While that connection is down, every
//! waiting poll is woken once it is back, so nothing announced meanwhile is missed for long.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use diesel_async::{AsyncConnection, AsyncPgConnection};
use futures_util::StreamExt;
use tokio::sync::Notify;

use crate::db;
use crate::domain::MachineId;

/// Per-replica bells, one per machine whose agent is waiting.
#[derive(Default)]
pub struct WorkBell {
    bells: Mutex<HashMap<MachineId, Arc<Notify>>>,
}

impl WorkBell {
    /// Starts listening (needs a tokio runtime).
    pub fn start(database_url: String) -> Arc<Self> {
        let bell = Arc::new(WorkBell::default());
        tokio::spawn(listen(database_url, Arc::downgrade(&bell)));
        bell
    }

    /// The bell of a machine, to wait on. A ring while nobody waits is kept for the next wait.
    pub fn bell(&self, machine: MachineId) -> Arc<Notify> {
        let mut bells = self.bells.lock().unwrap_or_else(|p| p.into_inner());
        bells.entry(machine).or_default().clone()
    }

    /// Forgets a machine's bell when no poll holds it any more.
    pub fn release(&self, machine: MachineId, bell: Arc<Notify>) {
        let mut bells = self.bells.lock().unwrap_or_else(|p| p.into_inner());
        drop(bell);
        if bells.get(&machine).is_some_and(|b| Arc::strong_count(b) == 1) {
            bells.remove(&machine);
        }
    }

    fn ring(&self, machine: MachineId) {
        let bells = self.bells.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(bell) = bells.get(&machine) {
            bell.notify_one();
        }
    }

    fn ring_all(&self) {
        let bells = self.bells.lock().unwrap_or_else(|p| p.into_inner());
        for bell in bells.values() {
            bell.notify_one();
        }
    }
}

async fn listen(database_url: String, bell: std::sync::Weak<WorkBell>) {
    let mut wait = Duration::from_millis(200);
    loop {
        match listen_once(&database_url, &bell).await {
            Ok(()) => return, // the server is stopping
            Err(e) => {
                tracing::warn!("listening for work changes: {e}; retrying in {wait:?}");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Listens until the connection fails (`Err`) or the bell is dropped (`Ok`).
async fn listen_once(database_url: &str, bell: &std::sync::Weak<WorkBell>) -> anyhow::Result<()> {
    let mut conn = AsyncPgConnection::establish(database_url).await?;
    db::leases::listen_for_work(&mut conn).await?;
    // Whatever was announced while not listening: let every waiting poll look again.
    match bell.upgrade() {
        Some(bell) => bell.ring_all(),
        None => return Ok(()),
    }
    loop {
        let next = {
            let mut notifications = std::pin::pin!(conn.notifications_stream());
            tokio::time::timeout(Duration::from_secs(30), notifications.next()).await
        };
        let Some(bell) = bell.upgrade() else { return Ok(()) };
        match next {
            // Quiet for a while: make sure the connection is still there (a dead one would
            // stay quiet for ever).
            Err(_) => db::ping(&mut conn).await?,
            Ok(None) => anyhow::bail!("the notification stream ended"),
            Ok(Some(Err(e))) => return Err(e.into()),
            Ok(Some(Ok(notification))) => {
                if let Ok(id) = notification.payload.parse() {
                    bell.ring(MachineId(id));
                }
            }
        }
    }
}
