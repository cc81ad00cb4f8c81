//! The event outbox, webhook subscriptions and their deliveries.

use chrono::{DateTime, Duration, Utc};
use diesel::data_types::PgInterval;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Interval, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde_json::Value;
use uuid::Uuid;

use super::Page;
use super::schema::{events, webhook_deliveries, webhook_subscriptions};
use crate::domain::{DonorId, EventType};

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = events, check_for_backend(diesel::pg::Pg))]
pub struct Event {
    pub id: Uuid,
    pub event_type: String,
    pub subject: String,
    pub time: DateTime<Utc>,
    pub donor_id: Option<DonorId>,
    pub data: Value,
}

/// An event about to be announced.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event_type: EventType,
    /// What it is about, e.g. `machines/<id>`.
    pub subject: String,
    pub donor_id: Option<DonorId>,
    pub data: Value,
}

/// Writes events and queues a delivery to every subscription that wants them. Call inside
/// the transaction of the change they announce, so they exist exactly when it does.
pub async fn emit(conn: &mut AsyncPgConnection, new: &[NewEvent]) -> QueryResult<()> {
    for event in new {
        let id = Uuid::now_v7();
        diesel::insert_into(events::table)
            .values((
                events::id.eq(id),
                events::event_type.eq(event.event_type.as_str()),
                events::subject.eq(&event.subject),
                events::donor_id.eq(event.donor_id),
                events::data.eq(&event.data),
            ))
            .execute(conn)
            .await?;
        diesel::sql_query(
            "INSERT INTO webhook_deliveries (event_id, subscription_id)
             SELECT $1, s.id FROM webhook_subscriptions s
             WHERE s.active AND (cardinality(s.event_types) = 0 OR $2 = ANY (s.event_types))",
        )
        .bind::<diesel::sql_types::Uuid, _>(id)
        .bind::<Text, _>(event.event_type.as_str())
        .execute(conn)
        .await?;
    }
    Ok(())
}

/// Events, newest first, optionally of one type.
pub async fn list(conn: &mut AsyncPgConnection, event_type: Option<&str>, page: Page<Uuid>) -> QueryResult<Vec<Event>> {
    let mut query = events::table.select(Event::as_select()).into_boxed();
    if let Some(event_type) = event_type {
        query = query.filter(events::event_type.eq(event_type));
    }
    if let Some(after) = page.after {
        query = query.filter(events::id.lt(after));
    }
    query.order(events::id.desc()).limit(page.fetch_limit()).load(conn).await
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = webhook_subscriptions, check_for_backend(diesel::pg::Pg))]
pub struct Subscription {
    pub id: Uuid,
    pub url: String,
    pub secret: String,
    pub event_types: Vec<String>,
    pub description: Option<String>,
    pub active: bool,
    pub created_by: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = webhook_subscriptions)]
pub struct NewSubscription<'a> {
    pub id: Uuid,
    pub url: &'a str,
    pub secret: &'a str,
    pub event_types: &'a [String],
    pub description: Option<&'a str>,
    pub created_by: Option<Uuid>,
}

#[derive(Debug, Default, AsChangeset)]
#[diesel(table_name = webhook_subscriptions)]
pub struct SubscriptionChanges {
    pub url: Option<String>,
    pub event_types: Option<Vec<String>>,
    pub description: Option<Option<String>>,
    pub active: Option<bool>,
}

pub async fn insert_subscription(conn: &mut AsyncPgConnection, new: &NewSubscription<'_>) -> QueryResult<Subscription> {
    diesel::insert_into(webhook_subscriptions::table)
        .values(new)
        .returning(Subscription::as_returning())
        .get_result(conn)
        .await
}

