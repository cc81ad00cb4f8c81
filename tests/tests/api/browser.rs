//! The web pages in a real browser (issue #14): `tests/browser/journeys.mjs` drives Debian's
//! chromium (headless, through playwright-core) against a seeded server, runs axe-core on every
//! page and saves a screenshot of every main page in both languages in
//! `tests/browser/screenshots/`. Chromium and node come from Debian's packages
//! (`deploy/need-chromium.sh`), the node modules from npm at pinned versions
//! (`deploy/need-node-modules.sh tests/browser`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use fleetyard_tests::TestApp;
use fleetyard_tests::fixtures::{PASSWORD, id_of, lab_form, machine, usage_right_form};
use serde_json::json;
use tokio::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().expect("the repository")
}

async fn run(command: &mut Command, limit: Duration, what: &str) -> (bool, String) {
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let output = tokio::time::timeout(limit, command.output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {} s", limit.as_secs()))
        .unwrap_or_else(|e| panic!("starting {what}: {e}"));
    let text = format!("{}\n{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pages_work_in_a_real_browser_in_both_languages() {
    let (ok, out) =
        run(&mut Command::new(repo().join("deploy/need-chromium.sh")), Duration::from_secs(900), "need-chromium.sh")
            .await;
    assert!(ok, "deploy/need-chromium.sh failed:\n{out}");
    let (ok, out) = run(
        Command::new(repo().join("deploy/need-node-modules.sh")).arg("tests/browser").current_dir(repo()),
        Duration::from_secs(600),
        "need-node-modules.sh",
    )
    .await;
    assert!(ok, "deploy/need-node-modules.sh failed:\n{out}");

    let app = TestApp::spawn().await;
    let w = app.world().await;
    let ops_email = "ops-browser@fleetyard.test";
    app.post(
        "/api/v1/users",
        &w.admin,
        json!({ "email": ops_email, "display_name": "Ops", "password": PASSWORD, "role": "admin" }),
    )
    .await
    .expect(201);
    // Something for every part of the dashboard to show: an approved donation, a loan ending
    // within the month, and a submission of the other donor waiting for review.
    let approved = app
        .post(
            "/api/v1/donations",
            &w.a.token,
            usage_right_form(
                &w.a.site_id,
                "PLUM-SEED-1",
                vec![machine("aarch64", "AA-SEED-1"), machine("x86_64", "X86-SEED-1")],
            ),
        )
        .await
        .expect(201);
    app.post(&format!("/api/v1/donations/{}/actions", id_of(&approved.body)), &w.admin, json!({ "action": "approve" }))
        .await
        .expect(200);
    let mut loan = lab_form("loan", &w.lab_site, "WEST-LOAN-1", vec![machine("loongarch64", "LA-SEED-1")]);
    loan["ends_on"] = json!((chrono::Utc::now().date_naive() + chrono::Days::new(20)).to_string());
    let loan = app.post("/api/v1/donations", &w.b.token, loan).await.expect(201);
    app.post(&format!("/api/v1/donations/{}/actions", id_of(&loan.body)), &w.admin, json!({ "action": "approve" }))
        .await
        .expect(200);
    let waiting = app
        .post(
            "/api/v1/donations",
            &w.b.token,
            usage_right_form(&w.b.site_id, "WEST-WAIT-1", vec![machine("riscv64", "RV-WAIT-1")]),
        )
        .await
        .expect(201);

    let screenshots = repo().join("tests/browser/screenshots");
    let (ok, out) = run(
        Command::new("node")
            .arg(repo().join("tests/browser/journeys.mjs"))
            .env("BASE_URL", &app.base_url)
            .env("OPS_EMAIL", ops_email)
            .env("DONOR_EMAIL", "staff@plumtreesemiconductor.example")
            .env("OTHER_DONOR_EMAIL", "staff@westlakeopenhardwarelab.example")
            .env("PASSWORD", PASSWORD)
            .env("DONOR_SITE_ID", &w.a.site_id)
            .env("OTHER_DONATION_ID", id_of(&waiting.body))
            .env("SCREENSHOT_DIR", &screenshots),
        Duration::from_secs(240),
        "tests/browser/journeys.mjs",
    )
    .await;
    assert!(ok, "the browser journeys failed:\n{out}");
    println!("{out}");
}
