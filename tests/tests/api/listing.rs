//! Keyset pagination and the list filters.

use std::collections::HashSet;

use diesel_async::RunQueryDsl;
use fleetyard_tests::TestApp;
use fleetyard_tests::fixtures::{id_of, lab_form, machine, usage_right_form};
use serde_json::{Value, json};

fn ids(page: &Value) -> Vec<String> {
    page["items"].as_array().unwrap().iter().map(id_of).collect()
}

/// Follows `next_cursor` from `path` to the end, `limit` at a time.
async fn all_pages(app: &TestApp, token: &str, path: &str, limit: usize) -> Vec<Vec<String>> {
    let separator = if path.contains('?') { '&' } else { '?' };
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{path}{separator}limit={limit}");
        if let Some(cursor) = &cursor {
            url.push_str(&format!("&cursor={cursor}"));
        }
        let page = app.get(&url, token).await.expect(200);
        pages.push(ids(&page.body));
        match page.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return pages,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_cover_every_machine_once_in_registration_order() {
    let app = TestApp::spawn().await;
    let w = app.world().await;
    let machines: Vec<_> = (0..7).map(|i| machine("riscv64", &format!("PG-{i}"))).collect();
    let created =
        app.post("/api/v1/donations", &w.a.token, usage_right_form(&w.a.site_id, "PG", machines)).await.expect(201);
    let registered: Vec<String> = created.body["machines"].as_array().unwrap().iter().map(id_of).collect();

    let pages = all_pages(&app, &w.admin, "/api/v1/machines", 3).await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 1]);
    assert_eq!(pages.concat(), registered, "every machine once, in order");
    // An exact multiple ends without an empty page.
    assert_eq!(all_pages(&app, &w.admin, "/api/v1/machines", 7).await.len(), 1);

    let bad = app.get("/api/v1/machines?cursor=not-a-cursor", &w.admin).await.expect(422);
    assert_eq!(bad.fields(), ["cursor"]);
    let too_many = app.get("/api/v1/machines?limit=1000", &w.admin).await.expect(422);
    assert_eq!(too_many.fields(), ["limit"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machine_filters_narrow_the_list() {
    let app = TestApp::spawn().await;
    let w = app.world().await;
    let mut board = machine("riscv64", "F-RV-1");
    board["labels"] = json!({ "board": "visionfive2", "gpu": "none" });
    let hosted = app
        .post(
            "/api/v1/donations",
            &w.a.token,
            usage_right_form(
                &w.a.site_id,
                "F-1",
                vec![board, machine("riscv64", "F-RV-2"), machine("aarch64", "F-ARM-1")],
            ),
        )
        .await
        .expect(201);
    let lab = app
        .post(
            "/api/v1/donations",
            &w.b.token,
            lab_form("loan", &w.lab_site, "F-2", vec![machine("loongarch64", "F-LA-1"), machine("x86_64", "F-X86-1")]),
        )
        .await
        .expect(201);
    let hosted_id = id_of(&hosted.body);
    app.post(&format!("/api/v1/donations/{}/actions", id_of(&lab.body)), &w.admin, json!({ "action": "approve" }))
        .await
        .expect(200);
    let first_board = id_of(&hosted.body["machines"][0]);

    let count = |path: String| {
        let app = &app;
        let admin = w.admin.clone();
        async move { app.get(&path, &admin).await.expect(200).body["items"].as_array().unwrap().len() }
    };
    assert_eq!(count("/api/v1/machines".into()).await, 5);
    assert_eq!(count("/api/v1/machines?arch=riscv64".into()).await, 2);
    assert_eq!(count("/api/v1/machines?lifecycle=approved".into()).await, 2);
    assert_eq!(count("/api/v1/machines?lifecycle=pending_review&arch=aarch64".into()).await, 1);
    assert_eq!(count("/api/v1/machines?health=unknown".into()).await, 5);
    assert_eq!(count("/api/v1/machines?health=healthy".into()).await, 0);
    assert_eq!(count(format!("/api/v1/machines?site_id={}", w.lab_site)).await, 2);
    assert_eq!(count(format!("/api/v1/machines?donation_id={hosted_id}")).await, 3);
    assert_eq!(count(format!("/api/v1/machines?donor_id={}", w.b.id)).await, 2);
    assert_eq!(count("/api/v1/machines?donation_model=usage_right".into()).await, 3);
    assert_eq!(count("/api/v1/machines?donation_model=loan&arch=x86_64".into()).await, 1);
    assert_eq!(count("/api/v1/machines?label=board=test-board".into()).await, 4);
    assert_eq!(count("/api/v1/machines?label=board=visionfive2".into()).await, 1);
    assert_eq!(count("/api/v1/machines?label=board=visionfive2&label=gpu=none".into()).await, 1);
    assert_eq!(count("/api/v1/machines?label=board=visionfive2&label=gpu=h100".into()).await, 0);

    // Overdue: push one machine's deadline into the past.
    let mut conn = app.pool().get().await.unwrap();
    diesel::sql_query(format!(
        "UPDATE machines SET lifecycle_deadline = now() - interval '1 day' WHERE id = '{first_board}'"
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    let overdue = app.get("/api/v1/machines?overdue=true", &w.admin).await.expect(200);
    assert_eq!(ids(&overdue.body), [first_board]);
    assert_eq!(overdue.body["items"][0]["overdue"], true);
    assert_eq!(count("/api/v1/machines?overdue=false".into()).await, 4);

    // Bad filters name the parameter.
    for (query, field) in [
        ("arch=sparc64", "arch"),
        ("label=novalue", "label"),
        ("overdue=maybe", "overdue"),
        ("colour=red", "colour"),
        ("site_id=12", "site_id"),
    ] {
        let refused = app.get(&format!("/api/v1/machines?{query}"), &w.admin).await.expect(422);
        assert_eq!(refused.fields(), [field], "{query}: {}", refused.text);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn donation_lists_page_and_filter_by_status_and_model() {
    let app = TestApp::spawn().await;
    let w = app.world().await;
    let mut all = HashSet::new();
    for i in 0..4 {
        let created = app
            .post(
                "/api/v1/donations",
                &w.a.token,
                usage_right_form(&w.a.site_id, &format!("D-{i}"), vec![machine("riscv64", &format!("D-{i}"))]),
            )
            .await
            .expect(201);
        all.insert(id_of(&created.body));
    }
    let loan = app
        .post("/api/v1/donations", &w.a.token, lab_form("loan", &w.lab_site, "D-L", vec![machine("x86_64", "D-L")]))
        .await
        .expect(201);
    app.post(&format!("/api/v1/donations/{}/actions", id_of(&loan.body)), &w.admin, json!({ "action": "approve" }))
        .await
        .expect(200);
    all.insert(id_of(&loan.body));

    let pages = all_pages(&app, &w.a.token, "/api/v1/donations", 2).await;
    assert_eq!(pages.len(), 3);
    assert_eq!(pages.concat().into_iter().collect::<HashSet<_>>(), all);
    let approved = app.get("/api/v1/donations?status=approved", &w.admin).await.expect(200);
    assert_eq!(ids(&approved.body), [id_of(&loan.body)]);
    let usage = app.get("/api/v1/donations?model=usage_right&status=submitted", &w.admin).await.expect(200);
    assert_eq!(usage.body["items"].as_array().unwrap().len(), 4);
}
