//! The OpenAPI document: committed, served, and never stale.

use std::path::Path;

use fleetyard_tests::TestApp;

#[test]
fn the_committed_openapi_document_matches_the_code() {
    let committed_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../openapi/openapi.json");
    let generated = fleetyard::routes::openapi_json();
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&committed_path, &generated).expect("writing openapi/openapi.json");
    }
    let committed = std::fs::read_to_string(&committed_path).unwrap_or_default();
    assert!(
        committed == generated,
        "openapi/openapi.json is stale; regenerate it with \
         `cargo run -p fleetyard -- openapi > openapi/openapi.json` (or UPDATE_OPENAPI=1 cargo test)"
    );
}

#[test]
fn every_operation_is_documented_and_secured() {
    let doc: serde_json::Value = serde_json::from_str(&fleetyard::routes::openapi_json()).unwrap();
    let public = ["/healthz", "/readyz", "/api/v1/auth/login", "/api/v1/agent/enroll", "/api/v1/agent/binaries/{arch}"];
    assert_eq!(doc["security"], serde_json::json!([{ "bearer": [] }]));
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            operations += 1;
            let what = format!("{method} {path}");
            assert!(operation["tags"].as_array().is_some_and(|t| !t.is_empty()), "{what} has no tag");
            assert!(operation["description"].is_string() || operation["summary"].is_string(), "{what} is undescribed");
            let responses = operation["responses"].as_object().unwrap();
            assert!(responses.keys().any(|code| code.starts_with('2')), "{what} documents no success");
            let overridden = operation.get("security").is_some_and(|s| s == &serde_json::json!([{}]));
            assert_eq!(public.contains(&path.as_str()), overridden, "{what}: security");
            if !public.contains(&path.as_str()) {
                assert!(responses.contains_key("401"), "{what} does not document 401");
            }
        }
    }
    assert!(operations >= 30, "only {operations} operations documented");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_serves_its_document_and_browsable_docs_offline() {
    let app = TestApp::spawn().await;
    let served = app.request(reqwest::Method::GET, "/api/openapi.json", None, None).await.expect(200);
    assert_eq!(served.text, fleetyard::routes::openapi_json());
    let page = app.request(reqwest::Method::GET, "/api/docs", None, None).await.expect(200);
    assert!(page.text.contains("/api/docs/swagger-ui-bundle.js") && page.text.contains("/api/openapi.json"));
    assert!(!page.text.contains("http"), "the docs page loads nothing from the network");
    for asset in ["/api/docs/swagger-ui-bundle.js", "/api/docs/swagger-ui.css"] {
        let response = app.client.get(format!("{}{asset}", app.base_url)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{asset}");
        assert!(response.bytes().await.unwrap().len() > 100_000, "{asset} is the real file");
    }
    app.request(reqwest::Method::GET, "/api/docs/../../etc/passwd", None, None).await.expect(404);
}
