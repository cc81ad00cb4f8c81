//! Build and test jobs run by real agents: output and status come back, a timeout kills the
//! whole process tree, cancel works, and a machine lost mid-job puts the job back in the queue.

use std::time::{Duration, Instant};

use fleetyard_tests::TestApp;
use fleetyard_tests::agent::AgentProcess;
use fleetyard_tests::fixtures::{World, this_host_machine};
use serde_json::{Value, json};

fn fast_heartbeats(config: &mut fleetyard::Config) {
    config.heartbeat_interval_secs = 1;
    config.missed_heartbeats = 3;
}

fn job(command: &str, timeout_secs: i32) -> Value {
    json!({
        "requirements": { "arch": std::env::consts::ARCH }, "purpose": "build", "command": command,
        "timeout_secs": timeout_secs, "tenant": "sig-build", "env": { "GREETING": "hello" }
    })
}

/// This host in the foundation's lab, with a real agent beating every second, healthy.
async fn lab_host(app: &TestApp, w: &World, tag: &str) -> (String, AgentProcess) {
    let onboarded = app.onboard(w, "ownership", None, vec![this_host_machine(tag)]).await;
    let (machine, token) = onboarded.into_iter().next().unwrap();
    let mut agent = AgentProcess::enroll(&app.base_url, &token).await;
    agent.start();
    wait_for_health(app, w, &machine, "healthy").await;
    (machine, agent)
}

