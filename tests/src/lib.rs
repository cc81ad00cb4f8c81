//! Test support for Fleetyard's end-to-end tests: a fresh PostgreSQL database per test
//! (cloned from a migrated template), the real server on a loopback port, and an HTTP client
//! with typed helpers. Nothing is mocked.
//!
//! The tests need `FLEETYARD_TEST_DATABASE_URL` pointing at a PostgreSQL server the tests may
//! create databases on; `deploy/test` starts a private one and sets it.

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

/// A binary of this workspace (`fleetyard`, later `fleetyard-agent`), built beside the test
/// executables. `deploy/test` builds them before the tests run.
pub fn binary(name: &str) -> std::path::PathBuf {
    let test_exe = std::env::current_exe().expect("the test executable's path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = test_exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>");
    let path = dir.join(name);
    assert!(path.exists(), "{} is not built; run `cargo build --workspace --bins` (deploy/test does)", path.display());
    path
}
