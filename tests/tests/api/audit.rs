//! The audit log: every change, with who, what, before and after; append-only.

use diesel_async::RunQueryDsl;
use fleetyard_tests::TestApp;
use fleetyard_tests::fixtures::{id_of, machine, usage_right_form};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_tells_the_story_of_a_donation() {
    let app = TestApp::spawn().await;
    let w = app.world().await;
    let created = app
        .post("/api/v1/donations", &w.a.token, usage_right_form(&w.a.site_id, "A-1", vec![machine("riscv64", "A-1")]))
        .await
        .expect(201);
    let donation = id_of(&created.body);
    let board = id_of(&created.body["machines"][0]);
    app.post(&format!("/api/v1/donations/{donation}/actions"), &w.admin, json!({ "action": "approve", "note": "ok" }))
        .await
        .expect(200);
    app.post(&format!("/api/v1/machines/{board}/transitions"), &w.admin, json!({ "to": "onboarding" }))
        .await
        .expect(200);
    app.patch(&format!("/api/v1/machines/{board}/labels"), &w.a.token, json!({ "set": { "firmware": "2.1" } }))
        .await
        .expect(200);

    let trail = app.get(&format!("/api/v1/audit?donor_id={}", w.a.id), &w.admin).await.expect(200);
    let actions: Vec<&str> =
        trail.body["items"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    // Newest first; a donation's approval and its machines' moves commit together.
    assert_eq!(
        &actions[..6],
        [
            "machine.labels_changed",
            "machine.lifecycle_changed",
            "donation.approved",
            "machine.lifecycle_changed",
            "machine.registered",
            "donation.submitted",
        ]
    );

    let approval = &trail.body["items"][2];
    assert_eq!(approval["actor_kind"], "user");
    assert_eq!(approval["actor_id"], w.admin_id);
    assert_eq!(approval["entity_id"], donation);
    assert_eq!(approval["note"], "ok");
    assert_eq!(approval["before"]["status"], "submitted");
    assert_eq!(approval["after"]["status"], "approved");
    let submission = &trail.body["items"][5];
    assert_eq!(submission["actor_id"], w.a.user_id);
    assert_eq!(submission["before"], json!(null));
    let labels = &trail.body["items"][0];
    assert_eq!(labels["before"]["labels"], json!({ "board": "test-board" }));
    assert_eq!(labels["after"]["labels"], json!({ "board": "test-board", "firmware": "2.1" }));
    // The approval and the machine's move share the transaction's timestamp.
    assert_eq!(trail.body["items"][2]["at"], trail.body["items"][3]["at"]);

    // Filters.
    let by_entity =
        app.get(&format!("/api/v1/audit?entity_type=machine&entity_id={board}"), &w.a.token).await.expect(200);
    assert_eq!(by_entity.body["items"].as_array().unwrap().len(), 4);
    let by_actor =
        app.get(&format!("/api/v1/audit?actor_id={}&donor_id={}", w.a.user_id, w.a.id), &w.admin).await.expect(200);
    assert_eq!(by_actor.body["items"].as_array().unwrap().len(), 3, "submitted, registered, labels");
    let future = app.get("/api/v1/audit?since=2100-01-01T00:00:00Z", &w.admin).await.expect(200);
    assert_eq!(future.body["items"], json!([]));
    let past = app.get("/api/v1/audit?until=2000-01-01T00:00:00Z", &w.admin).await.expect(200);
    assert_eq!(past.body["items"], json!([]));
    let bad_time = app.get("/api/v1/audit?since=yesterday", &w.admin).await.expect(422);
    assert_eq!(bad_time.fields(), ["since"]);
    // Pages of the newest-first list.
    let first = app.get("/api/v1/audit?limit=2", &w.admin).await.expect(200);
    let cursor = first.body["next_cursor"].as_str().unwrap();
    let second = app.get(&format!("/api/v1/audit?limit=2&cursor={cursor}"), &w.admin).await.expect(200);
    assert!(first.body["items"][1]["id"].as_i64() > second.body["items"][0]["id"].as_i64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_cannot_be_changed_or_emptied() {
    let app = TestApp::spawn().await;
    app.world().await;
    let mut conn = app.pool().get().await.unwrap();
    for statement in ["UPDATE audit_log SET actor_name = 'nobody'", "DELETE FROM audit_log", "TRUNCATE audit_log"] {
        let refused = diesel::sql_query(statement).execute(&mut conn).await.unwrap_err();
        assert!(refused.to_string().contains("append-only"), "{statement}: {refused}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_change_leaves_an_entry() {
    let app = TestApp::spawn().await;
    let w = app.world().await;
    app.patch(&format!("/api/v1/donors/{}", w.a.id), &w.a.token, json!({ "website": "https://plumtree.example" }))
        .await
        .expect(200);
    app.patch(&format!("/api/v1/sites/{}", w.a.site_id), &w.a.token, json!({ "address": "Hangzhou" }))
        .await
        .expect(200);
    app.patch(&format!("/api/v1/users/{}", w.b.user_id), &w.admin, json!({ "disabled": true })).await.expect(200);
    app.post(&format!("/api/v1/service-tokens/{}/revoke", w.ci_token_id), &w.admin, json!({})).await.expect(200);
    let trail = app.get("/api/v1/audit?limit=200", &w.admin).await.expect(200);
    let mut actions: Vec<&str> =
        trail.body["items"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    actions.sort();
    actions.dedup();
    assert_eq!(
        actions,
        [
            "donor.created",
            "donor.updated",
            "service_token.issued",
            "service_token.revoked",
            "site.created",
            "site.updated",
            "user.created",
            "user.updated",
        ]
    );
    // Secrets never reach the log.
    assert!(!trail.text.contains(&w.ci));
    assert!(!trail.text.contains("password"));
}
