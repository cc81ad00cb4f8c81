//! Webhooks: signed CloudEvents, delivered even when the receiver or the server was down.

use diesel_async::RunQueryDsl;
use fleetyard::schedules::webhooks::deliver_due;
use fleetyard_tests::TestApp;
use fleetyard_tests::fixtures::{World, id_of, machine, usage_right_form};
use fleetyard_tests::webhook_receiver::Receiver;
use serde_json::{Value, json};

async fn subscribe(app: &TestApp, w: &World, url: &str, types: Value) -> (String, String) {
    let created = app.post("/api/v1/webhooks", &w.admin, json!({ "url": url, "event_types": types })).await.expect(201);
    (id_of(&created.body), created.body["secret"].as_str().unwrap().to_owned())
}

/// Pretends the retry time has come (backoff is measured in seconds to hours).
async fn make_all_due(app: &TestApp) {
    let mut conn = app.pool().get().await.unwrap();
    diesel::sql_query("UPDATE webhook_deliveries SET next_attempt_at = now() WHERE delivered_at IS NULL")
        .execute(&mut conn)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_gets_signed_cloudevents_including_those_emitted_while_it_was_down() {
    let app = TestApp::spawn().await;
    let w = app.world().await;
    let mut receiver = Receiver::start().await;
    let (_, secret) = subscribe(&app, &w, &receiver.url(), json!(["donation.submitted", "donation.approved"])).await;

    receiver.down().await;
    let created = app
        .post("/api/v1/donations", &w.a.token, usage_right_form(&w.a.site_id, "WH-1", vec![machine("riscv64", "WH-1")]))
        .await
        .expect(201);
    let donation = id_of(&created.body);
    app.post(&format!("/api/v1/donations/{donation}/actions"), &w.admin, json!({ "action": "approve" }))
        .await
        .expect(200);
    let report = deliver_due(&app.state).await.unwrap();
    assert_eq!((report.delivered, report.failed), (0, 2), "{report:?}");

    receiver.up();
    // Not due yet: the failed deliveries back off.
    assert_eq!(deliver_due(&app.state).await.unwrap().delivered, 0);
    make_all_due(&app).await;
    assert_eq!(deliver_due(&app.state).await.unwrap().delivered, 2);

    let received = receiver.all();
    assert_eq!(received.len(), 2);
    for (delivery, expected_type) in
        received.iter().zip(["io.fleetyard.donation.submitted", "io.fleetyard.donation.approved"])
    {
        assert!(delivery.signed_with(&secret), "the signature verifies with the subscriber's secret");
        assert!(!delivery.signed_with("whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"), "and only with it");
        assert_eq!(delivery.content_type, "application/cloudevents+json");
        let event = delivery.json();
        assert_eq!(event["specversion"], "1.0");
        assert_eq!(event["type"], expected_type);
        assert_eq!(event["id"], delivery.id.as_str(), "webhook-id is the event id");
        assert_eq!(event["source"], "/fleetyard");
        assert_eq!(event["subject"], format!("donations/{donation}"));
        assert_eq!(event["datacontenttype"], "application/json");
        assert_eq!(event["data"]["id"], donation);
        assert!((chrono::Utc::now().timestamp() - delivery.timestamp.parse::<i64>().unwrap()).abs() < 60);
    }
    // Delivered once: nothing more is sent.
    make_all_due(&app).await;
    assert_eq!(deliver_due(&app.state).await.unwrap().delivered, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_events_survive_a_server_restart() {
    let app = TestApp::spawn().await;
    let w = app.world().await;
    let mut receiver = Receiver::start().await;
    subscribe(&app, &w, &receiver.url(), json!([])).await;
    receiver.down().await;
    app.post("/api/v1/donations", &w.a.token, usage_right_form(&w.a.site_id, "WH-2", vec![machine("riscv64", "WH-2")]))
        .await
        .expect(201);
    deliver_due(&app.state).await.unwrap();

    // The server goes away; another one, on the same database, takes over.
    let successor = app.replica();
    app.stop().await;
    receiver.up();
    make_all_due(&successor).await;
    assert_eq!(deliver_due(&successor.state).await.unwrap().delivered, 1);
    assert_eq!(receiver.all()[0].json()["type"], "io.fleetyard.donation.submitted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_subscriber_is_retried_with_backoff_then_abandoned_and_ops_can_see_why() {
    let app = TestApp::spawn_with(|c| c.webhook_max_attempts = 2).await;
    let w = app.world().await;
    let mut receiver = Receiver::start().await;
    let (webhook, _) = subscribe(&app, &w, &receiver.url(), json!(["donation.submitted"])).await;
    receiver.down().await;
    app.post("/api/v1/donations", &w.a.token, usage_right_form(&w.a.site_id, "WH-3", vec![machine("riscv64", "WH-3")]))
        .await
        .expect(201);

    assert_eq!(deliver_due(&app.state).await.unwrap().failed, 1);
    let deliveries = app.get(&format!("/api/v1/webhooks/{webhook}/deliveries"), &w.admin).await.expect(200);
    let first = &deliveries.body["items"][0];
    assert_eq!(first["attempts"], 1);
    assert!(first["last_error"].as_str().unwrap().len() > 5);
    let next = first["next_attempt_at"].as_str().unwrap().parse::<chrono::DateTime<chrono::Utc>>().unwrap();
    let wait = next - chrono::Utc::now();
    assert!(
        wait > chrono::Duration::seconds(3) && wait < chrono::Duration::seconds(7),
        "first retry in about 5 s: {wait:?}"
    );

    make_all_due(&app).await;
    assert_eq!(deliver_due(&app.state).await.unwrap().abandoned, 1);
    let deliveries = app.get(&format!("/api/v1/webhooks/{webhook}/deliveries"), &w.admin).await.expect(200);
    assert!(deliveries.body["items"][0]["abandoned_at"].is_string());
    receiver.up();
    make_all_due(&app).await;
    assert_eq!(deliver_due(&app.state).await.unwrap().delivered, 0, "an abandoned delivery stays abandoned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_filter_by_type_can_be_paused_and_never_show_their_secret_again() {
    let app = TestApp::spawn().await;
    let w = app.world().await;
    let receiver = Receiver::start().await;
    let (webhook, secret) = subscribe(&app, &w, &receiver.url(), json!(["machine.ready"])).await;
    assert!(secret.starts_with("whsec_"));
    let listed = app.get("/api/v1/webhooks", &w.admin).await.expect(200);
    assert!(!listed.text.contains(&secret));
    assert_eq!(listed.body["items"][0]["event_types"], json!(["machine.ready"]));

    let board = app.machine_in(&w, machine("riscv64", "WH-4"), "ready").await;
    deliver_due(&app.state).await.unwrap();
    let received = receiver.all();
    assert_eq!(received.len(), 1, "only machine.ready, not the donation events");
    assert_eq!(received[0].json()["data"]["machine_id"], board.id);

    app.patch(&format!("/api/v1/webhooks/{webhook}"), &w.admin, json!({ "active": false })).await.expect(200);
    app.machine_in(&w, machine("riscv64", "WH-5"), "ready").await;
    deliver_due(&app.state).await.unwrap();
    assert_eq!(receiver.all().len(), 1, "a paused subscription gets nothing");

    for (body, field) in [
        (json!({ "url": "ftp://x.example" }), "url"),
        (json!({ "url": "https://x.example", "event_types": ["machine.exploded"] }), "event_types[0]"),
    ] {
        let refused = app.post("/api/v1/webhooks", &w.admin, body).await.expect(422);
        assert_eq!(refused.fields(), [field]);
    }
    app.delete(&format!("/api/v1/webhooks/{webhook}"), &w.admin).await.expect(204);
    app.get(&format!("/api/v1/webhooks/{webhook}/deliveries"), &w.admin).await.expect(404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_delivering_at_once_send_each_event_once() {
    let app = TestApp::spawn().await;
    let w = app.world().await;
    let receiver = Receiver::start().await;
    subscribe(&app, &w, &receiver.url(), json!(["donation.submitted"])).await;
    for i in 0..40 {
        let form = usage_right_form(&w.a.site_id, &format!("WH-R{i}"), vec![machine("riscv64", &format!("WH-R{i}"))]);
        app.post("/api/v1/donations", &w.a.token, form).await.expect(201);
    }
    let replica = app.replica();
    let (first, second) = tokio::join!(deliver_due(&app.state), deliver_due(&replica.state));
    assert_eq!(first.unwrap().delivered + second.unwrap().delivered, 40);
    let mut ids: Vec<String> = receiver.all().into_iter().map(|r| r.id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 40, "each event exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_events_and_finished_deliveries_are_pruned_but_undelivered_ones_are_kept() {
    let app = TestApp::spawn().await;
    let w = app.world().await;
    let receiver = Receiver::start().await;
    let mut broken = Receiver::start().await;
    broken.down().await;
    subscribe(&app, &w, &receiver.url(), json!(["donation.submitted"])).await;
    subscribe(&app, &w, &broken.url(), json!(["donation.approved"])).await;
    let form = usage_right_form(&w.a.site_id, "WH-9", vec![machine("riscv64", "WH-9")]);
    let donation = id_of(&app.post("/api/v1/donations", &w.a.token, form).await.expect(201).body);
    app.post(&format!("/api/v1/donations/{donation}/actions"), &w.admin, json!({ "action": "approve" }))
        .await
        .expect(200);
    let report = deliver_due(&app.state).await.unwrap();
    assert_eq!((report.delivered, report.failed), (1, 1), "{report:?}");
    let all_events = app.event_types(&w).await.len();

    // Fresh rows stay.
    let report = fleetyard::schedules::outbox_retention::prune(&app.state).await.unwrap();
    assert_eq!((report.deliveries_deleted, report.events_deleted), (0, 0));

    // Months later.
    let mut conn = app.pool().get().await.unwrap();
    for statement in [
        "UPDATE events SET time = time - interval '100 days'",
        "UPDATE webhook_deliveries SET delivered_at = delivered_at - interval '31 days' WHERE delivered_at IS NOT NULL",
    ] {
        diesel::sql_query(statement).execute(&mut conn).await.unwrap();
    }
    let report = fleetyard::schedules::outbox_retention::prune(&app.state).await.unwrap();
    assert_eq!(report.deliveries_deleted, 1);
    assert_eq!(report.events_deleted, all_events - 1);
    assert_eq!(app.event_types(&w).await, ["donation.approved"], "still owed to a subscriber");
}