async fn wait_for_health(app: &TestApp, w: &World, machine: &str, health: &str) {
    let started = Instant::now();
    loop {
        fleetyard::schedules::liveness::sweep(&app.state).await.unwrap();
        if app.machine(w, machine).await["health"] == health {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{machine} did not become {health}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls the job until `done` says so (at most `within`).
async fn job_until(app: &TestApp, w: &World, id: &str, within: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let job = app.get(&format!("/api/v1/jobs/{id}"), &w.ci).await.expect(200).body;
        if done(&job) {
            return job;
        }
        assert!(started.elapsed() < within, "the job did not get there in {within:?}: {job}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn output(app: &TestApp, w: &World, id: &str) -> String {
    app.get(&format!("/api/v1/jobs/{id}/output"), &w.ci).await.expect(200).text
}

/// Whether a process runs (a zombie waiting to be reaped does not).
fn alive(pid: &str) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    let state = stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next());
    !matches!(state, Some('Z' | 'X') | None)
}

/// Waits (briefly) for a killed process to be gone.
async fn gone(pid: &str) -> bool {
    let started = Instant::now();
    while alive(pid) {
        if started.elapsed() > Duration::from_secs(10) {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_on_a_matching_machine_and_its_output_and_exit_status_come_back() {
    let app = TestApp::spawn_with(fast_heartbeats).await;
    let w = app.world().await;
    let (machine, mut agent) = lab_host(&app, &w, "JOB-1").await;

    let failing = "echo \"$GREETING from attempt $FLEETYARD_JOB_ATTEMPT\"; uname -m; echo on-stderr >&2; exit 3";
    let created = app.post("/api/v1/jobs", &w.ci, job(failing, 60)).await.expect(201);
    let id = created.body["id"].as_str().unwrap().to_owned();
    let ended =
        job_until(&app, &w, &id, Duration::from_secs(15), |j| j["state"] != "queued" && j["state"] != "running").await;
    assert_eq!(ended["state"], "failed");
    assert_eq!(ended["exit_code"], 3);
    assert_eq!(ended["end_reason"], "the command exited with status 3");
    assert_eq!(ended["machine_id"], json!(machine));
    let printed = output(&app, &w, &id).await;
    assert!(printed.contains("hello from attempt 1"), "{printed}");
    assert!(printed.contains(std::env::consts::ARCH), "{printed}");
    assert!(printed.contains("on-stderr"), "{printed}");
    let tail = app.get(&format!("/api/v1/jobs/{id}/output?tail=10"), &w.ci).await.expect(200);
    assert_eq!(tail.text, "on-stderr\n");

    // The machine is free again: the next job runs and succeeds.
    let created = app.post("/api/v1/jobs", &w.ci, job("true", 60)).await.expect(201);
    let id = created.body["id"].as_str().unwrap().to_owned();
    let ended = job_until(&app, &w, &id, Duration::from_secs(15), |j| j["state"] == "succeeded").await;
    assert_eq!(ended["exit_code"], 0);

    // A command that dies by a signal fails saying so, and counts against the machine.
    let created = app.post("/api/v1/jobs", &w.ci, job("kill -KILL $$", 60)).await.expect(201);
    let crashed = created.body["id"].as_str().unwrap().to_owned();
    let ended = job_until(&app, &w, &crashed, Duration::from_secs(15), |j| j["state"] == "failed").await;
    assert_eq!(ended["end_reason"], "the command was killed by signal 9");
    let mut conn = app.pool().get().await.unwrap();
    let status = fleetyard::db::machine_status::find(&mut conn, fleetyard::domain::MachineId(machine.parse().unwrap()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.crashed_jobs, 1);

    // Another donor sees nothing of it; its own donor does (it ran on its machine).
    app.get(&format!("/api/v1/jobs/{id}"), &w.b.token).await.expect(404);
    app.get(&format!("/api/v1/jobs/{id}"), &w.a.token).await.expect(200);
    agent.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_kills_the_whole_process_tree_and_cancel_stops_a_running_job() {
    let app = TestApp::spawn_with(fast_heartbeats).await;
    let w = app.world().await;
    let (_, mut agent) = lab_host(&app, &w, "JOB-2").await;

    // The command starts a background child and waits; both must go at the timeout.
    let created = app.post("/api/v1/jobs", &w.ci, job("sleep 300 & echo \"child $!\"; sleep 300", 2)).await.expect(201);
    let id = created.body["id"].as_str().unwrap().to_owned();
    let ended = job_until(&app, &w, &id, Duration::from_secs(20), |j| j["state"] == "timed_out").await;
    assert!(ended["end_reason"].as_str().unwrap().contains("timeout of 2 s"));
    let printed = output(&app, &w, &id).await;
    let child = printed.split_whitespace().nth(1).expect("the child's pid").to_owned();
    assert!(gone(&child).await, "the background child {child} outlived the timeout");

    // Cancelled while running: the shell and what it started are killed.
    let created = app.post("/api/v1/jobs", &w.ci, job("echo \"shell $$\"; sleep 300", 600)).await.expect(201);
    let id = created.body["id"].as_str().unwrap().to_owned();
    let started = Instant::now();
    let shell = loop {
        let printed = output(&app, &w, &id).await;
        if let Some(pid) = printed.split_whitespace().nth(1) {
            break pid.to_owned();
        }
        assert!(started.elapsed() < Duration::from_secs(15), "no output from the job");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(alive(&shell));
    let cancelled = app.post(&format!("/api/v1/jobs/{id}/cancel"), &w.ci, json!({})).await.expect(200);
    assert_eq!(cancelled.body["state"], "cancelled");
    assert!(gone(&shell).await, "the cancelled job's shell {shell} still runs");
    app.post(&format!("/api/v1/jobs/{id}/cancel"), &w.ci, json!({})).await.expect(409);
    agent.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machine_lost_mid_job_puts_the_job_back_in_the_queue_and_it_runs_again() {
    let app = TestApp::spawn_with(fast_heartbeats).await;
    let w = app.world().await;
    let (machine, mut agent) = lab_host(&app, &w, "JOB-3").await;

    let created = app
        .post("/api/v1/jobs", &w.ci, job("echo \"attempt $FLEETYARD_JOB_ATTEMPT\"; sleep 4; echo finished", 60))
        .await
        .expect(201);
    let id = created.body["id"].as_str().unwrap().to_owned();
    job_until(&app, &w, &id, Duration::from_secs(10), |j| j["state"] == "running").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // The agent dies mid-job; the machine falls silent.
    agent.kill().await;
    wait_for_health(&app, &w, &machine, "unreachable").await;
    let requeued = job_until(&app, &w, &id, Duration::from_secs(10), |j| j["state"] == "queued").await;
    assert_eq!(requeued["attempts"], 2);
    assert_eq!(requeued["end_reason"], "attempt 1 of 3 lost (its machine became unreachable); queued again");

    // The agent comes back (its leftover job is ended), the machine turns healthy, and the
    // job runs again to the end.
    agent.start();
    wait_for_health(&app, &w, &machine, "healthy").await;
    let ended = job_until(&app, &w, &id, Duration::from_secs(20), |j| j["state"] == "succeeded").await;
    assert_eq!(ended["attempts"], 2);
    let printed = output(&app, &w, &id).await;
    assert!(printed.contains("attempt 2") && printed.ends_with("finished\n"), "{printed}");
    agent.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_impossible_or_invalid_job_is_refused_and_nothing_is_written() {
    let app = TestApp::spawn().await;
    let w = app.world().await;
    app.ready_pool(&w, "ownership", None, vec![fleetyard_tests::fixtures::pool_machine("loongarch64", "LA-J", 32, 64)])
        .await;
    let before = app.row_counts().await;

    let mut huge = job("true", 60);
    huge["requirements"] = json!({ "arch": "loongarch64", "min_memory_gib": 256 });
    let refused = app.post("/api/v1/jobs", &w.ci, huge).await.expect(422);
    assert_eq!(refused.body["message"], "no loongarch64 machine has 256 GiB of memory");

    let bad = app
        .post(
            "/api/v1/jobs",
            &w.ci,
            json!({
                "requirements": { "arch": "loongarch64" }, "purpose": "build", "command": " ",
                "timeout_secs": 0, "max_attempts": 11, "tenant": "t", "env": { "bad name": "x" }
            }),
        )
        .await
        .expect(422);
    assert_eq!(bad.fields(), ["command", "env.bad name", "timeout_secs", "max_attempts"]);
    assert_eq!(app.row_counts().await, before, "nothing was written");
}
