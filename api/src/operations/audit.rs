//! Reading the audit log (the API and the web pages alike).

use chrono::{DateTime, Utc};
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use super::paging::{page, page_type, paginate};
use crate::auth::{DonorScope, Principal};
use crate::db::{self, audit::AuditEntry, audit::AuditFilter};
use crate::domain::DonorId;
use crate::domain::Problem;
use crate::error::ApiError;
use crate::state::AppState;

page_type!(AuditPage, AuditEntry);

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// e.g. `machine`, `donation`, `donor`.
    pub entity_type: Option<String>,
    pub entity_id: Option<Uuid>,
    /// The user or token that acted.
    pub actor_id: Option<Uuid>,
    /// e.g. `machine.lifecycle_changed`.
    pub action: Option<String>,
    /// Ops only; a donor always reads its own trail.
    #[param(value_type = Option<String>, format = Uuid)]
    pub donor_id: Option<DonorId>,
    /// Entries at or after this instant (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// Entries before this instant (RFC 3339).
    pub until: Option<DateTime<Utc>>,
    pub cursor: Option<String>,
    /// 1 to 200, default 50.
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
}

/// The audit log, newest first. Ops read all of it; a donor reads the entries about its own data.
pub async fn list_audit(state: &AppState, caller: &Principal, query: AuditQuery) -> Result<AuditPage, ApiError> {
    let scope = caller.admin_or_donor()?;
    let page = page(query.cursor.as_deref(), query.limit)?;
    let donor_id = match (scope, query.donor_id) {
        (DonorScope::Own(own), Some(asked)) if asked != own => {
            return Err(ApiError::invalid_field("donor_id", Problem::OwnDonorOnly));
        }
        (DonorScope::Own(own), _) => Some(own),
        (DonorScope::All, asked) => asked,
    };
    let filter = AuditFilter {
        entity_type: query.entity_type,
        entity_id: query.entity_id,
        actor_id: query.actor_id,
        action: query.action,
        donor_id,
        since: query.since,
        until: query.until,
    };
    let mut conn = state.db().await?;
    let rows = db::audit::list(&mut conn, &filter, page).await?;
    let (items, next_cursor) = paginate(rows, &page, |e| e.id);
    Ok(AuditPage { items, next_cursor })
}
