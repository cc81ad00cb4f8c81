//! The append-only audit log: written in the same transaction as the change it describes.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use super::Page;
use super::schema::audit_log;
use crate::domain::{ActorKind, DonorId};

/// Who did something.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub kind: ActorKind,
    pub id: Option<Uuid>,
    pub name: String,
}

impl Actor {
    /// Fleetyard itself, acting from a job or the command line.
    pub fn system(name: impl Into<String>) -> Self {
        Self { kind: ActorKind::System, id: None, name: name.into() }
    }
}

/// One change about to be recorded.
#[derive(Debug, Clone)]
pub struct Change {
    action: &'static str,
    entity_type: &'static str,
    entity_id: Uuid,
    donor_id: Option<DonorId>,
    note: Option<String>,
    before: Option<Value>,
    after: Option<Value>,
}

impl Change {
    /// `action` is `<entity>.<verb>`, e.g. `machine.lifecycle_changed`.
    pub fn new(action: &'static str, entity_type: &'static str, entity_id: impl Into<Uuid>) -> Self {
        Self { action, entity_type, entity_id: entity_id.into(), donor_id: None, note: None, before: None, after: None }
    }

    /// The donor whose data changed, so that donor can read the entry.
    pub fn donor(mut self, donor_id: Option<DonorId>) -> Self {
        self.donor_id = donor_id;
        self
    }

    /// Why, in the actor's words.
    pub fn note(mut self, note: Option<&str>) -> Self {
        self.note = note.map(str::to_owned);
        self
    }

    pub fn before(mut self, state: &impl Serialize) -> Self {
        self.before = Some(to_json(state));
        self
    }

    pub fn after(mut self, state: &impl Serialize) -> Self {
        self.after = Some(to_json(state));
        self
    }
}

fn to_json(state: &impl Serialize) -> Value {
    serde_json::to_value(state).unwrap_or_else(|e| Value::String(format!("<not serialisable: {e}>")))
}

#[derive(Insertable)]
#[diesel(table_name = audit_log)]
struct NewEntry<'a> {
    actor_kind: ActorKind,
    actor_id: Option<Uuid>,
    actor_name: &'a str,
    action: &'a str,
    entity_type: &'a str,
    entity_id: Uuid,
    donor_id: Option<DonorId>,
    note: Option<&'a str>,
    before: Option<&'a Value>,
    after: Option<&'a Value>,
}

/// Records changes made by `actor`, in one statement. Call inside the change's transaction.
pub async fn record(conn: &mut AsyncPgConnection, actor: &Actor, changes: &[Change]) -> QueryResult<()> {
    if changes.is_empty() {
        return Ok(());
    }
    let rows: Vec<NewEntry<'_>> = changes
        .iter()
        .map(|c| NewEntry {
            actor_kind: actor.kind,
            actor_id: actor.id,
            actor_name: &actor.name,
            action: c.action,
            entity_type: c.entity_type,
            entity_id: c.entity_id,
            donor_id: c.donor_id,
            note: c.note.as_deref(),
            before: c.before.as_ref(),
            after: c.after.as_ref(),
        })
        .collect();
    diesel::insert_into(audit_log::table).values(&rows).execute(conn).await.map(drop)
}

/// A recorded change.
#[derive(Debug, Clone, Queryable, Selectable, Serialize, ToSchema)]
#[diesel(table_name = audit_log, check_for_backend(diesel::pg::Pg))]
pub struct AuditEntry {
    /// Increasing with time; the pagination cursor.
    pub id: i64,
    /// When the change was committed (the transaction's time).
    pub at: DateTime<Utc>,
    pub actor_kind: ActorKind,
    /// The user or token that made the change; absent for the system.
    pub actor_id: Option<Uuid>,
    /// Email of the user, name of the token, or the system component.
    pub actor_name: String,
    /// What happened, `<entity>.<verb>`.
    #[schema(example = "machine.lifecycle_changed")]
    pub action: String,
    #[schema(example = "machine")]
    pub entity_type: String,
    pub entity_id: Uuid,
    /// The donor whose data changed, if any.
    #[schema(value_type = Option<String>, format = Uuid)]
    pub donor_id: Option<DonorId>,
    /// Why, in the actor's words.
    pub note: Option<String>,
    /// The entity before the change (absent for creations).
    pub before: Option<Value>,
    /// The entity after the change.
    pub after: Option<Value>,
}

/// Which entries to list. `donor_id` restricts to one donor's trail.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub entity_type: Option<String>,
    pub entity_id: Option<Uuid>,
    pub actor_id: Option<Uuid>,
    pub action: Option<String>,
    pub donor_id: Option<DonorId>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

/// Newest first; the page continues below `page.after`.
pub async fn list(conn: &mut AsyncPgConnection, filter: &AuditFilter, page: Page<i64>) -> QueryResult<Vec<AuditEntry>> {
    let mut query = audit_log::table.select(AuditEntry::as_select()).into_boxed();
    if let Some(entity_type) = &filter.entity_type {
        query = query.filter(audit_log::entity_type.eq(entity_type));
    }
    if let Some(entity_id) = filter.entity_id {
        query = query.filter(audit_log::entity_id.eq(entity_id));
    }
    if let Some(actor_id) = filter.actor_id {
        query = query.filter(audit_log::actor_id.eq(actor_id));
    }
    if let Some(action) = &filter.action {
        query = query.filter(audit_log::action.eq(action));
    }
    if let Some(donor_id) = filter.donor_id {
        query = query.filter(audit_log::donor_id.eq(donor_id));
    }
    if let Some(since) = filter.since {
        query = query.filter(audit_log::at.ge(since));
    }
    if let Some(until) = filter.until {
        query = query.filter(audit_log::at.lt(until));
    }
    if let Some(after) = page.after {
        query = query.filter(audit_log::id.lt(after));
    }
    query.order(audit_log::id.desc()).limit(page.fetch_limit()).load(conn).await
}