pub async fn find_subscription(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<Subscription>> {
    webhook_subscriptions::table.find(id).select(Subscription::as_select()).first(conn).await.optional()
}

pub async fn list_subscriptions(conn: &mut AsyncPgConnection, page: Page<Uuid>) -> QueryResult<Vec<Subscription>> {
    let mut query = webhook_subscriptions::table.select(Subscription::as_select()).into_boxed();
    if let Some(after) = page.after {
        query = query.filter(webhook_subscriptions::id.gt(after));
    }
    query.order(webhook_subscriptions::id).limit(page.fetch_limit()).load(conn).await
}

pub async fn update_subscription(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    changes: &SubscriptionChanges,
) -> QueryResult<Subscription> {
    diesel::update(webhook_subscriptions::table.find(id))
        .set((changes, webhook_subscriptions::updated_at.eq(diesel::dsl::now)))
        .returning(Subscription::as_returning())
        .get_result(conn)
        .await
}

/// Deletes a subscription and its queued deliveries.
pub async fn delete_subscription(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<usize> {
    diesel::delete(webhook_subscriptions::table.find(id)).execute(conn).await
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = webhook_deliveries, check_for_backend(diesel::pg::Pg))]
pub struct Delivery {
    pub id: i64,
    pub event_id: Uuid,
    pub subscription_id: Uuid,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub abandoned_at: Option<DateTime<Utc>>,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub claimed_until: Option<DateTime<Utc>>,
}

pub async fn list_deliveries(
    conn: &mut AsyncPgConnection,
    subscription: Uuid,
    page: Page<i64>,
) -> QueryResult<Vec<Delivery>> {
    let mut query = webhook_deliveries::table
        .filter(webhook_deliveries::subscription_id.eq(subscription))
        .select(Delivery::as_select())
        .into_boxed();
    if let Some(after) = page.after {
        query = query.filter(webhook_deliveries::id.lt(after));
    }
    query.order(webhook_deliveries::id.desc()).limit(page.fetch_limit()).load(conn).await
}

/// A claimed delivery with everything needed to send it.
#[derive(Debug, Clone, QueryableByName)]
pub struct DueDelivery {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pub attempts: i32,
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    pub subscription_id: Uuid,
    #[diesel(sql_type = Text)]
    pub url: String,
    #[diesel(sql_type = Text)]
    pub secret: String,
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    pub event_id: Uuid,
    #[diesel(sql_type = Text)]
    pub event_type: String,
    #[diesel(sql_type = Text)]
    pub subject: String,
    #[diesel(sql_type = diesel::sql_types::Timestamptz)]
    pub time: DateTime<Utc>,
    #[diesel(sql_type = diesel::sql_types::Jsonb)]
    pub data: Value,
}

/// Claims, for `lease`, the oldest due delivery of up to `limit` active subscriptions that
/// have none in flight: each subscriber has at most one delivery in flight at a time, across
/// workers and replicas, and gets its events in order unless a retry intervenes.
pub async fn claim_due(conn: &mut AsyncPgConnection, limit: i64, lease: Duration) -> QueryResult<Vec<DueDelivery>> {
    diesel::sql_query(
        "WITH candidates AS (
             SELECT DISTINCT ON (d.subscription_id) d.id
             FROM webhook_deliveries d
             JOIN webhook_subscriptions s ON s.id = d.subscription_id AND s.active
             WHERE d.delivered_at IS NULL AND d.abandoned_at IS NULL AND d.next_attempt_at <= now()
               AND NOT EXISTS (
                   SELECT 1 FROM webhook_deliveries busy
                   WHERE busy.subscription_id = d.subscription_id AND busy.claimed_until > now())
             ORDER BY d.subscription_id, d.id
             LIMIT $1
         ), due AS (
             -- The conditions again, on the row being locked: if another worker claimed (or
             -- even delivered) it since the snapshot above, PostgreSQL rechecks them against
             -- the latest version and skips it, so it is never sent twice.
             SELECT id FROM webhook_deliveries
             WHERE id IN (SELECT id FROM candidates) AND delivered_at IS NULL AND abandoned_at IS NULL
               AND (claimed_until IS NULL OR claimed_until <= now())
             FOR UPDATE SKIP LOCKED
         ), claimed AS (
             UPDATE webhook_deliveries d SET claimed_until = now() + $2, attempts = d.attempts + 1
             FROM due WHERE d.id = due.id
             RETURNING d.id, d.attempts, d.event_id, d.subscription_id
         )
         SELECT c.id, c.attempts, c.subscription_id, s.url, s.secret, e.id AS event_id, e.type AS event_type,
                e.subject, e.time, e.data
         FROM claimed c
         JOIN webhook_subscriptions s ON s.id = c.subscription_id
         JOIN events e ON e.id = c.event_id
         ORDER BY e.time",
    )
    .bind::<BigInt, _>(limit)
    .bind::<Interval, _>(PgInterval::from_microseconds(lease.num_microseconds().unwrap_or(i64::MAX)))
    .load(conn)
    .await
}

