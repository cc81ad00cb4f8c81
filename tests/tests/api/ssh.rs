//! SSH checks against a real OpenSSH server: onboarding probes collect real facts, a swapped
//! host key quarantines, a stopped sshd makes a machine unreachable, and a silent agent is
//! confirmed over SSH before its machine is declared unreachable.

use diesel_async::RunQueryDsl;
use fleetyard::schedules::{liveness, ssh_checks};
use fleetyard_tests::TestApp;
use fleetyard_tests::fixtures::{ApprovedMachine, World, heartbeat, this_host_machine};
use fleetyard_tests::sshd::Sshd;
use serde_json::{Value, json};

async fn sshd_for(app: &TestApp) -> Sshd {
    let key = app.state.ssh_key().await.expect("Fleetyard's SSH key");
    Sshd::start(&key.public_openssh).await
}

/// A machine reachable through `sshd`, declared as `declared`, taken to `stop_at`.
async fn machine_behind(app: &TestApp, w: &World, sshd: &Sshd, mut declared: Value, stop_at: &str) -> ApprovedMachine {
    declared["ssh"] = json!({ "host": "127.0.0.1", "port": sshd.port, "user": sshd.user });
    app.machine_in(w, declared, stop_at).await
}

fn checks_every_round(config: &mut fleetyard::Config) {
    config.ssh_check_interval_secs = 0;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn donors_see_the_key_to_authorise_and_never_the_private_half() {
    let app = TestApp::spawn().await;
    let w = app.world().await;
    let shown = app.get("/api/v1/ssh-key", &w.a.token).await.expect(200);
    let public = shown.body["public_key"].as_str().unwrap();
    assert!(public.starts_with("ssh-ed25519 "), "{public}");
    assert!(shown.body["fingerprint"].as_str().unwrap().starts_with("SHA256:"));
    assert!(!shown.text.contains("PRIVATE"));
    // Every replica uses the same key.
    let other = app.replica();
    assert_eq!(other.get("/api/v1/ssh-key", &w.b.token).await.body["public_key"], shown.body["public_key"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_onboarding_probe_collects_real_facts_and_compares_them_with_the_declaration() {
    let app = TestApp::spawn_with(checks_every_round).await;
    let w = app.world().await;
    let sshd = sshd_for(&app).await;
    // Declared as a riscv64 board; the machine behind sshd is this host.
    let mut declared = this_host_machine("SSH-1");
    declared["arch"] = json!("riscv64");
    let board = machine_behind(&app, &w, &sshd, declared, "onboarding").await;
    let before = app.machine(&w, &board.id).await;
    assert_eq!(before["monitoring"]["ssh"]["probe_requested"], true, "onboarding asks for a probe");

    let report = ssh_checks::round(&app.state).await.unwrap();
    assert_eq!((report.checked, report.reachable), (1, 1), "{report:?}");
    let machine = app.machine(&w, &board.id).await;
    let monitoring = &machine["monitoring"];
    assert_eq!(monitoring["facts_source"], "ssh");
    assert_eq!(monitoring["facts"]["arch"], std::env::consts::ARCH);
    assert!(monitoring["facts"]["memory_mib"].as_u64().unwrap() > 256);
    assert!(monitoring["facts"]["kernel"].as_str().unwrap().len() > 3);
    assert_eq!(
        monitoring["mismatches"],
        json!([{ "field": "arch", "declared": "riscv64", "reported": std::env::consts::ARCH }])
    );
    assert_eq!(monitoring["ssh"]["probe_requested"], false);
    // The host key is pinned on first contact.
    let pinned = monitoring["ssh"]["host_key_fingerprint"].as_str().unwrap();
    assert_eq!(pinned, fleetyard::probe::fingerprint_of(&sshd.host_key()).unwrap());
    assert_eq!(machine["health"], "healthy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_host_key_quarantines_the_machine_until_ops_lift_it() {
    let app = TestApp::spawn_with(checks_every_round).await;
    let w = app.world().await;
    let mut sshd = sshd_for(&app).await;
    let board = machine_behind(&app, &w, &sshd, this_host_machine("SSH-2"), "ready").await;
    ssh_checks::round(&app.state).await.unwrap();
    assert_eq!(app.machine(&w, &board.id).await["quarantine"], Value::Null);

    sshd.swap_host_key().await;
    let report = ssh_checks::round(&app.state).await.unwrap();
    assert_eq!(report.quarantined, 1, "{report:?}");
    let machine = app.machine(&w, &board.id).await;
    assert!(machine["quarantine"]["reason"].as_str().unwrap().contains("host key changed"), "{machine}");
    assert!(app.event_types(&w).await.contains(&"machine.quarantined".to_owned()));
    let trail = app
        .get(&format!("/api/v1/audit?entity_id={}&action=machine.quarantined", board.id), &w.a.token)
        .await
        .expect(200);
    assert_eq!(trail.body["items"].as_array().unwrap().len(), 1, "the donor sees it too");
    // A quarantined machine is not contacted again.
    assert_eq!(ssh_checks::round(&app.state).await.unwrap().checked, 0);

    // Ops check the board and lift the quarantine: the new key is pinned at the next round.
    app.request(
        reqwest::Method::DELETE,
        &format!("/api/v1/machines/{}/quarantine", board.id),
        Some(&w.a.token),
        Some(&json!({ "note": "x" })),
    )
    .await
    .expect(403);
    let lifted = app
        .request(
            reqwest::Method::DELETE,
            &format!("/api/v1/machines/{}/quarantine", board.id),
            Some(&w.admin),
            Some(&json!({ "note": "board reinstalled" })),
        )
        .await
        .expect(200);
    assert_eq!(lifted.body["quarantine"], Value::Null);
    let report = ssh_checks::round(&app.state).await.unwrap();
    assert_eq!((report.reachable, report.quarantined), (1, 0), "{report:?}");
    let machine = app.machine(&w, &board.id).await;
    assert_eq!(
        machine["monitoring"]["ssh"]["host_key_fingerprint"],
        fleetyard::probe::fingerprint_of(&sshd.host_key()).unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_sshd_makes_an_agentless_machine_unreachable_after_repeated_failures() {
    let app = TestApp::spawn_with(checks_every_round).await;
    let w = app.world().await;
    let mut sshd = sshd_for(&app).await;
    let board = machine_behind(&app, &w, &sshd, this_host_machine("SSH-3"), "ready").await;
    ssh_checks::round(&app.state).await.unwrap();
    assert_eq!(app.machine(&w, &board.id).await["health"], "healthy");

    sshd.stop().await;
    for round in 1..=3 {
        let report = ssh_checks::round(&app.state).await.unwrap();
        assert_eq!(report.failed, 1);
        let health = app.machine(&w, &board.id).await["health"].clone();
        let expected = if round < 3 { "healthy" } else { "unreachable" };
        assert_eq!(health, expected, "after {round} failed checks");
    }
    let machine = app.machine(&w, &board.id).await;
    assert_eq!(machine["monitoring"]["ssh"]["consecutive_failures"], 3);
    assert!(machine["monitoring"]["ssh"]["last_error"].as_str().is_some());

    sshd.restart().await;
    ssh_checks::round(&app.state).await.unwrap();
    assert_eq!(app.machine(&w, &board.id).await["health"], "healthy");
    let events = app.event_types(&w).await;
    assert!(events.ends_with(&["machine.unreachable".to_owned(), "machine.back_online".to_owned()]), "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_agent_is_checked_over_ssh_before_its_machine_is_declared_unreachable() {
    let app = TestApp::spawn_with(|c| {
        c.heartbeat_interval_secs = 1;
        checks_every_round(c);
    })
    .await;
    let w = app.world().await;
    let mut sshd = sshd_for(&app).await;
    let board = machine_behind(&app, &w, &sshd, this_host_machine("SSH-4"), "ready").await;
    let credential = app.enroll(&board.enrollment_token).await;
    let beat = heartbeat(
        json!({ "arch": std::env::consts::ARCH, "kernel": "k", "os_release": "o", "cpu_model": "c", "cpu_count": 1, "memory_mib": 256, "disk_gib": 1 }),
    );
    app.post("/api/v1/agent/heartbeat", &credential, beat).await.expect(200);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    liveness::sweep(&app.state).await.unwrap();
    assert_eq!(app.machine(&w, &board.id).await["health"], "healthy");

    // The agent falls silent (a flaky link), but the machine still answers over SSH.
    let mut conn = app.pool().get().await.unwrap();
    diesel::sql_query(format!(
        "UPDATE machine_status SET last_heartbeat_at = now() - interval '1 minute' WHERE machine_id = '{}'",
        board.id
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    let report = liveness::sweep(&app.state).await.unwrap();
    assert_eq!(report.probes_requested, 1);
    assert_eq!(app.machine(&w, &board.id).await["health"], "healthy", "not judged before SSH has had its say");
    ssh_checks::round(&app.state).await.unwrap();
    let machine = app.machine(&w, &board.id).await;
    assert_eq!(machine["health"], "degraded", "not unreachable: SSH answered");
    assert!(machine["health_reason"].as_str().unwrap().contains("answers over SSH"));

    // Now the machine itself is gone: the next check fails, and that settles it.
    sshd.stop().await;
    ssh_checks::round(&app.state).await.unwrap();
    let machine = app.machine(&w, &board.id).await;
    assert_eq!(machine["health"], "unreachable", "{machine}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_never_connect_to_refused_networks_and_donors_learn_no_more_than_unreachable() {
    let app = TestApp::spawn_with(|c| {
        checks_every_round(c);
        c.ssh_refused_networks = fleetyard::Config::default().ssh_refused_networks;
    })
    .await;
    let w = app.world().await;
    let sshd = sshd_for(&app).await;
    // A donor points an endpoint at the server's own host.
    let board = machine_behind(&app, &w, &sshd, this_host_machine("SSH-6"), "ready").await;
    ssh_checks::round(&app.state).await.unwrap();
    let probe = format!("/api/v1/machines/{}/ssh-probe", board.id);
    for _ in 0..3 {
        app.request(reqwest::Method::POST, &probe, Some(&w.a.token), None).await.expect(202);
    }
    let trail = format!("/api/v1/audit?entity_id={}&action=machine.ssh_probe_requested", board.id);
    let requests = app.get(&trail, &w.admin).await.expect(200);
    assert_eq!(requests.body["items"].as_array().unwrap().len(), 1, "one request until the round takes it");

    let report = ssh_checks::round(&app.state).await.unwrap();
    assert_eq!((report.checked, report.reachable), (1, 0), "{report:?}");
    let for_ops = app.machine(&w, &board.id).await["monitoring"]["ssh"]["last_error"].clone();
    assert!(for_ops.as_str().unwrap().contains("refused network 127.0.0.0/8"), "{for_ops}");
    let for_donor = app.get(&format!("/api/v1/machines/{}", board.id), &w.a.token).await.expect(200);
    assert_eq!(for_donor.body["monitoring"]["ssh"]["last_error"], "unreachable: no SSH session could be opened");
}

/// A port that accepts connections and then says nothing: an SSH server that hangs.
async fn tarpit() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_unreachable_site_does_not_hold_up_the_others() {
    let app = TestApp::spawn_with(|c| {
        checks_every_round(c);
        c.ssh_site_concurrency = 1;
        c.ssh_connect_timeout_secs = 2;
    })
    .await;
    let w = app.world().await;
    let sshd = sshd_for(&app).await;
    let hanging = tarpit().await;
    // Donor B's site: three machines whose SSH server hangs after accepting.
    for i in 0..3 {
        let mut declared = this_host_machine(&format!("HANG-{i}"));
        declared["ssh"] = json!({ "host": "127.0.0.1", "port": hanging, "user": "nobody" });
        let form = fleetyard_tests::fixtures::usage_right_form(&w.b.site_id, &format!("HANG-{i}"), vec![declared]);
        let created = app.post("/api/v1/donations", &w.b.token, form).await.expect(201);
        let id = fleetyard_tests::fixtures::id_of(&created.body);
        app.post(&format!("/api/v1/donations/{id}/actions"), &w.admin, json!({ "action": "approve" }))
            .await
            .expect(200);
    }
    // Donor A's site: one machine that answers.
    let board = machine_behind(&app, &w, &sshd, this_host_machine("LIVE-1"), "ready").await;

    let started = chrono::Utc::now();
    let report = ssh_checks::round(&app.state).await.unwrap();
    let took = chrono::Utc::now() - started;
    assert_eq!((report.checked, report.reachable, report.failed), (4, 1, 3), "{report:?}");
    // B's checks ran one at a time (site limit 1), each cut off after 2 s...
    assert!(took >= chrono::Duration::seconds(6), "B's checks did not wait their time limits: {took:?}");
    assert!(took < chrono::Duration::seconds(9), "the round took {took:?}");
    // ...while A's machine was checked at once, not after them.
    let machine = app.machine(&w, &board.id).await;
    let ok_at =
        machine["monitoring"]["ssh"]["last_ok_at"].as_str().unwrap().parse::<chrono::DateTime<chrono::Utc>>().unwrap();
    assert!(ok_at - started < chrono::Duration::seconds(2), "site A waited for site B: {:?}", ok_at - started);
}
