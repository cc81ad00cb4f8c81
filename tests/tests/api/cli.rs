//! The real `fleetyard` binary: migrate, create the first admin, load the demo, serve with
//! JSON logs, stop gracefully on SIGTERM.

use std::process::Stdio;
use std::time::{Duration, Instant};

use fleetyard_tests::db::TestDb;
use fleetyard_tests::{TestApp, binary};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const SECRET: &str = "cli-test-secret-that-is-at-least-32-bytes";

fn fleetyard(db: &TestDb) -> Command {
    let mut command = Command::new(binary("fleetyard"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("FLEETYARD_DATABASE_URL", &db.url)
        .env("FLEETYARD_JWT_SECRET", SECRET)
        .env("FLEETYARD_AUTH__DATA_KEY", "cli-test-data-key-of-at-least-32-bytes")
        .kill_on_drop(true);
    command
}

async fn run(command: &mut Command) -> String {
    let output = command.output().await.expect("running fleetyard");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "fleetyard failed: {stdout}{}", String::from_utf8_lossy(&output.stderr));
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_migrates_creates_an_admin_and_loads_the_demo_once() {
    let db = TestDb::create().await;
    run(fleetyard(&db).arg("migrate")).await;
    let created = run(fleetyard(&db)
        .args(["admin", "create-admin", "--email", "root@ops.example"])
        .env("FLEETYARD_ADMIN_PASSWORD", "a long admin password"))
    .await;
    assert!(created.contains("created admin root@ops.example"), "{created}");
    // A second admin with the same email is refused.
    let again = fleetyard(&db)
        .args(["admin", "create-admin", "--email", "ROOT@ops.example"])
        .env("FLEETYARD_ADMIN_PASSWORD", "a long admin password")
        .output()
        .await
        .unwrap();
    assert!(!again.status.success());

    let first = run(fleetyard(&db).args(["admin", "seed-demo"])).await;
    assert!(first.contains("demo data loaded") && first.contains("admin@fleetyard.local"), "{first}");
    let second = run(fleetyard(&db).args(["admin", "seed-demo"])).await;
    assert!(second.contains("already present"), "{second}");

    // The demo covers the four architectures, the three models and two donor sites.
    let app = TestApp::spawn_with(|config| {
        config.database_url = db.url.clone();
        config.jwt_secret.0 = SECRET.into();
    })
    .await;
    let login = app
        .request(
            reqwest::Method::POST,
            "/api/v1/auth/login",
            None,
            Some(&json!({
                "email": "admin@fleetyard.local", "password": "fleetyard-admin-demo"
            })),
        )
        .await
        .expect(200);
    let admin = login.body["token"].as_str().unwrap();
    let machines = app.get("/api/v1/machines?limit=200", admin).await.expect(200);
    let items = machines.body["items"].as_array().unwrap();
    assert!((18..=24).contains(&items.len()), "{} demo machines", items.len());
    for arch in ["x86_64", "aarch64", "riscv64", "loongarch64"] {
        assert!(items.iter().any(|m| m["arch"] == arch), "no {arch} machine");
    }
    let donations = app.get("/api/v1/donations", admin).await.expect(200);
    for model in ["usage_right", "ownership", "loan"] {
        assert!(donations.body["items"].as_array().unwrap().iter().any(|d| d["model"] == model), "no {model} donation");
    }
    let sites = app.get("/api/v1/sites?kind=donor_site", admin).await.expect(200);
    assert_eq!(sites.body["items"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_logs_json_and_stops_gracefully_on_sigterm() {
    let db = TestDb::create().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = fleetyard(&db)
        .arg("serve")
        .env("FLEETYARD_LISTEN", format!("127.0.0.1:{port}"))
        .env("FLEETYARD_LOG_FORMAT", "json")
        .env("FLEETYARD_WORKERS", "1")
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting fleetyard serve");
    let mut logs = BufReader::new(child.stderr.take().unwrap()).lines();

    // It migrates, then says where it listens, in JSON.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let line = tokio::time::timeout_at(deadline.into(), logs.next_line()).await.expect("no start-up log").unwrap();
        let line = line.expect("the server exited during start-up");
        let entry: Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        if entry["message"].as_str().is_some_and(|m| m.contains("listening on")) {
            break;
        }
    }
    let ready = reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);

    let stopped =
        std::process::Command::new("kill").args(["-TERM", &child.id().unwrap().to_string()]).status().unwrap();
    assert!(stopped.success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await.expect("did not stop").unwrap();
    assert!(status.success(), "exit status {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_configuration_is_refused_with_a_clear_message() {
    let db = TestDb::create().await;
    let output = fleetyard(&db).arg("serve").env("FLEETYARD_JWT_SECRET", "short").output().await.unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("FLEETYARD_JWT_SECRET must be at least 32 bytes"), "{stderr}");
}
