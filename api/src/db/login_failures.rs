//! Failed logins, counted per key (`account:<email>`, `address:<ip>`) in fixed windows on the
//! database's clock, so every replica throttles the same guesses.

use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Integer, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

#[derive(QueryableByName)]
struct Wait {
    #[diesel(sql_type = diesel::sql_types::Nullable<BigInt>)]
    secs: Option<i64>,
}

/// A key and how many failures within the window block it.
#[derive(Debug, Clone)]
pub struct Limit {
    pub key: String,
    pub failures: i32,
}

/// Seconds until the first of `limits` that is reached lets go, if any is.
pub async fn blocked_for(conn: &mut AsyncPgConnection, limits: &[Limit], window_secs: i64) -> QueryResult<Option<i64>> {
    let keys: Vec<&str> = limits.iter().map(|l| l.key.as_str()).collect();
    let most: Vec<i32> = limits.iter().map(|l| l.failures).collect();
    let wait: Wait = diesel::sql_query(
        "SELECT max(ceil(extract(epoch FROM f.window_started_at + make_interval(secs => $3) - now())))::bigint AS secs
         FROM login_failures f JOIN unnest($1::text[], $2::int[]) AS l(key, most) ON l.key = f.key
         WHERE f.failures >= l.most AND f.window_started_at > now() - make_interval(secs => $3)",
    )
    .bind::<Array<Text>, _>(keys)
    .bind::<Array<Integer>, _>(most)
    .bind::<diesel::sql_types::Double, _>(window_secs as f64)
    .get_result(conn)
    .await?;
    Ok(wait.secs.map(|s| s.max(1)))
}

/// Counts one failure against each key, starting a new window where the last one is over.
pub async fn record(conn: &mut AsyncPgConnection, keys: &[&str], window_secs: i64) -> QueryResult<()> {
    diesel::sql_query(
        "INSERT INTO login_failures (key, window_started_at, failures)
         SELECT key, now(), 1 FROM unnest($1::text[]) AS key
         ON CONFLICT (key) DO UPDATE SET
           failures = CASE WHEN login_failures.window_started_at <= now() - make_interval(secs => $2)
                      THEN 1 ELSE login_failures.failures + 1 END,
           window_started_at = CASE WHEN login_failures.window_started_at <= now() - make_interval(secs => $2)
                      THEN now() ELSE login_failures.window_started_at END",
    )
    .bind::<Array<Text>, _>(keys)
    .bind::<diesel::sql_types::Double, _>(window_secs as f64)
    .execute(conn)
    .await?;
    Ok(())
}

/// Forgets an account's failures (after it logged in).
pub async fn clear(conn: &mut AsyncPgConnection, key: &str) -> QueryResult<()> {
    diesel::sql_query("DELETE FROM login_failures WHERE key = $1").bind::<Text, _>(key).execute(conn).await?;
    Ok(())
}

/// Drops windows that ended long ago; returns how many.
pub async fn prune(conn: &mut AsyncPgConnection, window_secs: i64) -> QueryResult<usize> {
    diesel::sql_query("DELETE FROM login_failures WHERE window_started_at < now() - make_interval(secs => $1) * 2")
        .bind::<diesel::sql_types::Double, _>(window_secs as f64)
        .execute(conn)
        .await
}
