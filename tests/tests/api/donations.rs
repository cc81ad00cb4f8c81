//! The donation form and donation-level actions, for each of the three models.

use fleetyard_tests::TestApp;
use fleetyard_tests::fixtures::{id_of, lab_form, machine, usage_right_form};
use serde_json::{Value, json};

fn lifecycles(detail: &Value) -> Vec<String> {
    detail["machines"].as_array().unwrap().iter().map(|m| m["lifecycle"].as_str().unwrap().to_owned()).collect()
}

async fn act(
    app: &TestApp,
    token: &str,
    donation: &str,
    action: &str,
    note: Option<&str>,
) -> fleetyard_tests::Response {
    app.post(&format!("/api/v1/donations/{donation}/actions"), token, json!({ "action": action, "note": note })).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_donor_registers_riscv_boards_and_ops_approve_them() {
    let app = TestApp::spawn().await;
    let w = app.world().await;
    let form = usage_right_form(
        &w.a.site_id,
        "PLUM-2026-001",
        vec![machine("riscv64", "PLUM-RV-1"), machine("riscv64", "PLUM-RV-2"), machine("riscv64", "PLUM-RV-3")],
    );
    let created = app.post("/api/v1/donations", &w.a.token, form).await.expect(201);
    let body = &created.body;
    assert_eq!(body["status"], "submitted");
    assert_eq!(body["donor_id"], w.a.id);
    assert_eq!(body["submitted_by"], w.a.user_id);
    assert_eq!(lifecycles(body), ["pending_review"; 3]);
    // The policy's windows are read in the donor's time zone unless the form says otherwise.
    assert_eq!(body["usage_policy"]["time_zone"], "Asia/Shanghai");
    assert_eq!(body["allowed_actions"], json!(["withdraw"]));
    assert!(body["machines"][0]["lifecycle_deadline"].is_string(), "review has a deadline");
    let id = id_of(body);

    let approved = act(&app, &w.admin, &id, "approve", Some("welcome aboard")).await.expect(200);
    assert_eq!(approved.body["status"], "approved");
    assert_eq!(approved.body["review_note"], "welcome aboard");
    assert_eq!(approved.body["reviewed_by"], w.admin_id);
    assert_eq!(lifecycles(&approved.body), ["approved"; 3]);

    // The donor sees the outcome and what it may do next.
    let seen = app.get(&format!("/api/v1/donations/{id}"), &w.a.token).await.expect(200);
    assert_eq!(seen.body["allowed_actions"], json!(["withdraw", "pause"]));
    // A donor cannot review its own donation: the action is not open to it.
    let refused = act(&app, &w.b.token, &id, "approve", None).await.expect(404);
    assert_eq!(refused.code(), "donation-not-found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejection_needs_a_reason_and_rejects_every_machine() {
    let app = TestApp::spawn().await;
    let w = app.world().await;
    let created = app
        .post(
            "/api/v1/donations",
            &w.a.token,
            usage_right_form(&w.a.site_id, "R-1", vec![machine("riscv64", "R-1"), machine("riscv64", "R-2")]),
        )
        .await
        .expect(201);
    let id = id_of(&created.body);
    let no_reason = act(&app, &w.admin, &id, "reject", None).await.expect(422);
    assert_eq!(no_reason.fields(), ["note"]);
    let rejected = act(&app, &w.admin, &id, "reject", Some("boards too old for the CI gate")).await.expect(200);
    assert_eq!(rejected.body["status"], "rejected");
    assert_eq!(rejected.body["review_note"], "boards too old for the CI gate");
    assert_eq!(lifecycles(&rejected.body), ["rejected"; 2]);
    assert_eq!(rejected.body["allowed_actions"], json!([]));
    let again = act(&app, &w.admin, &id, "approve", None).await.expect(409);
    assert_eq!(again.code(), "invalid-action");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pausing_a_usage_right_donation_takes_its_machines_out_and_resuming_brings_them_back() {
    let app = TestApp::spawn().await;
    let w = app.world().await;
    let created = app
        .post(
            "/api/v1/donations",
            &w.a.token,
            usage_right_form(&w.a.site_id, "P-1", vec![machine("riscv64", "P-1"), machine("riscv64", "P-2")]),
        )
        .await
        .expect(201);
    let id = id_of(&created.body);
    let machines: Vec<String> = created.body["machines"].as_array().unwrap().iter().map(id_of).collect();
    act(&app, &w.admin, &id, "approve", None).await.expect(200);
    // Bring one machine to ready; leave the other onboarding.
    for (machine, to) in [(&machines[0], "onboarding"), (&machines[0], "ready"), (&machines[1], "onboarding")] {
        app.post(&format!("/api/v1/machines/{machine}/transitions"), &w.admin, json!({ "to": to })).await.expect(200);
    }

    let paused = act(&app, &w.a.token, &id, "pause", Some("need them for a release")).await.expect(200);
    assert_eq!(paused.body["status"], "paused");
    assert_eq!(lifecycles(&paused.body), ["paused_by_donor", "onboarding"]);
    // While paused, nothing enters the pool.
    let blocked = app
        .post(&format!("/api/v1/machines/{}/transitions", machines[1]), &w.admin, json!({ "to": "ready" }))
        .await
        .expect(409);
    assert!(!blocked.body["details"]["allowed"].as_array().unwrap().contains(&json!("ready")));

    let resumed = act(&app, &w.a.token, &id, "resume", None).await.expect(200);
    assert_eq!(resumed.body["status"], "approved");
    assert_eq!(lifecycles(&resumed.body), ["ready", "onboarding"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_donor_withdraws_a_usage_right_donation_and_every_machine_leaves() {
    let app = TestApp::spawn().await;
    let w = app.world().await;
    let created = app
        .post(
            "/api/v1/donations",
            &w.a.token,
            usage_right_form(&w.a.site_id, "W-1", vec![machine("riscv64", "W-1"), machine("loongarch64", "W-2")]),
        )
        .await
        .expect(201);
    let id = id_of(&created.body);
    act(&app, &w.admin, &id, "approve", None).await.expect(200);
    let withdrawn = act(&app, &w.a.token, &id, "withdraw", Some("moving the lab")).await.expect(200);
    assert_eq!(withdrawn.body["status"], "withdrawn");
    assert_eq!(lifecycles(&withdrawn.body), ["withdrawn"; 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_register_a_loan_for_a_donor_and_its_end_returns_the_machines() {
    let app = TestApp::spawn().await;
    let w = app.world().await;
    let mut form = lab_form(
        "loan",
        &w.lab_site,
        "DFC-LOAN-1",
        vec![machine("loongarch64", "LA-1"), machine("loongarch64", "LA-2")],
    );
    // Ops must say for whom.
    app.post("/api/v1/donations", &w.admin, form.clone()).await.expect(422);
    form["donor_id"] = json!(w.b.id);
    let created = app.post("/api/v1/donations", &w.admin, form).await.expect(201);
    assert_eq!(created.body["ends_on"], "2027-06-30");
    assert_eq!(created.body["usage_policy"], Value::Null);
    let id = id_of(&created.body);
    // The donor sees the loan registered for it; a lab loan cannot be paused.
    let seen = app.get(&format!("/api/v1/donations/{id}"), &w.b.token).await.expect(200);
    assert_eq!(seen.body["allowed_actions"], json!(["withdraw"]));
    act(&app, &w.admin, &id, "approve", None).await.expect(200);
    let pause = act(&app, &w.b.token, &id, "pause", None).await.expect(409);
    assert!(pause.body["message"].as_str().unwrap().contains("cannot pause a loan donation"));

    let returned = act(&app, &w.admin, &id, "return", Some("loan term over")).await.expect(200);
    assert_eq!(returned.body["status"], "returned");
    assert_eq!(lifecycles(&returned.body), ["returned_to_donor"; 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_model_puts_its_machines_at_the_right_kind_of_site() {
    let app = TestApp::spawn().await;
    let w = app.world().await;
    // Usage right at the foundation's lab: wrong kind of site.
    let wrong = app
        .post("/api/v1/donations", &w.a.token, usage_right_form(&w.lab_site, "S-1", vec![machine("riscv64", "S-1")]))
        .await
        .expect(422);
    assert_eq!(wrong.fields(), ["site_id"]);
    assert!(wrong.text.contains("donor_site"));
    // Usage right at another donor's site: as if it did not exist.
    let other = app
        .post("/api/v1/donations", &w.a.token, usage_right_form(&w.b.site_id, "S-2", vec![machine("riscv64", "S-2")]))
        .await
        .expect(422);
    assert!(other.text.contains("no such site"));
    // Ownership at a donor's site: wrong kind.
    let owned = app
        .post(
            "/api/v1/donations",
            &w.a.token,
            lab_form("ownership", &w.a.site_id, "S-3", vec![machine("x86_64", "S-3")]),
        )
        .await
        .expect(422);
    assert_eq!(owned.fields(), ["site_id"]);
    // Ownership in the lab: fine.
    app.post(
        "/api/v1/donations",
        &w.a.token,
        lab_form("ownership", &w.lab_site, "S-4", vec![machine("x86_64", "S-4")]),
    )
    .await
    .expect(201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_donor_changes_its_usage_policy_and_the_change_is_audited() {
    let app = TestApp::spawn().await;
    let w = app.world().await;
    let created = app
        .post("/api/v1/donations", &w.a.token, usage_right_form(&w.a.site_id, "U-1", vec![machine("riscv64", "U-1")]))
        .await
        .expect(201);
    let id = id_of(&created.body);
    let policy = json!({
        "purposes": ["build", "ci"],
        "windows": [{ "days": ["mon", "tue", "wed", "thu", "fri"], "start": "20:00", "end": "08:00" }],
        "max_concurrent_leases": 3, "max_lease_minutes": 120
    });
    let updated = app.put(&format!("/api/v1/donations/{id}/usage-policy"), &w.a.token, policy).await.expect(200);
    assert_eq!(updated.body["usage_policy"]["max_concurrent_leases"], 3);
    assert_eq!(updated.body["usage_policy"]["time_zone"], "Asia/Shanghai", "the zone is kept");
    let trail = app
        .get(&format!("/api/v1/audit?entity_id={id}&action=donation.usage_policy_changed"), &w.a.token)
        .await
        .expect(200);
    let entry = &trail.body["items"][0];
    assert_eq!(entry["before"]["usage_policy"]["max_concurrent_leases"], 2);
    assert_eq!(entry["after"]["usage_policy"]["max_concurrent_leases"], 3);

    let owned = app
        .post(
            "/api/v1/donations",
            &w.a.token,
            lab_form("ownership", &w.lab_site, "U-2", vec![machine("x86_64", "U-2")]),
        )
        .await
        .expect(201);
    let refused = app
        .put(
            &format!("/api/v1/donations/{}/usage-policy", id_of(&owned.body)),
            &w.a.token,
            json!({ "purposes": ["ci"], "max_concurrent_leases": 1, "max_lease_minutes": 5 }),
        )
        .await
        .expect(409);
    assert_eq!(refused.code(), "no-usage-policy");
}
