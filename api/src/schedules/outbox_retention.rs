//! Keeps the event outbox from growing without end: deliveries go 30 days after they
//! finished, events 90 days after they happened once no delivery waits on them (one still
//! being retried, or queued for a subscription since paused, keeps its event). The audit log
//! is the lasting record; it is never pruned.

use chrono::{Duration, Utc};
use serde::Serialize;

use crate::db;
use crate::state::AppState;

pub const DELIVERIES_KEPT_DAYS: i64 = 30;
pub const EVENTS_KEPT_DAYS: i64 = 90;

#[derive(Debug, Serialize)]
pub struct RetentionReport {
    pub deliveries_deleted: usize,
    pub events_deleted: usize,
}

pub async fn prune(state: &AppState) -> anyhow::Result<RetentionReport> {
    let mut conn = state.pool.get().await?;
    let before = Utc::now() - Duration::days(DELIVERIES_KEPT_DAYS);
    let deliveries_deleted = db::events::prune_deliveries(&mut conn, before).await?;
    let before = Utc::now() - Duration::days(EVENTS_KEPT_DAYS);
    let events_deleted = db::events::prune_events(&mut conn, before).await?;
    Ok(RetentionReport { deliveries_deleted, events_deleted })
}
