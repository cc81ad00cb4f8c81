//! Machine-level lifecycle transitions through the API.

use fleetyard_tests::TestApp;
use fleetyard_tests::fixtures::{World, id_of, lab_form, machine, usage_right_form};
use serde_json::json;

/// An approved donation of `model` with one machine; returns the machine id.
async fn approved_machine(app: &TestApp, w: &World, model: &str) -> String {
    let form = if model == "usage_right" {
        usage_right_form(&w.a.site_id, "L-1", vec![machine("riscv64", "L-1")])
    } else {
        lab_form(model, &w.lab_site, "L-1", vec![machine("loongarch64", "L-1")])
    };
    let created = app.post("/api/v1/donations", &w.a.token, form).await.expect(201);
    app.post(&format!("/api/v1/donations/{}/actions", id_of(&created.body)), &w.admin, json!({ "action": "approve" }))
        .await
        .expect(200);
    id_of(&created.body["machines"][0])
}

async fn go(app: &TestApp, token: &str, machine: &str, body: serde_json::Value) -> fleetyard_tests::Response {
    app.post(&format!("/api/v1/machines/{machine}/transitions"), token, body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loaned_server_is_shipped_racked_onboarded_and_made_ready() {
    let app = TestApp::spawn().await;
    let w = app.world().await;
    let m = approved_machine(&app, &w, "loan").await;

    let shipped = go(&app, &w.admin, &m, json!({ "to": "in_transit", "note": "SF Express 1234" })).await.expect(200);
    assert_eq!(shipped.body["lifecycle"], "in_transit");
    assert!(shipped.body["lifecycle_deadline"].is_string());
    assert_eq!(shipped.body["allowed_transitions"], json!(["received", "returned_to_donor"]));

    // Receiving records where the machine sits.
    let unplaced = go(&app, &w.admin, &m, json!({ "to": "received" })).await.expect(422);
    assert_eq!(unplaced.fields(), ["location"]);
    let received = go(&app, &w.admin, &m, json!({ "to": "received", "location": { "rack": "B3", "slot": "U12" } }))
        .await
        .expect(200);
    assert_eq!(received.body["location"], json!({ "rack": "B3", "slot": "U12" }));

    go(&app, &w.admin, &m, json!({ "to": "onboarding" })).await.expect(200);
    let ready = go(&app, &w.admin, &m, json!({ "to": "ready" })).await.expect(200);
    assert_eq!(ready.body["lifecycle"], "ready");
    assert_eq!(ready.body["lifecycle_deadline"], json!(null), "a settled state has no deadline");
    assert_eq!(ready.body["location"]["rack"], "B3", "the location stays");

    // The note is in the audit trail.
    let trail =
        app.get(&format!("/api/v1/audit?entity_id={m}&action=machine.lifecycle_changed"), &w.admin).await.expect(200);
    let notes: Vec<_> = trail.body["items"].as_array().unwrap().iter().map(|e| e["note"].clone()).collect();
    assert!(notes.contains(&json!("SF Express 1234")));
    assert_eq!(trail.body["items"].as_array().unwrap().len(), 5, "approved, in transit, received, onboarding, ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_transition_is_a_409_that_names_the_allowed_next_states() {
    let app = TestApp::spawn().await;
    let w = app.world().await;
    let m = approved_machine(&app, &w, "usage_right").await;
    let before = app.row_counts().await;
    let refused = go(&app, &w.admin, &m, json!({ "to": "in_transit" })).await.expect(409);
    assert_eq!(refused.code(), "invalid-transition");
    assert_eq!(refused.body["details"]["from"], "approved");
    assert_eq!(refused.body["details"]["allowed"], json!(["onboarding", "withdrawn"]));
    assert!(refused.body["message"].as_str().unwrap().contains("allowed next states: onboarding, withdrawn"));
    assert_eq!(app.row_counts().await, before, "a refused transition writes nothing");
    let unknown = go(&app, &w.admin, &m, json!({ "to": "sold" })).await.expect(422);
    assert_eq!(unknown.fields(), ["to"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_takes_a_machine_out_and_brings_it_back() {
    let app = TestApp::spawn().await;
    let w = app.world().await;
    let m = approved_machine(&app, &w, "ownership").await;
    for to in ["in_transit"] {
        go(&app, &w.admin, &m, json!({ "to": to })).await.expect(200);
    }
    go(&app, &w.admin, &m, json!({ "to": "received", "location": { "rack": "A1", "slot": "U1" } })).await.expect(200);
    go(&app, &w.admin, &m, json!({ "to": "onboarding" })).await.expect(200);
    go(&app, &w.admin, &m, json!({ "to": "ready" })).await.expect(200);

    let no_reason = app.put(&format!("/api/v1/machines/{m}/maintenance"), &w.admin, json!({})).await.expect(422);
    assert_eq!(no_reason.fields(), ["reason"]);
    let on = app
        .put(&format!("/api/v1/machines/{m}/maintenance"), &w.admin, json!({ "reason": "replace fan" }))
        .await
        .expect(200);
    assert_eq!(on.body["lifecycle"], "maintenance");
    assert_eq!(on.body["maintenance_reason"], "replace fan");
    let off = app.delete(&format!("/api/v1/machines/{m}/maintenance"), &w.admin).await.expect(200);
    assert_eq!(off.body["lifecycle"], "ready");
    assert_eq!(off.body["maintenance_reason"], json!(null));
    let again = app.delete(&format!("/api/v1/machines/{m}/maintenance"), &w.admin).await.expect(409);
    assert!(again.body["message"].as_str().unwrap().contains("not `maintenance`"));
    // Ownership ends with retirement.
    let retired = go(&app, &w.admin, &m, json!({ "to": "retired", "note": "end of life" })).await.expect(200);
    assert_eq!(retired.body["allowed_transitions"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_donor_pauses_its_own_board_but_cannot_put_it_in_service() {
    let app = TestApp::spawn().await;
    let w = app.world().await;
    let m = approved_machine(&app, &w, "usage_right").await;
    let not_yours = go(&app, &w.a.token, &m, json!({ "to": "onboarding" })).await.expect(409);
    assert_eq!(not_yours.body["details"]["allowed"], json!(["withdrawn"]));
    go(&app, &w.admin, &m, json!({ "to": "onboarding" })).await.expect(200);
    go(&app, &w.admin, &m, json!({ "to": "ready" })).await.expect(200);
    let paused =
        go(&app, &w.a.token, &m, json!({ "to": "paused_by_donor", "note": "firmware update" })).await.expect(200);
    assert_eq!(paused.body["allowed_transitions"], json!(["ready", "withdrawn"]));
    go(&app, &w.a.token, &m, json!({ "to": "ready" })).await.expect(200);
    // Another donor cannot even see it.
    go(&app, &w.b.token, &m, json!({ "to": "paused_by_donor" })).await.expect(404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_simultaneous_transitions_of_one_machine_cannot_both_win() {
    let app = TestApp::spawn().await;
    let w = app.world().await;
    let m = approved_machine(&app, &w, "loan").await;
    let path = format!("/api/v1/machines/{m}/transitions");
    let (first, second) = tokio::join!(
        app.post(&path, &w.admin, json!({ "to": "in_transit" })),
        app.post(&path, &w.admin, json!({ "to": "in_transit" })),
    );
    let mut statuses = [first.status, second.status];
    statuses.sort();
    assert_eq!(statuses, [200, 409], "{} / {}", first.text, second.text);
}
