//! Clears enrollment tokens that expired unused.

use serde::Serialize;

use crate::db;
use crate::state::AppState;

#[derive(Debug, Serialize)]
pub struct ExpiryReport {
    pub deleted: usize,
}

pub async fn clear(state: &AppState) -> anyhow::Result<ExpiryReport> {
    let mut conn = state.pool.get().await?;
    Ok(ExpiryReport { deleted: db::enrollment::delete_expired(&mut conn).await? })
}
