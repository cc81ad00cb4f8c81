//! Every column that holds a sealed secret, for the start-up pass that seals them with the
//! current data key (see `secrets`).

use diesel::prelude::*;
use diesel::sql_types::Text;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

/// One stored secret: where it is and what is stored.
#[derive(Debug, QueryableByName)]
pub struct StoredSecret {
    #[diesel(sql_type = Text)]
    pub place: String,
    #[diesel(sql_type = Text)]
    pub key: String,
    #[diesel(sql_type = Text)]
    pub value: String,
}

/// Fleetyard's own key pairs and webhook signing secrets.
pub async fn list(conn: &mut AsyncPgConnection) -> QueryResult<Vec<StoredSecret>> {
    diesel::sql_query(
        "SELECT 'platform_keys' AS place, name AS key, private_key AS value FROM platform_keys
         UNION ALL
         SELECT 'webhook_subscriptions', id::text, secret FROM webhook_subscriptions",
    )
    .load(conn)
    .await
}

/// Stores `sealed` in place of `stored`, if the row still holds what was read; returns 1 if it
/// did, 0 if another replica got there first.
pub async fn replace(conn: &mut AsyncPgConnection, stored: &StoredSecret, sealed: &str) -> QueryResult<usize> {
    let sql = match stored.place.as_str() {
        "platform_keys" => "UPDATE platform_keys SET private_key = $1 WHERE name = $2 AND private_key = $3",
        _ => "UPDATE webhook_subscriptions SET secret = $1 WHERE id = $2::uuid AND secret = $3",
    };
    diesel::sql_query(sql)
        .bind::<Text, _>(sealed)
        .bind::<Text, _>(&stored.key)
        .bind::<Text, _>(&stored.value)
        .execute(conn)
        .await
}
