//! Machines in the inventory.

use chrono::{DateTime, NaiveDate, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::schema::{donations, machine_status, machines};
use super::{Json, lower};
use crate::domain::{
    Accelerator, Arch, DonationId, DonationModel, DonorId, Health, Labels, LifecycleState, MachineId, SiteId,
};

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = machines, check_for_backend(diesel::pg::Pg))]
pub struct Machine {
    pub id: MachineId,
    /// `None` for a machine rented from a cloud (or imported from one).
    pub donation_id: Option<DonationId>,
    pub donor_id: Option<DonorId>,
    pub site_id: SiteId,
    pub hostname: Option<String>,
    pub asset_tag: Option<String>,
    pub arch: Arch,
    pub cpu_model: String,
    pub cpu_cores: i32,
    pub memory_mib: i64,
    pub disk_gib: i64,
    pub accelerators: Json<Vec<Accelerator>>,
    pub labels: Json<Labels>,
    pub ssh_host: Option<String>,
    pub ssh_port: Option<i32>,
    pub ssh_user: Option<String>,
    pub warranty_until: Option<NaiveDate>,
    pub lifecycle: LifecycleState,
    pub lifecycle_changed_at: DateTime<Utc>,
    pub lifecycle_deadline: Option<DateTime<Utc>>,
    pub health: Health,
    pub rack: Option<String>,
    pub slot: Option<String>,
    pub maintenance_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub health_reason: Option<String>,
    pub health_changed_at: Option<DateTime<Utc>>,
    pub quarantined_at: Option<DateTime<Utc>>,
    pub quarantine_reason: Option<String>,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = machines)]
pub struct NewMachine<'a> {
    pub id: MachineId,
    pub donation_id: Option<DonationId>,
    pub donor_id: Option<DonorId>,
    pub site_id: SiteId,
    pub hostname: Option<&'a str>,
    pub asset_tag: Option<&'a str>,
    pub arch: Arch,
    pub cpu_model: &'a str,
    pub cpu_cores: i32,
    pub memory_mib: i64,
    pub disk_gib: i64,
    pub accelerators: Json<&'a [Accelerator]>,
    pub labels: Json<&'a Labels>,
    pub ssh_host: Option<&'a str>,
    pub ssh_port: Option<i32>,
    pub ssh_user: Option<&'a str>,
    pub warranty_until: Option<NaiveDate>,
    pub lifecycle: LifecycleState,
    pub lifecycle_deadline: Option<DateTime<Utc>>,
}

/// Keeps asset tags unique regardless of case.
pub const ASSET_TAG_KEY: &str = "machines_asset_tag_key";

/// Registers machines, each with its (empty) live-status row.
pub async fn insert_many(conn: &mut AsyncPgConnection, machines: &[NewMachine<'_>]) -> QueryResult<Vec<Machine>> {
    let inserted: Vec<Machine> = diesel::insert_into(machines::table)
        .values(machines)
        .returning(Machine::as_returning())
        .get_results(conn)
        .await?;
    let status_rows: Vec<_> = inserted.iter().map(|m| machine_status::machine_id.eq(m.id)).collect();
    diesel::insert_into(machine_status::table).values(status_rows).execute(conn).await?;
    Ok(inserted)
}

pub async fn find_by_asset_tag(conn: &mut AsyncPgConnection, tag: &str) -> QueryResult<Option<Machine>> {
    machines::table.filter(machines::asset_tag.eq(tag)).select(Machine::as_select()).first(conn).await.optional()
}

pub async fn find(conn: &mut AsyncPgConnection, id: MachineId) -> QueryResult<Option<Machine>> {
    machines::table.find(id).select(Machine::as_select()).first(conn).await.optional()
}

/// Reads and locks one machine until the transaction ends.
pub async fn lock(conn: &mut AsyncPgConnection, id: MachineId) -> QueryResult<Option<Machine>> {
    machines::table.find(id).select(Machine::as_select()).for_update().first(conn).await.optional()
}

/// A donation's machines in registration order.
pub async fn of_donation(conn: &mut AsyncPgConnection, donation: DonationId) -> QueryResult<Vec<Machine>> {
    machines::table
        .filter(machines::donation_id.eq(donation))
        .select(Machine::as_select())
        .order(machines::id)
        .load(conn)
        .await
}

/// A donation's machines, locked until the transaction ends.
pub async fn lock_of_donation(conn: &mut AsyncPgConnection, donation: DonationId) -> QueryResult<Vec<Machine>> {
    machines::table
        .filter(machines::donation_id.eq(donation))
        .select(Machine::as_select())
        .order(machines::id)
        .for_update()
        .load(conn)
        .await
}

/// Which of `tags` are already in use, compared without case.
pub async fn taken_asset_tags(conn: &mut AsyncPgConnection, tags: &[&str]) -> QueryResult<Vec<String>> {
    let lowered: Vec<String> = tags.iter().map(|t| t.to_lowercase()).collect();
    machines::table
        .filter(lower(machines::asset_tag.assume_not_null()).eq_any(lowered))
        .select(machines::asset_tag.assume_not_null())
        .load(conn)
        .await
}

/// Where a machine goes and what is recorded on the way.
#[derive(Debug, Clone)]
pub struct LifecycleChange<'a> {
    pub to: LifecycleState,
    pub deadline: Option<DateTime<Utc>>,
    /// Why it entered maintenance (cleared on every other transition).
    pub maintenance_reason: Option<&'a str>,
    /// Rack and slot, when it is received in the lab.
    pub location: Option<(&'a str, &'a str)>,
}

