//! Background schedules: every run once across replicas, reminders at 30, 7 and 1 days, the
//! schedule itself.

use std::time::Duration;

use chrono::Utc;
use fleetyard::schedules::{self, RunOutcome, Schedule, reminders};
use fleetyard_tests::TestApp;
use fleetyard_tests::fixtures::{id_of, lab_form, machine};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_replicas_each_scheduled_run_happens_once() {
    let app = TestApp::spawn().await;
    let w = app.world().await;
    let replica = app.replica();
    let mut form = lab_form("loan", &w.lab_site, "DUE-1", vec![machine("loongarch64", "DUE-1")]);
    form["starts_on"] = json!((Utc::now() - chrono::Duration::days(300)).date_naive());
    form["ends_on"] = json!((Utc::now() + chrono::Duration::days(7)).date_naive());
    let created = app.post("/api/v1/donations", &w.a.token, form).await.expect(201);
    app.post(&format!("/api/v1/donations/{}/actions", id_of(&created.body)), &w.admin, json!({ "action": "approve" }))
        .await
        .expect(200);

    // Both replicas fire the daily reminders at the same moment, over HTTP as ops would.
    let (first, second) = tokio::join!(
        app.post("/api/v1/schedules/reminders/run", &w.admin, json!({})),
        replica.post("/api/v1/schedules/reminders/run", &w.admin, json!({})),
    );
    let mut outcomes =
        [first.body["outcome"].as_str().unwrap().to_owned(), second.body["outcome"].as_str().unwrap().to_owned()];
    outcomes.sort();
    assert_eq!(outcomes, ["ran", "skipped"]);
    let due_soon = app.event_types(&w).await.into_iter().filter(|t| t == "loan.due_soon").count();
    assert_eq!(due_soon, 1);

    // The same period again: neither runs it.
    assert_eq!(schedules::run(&app.state, Schedule::Reminders, "a").await.unwrap(), RunOutcome::Skipped);
    assert_eq!(schedules::run(&replica.state, Schedule::Reminders, "b").await.unwrap(), RunOutcome::Skipped);

    // Ops see the run, who ran it, and its report.
    let listed = app.get("/api/v1/schedules", &w.admin).await.expect(200);
    let run = listed.body.as_array().unwrap().iter().find(|j| j["name"] == "reminders").unwrap().clone();
    assert_eq!(run["runs"], 1);
    assert_eq!(run["last_outcome"], "ok");
    assert_eq!(run["last_report"]["sent"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reminders_go_out_30_7_and_1_days_before_and_once_each() {
    let app = TestApp::spawn().await;
    let w = app.world().await;
    let ends_on = (Utc::now() + chrono::Duration::days(60)).date_naive();
    let mut form = lab_form("loan", &w.lab_site, "DUE-2", vec![machine("loongarch64", "DUE-2")]);
    form["ends_on"] = json!(ends_on);
    let created = app.post("/api/v1/donations", &w.a.token, form).await.expect(201);
    app.post(&format!("/api/v1/donations/{}/actions", id_of(&created.body)), &w.admin, json!({ "action": "approve" }))
        .await
        .expect(200);

    let mut sent = Vec::new();
    for days_before in (0..=45).rev() {
        let today = ends_on - chrono::Duration::days(days_before);
        // Each day's run may happen more than once: the reminder still goes out once.
        let first = reminders::send(&app.state, today).await.unwrap().sent;
        let again = reminders::send(&app.state, today).await.unwrap().sent;
        assert_eq!(again, 0);
        if first > 0 {
            sent.push(days_before);
        }
    }
    assert_eq!(sent, [30, 7, 1]);
    let events = app.get("/api/v1/events?type=loan.due_soon", &w.admin).await.expect(200);
    let reminders: Vec<_> =
        events.body["items"].as_array().unwrap().iter().rev().map(|e| e["data"]["reminder"].clone()).collect();
    assert_eq!(reminders, [json!("30 days"), json!("7 days"), json!("1 day")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enabled_schedules_run_and_switched_off_ones_are_left_alone() {
    let app = TestApp::spawn_with(|c| {
        c.schedules.liveness_sweep.schedule = "* * * * * *".into();
        c.schedules.enrollment_expiry.schedule = "* * * * * *".into();
        c.schedules.enrollment_expiry.enabled = false;
    })
    .await;
    let w = app.world().await;
    let mut scheduler = schedules::start(app.state.clone()).await.unwrap().expect("schedules are on");
    tokio::time::sleep(Duration::from_millis(2600)).await;
    scheduler.shutdown().await.unwrap();
    let listed = app.get("/api/v1/schedules", &w.admin).await.expect(200);
    let schedule = |name: &str| listed.body.as_array().unwrap().iter().find(|j| j["name"] == name).unwrap().clone();
    assert!(schedule("liveness-sweep")["runs"].as_i64().unwrap() >= 1, "{}", listed.text);
    assert_eq!(schedule("enrollment-expiry")["runs"], 0);
    assert_eq!(schedule("enrollment-expiry")["enabled"], false);
    // An unknown schedule is a 404; a bad schedule is refused at start.
    app.post("/api/v1/schedules/nonsense/run", &w.admin, json!({})).await.expect(404);
    let broken = TestApp::spawn_with(|c| c.schedules.reminders.schedule = "whenever".into()).await;
    let error = schedules::start(broken.state.clone()).await.err().expect("a bad schedule is refused").to_string();
    assert!(error.contains("whenever"), "{error}");
}
