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

/// Agent credentials revoked at or after `since`, with the database's clock now.
pub async fn agent_revocations_since(
    conn: &mut AsyncPgConnection,
    since: DateTime<Utc>,
) -> QueryResult<(Vec<TokenId>, DateTime<Utc>)> {
    let now: DateTime<Utc> =
        diesel::select(diesel::dsl::now.into_sql::<diesel::sql_types::Timestamptz>()).get_result(conn).await?;
    let revoked = api_tokens::table
        .filter(api_tokens::role.eq(Role::Agent))
        .filter(api_tokens::revoked_at.ge(since))
        .select(api_tokens::id)
        .load(conn)
        .await?;
    Ok((revoked, now))
}
