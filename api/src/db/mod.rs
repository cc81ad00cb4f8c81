//! The only module that talks to PostgreSQL: the pool, the migrations, and one file of
//! queries per table. Functions here take a connection (so callers choose the transaction),
//! return `QueryResult`, and know nothing about HTTP or who is calling.

pub mod api_tokens;
pub mod audit;
pub mod clouds;
pub mod donations;
pub mod donors;
pub mod enrollment;
pub mod events;
pub mod job_runs;
pub mod jobs;
pub mod leases;
pub mod login_failures;
pub mod machine_status;
pub mod machines;
pub mod overview;
pub mod platform_keys;
pub mod reminders;
pub mod schema;
pub mod secrets_at_rest;
pub mod sites;
pub mod sql_types;
pub mod users;

use std::time::Duration;

use anyhow::Context;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::pooled_connection::deadpool;
use diesel_async::{AsyncConnection, AsyncMigrationHarness, AsyncPgConnection, RunQueryDsl};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

pub use sql_types::Json;

pub type Pool = deadpool::Pool<AsyncPgConnection>;
pub type PoolError = deadpool::PoolError;
pub type DbConn = deadpool::Object<AsyncPgConnection>;

/// The migrations in `migrations/`, compiled into the binary.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations");

/// An arbitrary constant: the advisory lock every replica takes before migrating.
const MIGRATION_LOCK: i64 = 0x666c_6565_7479_6d67; // "fleetymg"

/// How long a caller waits for a free connection, and for a new one to be opened, before it
/// gets an error (a 503 for a request) instead of hanging behind an exhausted pool or a
/// database host that drops packets.
const POOL_WAIT: Duration = Duration::from_secs(5);
const POOL_CONNECT: Duration = Duration::from_secs(5);

pub fn pool(database_url: &str, size: usize) -> anyhow::Result<Pool> {
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new(database_url);
    deadpool::Pool::builder(manager)
        .max_size(size)
        .runtime(::deadpool::Runtime::Tokio1)
        .wait_timeout(Some(POOL_WAIT))
        .create_timeout(Some(POOL_CONNECT))
        .build()
        .context("building the database pool")
}

/// Applies pending migrations, one replica at a time, and returns the versions applied.
///
/// Must be called from a multi-threaded tokio runtime (diesel's migration harness is
/// synchronous and runs through `block_in_place`).
pub async fn run_migrations(database_url: &str) -> anyhow::Result<Vec<String>> {
    let mut conn = AsyncPgConnection::establish(database_url).await.context("connecting to PostgreSQL to migrate")?;
    diesel::sql_query(format!("SELECT pg_advisory_lock({MIGRATION_LOCK})"))
        .execute(&mut conn)
        .await
        .context("taking the migration lock")?;
    let mut harness = AsyncMigrationHarness::new(conn);
    let applied = harness
        .run_pending_migrations(MIGRATIONS)
        .map(|versions| versions.iter().map(ToString::to_string).collect())
        .map_err(|e| anyhow::anyhow!("running migrations: {e}"));
    let mut conn = harness.into_inner();
    // Closing the connection would release the lock too; unlocking keeps the intent visible.
    diesel::sql_query(format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})"))
        .execute(&mut conn)
        .await
        .context("releasing the migration lock")?;
    applied
}

/// Whether the database answers, for `/readyz`.
pub async fn ping(conn: &mut AsyncPgConnection) -> diesel::QueryResult<()> {
    diesel::sql_query("SELECT 1").execute(conn).await.map(drop)
}

/// Keyset pagination: rows strictly after `after`, at most `limit` of them.
#[derive(Debug, Clone, Copy)]
pub struct Page<K> {
    pub after: Option<K>,
    pub limit: i64,
}

impl<K> Page<K> {
    /// One more row than asked for is fetched so the caller knows whether another page exists.
    pub fn fetch_limit(&self) -> i64 {
        self.limit + 1
    }
}

/// Whether a database error is a unique-constraint violation on `constraint`.
pub fn is_unique_violation(error: &diesel::result::Error, constraint: &str) -> bool {
    matches!(
        error,
        diesel::result::Error::DatabaseError(diesel::result::DatabaseErrorKind::UniqueViolation, info)
            if info.constraint_name() == Some(constraint)
    )
}

diesel::define_sql_function! {
    /// SQL `lower(text)`, for the case-insensitive unique indexes on names and emails.
    fn lower(x: diesel::sql_types::Text) -> diesel::sql_types::Text;
}
