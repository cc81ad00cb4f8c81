//! Logging in, and every way a token can be wrong.

use fleetyard_tests::TestApp;
use fleetyard_tests::fixtures::PASSWORD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

const SECRET: &[u8] = b"test-secret-that-is-at-least-32-bytes-long";

fn claims(overrides: Value, sub: &str) -> Value {
    let now = chrono::Utc::now().timestamp();
    let mut claims = json!({
        "iss": "fleetyard", "aud": "fleetyard-api", "sub": sub, "iat": now, "exp": now + 600,
        "jti": uuid::Uuid::new_v4(), "typ": "user"
    });
    for (key, value) in overrides.as_object().expect("object") {
        claims[key] = value.clone();
    }
    claims
}

fn sign(alg: Algorithm, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(SECRET)).expect("signing")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_donor_logs_in_and_the_token_says_who_they_are() {
    let app = TestApp::spawn().await;
    let world = app.world().await;
    let login = app
        .request(
            reqwest::Method::POST,
            "/api/v1/auth/login",
            None,
            Some(&json!({
                "email": "STAFF@plumtreesemiconductor.example", "password": PASSWORD
            })),
        )
        .await
        .expect(200);
    assert_eq!(login.body["token_type"], "Bearer");
    assert_eq!(login.body["user"]["role"], "donor");
    assert!(login.body["user"].get("password_hash").is_none());
    let me = app.get("/api/v1/auth/me", login.body["token"].as_str().unwrap()).await.expect(200);
    assert_eq!(me.body["role"], "donor");
    assert_eq!(me.body["donor_id"], world.a.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_and_an_unknown_email_get_the_same_answer() {
    let app = TestApp::spawn().await;
    app.world().await;
    let attempt = |email: &'static str, password: &'static str| {
        let app = &app;
        async move {
            app.request(
                reqwest::Method::POST,
                "/api/v1/auth/login",
                None,
                Some(&json!({ "email": email, "password": password })),
            )
            .await
        }
    };
    let wrong_password = attempt("staff@plumtreesemiconductor.example", "not the password").await.expect(401);
    let unknown = attempt("nobody@example.org", PASSWORD).await.expect(401);
    assert_eq!(wrong_password.code(), "invalid-credentials");
    assert_eq!(wrong_password.body, unknown.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_malformed_authorization_header_is_a_401_with_a_bearer_challenge() {
    let app = TestApp::spawn().await;
    let response = app.client.get(format!("{}/api/v1/machines", app.base_url)).send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    for header in ["Basic dXNlcjpwYXNz", "Bearer", "Bearer not.a.jwt"] {
        let response = app
            .client
            .get(format!("{}/api/v1/machines", app.base_url))
            .header("authorization", header)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{header}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_refused_unless_hs256_from_this_issuer_for_this_audience_and_unexpired() {
    let app = TestApp::spawn().await;
    let world = app.world().await;
    let admin = &world.admin_id;
    // The genuine article works.
    app.get("/api/v1/auth/me", &sign(Algorithm::HS256, &claims(json!({}), admin))).await.expect(200);

    let past = chrono::Utc::now().timestamp() - 3600;
    let refused = [
        ("another algorithm", sign(Algorithm::HS512, &claims(json!({}), admin)), "algorithm"),
        (
            "another issuer",
            sign(Algorithm::HS256, &claims(json!({ "iss": "mallory" }), admin)),
            "not issued for this server",
        ),
        (
            "another audience",
            sign(Algorithm::HS256, &claims(json!({ "aud": "other-api" }), admin)),
            "not issued for this server",
        ),
        ("expired", sign(Algorithm::HS256, &claims(json!({ "exp": past }), admin)), "expired"),
        (
            "unknown user",
            sign(Algorithm::HS256, &claims(json!({}), &uuid::Uuid::now_v7().to_string())),
            "no longer exists",
        ),
    ];
    for (what, token, said) in refused {
        let response = app.get("/api/v1/auth/me", &token).await;
        assert_eq!(response.status, 401, "{what}: {}", response.text);
        assert!(response.body["message"].as_str().unwrap().contains(said), "{what}: {}", response.text);
    }

    // An unsigned token (`alg: none`) is refused before anything else is looked at.
    let header = base64_url(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = base64_url(claims(json!({}), admin).to_string().as_bytes());
    app.get("/api/v1/auth/me", &format!("{header}.{payload}.")).await.expect(401);

    // A signature made with another key.
    let forged = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(json!({}), admin),
        &EncodingKey::from_secret(b"some-other-secret-of-at-least-32-bytes"),
    )
    .unwrap();
    app.get("/api/v1/auth/me", &forged).await.expect(401);
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_service_token_stops_working_at_once() {
    let app = TestApp::spawn().await;
    let world = app.world().await;
    app.get("/api/v1/machines", &world.ci).await.expect(200);
    let revoked = app
        .post(&format!("/api/v1/service-tokens/{}/revoke", world.ci_token_id), &world.admin, json!({}))
        .await
        .expect(200);
    assert!(revoked.body["revoked_at"].is_string());
    let refused = app.get("/api/v1/machines", &world.ci).await.expect(401);
    assert!(refused.body["message"].as_str().unwrap().contains("revoked"));
    // Revoking again changes nothing.
    let again = app
        .post(&format!("/api/v1/service-tokens/{}/revoke", world.ci_token_id), &world.admin, json!({}))
        .await
        .expect(200);
    assert_eq!(again.body["revoked_at"], revoked.body["revoked_at"]);
    // The list never shows secrets.
    let list = app.get("/api/v1/service-tokens", &world.admin).await.expect(200);
    assert!(list.text.contains("ci-gate"));
    assert!(!list.text.contains(&world.ci));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_user_is_locked_out_and_can_be_let_back_in() {
    let app = TestApp::spawn().await;
    let world = app.world().await;
    app.get("/api/v1/donations", &world.b.token).await.expect(200);
    app.patch(&format!("/api/v1/users/{}", world.b.user_id), &world.admin, json!({ "disabled": true }))
        .await
        .expect(200);
    let refused = app.get("/api/v1/donations", &world.b.token).await.expect(401);
    assert!(refused.body["message"].as_str().unwrap().contains("disabled"));
    app.request(
        reqwest::Method::POST,
        "/api/v1/auth/login",
        None,
        Some(&json!({
            "email": "staff@westlakeopenhardwarelab.example", "password": PASSWORD
        })),
    )
    .await
    .expect(401);
    app.patch(&format!("/api/v1/users/{}", world.b.user_id), &world.admin, json!({ "disabled": false }))
        .await
        .expect(200);
    // Let back in, the user logs in again: the sessions of before stay ended.
    app.get("/api/v1/donations", &world.b.token).await.expect(401);
    let login = app
        .request(
            reqwest::Method::POST,
            "/api/v1/auth/login",
            None,
            Some(&json!({ "email": "staff@westlakeopenhardwarelab.example", "password": PASSWORD })),
        )
        .await
        .expect(200);
    app.get("/api/v1/donations", login.body["token"].as_str().unwrap()).await.expect(200);
    // Ops cannot lock themselves out.
    let own = app
        .patch(&format!("/api/v1/users/{}", world.admin_id), &world.admin, json!({ "disabled": true }))
        .await
        .expect(409);
    assert_eq!(own.code(), "cannot-disable-self");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_token_cannot_pass_for_a_user_session() {
    let app = TestApp::spawn().await;
    let world = app.world().await;
    // Same id, claimed as a user session: there is no such user.
    let token = sign(Algorithm::HS256, &claims(json!({ "typ": "user" }), &world.ci_token_id));
    app.get("/api/v1/auth/me", &token).await.expect(401);
    // Claimed as an agent credential: the row says `ci`.
    let token =
        sign(Algorithm::HS256, &claims(json!({ "typ": "agent", "jti": world.ci_token_id }), &world.ci_token_id));
    app.get("/api/v1/auth/me", &token).await.expect(401);
}
