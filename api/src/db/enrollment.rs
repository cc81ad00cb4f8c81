//! One-time enrollment tokens, and the machine credentials they are exchanged for.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::schema::{api_tokens, enrollment_tokens};
use crate::domain::{MachineId, Role, TokenId, UserId};

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = enrollment_tokens, check_for_backend(diesel::pg::Pg))]
pub struct EnrollmentToken {
    pub id: TokenId,
    pub machine_id: MachineId,
    pub secret_hash: Vec<u8>,
    pub created_by: Option<UserId>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Issues a token for `machine`, revoking any it had not used yet.
pub async fn issue(
    conn: &mut AsyncPgConnection,
    machine: MachineId,
    secret_hash: &[u8],
    created_by: Option<UserId>,
    expires_at: DateTime<Utc>,
) -> QueryResult<EnrollmentToken> {
    revoke_open_tokens(conn, machine).await?;
    diesel::insert_into(enrollment_tokens::table)
        .values((
            enrollment_tokens::id.eq(TokenId::generate()),
            enrollment_tokens::machine_id.eq(machine),
            enrollment_tokens::secret_hash.eq(secret_hash),
            enrollment_tokens::created_by.eq(created_by),
            enrollment_tokens::expires_at.eq(expires_at),
        ))
        .returning(EnrollmentToken::as_returning())
        .get_result(conn)
        .await
}

/// Finds and locks the token with this secret hash.
pub async fn lock_by_secret(conn: &mut AsyncPgConnection, secret_hash: &[u8]) -> QueryResult<Option<EnrollmentToken>> {
    enrollment_tokens::table
        .filter(enrollment_tokens::secret_hash.eq(secret_hash))
        .select(EnrollmentToken::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()
}

pub async fn mark_used(conn: &mut AsyncPgConnection, id: TokenId) -> QueryResult<()> {
    diesel::update(enrollment_tokens::table.find(id))
        .set(enrollment_tokens::used_at.eq(diesel::dsl::now))
        .execute(conn)
        .await
        .map(drop)
}

/// Removes tokens that expired unused more than a day ago; returns how many.
pub async fn delete_expired(conn: &mut AsyncPgConnection) -> QueryResult<usize> {
    diesel::delete(
        enrollment_tokens::table
            .filter(enrollment_tokens::used_at.is_null())
            .filter(enrollment_tokens::expires_at.lt(Utc::now() - chrono::Duration::days(1))),
    )
    .execute(conn)
    .await
}

/// Revokes, now, every credential of `machine`'s agent not already revoked (a re-enrolled
/// agent replaces them; a machine leaving service loses them).
pub async fn revoke_agent_credentials(conn: &mut AsyncPgConnection, machine: MachineId) -> QueryResult<Vec<TokenId>> {
    diesel::update(
        api_tokens::table
            .filter(api_tokens::machine_id.eq(machine))
            .filter(api_tokens::role.eq(Role::Agent))
            .filter(api_tokens::revoked_at.is_null().or(api_tokens::revoked_at.gt(diesel::dsl::now))),
    )
    .set(api_tokens::revoked_at.eq(diesel::dsl::now))
    .returning(api_tokens::id)
    .get_results(conn)
    .await
}

/// Retires `machine`'s agent credentials other than `keep` at `at` (a renewed credential's
/// predecessor keeps working a little, in case the agent never got the new one).
pub async fn retire_agent_credentials(
    conn: &mut AsyncPgConnection,
    machine: MachineId,
    keep: TokenId,
    at: DateTime<Utc>,
) -> QueryResult<Vec<TokenId>> {
    diesel::update(
        api_tokens::table
            .filter(api_tokens::machine_id.eq(machine))
            .filter(api_tokens::role.eq(Role::Agent))
            .filter(api_tokens::id.ne(keep))
            .filter(api_tokens::revoked_at.is_null().or(api_tokens::revoked_at.gt(at))),
    )
    .set(api_tokens::revoked_at.eq(at))
    .returning(api_tokens::id)
    .get_results(conn)
    .await
}

/// Revokes the machine's unused enrollment tokens (a new one replaces them, or its agent is
/// being cut off).
pub async fn revoke_open_tokens(conn: &mut AsyncPgConnection, machine: MachineId) -> QueryResult<usize> {
    diesel::update(
        enrollment_tokens::table
            .filter(enrollment_tokens::machine_id.eq(machine))
            .filter(enrollment_tokens::used_at.is_null())
            .filter(enrollment_tokens::revoked_at.is_null()),
    )
    .set(enrollment_tokens::revoked_at.eq(diesel::dsl::now))
    .execute(conn)
    .await
}
