//! Real agent processes against the real server: enrollment, heartbeats, a killed agent,
//! contradicting facts, credentials that stop working.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use diesel_async::RunQueryDsl;
use fleetyard::schedules::liveness;
use fleetyard_tests::TestApp;
use fleetyard_tests::agent::AgentProcess;
use fleetyard_tests::fixtures::{World, heartbeat, heartbeat_without_facts, machine, this_host_machine};
use serde_json::{Value, json};

/// Polls `check` (running the liveness sweep before each look) until it holds.
async fn sweep_until(app: &TestApp, w: &World, id: &str, within: Duration, check: impl Fn(&Value) -> bool) -> Duration {
    let started = Instant::now();
    loop {
        liveness::sweep(&app.state).await.expect("the liveness sweep");
        let machine = app.machine(w, id).await;
        if check(&machine) {
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "not reached within {within:?}: {machine}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn fast_heartbeats(config: &mut fleetyard::Config) {
    config.heartbeat_interval_secs = 1;
    config.missed_heartbeats = 3;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_enrolls_with_its_one_time_token_and_its_machine_turns_healthy() {
    let app = TestApp::spawn_with(fast_heartbeats).await;
    let w = app.world().await;
    let board = app.machine_in(&w, this_host_machine("AG-1"), "ready").await;

    let mut agent = AgentProcess::enroll(&app.base_url, &board.enrollment_token).await;
    let mode = std::fs::metadata(agent.credential_path()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the credential is readable by the agent alone");
    agent.start();

    sweep_until(&app, &w, &board.id, Duration::from_secs(15), |m| m["health"] == "healthy").await;
    let machine = app.machine(&w, &board.id).await;
    let monitoring = &machine["monitoring"];
    assert_eq!(monitoring["agent_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(monitoring["facts_source"], "agent");
    assert_eq!(monitoring["facts"]["arch"], std::env::consts::ARCH);
    assert_eq!(monitoring["mismatches"], json!([]), "this host is what was declared");
    assert!(monitoring["clock_skew_ms"].as_i64().unwrap().abs() < 2000);

    // The token was for one enrollment only.
    let again = app
        .request(reqwest::Method::POST, "/api/v1/agent/enroll", None, Some(&json!({ "token": board.enrollment_token })))
        .await
        .expect(401);
    assert_eq!(again.code(), "invalid-enrollment-token");
    assert!(agent.terminate().await.success(), "SIGTERM stops the agent cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_makes_its_machine_unreachable_and_its_return_brings_it_back_online() {
    let app = TestApp::spawn_with(fast_heartbeats).await;
    let w = app.world().await;
    let board = app.machine_in(&w, this_host_machine("AG-2"), "ready").await;
    let mut agent = AgentProcess::enroll(&app.base_url, &board.enrollment_token).await;
    agent.start();
    sweep_until(&app, &w, &board.id, Duration::from_secs(15), |m| m["health"] == "healthy").await;

    agent.kill().await;
    // Three missed heartbeats of one second, and no SSH endpoint to confirm with.
    let took = sweep_until(&app, &w, &board.id, Duration::from_secs(10), |m| m["health"] == "unreachable").await;
    assert!(took >= Duration::from_secs(2), "declared unreachable too early: {took:?}");
    assert!(took <= Duration::from_secs(6), "declared unreachable too late: {took:?}");
    let machine = app.machine(&w, &board.id).await;
    assert!(machine["health_reason"].as_str().unwrap().starts_with("no heartbeat since"));

    agent.start();
    sweep_until(&app, &w, &board.id, Duration::from_secs(15), |m| m["health"] == "healthy").await;
    let events = app.event_types(&w).await;
    let tail: Vec<&str> =
        events.iter().map(String::as_str).filter(|t| t.starts_with("machine.") && *t != "machine.ready").collect();
    assert_eq!(tail, ["machine.unreachable", "machine.back_online"]);
    let trail = app
        .get(&format!("/api/v1/audit?entity_id={}&action=machine.health_changed", board.id), &w.admin)
        .await
        .expect(200);
    let changes: Vec<_> =
        trail.body["items"].as_array().unwrap().iter().rev().map(|e| e["after"]["health"].clone()).collect();
    assert_eq!(changes, [json!("healthy"), json!("unreachable"), json!("healthy")]);
    agent.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_agent_takes_up_the_credential_of_a_new_enrollment() {
    let app = TestApp::spawn_with(fast_heartbeats).await;
    let w = app.world().await;
    let board = app.machine_in(&w, this_host_machine("AG-9"), "ready").await;
    let mut agent = AgentProcess::enroll(&app.base_url, &board.enrollment_token).await;
    agent.start();
    sweep_until(&app, &w, &board.id, Duration::from_secs(15), |m| m["health"] == "healthy").await;

    // Someone enrolls the machine again while the agent runs: the old credential is revoked,
    // and the agent, refused, finds the new one on disk and carries on with it.
    let token = app.post(&format!("/api/v1/machines/{}/enrollment-token", board.id), &w.a.token, json!({})).await;
    agent.re_enroll(token.expect(201).body["token"].as_str().unwrap()).await;
    let re_enrolled = chrono::Utc::now();
    let started = Instant::now();
    loop {
        let last = app.machine(&w, &board.id).await["monitoring"]["last_heartbeat_at"].clone();
        let last: chrono::DateTime<chrono::Utc> = serde_json::from_value(last).unwrap();
        if last > re_enrolled + chrono::Duration::seconds(1) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "the agent did not take up the new credential");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(agent.terminate().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machines_in_maintenance_raise_no_alarms() {
    let app = TestApp::spawn_with(fast_heartbeats).await;
    let w = app.world().await;
    let board = app.machine_in(&w, this_host_machine("AG-3"), "ready").await;
    let mut agent = AgentProcess::enroll(&app.base_url, &board.enrollment_token).await;
    agent.start();
    sweep_until(&app, &w, &board.id, Duration::from_secs(15), |m| m["health"] == "healthy").await;
    app.put(&format!("/api/v1/machines/{}/maintenance", board.id), &w.admin, json!({ "reason": "reflash" }))
        .await
        .expect(200);
    agent.kill().await;
    sweep_until(&app, &w, &board.id, Duration::from_secs(10), |m| m["health"] == "unreachable").await;
    assert!(
        !app.event_types(&w).await.contains(&"machine.unreachable".to_owned()),
        "no alarm for a machine in maintenance"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reported_facts_that_contradict_the_inventory_are_flagged_and_audited_not_written_over_it() {
    let app = TestApp::spawn().await;
    let w = app.world().await;
    // Declared: a 64-core riscv64 board with 128 GiB.
    let mut declared = machine("riscv64", "AG-4");
    declared["cpu_cores"] = json!(64);
    declared["memory_mib"] = json!(131072);
    let board = app.machine_in(&w, declared, "ready").await;
    let credential = app.enroll(&board.enrollment_token).await;
    let beat = |arch: &str, memory: u64| {
        json!({
            "agent_version": "test", "sent_at": chrono::Utc::now(),
            "facts": { "arch": arch, "kernel": "6.6.0", "os_release": "openEuler 24.03 (LTS)", "cpu_model": "x",
                       "cpu_count": 64, "memory_mib": memory, "disk_gib": 900 },
            "metrics": { "load1": 0.1, "load5": 0.1, "load15": 0.1, "uptime_secs": 100, "disk_used_pct": 10.0, "memory_available_mib": 1000 }
        })
    };
    // It reports x86_64 and half the memory.
    app.post("/api/v1/agent/heartbeat", &credential, beat("x86_64", 65536)).await.expect(200);
    app.post("/api/v1/agent/heartbeat", &credential, beat("x86_64", 65536)).await.expect(200);
    let machine = app.machine(&w, &board.id).await;
    assert_eq!(machine["arch"], "riscv64", "the inventory keeps what was declared");
    let fields: Vec<_> =
        machine["monitoring"]["mismatches"].as_array().unwrap().iter().map(|m| m["field"].clone()).collect();
    assert_eq!(fields, [json!("arch"), json!("memory_mib")]);
    let trail = app
        .get(&format!("/api/v1/audit?entity_id={}&action=machine.facts_mismatch", board.id), &w.a.token)
        .await
        .expect(200);
    assert_eq!(trail.body["items"].as_array().unwrap().len(), 1, "audited once, not at every heartbeat");
    assert!(app.event_types(&w).await.contains(&"machine.facts_mismatch".to_owned()));

    // Fixed (the right board was installed): flagged no more, and that is audited too.
    app.post("/api/v1/agent/heartbeat", &credential, beat("riscv64", 130000)).await.expect(200);
    let machine = app.machine(&w, &board.id).await;
    assert_eq!(machine["monitoring"]["mismatches"], json!([]));
    let trail = app
        .get(&format!("/api/v1/audit?entity_id={}&action=machine.facts_mismatch", board.id), &w.admin)
        .await
        .expect(200);
    assert_eq!(trail.body["items"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_stop_working_when_replaced_renewed_or_revoked() {
    // Revocations made straight in the database (as by another replica) arrive by the poll.
    let app = TestApp::spawn_with(|c| c.agent_token_cache_secs = 1).await;
    let w = app.world().await;
    let board = app.machine_in(&w, this_host_machine("AG-5"), "onboarding").await;
    let enroll = |token: String| {
        let app = &app;
        async move {
            app.request(reqwest::Method::POST, "/api/v1/agent/enroll", None, Some(&json!({ "token": token })))
                .await
                .expect(200)
        }
    };
    let first = enroll(board.enrollment_token.clone()).await.body["credential"].as_str().unwrap().to_owned();
    let beat = heartbeat(
        json!({ "arch": std::env::consts::ARCH, "kernel": "k", "os_release": "o", "cpu_model": "c", "cpu_count": 1, "memory_mib": 256, "disk_gib": 1 }),
    );
    app.post("/api/v1/agent/heartbeat", &first, beat.clone()).await.expect(200);

    // Re-enrolling (a reinstalled machine) replaces the credential.
    let token =
        app.post(&format!("/api/v1/machines/{}/enrollment-token", board.id), &w.a.token, json!({})).await.expect(201);
    let second =
        enroll(token.body["token"].as_str().unwrap().to_owned()).await.body["credential"].as_str().unwrap().to_owned();
    app.post("/api/v1/agent/heartbeat", &first, beat.clone()).await.expect(401);
    app.post("/api/v1/agent/heartbeat", &second, beat.clone()).await.expect(200);

    // Renewal swaps it for a fresh one, but not within an hour of the last: an agent stuck in
    // a loop must not mint credentials.
    let refused = app.post("/api/v1/agent/credential", &second, json!({})).await.expect(409);
    assert_eq!(refused.code(), "renewal-too-early");
    let mut conn = app.pool().get().await.unwrap();
    diesel::sql_query("UPDATE api_tokens SET created_at = created_at - interval '2 hours' WHERE role = 'agent'")
        .execute(&mut conn)
        .await
        .unwrap();
    let renewed = app.post("/api/v1/agent/credential", &second, json!({})).await.expect(200);
    let third = renewed.body["credential"].as_str().unwrap().to_owned();
    app.post("/api/v1/agent/heartbeat", &third, beat.clone()).await.expect(200);
    // The old one keeps working a little while, in case the answer never reached the agent...
    app.post("/api/v1/agent/heartbeat", &second, beat.clone()).await.expect(200);
    // ...and not after: this replica hears of it at its next poll, a second later at most.
    diesel::sql_query("UPDATE api_tokens SET revoked_at = now() - interval '1 second' WHERE revoked_at > now()")
        .execute(&mut conn)
        .await
        .unwrap();
    let revoked = Instant::now();
    while app.post("/api/v1/agent/heartbeat", &second, beat.clone()).await.status != 401 {
        assert!(revoked.elapsed() < Duration::from_secs(3), "the retired credential still works");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.post("/api/v1/agent/heartbeat", &third, beat.clone()).await.expect(200);

    // An expired enrollment token is refused.
    let token =
        app.post(&format!("/api/v1/machines/{}/enrollment-token", board.id), &w.admin, json!({})).await.expect(201);
    diesel::sql_query("UPDATE enrollment_tokens SET expires_at = now() - interval '1 minute' WHERE used_at IS NULL")
        .execute(&mut conn)
        .await
        .unwrap();
    app.request(reqwest::Method::POST, "/api/v1/agent/enroll", None, Some(&json!({ "token": token.body["token"] })))
        .await
        .expect(401);
    // The expiry job clears such tokens a day after they expire.
    diesel::sql_query("UPDATE enrollment_tokens SET expires_at = now() - interval '2 days' WHERE used_at IS NULL")
        .execute(&mut conn)
        .await
        .unwrap();
    let cleared = fleetyard::schedules::enrollment_expiry::clear(&app.state).await.unwrap();
    assert_eq!(cleared.deleted, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_can_be_cut_off_and_loses_its_credential_when_the_machine_leaves() {
    let app = TestApp::spawn().await;
    let w = app.world().await;
    let board = app.machine_in(&w, this_host_machine("AG-8"), "ready").await;
    let credential = |body: &Value| body["credential"].as_str().unwrap().to_owned();
    let enroll = |token: &str| {
        let body = json!({ "token": token });
        let app = &app;
        async move { app.request(reqwest::Method::POST, "/api/v1/agent/enroll", None, Some(&body)).await }
    };
    let beat = heartbeat(
        json!({ "arch": std::env::consts::ARCH, "kernel": "k", "os_release": "o", "cpu_model": "c", "cpu_count": 1, "memory_mib": 256, "disk_gib": 1 }),
    );
    let first = credential(&enroll(&board.enrollment_token).await.expect(200).body);
    app.post("/api/v1/agent/heartbeat", &first, beat.clone()).await.expect(200);

    // The donor cuts the agent off (say its disk was lost): the credential and an enrollment
    // token not yet used stop working at once.
    let pending = app.post(&format!("/api/v1/machines/{}/enrollment-token", board.id), &w.a.token, json!({})).await;
    let pending = pending.expect(201).body["token"].as_str().unwrap().to_owned();
    let cut = app.delete(&format!("/api/v1/machines/{}/agent", board.id), &w.a.token).await.expect(200);
    assert_eq!(cut.body, json!({ "credentials_revoked": 1, "enrollment_tokens_revoked": 1 }));
    app.post("/api/v1/agent/heartbeat", &first, beat.clone()).await.expect(401);
    enroll(&pending).await.expect(401);
    let trail = format!("/api/v1/audit?entity_id={}&action=machine.agent_cut_off", board.id);
    assert_eq!(app.get(&trail, &w.a.token).await.expect(200).body["items"].as_array().unwrap().len(), 1);

    // A fresh enrollment brings it back; withdrawing the machine cuts it off again.
    let token = app.post(&format!("/api/v1/machines/{}/enrollment-token", board.id), &w.a.token, json!({})).await;
    let second = credential(&enroll(token.expect(201).body["token"].as_str().unwrap()).await.expect(200).body);
    app.post("/api/v1/agent/heartbeat", &second, beat.clone()).await.expect(200);
    app.post(&format!("/api/v1/machines/{}/transitions", board.id), &w.a.token, json!({ "to": "withdrawn" }))
        .await
        .expect(200);
    app.post("/api/v1/agent/heartbeat", &second, beat).await.expect(401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_heartbeats_name_the_field_and_only_agents_may_send_them() {
    let app = TestApp::spawn().await;
    let w = app.world().await;
    let board = app.machine_in(&w, this_host_machine("AG-6"), "onboarding").await;
    let credential = &app.enroll(&board.enrollment_token).await;
    let mut beat = heartbeat(
        json!({ "arch": "x86_64", "kernel": "k", "os_release": "o", "cpu_model": "c", "cpu_count": 1, "memory_mib": 1, "disk_gib": 1 }),
    );
    beat["sent_at"] = json!("yesterday");
    let refused = app.post("/api/v1/agent/heartbeat", credential, beat.clone()).await.expect(422);
    assert_eq!(refused.fields(), ["sent_at"]);
    let mut garbled = beat.clone();
    garbled["sent_at"] = json!(chrono::Utc::now());
    garbled["metrics"]["disk_used_pct"] = json!("full");
    let refused = app.post("/api/v1/agent/heartbeat", credential, garbled).await.expect(422);
    assert_eq!(refused.fields(), ["metrics.disk_used_pct"]);
    // An odd reading is still a sign of life: it is kept within range, not refused, so a
    // buggy agent does not make a working machine look unreachable.
    let mut too_full = beat.clone();
    too_full["sent_at"] = json!(chrono::Utc::now());
    too_full["metrics"]["disk_used_pct"] = json!(140.0);
    too_full["metrics"]["load1"] = json!(-3.0);
    app.post("/api/v1/agent/heartbeat", credential, too_full.clone()).await.expect(200);
    let started = Instant::now();
    let monitoring = loop {
        let monitoring = app.machine(&w, &board.id).await["monitoring"].clone();
        if !monitoring["last_heartbeat_at"].is_null() {
            break monitoring;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "the heartbeat was never stored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(monitoring["disk_used_pct"], 100.0);
    assert_eq!(monitoring["load1"], 0.0);
    // People and services are not agents.
    app.post("/api/v1/agent/heartbeat", &w.admin, too_full.clone()).await.expect(403);
    app.post("/api/v1/agent/heartbeat", &w.ci, too_full).await.expect(403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_leave_out_facts_the_server_has_and_it_asks_for_facts_it_lacks() {
    let app = TestApp::spawn().await;
    let w = app.world().await;
    let board = app.machine_in(&w, this_host_machine("AG-9"), "onboarding").await;
    let credential = &app.enroll(&board.enrollment_token).await;
    let last_seen = || async { app.machine(&w, &board.id).await["monitoring"]["last_heartbeat_at"].clone() };
    // The server has not heard this machine's facts: it asks for them and keeps nothing.
    let refused = app.post("/api/v1/agent/heartbeat", credential, heartbeat_without_facts()).await.expect(409);
    assert_eq!(refused.body["code"], "facts-wanted");
    tokio::time::sleep(Duration::from_millis(300)).await; // past a flush of the heartbeat queue
    assert!(last_seen().await.is_null(), "a refused heartbeat was stored");

    let with_facts = heartbeat(
        json!({ "arch": "x86_64", "kernel": "k", "os_release": "o", "cpu_model": "c", "cpu_count": 1, "memory_mib": 1, "disk_gib": 1 }),
    );
    app.post("/api/v1/agent/heartbeat", credential, with_facts).await.expect(200);
    assert_eq!(app.machine(&w, &board.id).await["monitoring"]["facts"]["kernel"], "k");
    // Now it has them: a heartbeat without facts is a heartbeat.
    let mut stored = last_seen().await;
    for _ in 0..2 {
        app.post("/api/v1/agent/heartbeat", credential, heartbeat_without_facts()).await.expect(200);
        let started = Instant::now();
        while last_seen().await == stored {
            assert!(started.elapsed() < Duration::from_secs(10), "the heartbeat without facts was never stored");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        stored = last_seen().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_outlives_an_unreachable_server_without_spinning_and_recovers() {
    let app = TestApp::spawn_with(fast_heartbeats).await;
    let w = app.world().await;
    let board = app.machine_in(&w, this_host_machine("AG-7"), "ready").await;
    let mut agent = AgentProcess::enroll(&app.base_url, &board.enrollment_token).await;

    // The server goes away before the agent starts.
    let address = app.address();
    let witness = app.replica();
    app.stop().await;
    agent.start();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let pid = agent.pid().expect("the agent is still running");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
    let cpu_ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    assert!(cpu_ticks < 50, "the agent used {cpu_ticks} ticks of CPU in 4 s: it is spinning");
    assert!(witness.machine(&w, &board.id).await["monitoring"]["last_heartbeat_at"].is_null());

    // The server comes back at the same address: the agent finds it again.
    let back = witness.replica_at(&address);
    let started = std::time::Instant::now();
    loop {
        if !back.machine(&w, &board.id).await["monitoring"]["last_heartbeat_at"].is_null() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "the agent did not come back");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(agent.terminate().await.success());
}
