//! API tokens: service accounts and machine credentials. A token's id is its JWT `jti`.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::Page;
use super::schema::api_tokens;
use crate::domain::{MachineId, Role, TokenId, UserId};

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = api_tokens, check_for_backend(diesel::pg::Pg))]
pub struct ApiToken {
    pub id: TokenId,
    pub name: String,
    pub role: Role,
    pub machine_id: Option<MachineId>,
    pub created_by: Option<UserId>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub revoked_by: Option<UserId>,
    /// A service token's tenants (names, or prefixes ending in `*`); empty for agents.
    pub tenants: Vec<String>,
    /// The highest priority a service token may ask for.
    pub max_priority: i32,
    /// Caps on what a service token may have queued; `None`: the configuration's.
    pub max_queued_leases: Option<i32>,
    pub max_queued_jobs: Option<i32>,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = api_tokens)]
pub struct NewApiToken<'a> {
    pub id: TokenId,
    pub name: &'a str,
    pub role: Role,
    pub machine_id: Option<MachineId>,
    pub created_by: Option<UserId>,
    pub expires_at: DateTime<Utc>,
    pub tenants: &'a [String],
    pub max_priority: i32,
    pub max_queued_leases: Option<i32>,
    pub max_queued_jobs: Option<i32>,
}

impl<'a> NewApiToken<'a> {
    /// A machine agent's credential: no tenants, no queue.
    pub fn agent(id: TokenId, name: &'a str, machine_id: MachineId, expires_at: DateTime<Utc>) -> Self {
        Self {
            id,
            name,
            role: Role::Agent,
            machine_id: Some(machine_id),
            created_by: None,
            expires_at,
            tenants: &[],
            max_priority: 0,
            max_queued_leases: Some(0),
            max_queued_jobs: Some(0),
        }
    }
}

/// What ops change of a service token's grant.
#[derive(Debug, Default, AsChangeset)]
#[diesel(table_name = api_tokens)]
pub struct GrantChange {
    pub tenants: Option<Vec<String>>,
    pub max_priority: Option<i32>,
    pub max_queued_leases: Option<Option<i32>>,
    pub max_queued_jobs: Option<Option<i32>>,
}

pub async fn insert(conn: &mut AsyncPgConnection, token: &NewApiToken<'_>) -> QueryResult<ApiToken> {
    diesel::insert_into(api_tokens::table).values(token).returning(ApiToken::as_returning()).get_result(conn).await
}

/// Stores many tokens in one statement (the load generator registers thousands).
pub async fn insert_many(conn: &mut AsyncPgConnection, tokens: &[NewApiToken<'_>]) -> QueryResult<usize> {
    diesel::insert_into(api_tokens::table).values(tokens).execute(conn).await
}

pub async fn find(conn: &mut AsyncPgConnection, id: TokenId) -> QueryResult<Option<ApiToken>> {
    api_tokens::table.find(id).select(ApiToken::as_select()).first(conn).await.optional()
}

/// A token, and a transaction-id floor at or below every transaction that could change it
/// unseen by this read (see [`agent_revocations_after`]).
pub async fn find_with_floor(conn: &mut AsyncPgConnection, id: TokenId) -> QueryResult<(Option<ApiToken>, i64)> {
    // Taken before the read, so the read's snapshot sees at least what this one does.
    let floor: i64 = diesel::select(snapshot_xmin()).get_result(conn).await?;
    Ok((find(conn, id).await?, floor))
}

/// Tokens of one role, in creation order.
pub async fn list(conn: &mut AsyncPgConnection, role: Role, page: Page<TokenId>) -> QueryResult<Vec<ApiToken>> {
    let mut query = api_tokens::table.filter(api_tokens::role.eq(role)).select(ApiToken::as_select()).into_boxed();
    if let Some(after) = page.after {
        query = query.filter(api_tokens::id.gt(after));
    }
    query.order(api_tokens::id).limit(page.fetch_limit()).load(conn).await
}

/// Marks a token revoked; a token already revoked keeps its first revocation.
pub async fn revoke(conn: &mut AsyncPgConnection, id: TokenId, by: UserId) -> QueryResult<ApiToken> {
    diesel::update(api_tokens::table.find(id).filter(api_tokens::revoked_at.is_null()))
        .set((api_tokens::revoked_at.eq(diesel::dsl::now), api_tokens::revoked_by.eq(by)))
        .execute(conn)
        .await?;
    api_tokens::table.find(id).select(ApiToken::as_select()).first(conn).await
}

/// Changes a service token's grant.
pub async fn change_grant(conn: &mut AsyncPgConnection, id: TokenId, change: &GrantChange) -> QueryResult<ApiToken> {
    diesel::update(api_tokens::table.find(id).filter(api_tokens::role.eq(Role::Ci)))
        .set(change)
        .returning(ApiToken::as_returning())
        .get_result(conn)
        .await
}

diesel::define_sql_function! {
    /// `pg_snapshot_xmin(pg_current_snapshot())` as a number: every transaction not yet
    /// visible to a snapshot taken now has an id at least this.
    #[sql_name = "fleetyard_snapshot_xmin"]
    fn snapshot_xmin() -> diesel::sql_types::BigInt;
}

/// Agent credentials revoked by transactions that a snapshot with xmin `floor` could not see
/// (`None`: all of them), and the floor for the next poll. Transaction ids, not clocks: a
/// revocation is found however long its transaction ran before committing.
pub async fn agent_revocations_after(
    conn: &mut AsyncPgConnection,
    floor: Option<i64>,
) -> QueryResult<(Vec<TokenId>, i64)> {
    // Taken before the read below: whatever commits after it is at or above it.
    let next: i64 = diesel::select(snapshot_xmin()).get_result(conn).await?;
    let revoked = api_tokens::table
        .filter(api_tokens::role.eq(Role::Agent))
        .filter(api_tokens::revoked_xid.ge(floor.unwrap_or(0)))
        .select(api_tokens::id)
        .load(conn)
        .await?;
    Ok((revoked, next))
}