/// Records a delivery made under the claim numbered `attempt`; a claim that has since lapsed
/// and been taken over records nothing.
pub async fn mark_delivered(conn: &mut AsyncPgConnection, id: i64, attempt: i32, status: i32) -> QueryResult<()> {
    diesel::update(webhook_deliveries::table.find(id).filter(webhook_deliveries::attempts.eq(attempt)))
        .set((
            webhook_deliveries::delivered_at.eq(diesel::dsl::now),
            webhook_deliveries::claimed_until.eq(None::<DateTime<Utc>>),
            webhook_deliveries::last_status.eq(status),
            webhook_deliveries::last_error.eq(None::<String>),
        ))
        .execute(conn)
        .await
        .map(drop)
}

/// Records a failed attempt (under claim `attempt`): retried at `retry_at`, or abandoned
/// when that is `None`.
pub async fn mark_failed(
    conn: &mut AsyncPgConnection,
    id: i64,
    attempt: i32,
    status: Option<i32>,
    error: &str,
    retry_at: Option<DateTime<Utc>>,
) -> QueryResult<()> {
    let target = webhook_deliveries::table.find(id).filter(webhook_deliveries::attempts.eq(attempt));
    let common = (
        webhook_deliveries::claimed_until.eq(None::<DateTime<Utc>>),
        webhook_deliveries::last_status.eq(status),
        webhook_deliveries::last_error.eq(error),
    );
    match retry_at {
        Some(at) => {
            diesel::update(target).set((common, webhook_deliveries::next_attempt_at.eq(at))).execute(conn).await
        }
        None => {
            diesel::update(target)
                .set((common, webhook_deliveries::abandoned_at.eq(diesel::dsl::now)))
                .execute(conn)
                .await
        }
    }
    .map(drop)
}

/// Deletes the deliveries that finished (delivered or abandoned) before `before`.
pub async fn prune_deliveries(conn: &mut AsyncPgConnection, before: DateTime<Utc>) -> QueryResult<usize> {
    delete_in_batches(
        conn,
        "DELETE FROM webhook_deliveries WHERE id IN (
             SELECT id FROM webhook_deliveries WHERE coalesce(delivered_at, abandoned_at) < $1 LIMIT $2)",
        before,
    )
    .await
}

/// Deletes the events from before `before` that no delivery still waits on.
pub async fn prune_events(conn: &mut AsyncPgConnection, before: DateTime<Utc>) -> QueryResult<usize> {
    delete_in_batches(
        conn,
        "DELETE FROM events WHERE id IN (
             SELECT e.id FROM events e
             WHERE e.time < $1 AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.event_id = e.id)
             LIMIT $2)",
        before,
    )
    .await
}

/// Runs `delete` (a statement taking a time `$1` and a batch size `$2`) until a batch comes
/// up short: no one statement holds its locks for long.
async fn delete_in_batches(
    conn: &mut AsyncPgConnection,
    delete: &'static str,
    before: DateTime<Utc>,
) -> QueryResult<usize> {
    const BATCH: usize = 5_000;
    let mut total = 0;
    loop {
        let deleted = diesel::sql_query(delete)
            .bind::<diesel::sql_types::Timestamptz, _>(before)
            .bind::<BigInt, _>(BATCH as i64)
            .execute(conn)
            .await?;
        total += deleted;
        if deleted < BATCH {
            return Ok(total);
        }
    }
}

/// Types of events in `types` that are not known, for validating subscriptions.
pub fn unknown_types(types: &[String]) -> Vec<&str> {
    types.iter().map(String::as_str).filter(|t| t.parse::<EventType>().is_err()).collect()
}
