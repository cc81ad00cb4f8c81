//! Test support for Fleetyard's end-to-end tests: a fresh PostgreSQL database per test
//! (cloned from a migrated template), the real server on a loopback port, and an HTTP client
//! with typed helpers. Nothing is mocked.
//!
//! The tests need `FLEETYARD_TEST_DATABASE_URL` pointing at a PostgreSQL server the tests may
//! create databases on; `deploy/test` starts a private one and sets it.

pub mod accounts;
pub mod agent;
pub mod app;
pub mod bench;
pub mod clouds;
pub mod db;
pub mod fixtures;
pub mod server;
pub mod sshd;
pub mod webhook_receiver;

pub use app::{Response, TestApp};

/// A binary of this workspace (`fleetyard`, `fleetyard-agent`), built beside the test
/// executables (or beside this workspace's own tools). `deploy/test` builds them before the
/// tests run.
pub fn binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the executable's path");
    let here = exe.parent().expect("target/<profile>[/deps]");
    // A test runs from target/<profile>/deps; a tool (fleetyard-cloud-booter) from target/<profile>.
    let dir = if here.ends_with("deps") { here.parent().expect("target/<profile>") } else { here };
    let path = dir.join(name);
    assert!(path.exists(), "{} is not built; run `cargo build --workspace --bins` (deploy/test does)", path.display());
    path
}
