//! One database per test, cloned from a template migrated once per migration set.
//!
//! `CREATE DATABASE ... TEMPLATE` copies a migrated schema in milliseconds, so every test
//! starts from the same empty, fully migrated state and tests never see each other's rows.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::time::Duration;

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

/// An advisory-lock key for creating the template; any constant will do.
const TEMPLATE_LOCK: i64 = 0x666c_7974_706c; // "flytpl"

/// A database that exists for the life of one test.
pub struct TestDb {
    pub url: String,
    server_url: String,
    name: String,
}

/// The URL of the server tests create databases on (its `fleetyard` database).
pub fn server_url() -> String {
    std::env::var("FLEETYARD_TEST_DATABASE_URL").unwrap_or_else(|_| {
        panic!(
            "FLEETYARD_TEST_DATABASE_URL is not set; run the tests with `deploy/test`, which starts \
             a private PostgreSQL and sets it"
        )
    })
}

impl TestDb {
    pub async fn create() -> TestDb {
        let server_url = server_url();
        let template = ensure_template(&server_url).await;
        let name = format!("fleetyard_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = connect(&server_url).await;
        // The template may still show its last connection for a moment after it closed.
        for attempt in 0.. {
            let created =
                diesel::sql_query(format!("CREATE DATABASE {name} TEMPLATE {template}")).execute(&mut conn).await;
            match created {
                Ok(_) => break,
                Err(e) if attempt < 50 && e.to_string().contains("is being accessed by other users") => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("creating test database {name}: {e}"),
            }
        }
        TestDb { url: with_database(&server_url, &name), server_url, name }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (server_url, name) = (self.server_url.clone(), self.name.clone());
        // Drop runs inside the test's runtime; a separate thread can block on its own.
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread().enable_all().build().map(|rt| {
                rt.block_on(async {
                    let mut conn = connect(&server_url).await;
                    diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut conn).await
                })
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(Ok(_)))) {
            eprintln!("warning: could not drop test database {}", self.name);
        }
    }
}

/// Creates the template for the current migrations unless it exists, and returns its name.
async fn ensure_template(server_url: &str) -> String {
    let template = format!("fleetyard_template_{:016x}", migrations_fingerprint());
    let mut conn = connect(server_url).await;
    diesel::sql_query(format!("SELECT pg_advisory_lock({TEMPLATE_LOCK})"))
        .execute(&mut conn)
        .await
        .expect("template lock");
    let exists = diesel::sql_query(format!("SELECT 1 FROM pg_database WHERE datname = '{template}'"))
        .execute(&mut conn)
        .await
        .expect("looking for the template")
        > 0;
    if !exists {
        let building = format!("{template}_building");
        diesel::sql_query(format!("DROP DATABASE IF EXISTS {building} WITH (FORCE)"))
            .execute(&mut conn)
            .await
            .expect("dropping a half-built template");
        diesel::sql_query(format!("CREATE DATABASE {building}"))
            .execute(&mut conn)
            .await
            .expect("creating the template");
        fleetyard::db::run_migrations(&with_database(server_url, &building)).await.expect("migrating the template");
        // Renamed only once complete, so a crash never leaves a half-migrated template.
        diesel::sql_query(format!("ALTER DATABASE {building} RENAME TO {template}"))
            .execute(&mut conn)
            .await
            .expect("publishing the template");
    }
    diesel::sql_query(format!("SELECT pg_advisory_unlock({TEMPLATE_LOCK})"))
        .execute(&mut conn)
        .await
        .expect("template unlock");
    template
}

/// Changes whenever a migration file changes, so an edited migration gets a fresh template.
fn migrations_fingerprint() -> u64 {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
    let mut files: Vec<_> = walk(&dir);
    files.sort();
    let mut hasher = DefaultHasher::new();
    for file in files {
        file.strip_prefix(&dir).unwrap_or(&file).hash(&mut hasher);
        std::fs::read(&file).expect("reading a migration").hash(&mut hasher);
    }
    hasher.finish()
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("reading migrations/").flatten() {
        let path = entry.path();
        if path.is_dir() { out.extend(walk(&path)) } else { out.push(path) }
    }
    out
}

async fn connect(url: &str) -> AsyncPgConnection {
    AsyncPgConnection::establish(url).await.unwrap_or_else(|e| panic!("connecting to {url}: {e}"))
}

/// `url` with its database name replaced.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let base = base.rsplit_once('/').map_or(base, |(server, _)| server);
    match query {
        Some(query) => format!("{base}/{database}?{query}"),
        None => format!("{base}/{database}"),
    }
}
