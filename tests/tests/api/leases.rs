//! Leases: granted with connection details, queued with an honest estimate, refused with the
//! reason, idempotent, within donors' windows and caps, fair between tenants, reclaimed when
//! they expire, never double-booked across replicas, and over a real sshd, usable at once and
//! ended clean at release.

use std::collections::HashMap;

use chrono::{Datelike, Utc};
use diesel_async::RunQueryDsl;
use fleetyard_tests::accounts;
use fleetyard_tests::agent::AgentProcess;
use fleetyard_tests::fixtures::{World, pool_machine, this_host_machine};
use fleetyard_tests::server::ServerProcess;
use fleetyard_tests::sshd::{Sshd, free_port};
use fleetyard_tests::{Response, TestApp};
use serde_json::{Value, json};

fn runner(arch: &str, tenant: &str) -> Value {
    json!({ "requirements": { "arch": arch }, "purpose": "ci", "duration_minutes": 60, "tenant": tenant })
}

async fn ask(app: &TestApp, token: &str, body: Value) -> Response {
    app.post("/api/v1/leases", token, body).await
}

async fn lab_pool(app: &TestApp, w: &World, arch: &str, count: usize) -> Vec<String> {
    let machines = (0..count).map(|i| pool_machine(arch, &format!("L-{arch}-{i}"), 8, 16)).collect();
    app.ready_pool(w, "ownership", None, machines).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ci_runner_is_granted_with_connection_details_then_the_next_one_waits_its_turn() {
    let app = TestApp::spawn().await;
    let w = app.world().await;
    let pool = lab_pool(&app, &w, "riscv64", 1).await;

    let first = ask(&app, &w.ci, runner("riscv64", "sig-riscv")).await.expect(201);
    assert_eq!(first.body["state"], "granted");
    assert_eq!(first.body["machine_id"], json!(pool[0]));
    assert_eq!(first.body["connection"], json!({ "host": "192.0.2.10", "port": 2222, "user": "runner" }));
    let granted_at: chrono::DateTime<Utc> = serde_json::from_value(first.body["granted_at"].clone()).unwrap();
    let expires_at: chrono::DateTime<Utc> = serde_json::from_value(first.body["expires_at"].clone()).unwrap();
    assert_eq!(expires_at - granted_at, chrono::Duration::minutes(60));

    // The only riscv64 machine is taken: the next request queues, first in line, with the
    // first lease's expiry as its estimate.
    let second = ask(&app, &w.ci, runner("riscv64", "sig-riscv")).await.expect(202);
    assert_eq!(second.body["state"], "queued");
    assert_eq!(second.body["connection"], json!(null));
    assert_eq!(second.body["queue"]["position"], 1);
    assert_eq!(second.body["queue"]["estimated_start_at"], first.body["expires_at"]);
    // Ops see why it waits (the queue page shows the same); CI may not read the whole queue.
    let queue = app.get("/api/v1/queue", &w.admin).await.expect(200);
    assert_eq!(queue.body[0]["id"], second.body["id"]);
    assert_eq!(queue.body[0]["why"], "all_busy");
    app.get("/api/v1/queue", &w.ci).await.expect(403);

    // Releasing the first hands the machine to the second; a long poll sees it happen.
    let second_id = second.body["id"].as_str().unwrap();
    let released =
        app.post(&format!("/api/v1/leases/{}/release", first.body["id"].as_str().unwrap()), &w.ci, json!({})).await;
    assert_eq!(released.expect(200).body["state"], "released");
    let waited = app.get(&format!("/api/v1/leases/{second_id}?wait=10"), &w.ci).await.expect(200);
    assert_eq!(waited.body["state"], "granted");
    assert_eq!(waited.body["machine_id"], json!(pool[0]));

    // The holder sees its leases; the donor of the machine sees the lease on it.
    let mine = app.get("/api/v1/leases?state=granted", &w.ci).await.expect(200);
    assert_eq!(mine.body["items"].as_array().unwrap().len(), 1);
    let donors_view = app.get(&format!("/api/v1/leases/{second_id}"), &w.a.token).await.expect(200);
    assert_eq!(donors_view.body["machine_id"], json!(pool[0]));
    app.get(&format!("/api/v1/leases/{second_id}"), &w.b.token).await.expect(404);
    // A donor may look but not give the lease back.
    app.post(&format!("/api/v1/leases/{second_id}/release"), &w.a.token, json!({})).await.expect(403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_impossible_request_is_refused_with_the_reason_and_bad_input_names_the_field() {
    let app = TestApp::spawn().await;
    let w = app.world().await;
    app.ready_pool(&w, "ownership", None, vec![pool_machine("loongarch64", "LA-1", 32, 128)]).await;
    let before = app.row_counts().await;

    let mut huge = runner("loongarch64", "sig-la");
    huge["requirements"]["min_memory_gib"] = json!(256);
    let refused = ask(&app, &w.ci, huge).await.expect(422);
    assert_eq!(refused.code(), "unsatisfiable");
    assert_eq!(refused.body["message"], "no loongarch64 machine has 256 GiB of memory");

    let refused = ask(&app, &w.ci, runner("aarch64", "sig-arm")).await.expect(422);
    assert_eq!(refused.body["message"], "there is no aarch64 machine in the inventory");

    let bad = ask(
        &app,
        &w.ci,
        json!({
            "requirements": { "arch": "riscv64", "min_cores": -1 }, "purpose": "ci", "duration_minutes": 0,
            "tenant": "SIG Riscv", "priority": 101, "ssh_public_key": "not a key"
        }),
    )
    .await
    .expect(422);
    assert_eq!(bad.fields(), ["requirements.min_cores", "priority", "tenant", "duration_minutes", "ssh_public_key"]);
    let unknown = ask(
        &app,
        &w.ci,
        json!({ "requirements": { "arch": "mips" }, "purpose": "ci", "duration_minutes": 5, "tenant": "t" }),
    )
    .await;
    assert_eq!(unknown.expect(422).fields(), ["requirements.arch"]);
    assert_eq!(app.row_counts().await, before, "nothing was written");

    // Donors and agents do not hold leases.
    ask(&app, &w.a.token, runner("loongarch64", "sig-la")).await.expect(403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_with_the_same_idempotency_key_gets_the_same_lease() {
    let app = TestApp::spawn().await;
    let w = app.world().await;
    lab_pool(&app, &w, "x86_64", 3).await;

    let send = |key: &'static str, body: Value| {
        let app = &app;
        let token = w.ci.clone();
        async move {
            let response = app
                .client
                .post(format!("{}/api/v1/leases", app.base_url))
                .bearer_auth(token)
                .header("idempotency-key", key)
                .json(&body)
                .send()
                .await
                .unwrap();
            let replayed = response.headers().get("idempotent-replayed").is_some();
            let status = response.status().as_u16();
            (status, replayed, response.json::<Value>().await.unwrap())
        }
    };
    let (status, replayed, first) = send("build-1234-attempt", runner("x86_64", "ci-gate")).await;
    assert_eq!((status, replayed), (201, false));
    let (status, replayed, again) = send("build-1234-attempt", runner("x86_64", "ci-gate")).await;
    assert_eq!((status, replayed), (200, true));
    assert_eq!(again["id"], first["id"]);

    // The same key for a different request is a mistake, named as such.
    let (status, _, body) = send("build-1234-attempt", runner("x86_64", "other-tenant")).await;
    assert_eq!(status, 422);
    assert_eq!(body["details"]["errors"][0]["field"], "Idempotency-Key");

    // Ten concurrent retries of a new key make one lease between them.
    let tries: Vec<_> = (0..10).map(|_| send("build-5678", runner("x86_64", "ci-gate"))).collect();
    let answers = futures_util::future::join_all(tries).await;
    let ids: std::collections::HashSet<String> =
        answers.iter().map(|(_, _, body)| body["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids.len(), 1, "{answers:?}");
    let listed = app.get("/api/v1/leases", &w.ci).await.expect(200);
    assert_eq!(listed.body["items"].as_array().unwrap().len(), 2);
}

/// The weekday of `now` in `zone`, as the API spells it.
fn weekday_in(zone: chrono_tz::Tz, offset_days: i64) -> &'static str {
    let day = (Utc::now().with_timezone(&zone) + chrono::Duration::days(offset_days)).weekday();
    ["mon", "tue", "wed", "thu", "fri", "sat", "sun"][day.num_days_from_monday() as usize]
}

fn policy(zone: &str, days: &[&str], cap: i64) -> Value {
    json!({
        "purposes": ["ci"], "time_zone": zone,
        "windows": [{ "days": days, "start": "00:00", "end": "24:00" }],
        "max_concurrent_leases": cap, "max_lease_minutes": 240
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn donor_time_windows_are_read_in_each_donors_time_zone_and_caps_hold() {
    let app = TestApp::spawn().await;
    let w = app.world().await;
    // Kiritimati (UTC+14) and Pago Pago (UTC-11) are 25 hours apart: whatever the hour, the day
    // it is in Kiritimati is not the day it is in Pago Pago. Both donors open "today, and
    // tomorrow" by Kiritimati's calendar.
    let kiritimati = chrono_tz::Pacific::Kiritimati;
    let days = [weekday_in(kiritimati, 0), weekday_in(kiritimati, 1)];
    let east = app
        .ready_pool(
            &w,
            "usage_right",
            Some(policy("Pacific/Kiritimati", &days, 1)),
            vec![pool_machine("riscv64", "E-1", 4, 8), pool_machine("riscv64", "E-2", 4, 8)],
        )
        .await;
    // Pago Pago's donor opens only the day after tomorrow, by its own calendar.
    let pago = chrono_tz::Pacific::Pago_Pago;
    let west = app
        .ready_pool(
            &w,
            "usage_right",
            Some(policy("Pacific/Pago_Pago", &[weekday_in(pago, 2)], 5)),
            vec![pool_machine("riscv64", "W-1", 4, 8)],
        )
        .await;

    // Open in Kiritimati: granted there.
    let first = ask(&app, &w.ci, runner("riscv64", "sig-riscv")).await.expect(201);
    assert!(east.contains(&first.body["machine_id"].as_str().unwrap().to_owned()));
    // Kiritimati's donor allows one lease at a time and Pago Pago's window is shut: the next one
    // queues (it could be granted later) rather than being refused.
    let second = ask(&app, &w.ci, runner("riscv64", "sig-riscv")).await.expect(202);
    assert_eq!(second.body["state"], "queued");
    assert!(!west.is_empty());

    // Longer than any donor allows: refused, saying so.
    let mut long = runner("riscv64", "sig-riscv");
    long["duration_minutes"] = json!(300);
    let refused = ask(&app, &w.ci, long).await.expect(422);
    assert_eq!(
        refused.body["message"],
        "no donor of a matching riscv64 machine allows a lease of 300 minutes (the longest allowed is 240)"
    );
    // A purpose no donor allows: refused.
    let mut build = runner("riscv64", "sig-riscv");
    build["purpose"] = json!("build");
    assert_eq!(ask(&app, &w.ci, build).await.expect(422).code(), "unsatisfiable");
    // Release work wants the foundation's lab; there is no riscv64 machine there.
    let mut release = runner("riscv64", "release");
    release["trusted_only"] = json!(true);
    assert_eq!(
        ask(&app, &w.ci, release).await.expect(422).body["message"],
        "no riscv64 machine is in the foundation's lab (trusted_only)"
    );

    // Extending stays within the donor's 240 minutes.
    let id = first.body["id"].as_str().unwrap();
    let extended = app.post(&format!("/api/v1/leases/{id}/extend"), &w.ci, json!({ "minutes": 120 })).await.expect(200);
    assert_eq!(extended.body["state"], "granted");
    let over = app.post(&format!("/api/v1/leases/{id}/extend"), &w.ci, json!({ "minutes": 61 })).await.expect(409);
    assert_eq!(over.code(), "lease-limit");

    // A request that will not wait fails at once when nothing is free for it now.
    let mut impatient = runner("riscv64", "sig-riscv");
    impatient["max_wait_minutes"] = json!(0);
    let failed = ask(&app, &w.ci, impatient).await.expect(200);
    assert_eq!(failed.body["state"], "failed");
    assert_eq!(failed.body["end_reason"], "no machine became free before its deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_freed_machine_goes_to_the_tenant_holding_less() {
    let app = TestApp::spawn().await;
    let w = app.world().await;
    lab_pool(&app, &w, "aarch64", 2).await;
    let a1 = ask(&app, &w.ci, runner("aarch64", "sig-a")).await.expect(201);
    ask(&app, &w.ci, runner("aarch64", "sig-a")).await.expect(201);
    // sig-a holds both machines and queues two more; then sig-b asks once.
    ask(&app, &w.ci, runner("aarch64", "sig-a")).await.expect(202);
    ask(&app, &w.ci, runner("aarch64", "sig-a")).await.expect(202);
    let b = ask(&app, &w.ci, runner("aarch64", "sig-b")).await.expect(202);
    assert_eq!(b.body["queue"]["position"], 3, "by priority and age it is third");
    // The queue ops read (its standings worked out for every lease at once) says the same as
    // each lease read on its own.
    let queue = app.get("/api/v1/queue", &w.admin).await.expect(200).body;
    assert_eq!(queue.as_array().unwrap().len(), 3);
    for waiting in queue.as_array().unwrap() {
        let alone = app.get(&format!("/api/v1/leases/{}", waiting["id"].as_str().unwrap()), &w.admin).await;
        assert_eq!(waiting["queue"], alone.expect(200).body["queue"]);
    }
    let positions: Vec<_> = queue.as_array().unwrap().iter().map(|l| l["queue"]["position"].clone()).collect();
    assert_eq!(positions, [json!(1), json!(2), json!(3)]);

    app.post(&format!("/api/v1/leases/{}/release", a1.body["id"].as_str().unwrap()), &w.ci, json!({}))
        .await
        .expect(200);
    let b = app.get(&format!("/api/v1/leases/{}?wait=10", b.body["id"].as_str().unwrap()), &w.ci).await.expect(200);
    assert_eq!(b.body["state"], "granted", "sig-a still holds one machine, sig-b none: sig-b goes first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_leases_are_reclaimed_and_their_machines_granted_again() {
    // No rounds on a timer: this test runs the round itself.
    let app = TestApp::spawn_with(|c| c.scheduler_tick_millis = 3_600_000).await;
    let w = app.world().await;
    lab_pool(&app, &w, "x86_64", 1).await;
    let first = ask(&app, &w.ci, runner("x86_64", "ci-gate")).await.expect(201);
    let second = ask(&app, &w.ci, runner("x86_64", "ci-gate")).await.expect(202);

    // The first lease's hour passes.
    let mut conn = app.pool().get().await.unwrap();
    diesel::sql_query("UPDATE leases SET expires_at = now() - interval '1 second' WHERE state = 'granted'")
        .execute(&mut conn)
        .await
        .unwrap();
    let report = fleetyard::scheduler::round(&mut conn, &app.state.config, Vec::new()).await.unwrap();
    assert_eq!((report.expired, report.granted), (1, 1));

    let first = app.get(&format!("/api/v1/leases/{}", first.body["id"].as_str().unwrap()), &w.ci).await.expect(200);
    assert_eq!(first.body["state"], "expired");
    assert_eq!(first.body["end_reason"], "its time ran out");
    let second = app.get(&format!("/api/v1/leases/{}", second.body["id"].as_str().unwrap()), &w.ci).await.expect(200);
    assert_eq!(second.body["state"], "granted");
    app.post(&format!("/api/v1/leases/{}/extend", first.body["id"].as_str().unwrap()), &w.ci, json!({ "minutes": 5 }))
        .await
        .expect(409);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_across_three_server_processes_never_double_book_a_machine() {
    let app = TestApp::spawn().await;
    let w = app.world().await;
    let machines = 20;
    let pool = lab_pool(&app, &w, "riscv64", machines).await;
    // Three `fleetyard serve` processes on the same database, each with its own scheduler.
    let servers = [
        ServerProcess::replica_of(&app).await,
        ServerProcess::replica_of(&app).await,
        ServerProcess::replica_of(&app).await,
    ];

    // 60 clients, 2 requests each, spread over the three processes.
    let clients: Vec<_> = (0..60)
        .map(|i| {
            let server = &servers[i % 3];
            let token = w.ci.clone();
            async move {
                let mut statuses = Vec::new();
                for _ in 0..2 {
                    let mut body = runner("riscv64", if i % 2 == 0 { "sig-a" } else { "sig-b" });
                    body["max_wait_minutes"] = json!(0);
                    statuses.push(server.post("/api/v1/leases", &token, body).await.status);
                }
                statuses
            }
        })
        .collect();
    let statuses: Vec<u16> = futures_util::future::join_all(clients).await.into_iter().flatten().collect();
    let granted = statuses.iter().filter(|s| **s == 201).count();
    assert_eq!(granted, machines, "every machine granted once: {statuses:?}");
    assert!(statuses.iter().all(|s| *s == 201 || *s == 200), "the rest failed at once (no waiting): {statuses:?}");

    #[derive(diesel::QueryableByName, Debug)]
    struct Booking {
        #[diesel(sql_type = diesel::sql_types::Uuid)]
        machine_id: uuid::Uuid,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        leases: i64,
    }
    let mut conn = app.pool().get().await.unwrap();
    let bookings: Vec<Booking> = diesel::sql_query(
        "SELECT machine_id, count(*) AS leases FROM leases WHERE state = 'granted' GROUP BY machine_id",
    )
    .load(&mut conn)
    .await
    .unwrap();
    assert!(bookings.iter().all(|b| b.leases == 1), "{bookings:?}");
    let booked: std::collections::HashSet<String> = bookings.iter().map(|b| b.machine_id.to_string()).collect();
    assert_eq!(booked, pool.into_iter().collect(), "each machine booked once");
    let per_tenant: HashMap<String, usize> =
        app.get("/api/v1/leases?state=granted&limit=200", &w.admin).await.expect(200).body["items"]
            .as_array()
            .unwrap()
            .iter()
            .fold(HashMap::new(), |mut m, l| {
                *m.entry(l["tenant"].as_str().unwrap().to_owned()).or_default() += 1;
                m
            });
    assert_eq!(per_tenant.values().sum::<usize>(), machines);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machine_leaving_the_pool_ends_its_lease_and_takes_no_new_one() {
    let app = TestApp::spawn().await;
    let w = app.world().await;
    let pool = lab_pool(&app, &w, "x86_64", 1).await;
    let lease = ask(&app, &w.ci, runner("x86_64", "ci-gate")).await.expect(201);
    let id = lease.body["id"].as_str().unwrap();

    app.put(&format!("/api/v1/machines/{}/maintenance", pool[0]), &w.admin, json!({ "reason": "fan" }))
        .await
        .expect(200);
    let mut ended = Value::Null;
    for _ in 0..50 {
        ended = app.get(&format!("/api/v1/leases/{id}"), &w.ci).await.expect(200).body;
        if ended["state"] != "granted" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(ended["state"], "failed");
    assert_eq!(ended["end_reason"], "its machine left the pool (maintenance)");

    // In maintenance it takes no lease, but it is still inventory: the request waits.
    let waiting = ask(&app, &w.ci, runner("x86_64", "ci-gate")).await.expect(202);
    app.delete(&format!("/api/v1/machines/{}/maintenance", pool[0]), &w.admin).await.expect(200);
    let granted = app.get(&format!("/api/v1/leases/{}?wait=10", waiting.body["id"].as_str().unwrap()), &w.ci).await;
    assert_eq!(granted.expect(200).body["state"], "granted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_granted_lease_lets_its_holder_in_over_ssh_at_once_and_out_at_release() {
    let app = TestApp::spawn_with(|c| c.heartbeat_interval_secs = 1).await;
    let w = app.world().await;

    // This very host, donated to the lab, reachable over a real sshd that asks a real agent
    // for the keys of current leases.
    let port = free_port();
    let user = std::env::var("USER").ok().filter(|u| !u.is_empty()).unwrap_or_else(|| "root".into());
    let mut host = this_host_machine("LEASE-1");
    host["ssh"] = json!({ "host": "127.0.0.1", "port": port, "user": user });
    let onboarded = app.onboard(&w, "ownership", None, vec![host]).await;
    let (machine, token) = &onboarded[0];
    let mut agent = AgentProcess::enroll(&app.base_url, token).await;
    agent.lease_user(&user);
    agent.start();
    let sshd = Sshd::start_on(port, "", Some(agent.authorized_keys_command())).await;
    for _ in 0..100 {
        fleetyard::schedules::liveness::sweep(&app.state).await.unwrap();
        if app.machine(&w, machine).await["health"] == "healthy" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // The CI runner's key pair.
    let keys = tempfile::tempdir().unwrap();
    let identity = keys.path().join("id_ed25519");
    let made = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "ci@runner", "-f"])
        .arg(&identity)
        .status()
        .unwrap();
    assert!(made.success());
    let public = std::fs::read_to_string(identity.with_extension("pub")).unwrap();
    assert!(!sshd.lets_in(&identity).await, "no lease, no entry");

    let mut request = runner(std::env::consts::ARCH, "ci-gate");
    request["ssh_public_key"] = json!(public.trim());
    let asked = std::time::Instant::now();
    let lease = ask(&app, &w.ci, request).await.expect(201);
    assert_eq!(lease.body["connection"], json!({ "host": "127.0.0.1", "port": port, "user": user }));
    let mut usable_after = None;
    while asked.elapsed() < std::time::Duration::from_secs(10) {
        if sshd.lets_in(&identity).await {
            usable_after = Some(asked.elapsed());
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let usable_after = usable_after.expect("the lease's key was let in");
    assert!(usable_after < std::time::Duration::from_secs(2), "usable after {usable_after:?}, not about a second");

    // Released: the key stops working.
    app.post(&format!("/api/v1/leases/{}/release", lease.body["id"].as_str().unwrap()), &w.ci, json!({}))
        .await
        .expect(200);
    let released = std::time::Instant::now();
    while sshd.lets_in(&identity).await {
        assert!(released.elapsed() < std::time::Duration::from_secs(5), "the key still works after release");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    println!("lease usable over SSH {usable_after:?} after the request");
    agent.terminate().await;
}

/// A fresh ed25519 key pair in `dir`: the private key's path and the public line.
fn key_pair(dir: &std::path::Path, name: &str) -> (std::path::PathBuf, String) {
    let identity = dir.join(name);
    let made = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&identity)
        .status()
        .unwrap();
    assert!(made.success());
    let public = std::fs::read_to_string(identity.with_extension("pub")).unwrap().trim().to_owned();
    (identity, public)
}

/// The `sleep` processes of `uid` (what a holder left running).
fn sleeps_of(uid: u32) -> Vec<u32> {
    accounts::processes_of(uid)
        .into_iter()
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_lease_leaves_no_process_no_key_and_a_fresh_home_behind() {
    let app = TestApp::spawn_with(|c| c.heartbeat_interval_secs = 1).await;
    let w = app.world().await;
    let lease_user = accounts::lease_user();

    // This host, reachable over a real sshd that lets the lease user in with the keys its
    // agent prints and with no others, as deploy/agent/README.md configures it.
    let port = free_port();
    let mut host = this_host_machine("LEASE-2");
    host["ssh"] = json!({ "host": "127.0.0.1", "port": port, "user": lease_user.name });
    let onboarded = app.onboard(&w, "ownership", None, vec![host]).await;
    let (machine, token) = &onboarded[0];
    let mut agent = AgentProcess::enroll(&app.base_url, token).await;
    agent.lease_user(&lease_user.name);
    agent.start();
    let sshd = Sshd::start_for_leases(port, "", &lease_user.name, agent.authorized_keys_command()).await;
    for _ in 0..100 {
        fleetyard::schedules::liveness::sweep(&app.state).await.unwrap();
        if app.machine(&w, machine).await["health"] == "healthy" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // The holder's key, and another one they will try to slip in.
    let keys = tempfile::tempdir().unwrap();
    let (identity, public) = key_pair(keys.path(), "id_lease");
    let (slipped, slipped_public) = key_pair(keys.path(), "id_slipped");
    let mut request = runner(std::env::consts::ARCH, "ci-gate");
    request["ssh_public_key"] = json!(public);
    let lease = ask(&app, &w.ci, request).await.expect(201);
    let asked = std::time::Instant::now();
    while !sshd.lets_in_as(&lease_user.name, &identity).await {
        assert!(asked.elapsed() < std::time::Duration::from_secs(10), "the lease's key was never let in");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // Logged in, the holder appends a key of their own, leaves a file, and leaves processes
    // running that outlive the session: one under nohup, one in a session of its own.
    let session = sshd
        .ssh(
            &lease_user.name,
            &identity,
            &format!(
                "mkdir -p ~/.ssh && echo '{slipped_public}' >> ~/.ssh/authorized_keys && echo notes > ~/left-behind \
                 && (nohup sleep 1000 >/dev/null 2>&1 </dev/null &) && (setsid sleep 1001 >/dev/null 2>&1 </dev/null &) && echo ok"
            ),
        )
        .await;
    assert!(
        session.status.success() && String::from_utf8_lossy(&session.stdout).contains("ok"),
        "the session failed: {}",
        String::from_utf8_lossy(&session.stderr)
    );
    assert!(lease_user.home.join(".ssh/authorized_keys").exists() && lease_user.home.join("left-behind").exists());
    let session_ended = std::time::Instant::now();
    while sleeps_of(lease_user.uid).len() < 2 {
        assert!(
            session_ended.elapsed() < std::time::Duration::from_secs(5),
            "the holder's processes did not outlive the session: {:?}",
            sleeps_of(lease_user.uid)
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(!sshd.lets_in_as(&lease_user.name, &slipped).await, "a key in ~/.ssh/authorized_keys lets no one in");

    // Released: nothing of the holder's is left, and no key gets in.
    app.post(&format!("/api/v1/leases/{}/release", lease.body["id"].as_str().unwrap()), &w.ci, json!({}))
        .await
        .expect(200);
    let released = std::time::Instant::now();
    while !accounts::processes_of(lease_user.uid).is_empty() {
        assert!(
            released.elapsed() < std::time::Duration::from_secs(15),
            "processes of the lease user outlived the lease: {:?}",
            accounts::processes_of(lease_user.uid)
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let skeleton = accounts::listing(std::path::Path::new("/etc/skel"));
    while accounts::listing(&lease_user.home) != skeleton {
        assert!(
            released.elapsed() < std::time::Duration::from_secs(20),
            "the home was not reset to /etc/skel: {:?}",
            accounts::listing(&lease_user.home)
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let home = std::fs::metadata(&lease_user.home).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((home.uid(), home.mode() & 0o777), (lease_user.uid, 0o700), "the home is the lease user's, 0700");
    assert!(!sshd.lets_in_as(&lease_user.name, &identity).await, "the lease's key outlived the lease");
    assert!(!sshd.lets_in_as(&lease_user.name, &slipped).await, "the slipped-in key outlived the lease");
    agent.terminate().await;
}
