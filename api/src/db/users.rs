//! User accounts: ops (`admin`) and donors' staff (`donor`).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::schema::users;
use super::{Page, lower};
use crate::domain::{DonorId, Role, UserId};

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = users, check_for_backend(diesel::pg::Pg))]
pub struct User {
    pub id: UserId,
    pub email: String,
    pub display_name: String,
    pub password_hash: String,
    pub role: Role,
    pub donor_id: Option<DonorId>,
    pub disabled_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Sessions carry the generation they were issued in; only the current one is accepted.
    pub session_generation: i32,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = users)]
pub struct NewUser<'a> {
    pub id: UserId,
    pub email: &'a str,
    pub display_name: &'a str,
    pub password_hash: &'a str,
    pub role: Role,
    pub donor_id: Option<DonorId>,
}

/// The unique index that keeps emails unique regardless of case.
pub const EMAIL_KEY: &str = "users_email_key";

pub async fn insert(conn: &mut AsyncPgConnection, user: &NewUser<'_>) -> QueryResult<User> {
    diesel::insert_into(users::table).values(user).returning(User::as_returning()).get_result(conn).await
}

pub async fn find(conn: &mut AsyncPgConnection, id: UserId) -> QueryResult<Option<User>> {
    users::table.find(id).select(User::as_select()).first(conn).await.optional()
}

pub async fn find_by_email(conn: &mut AsyncPgConnection, email: &str) -> QueryResult<Option<User>> {
    users::table
        .filter(lower(users::email).eq(email.to_lowercase()))
        .select(User::as_select())
        .first(conn)
        .await
        .optional()
}

/// Users in creation order, optionally of one donor only.
pub async fn list(conn: &mut AsyncPgConnection, donor: Option<DonorId>, page: Page<UserId>) -> QueryResult<Vec<User>> {
    let mut query = users::table.select(User::as_select()).into_boxed();
    if let Some(donor) = donor {
        query = query.filter(users::donor_id.eq(donor));
    }
    if let Some(after) = page.after {
        query = query.filter(users::id.gt(after));
    }
    query.order(users::id).limit(page.fetch_limit()).load(conn).await
}

/// Disables (ending every session) or enables a user; enabling brings no session back.
pub async fn set_disabled(conn: &mut AsyncPgConnection, id: UserId, disabled: bool) -> QueryResult<User> {
    let disabled_at = disabled.then(Utc::now);
    let generation = users::session_generation + i32::from(disabled);
    diesel::update(users::table.find(id))
        .set((
            users::disabled_at.eq(disabled_at),
            users::session_generation.eq(generation),
            users::updated_at.eq(diesel::dsl::now),
        ))
        .returning(User::as_returning())
        .get_result(conn)
        .await
}

/// Ends every session the user holds (logging out).
pub async fn end_sessions(conn: &mut AsyncPgConnection, id: UserId) -> QueryResult<User> {
    diesel::update(users::table.find(id))
        .set((users::session_generation.eq(users::session_generation + 1), users::updated_at.eq(diesel::dsl::now)))
        .returning(User::as_returning())
        .get_result(conn)
        .await
}

/// Sets a new password hash and ends every session issued with the old password.
pub async fn set_password(conn: &mut AsyncPgConnection, id: UserId, hash: &str) -> QueryResult<User> {
    diesel::update(users::table.find(id))
        .set((
            users::password_hash.eq(hash),
            users::session_generation.eq(users::session_generation + 1),
            users::updated_at.eq(diesel::dsl::now),
        ))
        .returning(User::as_returning())
        .get_result(conn)
        .await
}

pub async fn any_admin_exists(conn: &mut AsyncPgConnection) -> QueryResult<bool> {
    diesel::select(diesel::dsl::exists(users::table.filter(users::role.eq(Role::Admin)))).get_result(conn).await
}

pub async fn set_display_name(conn: &mut AsyncPgConnection, id: UserId, name: &str) -> QueryResult<User> {
    diesel::update(users::table.find(id))
        .set((users::display_name.eq(name), users::updated_at.eq(diesel::dsl::now)))
        .returning(User::as_returning())
        .get_result(conn)
        .await
}
