//! Bad input: a clear 4xx naming the field and the problem, and nothing written.

use fleetyard_tests::TestApp;
use fleetyard_tests::fixtures::{World, id_of, machine, usage_right_form};
use reqwest::Method;
use serde_json::{Value, json};

/// `form` with `edit` applied to it.
fn with(mut form: Value, edit: impl FnOnce(&mut Value)) -> Value {
    edit(&mut form);
    form
}

fn good_form(w: &World) -> Value {
    usage_right_form(&w.a.site_id, "V-1", vec![machine("riscv64", "V-1"), machine("riscv64", "V-2")])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_donation_form_is_refused_naming_each_field_and_writes_nothing() {
    let app = TestApp::spawn().await;
    let w = app.world().await;
    // One registration first, so duplicates against the inventory can be tried.
    app.post(
        "/api/v1/donations",
        &w.a.token,
        usage_right_form(&w.a.site_id, "EXISTING", vec![machine("riscv64", "TAKEN-1")]),
    )
    .await
    .expect(201);
    let good = good_form(&w);

    #[rustfmt::skip]
    let cases: Vec<(&str, Value, u16, &str, Vec<&str>)> = vec![
        ("unknown architecture", with(good.clone(), |f| f["machines"][1]["arch"] = json!("sparc64")), 422, "validation-failed", vec!["machines[1].arch"]),
        ("unknown model", with(good.clone(), |f| f["model"] = json!("gift")), 422, "validation-failed", vec!["model"]),
        ("unknown field", with(good.clone(), |f| f["machines"][0]["colour"] = json!("red")), 422, "validation-failed", vec!["machines[0].colour"]),
        ("missing field", with(good.clone(), |f| { f["machines"][0].as_object_mut().unwrap().remove("cpu_model"); }), 422, "validation-failed", vec!["machines[0].cpu_model"]),
        ("wrong type", with(good.clone(), |f| f["machines"][0]["cpu_cores"] = json!("eight")), 422, "validation-failed", vec!["machines[0].cpu_cores"]),
        ("negative sizes", with(good.clone(), |f| { f["machines"][0]["memory_mib"] = json!(-1); f["machines"][1]["disk_gib"] = json!(0); }), 422, "validation-failed", vec!["machines[0].memory_mib", "machines[1].disk_gib"]),
        ("invalid date", with(good.clone(), |f| f["starts_on"] = json!("2026-02-30")), 422, "validation-failed", vec!["starts_on"]),
        ("end before start", with(good.clone(), |f| f["ends_on"] = json!("2025-01-01")), 422, "validation-failed", vec!["ends_on"]),
        ("invalid hostname", with(good.clone(), |f| f["machines"][0]["hostname"] = json!("bad_host!")), 422, "validation-failed", vec!["machines[0].hostname"]),
        ("invalid ssh endpoint", with(good.clone(), |f| f["machines"][0]["ssh"] = json!({ "host": "-x", "port": 70000, "user": "root user" })), 422, "validation-failed", vec!["machines[0].ssh.host", "machines[0].ssh.port", "machines[0].ssh.user"]),
        ("bad label", with(good.clone(), |f| f["machines"][0]["labels"] = json!({ "bad key": "v" })), 422, "validation-failed", vec!["machines[0].labels.bad key"]),
        ("duplicate tags in the form", with(good.clone(), |f| f["machines"][1]["asset_tag"] = json!("v-1")), 422, "validation-failed", vec!["machines[1].asset_tag"]),
        ("tag already in the inventory", with(good.clone(), |f| f["machines"][1]["asset_tag"] = json!("taken-1")), 409, "asset-tag-taken", vec!["machines[1].asset_tag"]),
        ("reused agreement reference", with(good.clone(), |f| f["agreement_ref"] = json!("existing")), 409, "agreement-ref-taken", vec!["agreement_ref"]),
        ("no machines", with(good.clone(), |f| f["machines"] = json!([])), 422, "validation-failed", vec!["machines"]),
        ("policy missing", with(good.clone(), |f| { f.as_object_mut().unwrap().remove("usage_policy"); }), 422, "validation-failed", vec!["usage_policy"]),
        ("bad policy", with(good.clone(), |f| f["usage_policy"] = json!({
            "purposes": [], "time_zone": "Mars/Olympus", "windows": [{ "days": ["mon"], "start": "25:00", "end": "08:00" }],
            "max_concurrent_leases": 1, "max_lease_minutes": 60 })), 422, "validation-failed", vec!["usage_policy.windows[0].start"]),
        ("policy limits", with(good.clone(), |f| { f["usage_policy"]["max_concurrent_leases"] = json!(0); f["usage_policy"]["purposes"] = json!([]); f["usage_policy"]["time_zone"] = json!("Mars/Olympus"); }),
            422, "validation-failed", vec!["usage_policy.purposes", "usage_policy.time_zone", "usage_policy.max_concurrent_leases"]),
        ("unknown site", with(good.clone(), |f| f["site_id"] = json!(uuid::Uuid::now_v7())), 422, "validation-failed", vec!["site_id"]),
        ("not a uuid", with(good.clone(), |f| f["site_id"] = json!("site-1")), 422, "validation-failed", vec!["site_id"]),
    ];

    let before = app.row_counts().await;
    for (what, body, status, code, fields) in cases {
        let response = app.post("/api/v1/donations", &w.a.token, body).await;
        assert_eq!(response.status, status, "{what}: {}", response.text);
        assert_eq!(response.code(), code, "{what}: {}", response.text);
        assert_eq!(response.fields(), fields, "{what}: {}", response.text);
        for field in &fields {
            assert!(response.body["message"].as_str().unwrap().contains(field), "{what}: the message names {field}");
        }
    }
    assert_eq!(app.row_counts().await, before, "refused requests wrote nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_bodies_are_refused_before_anything_else() {
    let app = TestApp::spawn_with(|config| config.max_body_bytes = 4096).await;
    let w = app.world().await;
    let before = app.row_counts().await;
    let malformed = app
        .request_raw(Method::POST, "/api/v1/donations", Some(&w.a.token), "application/json", b"{\"model\": ".to_vec())
        .await
        .expect(400);
    assert_eq!(malformed.code(), "malformed-json");
    let empty = app
        .request_raw(Method::POST, "/api/v1/donations", Some(&w.a.token), "application/json", Vec::new())
        .await
        .expect(400);
    assert!(empty.body["message"].as_str().unwrap().contains("empty"));
    let form = app
        .request_raw(
            Method::POST,
            "/api/v1/donations",
            Some(&w.a.token),
            "application/x-www-form-urlencoded",
            b"model=loan".to_vec(),
        )
        .await
        .expect(415);
    assert_eq!(form.code(), "unsupported-media-type");
    let huge = serde_json::to_vec(&usage_right_form(&w.a.site_id, &"x".repeat(8000), vec![machine("riscv64", "H-1")]))
        .unwrap();
    let too_large = app
        .request_raw(Method::POST, "/api/v1/donations", Some(&w.a.token), "application/json", huge)
        .await
        .expect(413);
    assert_eq!(too_large.code(), "body-too-large");
    let bad_id = app.get("/api/v1/machines/not-a-uuid", &w.admin).await.expect(422);
    assert_eq!(bad_id.fields(), ["id"]);
    assert_eq!(app.row_counts().await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_donors_sites_users_and_labels_are_refused_naming_the_field() {
    let app = TestApp::spawn().await;
    let w = app.world().await;
    let created = app.post("/api/v1/donations", &w.a.token, good_form(&w)).await.expect(201);
    let board = id_of(&created.body["machines"][0]);
    let before = app.row_counts().await;

    #[rustfmt::skip]
    let cases: Vec<(Method, String, Value, u16, Vec<&str>)> = vec![
        (Method::POST, "/api/v1/donors".into(), json!({ "name": " ", "kind": "company", "time_zone": "Asia/Nowhere", "website": "ftp://x", "contacts": [{ "name": "A", "email": "not-an-email" }] }),
            422, vec!["name", "website", "time_zone", "contacts[0].email"]),
        (Method::POST, "/api/v1/donors".into(), json!({ "name": "Plumtree Semiconductor", "kind": "company", "time_zone": "UTC" }), 409, vec![]),
        (Method::POST, "/api/v1/donors".into(), json!({ "name": "X", "kind": "charity", "time_zone": "UTC" }), 422, vec!["kind"]),
        (Method::PATCH, format!("/api/v1/donors/{}", w.a.id), json!({ "time_zone": "Moon/Base" }), 422, vec!["time_zone"]),
        (Method::POST, "/api/v1/sites".into(), json!({ "name": "C", "kind": "cloud_region", "time_zone": "UTC" }), 422, vec!["cloud_provider", "cloud_region"]),
        (Method::POST, "/api/v1/sites".into(), json!({ "name": "D", "kind": "foundation_lab", "time_zone": "UTC", "country": "China" }), 422, vec!["country"]),
        (Method::POST, "/api/v1/sites".into(), json!({ "name": "Foundation Lab", "kind": "foundation_lab", "time_zone": "UTC" }), 409, vec![]),
        (Method::POST, "/api/v1/users".into(), json!({ "email": "x@", "display_name": "X", "password": "short", "role": "donor" }), 422, vec!["email", "password", "donor_id"]),
        (Method::POST, "/api/v1/users".into(), json!({ "email": "ci@example.org", "display_name": "X", "password": "long enough password", "role": "ci" }), 422, vec!["role"]),
        (Method::POST, "/api/v1/users".into(), json!({ "email": "STAFF@plumtreesemiconductor.example", "display_name": "X", "password": "long enough password", "role": "donor", "donor_id": w.a.id }), 409, vec![]),
        (Method::POST, "/api/v1/service-tokens".into(), json!({ "name": "", "expires_in_days": 0 }), 422, vec!["name", "expires_in_days", "tenants"]),
        (Method::PATCH, format!("/api/v1/machines/{board}/labels"), json!({ "set": { "-x": "v" } }), 422, vec!["set.-x"]),
        (Method::PATCH, format!("/api/v1/machines/{board}/labels"), json!({ "set": { "k": "v" }, "remove": ["k"] }), 422, vec!["remove[0]"]),
        (Method::POST, format!("/api/v1/machines/{board}/transitions"), json!({ "to": "approved", "location": { "rack": "A", "slot": "1" } }), 422, vec!["location"]),
    ];
    for (method, path, body, status, fields) in cases {
        let response = app.request(method.clone(), &path, Some(&w.admin), Some(&body)).await;
        assert_eq!(response.status, status, "{method} {path} {body}: {}", response.text);
        assert_eq!(response.fields(), fields, "{method} {path} {body}: {}", response.text);
    }
    assert_eq!(app.row_counts().await, before, "refused requests wrote nothing");
}
