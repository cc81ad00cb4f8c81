//! The OpenAPI document tells the truth (issue #13): Schemathesis 4 fuzzes a real `fleetyard
//! serve` against the document it serves, with every check, once per role; and a Python client
//! generated from the committed `openapi/openapi.json` runs the README's walkthrough. The Python
//! side lives in `tests/contract/` (its tools, pinned, in `.local/venv-contract`, made by
//! `deploy/need-python.sh tests/contract/requirements.txt`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use fleetyard_tests::TestApp;
use fleetyard_tests::fixtures::PASSWORD;
use fleetyard_tests::server::ServerProcess;
use serde_json::json;
use tokio::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().expect("the repository")
}

fn contract_dir() -> PathBuf {
    repo().join("tests/contract")
}

/// The contract venv's bin directory: `FLEETYARD_TEST_CONTRACT_PYTHON_BIN`, or what
/// `deploy/need-python.sh tests/contract/requirements.txt` makes (pip from PyPI the first time).
async fn python_bin() -> PathBuf {
    if let Ok(dir) = std::env::var("FLEETYARD_TEST_CONTRACT_PYTHON_BIN") {
        return PathBuf::from(dir);
    }
    let made = run(
        Command::new(repo().join("deploy/need-python.sh")).arg("tests/contract/requirements.txt").current_dir(repo()),
        Duration::from_secs(600),
        "deploy/need-python.sh tests/contract/requirements.txt",
    )
    .await;
    PathBuf::from(made.stdout.lines().last().expect("need-python.sh printed the venv's bin directory").trim())
}

struct Ran {
    success: bool,
    stdout: String,
    stderr: String,
}

/// Runs `command` to its end within `limit` (killed past it), and asserts that it succeeded.
async fn run(command: &mut Command, limit: Duration, what: &str) -> Ran {
    let ran = run_unchecked(command, limit, what).await;
    assert!(ran.success, "{what} failed:\n{}\n{}", ran.stdout, ran.stderr);
    ran
}

async fn run_unchecked(command: &mut Command, limit: Duration, what: &str) -> Ran {
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let output = tokio::time::timeout(limit, command.output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {} s", limit.as_secs()))
        .unwrap_or_else(|e| panic!("starting {what}: {e}"));
    Ran {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A `fleetyard serve` process on `app`'s database, set up for the contract run: login
/// throttling raised (Schemathesis sends thousands of failed logins from one address), and no
/// way for anything the fuzzer registers to send traffic off this machine (every network refused
/// for SSH checks, an HTTP proxy that goes nowhere for webhooks; schedules are off anyway).
async fn contract_server(app: &TestApp) -> ServerProcess {
    ServerProcess::start(app, |command| {
        command
            .env("FLEETYARD_AUTH__LOGIN_FAILURES_PER_ADDRESS", "100000")
            .env("FLEETYARD_AUTH__LOGIN_FAILURES_PER_ACCOUNT", "100000")
            .env("FLEETYARD_SSH_REFUSED_NETWORKS", "[0.0.0.0/0, ::/0]")
            .env("HTTP_PROXY", "http://127.0.0.1:9")
            .env("HTTPS_PROXY", "http://127.0.0.1:9")
            .env("ALL_PROXY", "http://127.0.0.1:9")
            .env("NO_PROXY", "")
            .env("FLEETYARD_WORKERS", "2");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_the_served_document_true_for_every_role() {
    let bin = python_bin().await;
    let app = TestApp::spawn().await;
    let server = contract_server(&app).await;
    let (_, admin) = app.bootstrap_admin().await;

    let seeded = run(
        Command::new(bin.join("python")).arg(contract_dir().join("seed.py")).args([
            "--base-url",
            &server.base_url,
            "--admin-token",
            &admin,
        ]),
        Duration::from_secs(60),
        "seed.py",
    )
    .await;
    let work = tempfile::tempdir().unwrap();
    let seed_file = work.path().join("seed.json");
    std::fs::write(&seed_file, &seeded.stdout).unwrap();

    // One full run (five roles, four phases, every check) takes about 2.5 to 3 minutes here,
    // and longer when the machine is busy with something else (a release build: 4).
    let ran = run_unchecked(
        Command::new(bin.join("python"))
            .arg(contract_dir().join("schemathesis.py"))
            .args(["--base-url", &server.base_url])
            .arg("--seed-file")
            .arg(&seed_file)
            .arg("--report-dir")
            .arg(work.path().join("reports"))
            .arg("--python-bin")
            .arg(&bin),
        Duration::from_secs(420),
        "schemathesis.py",
    )
    .await;
    assert!(
        ran.success,
        "Schemathesis found the served OpenAPI document untrue (its list of distinct failures is at the end):\n{}\n{}",
        ran.stdout, ran.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_generated_from_the_committed_document_runs_the_readme_walkthrough() {
    let bin = python_bin().await;
    let work = tempfile::tempdir().unwrap();
    let committed = repo().join("openapi/openapi.json");
    let generated = run_unchecked(
        Command::new(contract_dir().join("generate-client.sh")).arg(&committed).arg(work.path()).current_dir(repo()),
        Duration::from_secs(180),
        "generate-client.sh",
    )
    .await;
    assert!(
        generated.success,
        "openapi-python-client cannot generate a client from the committed openapi/openapi.json:\n{}\n{}",
        generated.stdout, generated.stderr
    );

    let app = TestApp::spawn().await;
    let server = contract_server(&app).await;
    // Ops log in as the README's do, with an email and a password.
    let (_, first_admin) = app.bootstrap_admin().await;
    let email = "ops-walkthrough@fleetyard.test";
    server
        .post(
            "/api/v1/users",
            &first_admin,
            json!({ "email": email, "display_name": "Ops", "password": PASSWORD, "role": "admin" }),
        )
        .await
        .expect(201);

    let ran = run_unchecked(
        Command::new(bin.join("python"))
            .arg(contract_dir().join("walkthrough.py"))
            .args(["--base-url", &server.base_url, "--admin-email", email, "--admin-password", PASSWORD])
            .env("PYTHONPATH", work.path()),
        Duration::from_secs(120),
        "walkthrough.py",
    )
    .await;
    assert!(ran.success, "the README walkthrough failed through the generated client:\n{}\n{}", ran.stdout, ran.stderr);
}
