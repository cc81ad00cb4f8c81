//! Health, readiness and the shape of errors for unknown routes.

use fleetyard_tests::TestApp;
use reqwest::Method;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness_answer_without_a_token() {
    let app = TestApp::spawn().await;
    let health = app.request(Method::GET, "/healthz", None, None).await.expect(200);
    assert_eq!(health.body["status"], "ok");
    let ready = app.request(Method::GET, "/readyz", None, None).await.expect(200);
    assert_eq!(ready.body["status"], "ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_when_the_database_is_unreachable() {
    let app =
        TestApp::spawn_with(|config| config.database_url = "postgres://fleetyard@127.0.0.1:9/fleetyard".into()).await;
    app.request(Method::GET, "/healthz", None, None).await.expect(200);
    let ready = app.request(Method::GET, "/readyz", None, None).await.expect(503);
    assert_eq!(ready.code(), "database-unavailable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_answer_in_the_one_error_shape() {
    let app = TestApp::spawn().await;
    let missing = app.request(Method::GET, "/api/v1/nothing-here", None, None).await.expect(404);
    assert_eq!(missing.code(), "route-not-found");
    assert!(missing.body["message"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_path_asked_with_another_method_says_which_methods_it_answers() {
    let app = TestApp::spawn().await;
    let trace = app.request(Method::TRACE, "/healthz", None, None).await.expect(405);
    assert_eq!(trace.code(), "method-not-allowed");
    assert_eq!(trace.headers["allow"], "GET");
    let id = uuid::Uuid::now_v7();
    let put = app.request(Method::PUT, &format!("/api/v1/webhooks/{id}"), None, None).await.expect(405);
    assert_eq!(put.headers["allow"], "DELETE, PATCH");
    app.request(Method::DELETE, "/api/openapi.json", None, None).await.expect(405);
    // A path no route has stays a 404.
    app.request(Method::TRACE, &format!("/api/v1/webhooks/{id}/nothing"), None, None).await.expect(404);
}
