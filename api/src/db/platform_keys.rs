//! Key pairs Fleetyard holds itself. The private half never leaves through any endpoint.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::schema::platform_keys;

#[derive(Clone, Queryable, Selectable)]
#[diesel(table_name = platform_keys, check_for_backend(diesel::pg::Pg))]
pub struct PlatformKey {
    pub name: String,
    pub private_key: String,
    pub public_key: String,
    pub fingerprint: String,
    pub created_at: DateTime<Utc>,
}

impl std::fmt::Debug for PlatformKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlatformKey").field("name", &self.name).field("fingerprint", &self.fingerprint).finish()
    }
}

pub async fn find(conn: &mut AsyncPgConnection, name: &str) -> QueryResult<Option<PlatformKey>> {
    platform_keys::table.find(name).select(PlatformKey::as_select()).first(conn).await.optional()
}

/// Stores `key` unless a key of that name exists, and returns whichever is stored: replicas
/// starting together agree on one key.
pub async fn insert_or_get(conn: &mut AsyncPgConnection, key: &PlatformKey) -> QueryResult<PlatformKey> {
    diesel::insert_into(platform_keys::table)
        .values((
            platform_keys::name.eq(&key.name),
            platform_keys::private_key.eq(&key.private_key),
            platform_keys::public_key.eq(&key.public_key),
            platform_keys::fingerprint.eq(&key.fingerprint),
        ))
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    platform_keys::table.find(&key.name).select(PlatformKey::as_select()).first(conn).await
}