/// Moves machines to a new lifecycle state and returns them as they now are.
pub async fn set_lifecycle(
    conn: &mut AsyncPgConnection,
    ids: &[MachineId],
    change: &LifecycleChange<'_>,
) -> QueryResult<Vec<Machine>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let target = machines::table.filter(machines::id.eq_any(ids));
    let now = diesel::dsl::now;
    let common = (
        machines::lifecycle.eq(change.to),
        machines::lifecycle_changed_at.eq(now),
        machines::lifecycle_deadline.eq(change.deadline),
        machines::maintenance_reason.eq(change.maintenance_reason),
        machines::updated_at.eq(now),
    );
    let mut updated: Vec<Machine> = match change.location {
        Some((rack, slot)) => {
            diesel::update(target)
                .set((common, machines::rack.eq(rack), machines::slot.eq(slot)))
                .returning(Machine::as_returning())
                .get_results(conn)
                .await?
        }
        None => diesel::update(target).set(common).returning(Machine::as_returning()).get_results(conn).await?,
    };
    updated.sort_by_key(|m| m.id);
    Ok(updated)
}

pub async fn set_labels(conn: &mut AsyncPgConnection, id: MachineId, labels: &Labels) -> QueryResult<Machine> {
    diesel::update(machines::table.find(id))
        .set((machines::labels.eq(Json(labels)), machines::updated_at.eq(diesel::dsl::now)))
        .returning(Machine::as_returning())
        .get_result(conn)
        .await
}

/// Which machines to list; every field narrows the result.
#[derive(Debug, Clone, Default)]
pub struct MachineFilter {
    pub donor_id: Option<DonorId>,
    pub arch: Option<Arch>,
    pub lifecycle: Option<LifecycleState>,
    pub health: Option<Health>,
    pub site_id: Option<SiteId>,
    pub donation_id: Option<DonationId>,
    pub donation_model: Option<DonationModel>,
    /// Every one of these labels must be present with this value.
    pub labels: Labels,
    /// Only machines past (or, with `false`, within) their in-progress state's deadline.
    pub overdue: Option<bool>,
    /// Words each of which the hostname, asset tag or CPU model contains (any case).
    pub search: Vec<String>,
}

/// The order of a machine list, with the key of the last row of the previous page.
#[derive(Debug, Clone)]
pub enum MachineOrder {
    /// Registration order (ids are UUIDv7).
    Registered { after: Option<MachineId> },
    /// By hostname (machines without one first), then id.
    Hostname { after: Option<(String, MachineId)> },
}

pub async fn list(
    conn: &mut AsyncPgConnection,
    filter: &MachineFilter,
    order: &MachineOrder,
    limit: i64,
) -> QueryResult<Vec<Machine>> {
    let mut query = machines::table.select(Machine::as_select()).into_boxed();
    if let Some(donor_id) = filter.donor_id {
        query = query.filter(machines::donor_id.eq(donor_id));
    }
    if let Some(arch) = filter.arch {
        query = query.filter(machines::arch.eq(arch));
    }
    if let Some(lifecycle) = filter.lifecycle {
        query = query.filter(machines::lifecycle.eq(lifecycle));
    }
    if let Some(health) = filter.health {
        query = query.filter(machines::health.eq(health));
    }
    if let Some(site_id) = filter.site_id {
        query = query.filter(machines::site_id.eq(site_id));
    }
    if let Some(donation_id) = filter.donation_id {
        query = query.filter(machines::donation_id.eq(donation_id));
    }
    if let Some(model) = filter.donation_model {
        let of_model = donations::table.filter(donations::model.eq(model)).select(donations::id.nullable());
        query = query.filter(machines::donation_id.eq_any(of_model));
    }
    if !filter.labels.is_empty() {
        // Uses the GIN (jsonb_path_ops) index on labels.
        query = query.filter(machines::labels.contains(serde_json::json!(filter.labels)));
    }
    match filter.overdue {
        Some(true) => query = query.filter(machines::lifecycle_deadline.lt(diesel::dsl::now)),
        Some(false) => {
            query = query
                .filter(machines::lifecycle_deadline.is_null().or(machines::lifecycle_deadline.ge(diesel::dsl::now)))
        }
        None => {}
    }
    for word in &filter.search {
        let pattern = format!("%{}%", escape_like(word));
        query = query.filter(
            machines::hostname
                .ilike(pattern.clone())
                .or(machines::asset_tag.ilike(pattern.clone()))
                .or(machines::cpu_model.ilike(pattern)),
        );
    }
    let hostname = diesel::dsl::sql::<diesel::sql_types::Text>("coalesce(machines.hostname, '')");
    match order {
        MachineOrder::Registered { after } => {
            if let Some(after) = after {
                query = query.filter(machines::id.gt(*after));
            }
            query = query.order(machines::id);
        }
        MachineOrder::Hostname { after } => {
            if let Some((name, id)) = after {
                query = query.filter(
                    hostname.clone().gt(name.clone()).or(hostname.clone().eq(name.clone()).and(machines::id.gt(*id))),
                );
            }
            query = query.order((hostname, machines::id));
        }
    }
    query.limit(limit + 1).load(conn).await
}

/// `word` for a LIKE pattern, its wildcards matched literally.
fn escape_like(word: &str) -> String {
    word.replace('\\', r"\\").replace('%', r"\%").replace('_', r"\_")
}

/// Where lease holders log in (a cloud instance's, once the cloud says where it is).
pub async fn set_ssh_endpoint(
    conn: &mut AsyncPgConnection,
    id: MachineId,
    host: &str,
    port: i32,
    user: &str,
) -> QueryResult<usize> {
    diesel::update(machines::table.find(id))
        .set((
            machines::ssh_host.eq(host),
            machines::ssh_port.eq(port),
            machines::ssh_user.eq(user),
            machines::updated_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .await
}
