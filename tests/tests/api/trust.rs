//! Trust, tried from outside: a lender taking its lent server back, a token flooding the queue
//! or acting for another tenant, a password-guessing loop, sessions that must end everywhere,
//! a rotated signing key, secrets at rest, and a revocation in a slow transaction.

use std::time::{Duration, Instant};

use diesel_async::{AsyncConnection, RunQueryDsl};
use fleetyard_tests::TestApp;
use fleetyard_tests::fixtures::{PASSWORD, World, id_of, pool_machine};
use reqwest::Method;
use serde_json::{Value, json};

async fn login(app: &TestApp, email: &str, password: &str) -> fleetyard_tests::app::Response {
    app.request(Method::POST, "/api/v1/auth/login", None, Some(&json!({ "email": email, "password": password }))).await
}

const DONOR_A_EMAIL: &str = "staff@plumtreesemiconductor.example";

fn runner(tenant: &str, priority: i32) -> Value {
    json!({ "requirements": { "arch": "riscv64" }, "purpose": "ci", "duration_minutes": 30, "tenant": tenant, "priority": priority })
}

/// A service token issued by ops with `grant` (tenants, priority ceiling, caps).
async fn service_token(app: &TestApp, w: &World, grant: Value) -> String {
    let mut body = json!({ "name": "bound", "expires_in_days": 1 });
    body.as_object_mut().unwrap().extend(grant.as_object().unwrap().clone());
    app.post("/api/v1/service-tokens", &w.admin, body).await.expect(201).body["token"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lender_reads_its_lab_machines_but_cannot_take_them_back_nor_read_the_work_on_them() {
    let app = TestApp::spawn().await;
    let w = app.world().await;
    let lent = app.ready_pool(&w, "loan", None, vec![pool_machine("x86_64", "LENT-1", 8, 16)]).await.remove(0);
    let path = |rest: &str| format!("/api/v1/machines/{lent}{rest}");

    // Reading is the lender's right: state, health, due dates.
    let seen = app.get(&path(""), &w.a.token).await.expect(200);
    assert_eq!(seen.body["donation_model"], "loan");
    // Taking it back is not: no enrollment token (an agent from elsewhere would receive the
    // lab's trusted work), no cutting the lab's agent off, no labels, no SSH checks.
    for (method, rest, body) in [
        (Method::POST, "/enrollment-token", None),
        (Method::DELETE, "/agent", None),
        (Method::PATCH, "/labels", Some(json!({ "set": { "owner": "me" } }))),
        (Method::POST, "/ssh-probe", None),
    ] {
        let refused = app.request(method.clone(), &path(rest), Some(&w.a.token), body.as_ref()).await.expect(403);
        assert_eq!(refused.code(), "lab-machine", "{method} {rest}: {}", refused.text);
        assert!(refused.body["message"].as_str().unwrap().contains("foundation's lab"), "{}", refused.text);
    }
    // Ops may do all of it.
    app.post(&path("/enrollment-token"), &w.admin, json!({})).await.expect(201);
    app.patch(&path("/labels"), &w.admin, json!({ "set": { "rack": "r1" } })).await.expect(200);

    // A job of CI's runs on it: the lender sees that it ran, not what it ran nor its output.
    let job = json!({
        "requirements": { "arch": "x86_64" }, "purpose": "build", "command": "make SECRET_TARGET",
        "env": { "TOKEN": "ci-secret-value" }, "timeout_secs": 60, "tenant": "ci-gate"
    });
    let job_id = id_of(&app.post("/api/v1/jobs", &w.ci, job).await.expect(201).body);
    let started = Instant::now();
    while app.get(&format!("/api/v1/jobs/{job_id}"), &w.ci).await.body["machine_id"] != lent.as_str() {
        assert!(started.elapsed() < Duration::from_secs(10), "the job was not placed on the lent machine");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let as_lender = app.get(&format!("/api/v1/jobs/{job_id}"), &w.a.token).await.expect(200);
    assert!(as_lender.body["command"].is_null() && as_lender.body["env"].is_null(), "{}", as_lender.text);
    let listed = app.get("/api/v1/jobs", &w.a.token).await.expect(200);
    assert!(!listed.text.contains("SECRET_TARGET") && !listed.text.contains("ci-secret-value"), "{}", listed.text);
    assert_eq!(listed.body["items"][0]["id"], job_id.as_str());
    let output = app.get(&format!("/api/v1/jobs/{job_id}/output"), &w.a.token).await.expect(403);
    assert_eq!(output.code(), "lab-machine");
    // Its holder and ops still see everything.
    let as_holder = app.get(&format!("/api/v1/jobs/{job_id}"), &w.ci).await.expect(200);
    assert_eq!(as_holder.body["command"], "make SECRET_TARGET");
    app.get(&format!("/api/v1/jobs/{job_id}/output"), &w.admin).await.expect(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_token_acts_only_for_its_tenants_and_up_to_its_priority_ceiling() {
    let app = TestApp::spawn().await;
    let w = app.world().await;
    // One riscv64 machine: the first lease takes it, the rest wait.
    app.ready_pool(&w, "ownership", None, vec![pool_machine("riscv64", "RV-1", 8, 16)]).await;
    let token = service_token(&app, &w, json!({ "tenants": ["sig-riscv", "ci-*"], "max_priority": 60 })).await;

    app.post("/api/v1/leases", &token, runner("sig-riscv", 50)).await.expect(201);
    app.post("/api/v1/leases", &token, runner("ci-gate", 60)).await.expect(202);
    let other = app.post("/api/v1/leases", &token, runner("sig-loongarch", 50)).await.expect(422);
    assert_eq!(other.fields(), ["tenant"], "{}", other.text);
    assert!(other.text.contains("sig-riscv"), "the refusal says which tenants the token may act for: {}", other.text);
    let too_high = app.post("/api/v1/leases", &token, runner("ci-gate", 61)).await.expect(422);
    assert_eq!(too_high.fields(), ["priority"]);
    let job = json!({ "requirements": { "arch": "riscv64" }, "purpose": "build", "command": "true", "timeout_secs": 60, "tenant": "other" });
    assert_eq!(app.post("/api/v1/jobs", &token, job).await.expect(422).fields(), ["tenant"]);

    // Ops see and change the binding.
    let listed = app.get("/api/v1/service-tokens", &w.admin).await.expect(200);
    let bound = listed.body["items"].as_array().unwrap().iter().find(|t| t["name"] == "bound").unwrap().clone();
    assert_eq!(bound["tenants"], json!(["sig-riscv", "ci-*"]));
    assert_eq!(bound["max_priority"], 60);
    let id = bound["id"].as_str().unwrap();
    app.patch(&format!("/api/v1/service-tokens/{id}"), &w.admin, json!({ "tenants": ["sig-loongarch"] }))
        .await
        .expect(200);
    app.post("/api/v1/leases", &token, runner("sig-loongarch", 50)).await.expect(202);
    app.post("/api/v1/leases", &token, runner("sig-riscv", 50)).await.expect(422);
    // A change that changes nothing is answered with the token as it is.
    let same = app.patch(&format!("/api/v1/service-tokens/{id}"), &w.admin, json!({})).await.expect(200);
    assert_eq!(same.body["tenants"], json!(["sig-loongarch"]));
    // A token bound to nothing is refused at issue, naming the field.
    let unbound = app
        .post("/api/v1/service-tokens", &w.admin, json!({ "name": "x", "tenants": [], "max_priority": 101 }))
        .await
        .expect(422);
    assert_eq!(unbound.fields(), ["tenants", "max_priority"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_over_its_queue_caps_is_told_to_come_back_later_and_nothing_is_queued() {
    let app = TestApp::spawn().await;
    let w = app.world().await;
    // The one riscv64 machine is taken: everything asked for waits in the queue.
    app.ready_pool(&w, "ownership", None, vec![pool_machine("riscv64", "RV-1", 8, 16)]).await;
    app.post("/api/v1/leases", &w.ci, runner("sig-riscv", 50)).await.expect(201);
    let token =
        service_token(&app, &w, json!({ "tenants": ["*"], "max_queued_leases": 2, "max_queued_jobs": 1 })).await;
    for _ in 0..2 {
        app.post("/api/v1/leases", &token, runner("sig-riscv", 50)).await.expect(202);
    }
    let flooded = app.post("/api/v1/leases", &token, runner("sig-riscv", 50)).await.expect(429);
    assert_eq!(flooded.code(), "queue-cap-reached");
    let retry: u64 = flooded.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "Retry-After: {retry}");
    let job = json!({ "requirements": { "arch": "riscv64" }, "purpose": "build", "command": "true", "timeout_secs": 60, "tenant": "t" });
    app.post("/api/v1/jobs", &token, job.clone()).await.expect(201);
    assert_eq!(app.post("/api/v1/jobs", &token, job.clone()).await.expect(429).code(), "queue-cap-reached");
    let queued = app.get("/api/v1/leases?state=queued", &token).await.expect(200);
    assert_eq!(queued.body["items"].as_array().unwrap().len(), 3, "two leases and the job's: {}", queued.text);
    // Another token is not held up by this one's caps.
    app.post("/api/v1/leases", &w.ci, runner("sig-riscv", 50)).await.expect(202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_guessing_loop_is_throttled_per_account_and_per_address_and_audited() {
    let app = TestApp::spawn_with(|c| {
        c.auth.login_failures_per_account = 3;
        c.auth.login_failures_per_address = 5;
    })
    .await;
    let w = app.world().await;
    for _ in 0..3 {
        login(&app, DONOR_A_EMAIL, "a guess").await.expect(401);
    }
    // The right password no longer helps, for a while, and the answer says how long.
    let throttled = login(&app, DONOR_A_EMAIL, PASSWORD).await.expect(429);
    assert_eq!(throttled.code(), "too-many-login-failures");
    let retry: i64 = throttled.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=900).contains(&retry), "Retry-After: {retry}");
    // Another account from the same address has two guesses left before the address is held.
    let b_email = "staff@westlakeopenhardwarelab.example";
    login(&app, b_email, "a guess").await.expect(401);
    login(&app, "nobody@example.org", "a guess").await.expect(401);
    assert_eq!(login(&app, b_email, PASSWORD).await.expect(429).code(), "too-many-login-failures");

    // Each failure is in the audit log, for ops and for the donor whose account it was.
    let audit = app.get("/api/v1/audit?action=user.login_failed", &w.admin).await.expect(200);
    assert_eq!(audit.body["items"].as_array().unwrap().len(), 5, "{}", audit.text);
    let own = app.get("/api/v1/audit?action=user.login_failed", &w.a.token).await.expect(200);
    assert_eq!(own.body["items"].as_array().unwrap().len(), 3, "{}", own.text);
    assert!(!own.text.contains("nobody@example.org"));

    // When the window is over, the account logs in again.
    let mut conn = app.pool().get().await.unwrap();
    diesel::sql_query("UPDATE login_failures SET window_started_at = now() - interval '1 hour'")
        .execute(&mut conn)
        .await
        .unwrap();
    login(&app, DONOR_A_EMAIL, PASSWORD).await.expect(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_logins_waits_its_turn_for_hashing_or_is_turned_away_never_a_500() {
    let app = TestApp::spawn_with(|c| {
        c.auth.password_hash_concurrency = 1;
        c.auth.password_hash_queue = 2;
        c.auth.login_failures_per_address = 1000;
        c.auth.login_failures_per_account = 1000;
    })
    .await;
    app.world().await;
    let attempts = (0..24).map(|i| {
        let app = &app;
        async move { login(app, &format!("guess-{i}@example.org"), "a guess").await }
    });
    let answers = futures_util::future::join_all(attempts).await;
    let busy: Vec<_> = answers.iter().filter(|a| a.status == 503).collect();
    assert!(
        answers.iter().all(|a| a.status == 401 || a.status == 503),
        "{:?}",
        answers.iter().map(|a| a.status).collect::<Vec<_>>()
    );
    assert!(!busy.is_empty(), "24 logins at once with room for 3 turned none away");
    assert!(answers.iter().any(|a| a.status == 401), "some were heard");
    for answer in busy {
        assert_eq!(answer.code(), "login-busy");
        assert!(answer.headers.contains_key("retry-after"));
    }
    // Once the flood has passed, a login goes through.
    login(&app, DONOR_A_EMAIL, PASSWORD).await.expect(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logging_out_or_changing_the_password_ends_every_earlier_session_on_every_replica() {
    let app = TestApp::spawn().await;
    let w = app.world().await;
    let replica = app.replica();
    let token = |r: &fleetyard_tests::app::Response| r.body["token"].as_str().unwrap().to_owned();
    let laptop = token(&login(&app, DONOR_A_EMAIL, PASSWORD).await.expect(200));
    let phone = token(&login(&replica, DONOR_A_EMAIL, PASSWORD).await.expect(200));
    for server in [&app, &replica] {
        server.get("/api/v1/auth/me", &laptop).await.expect(200);
    }

    app.request(Method::POST, "/api/v1/auth/logout", Some(&laptop), None).await.expect(204);
    for server in [&app, &replica] {
        for session in [&laptop, &phone] {
            let ended = server.get("/api/v1/auth/me", session).await.expect(401);
            assert!(ended.text.contains("ended"), "{}", ended.text);
        }
    }

    // A password change needs the current one, ends earlier sessions and gives a new one.
    let session = token(&login(&app, DONOR_A_EMAIL, PASSWORD).await.expect(200));
    let new_password = "a brand new long passphrase";
    let wrong = app
        .post("/api/v1/auth/password", &session, json!({ "current_password": "nope", "new_password": new_password }))
        .await
        .expect(401);
    assert_eq!(wrong.code(), "invalid-credentials");
    let short = app
        .post("/api/v1/auth/password", &session, json!({ "current_password": PASSWORD, "new_password": "short" }))
        .await
        .expect(422);
    assert_eq!(short.fields(), ["new_password"]);
    let changed = app
        .post("/api/v1/auth/password", &session, json!({ "current_password": PASSWORD, "new_password": new_password }))
        .await
        .expect(200);
    replica.get("/api/v1/auth/me", &session).await.expect(401);
    replica.get("/api/v1/auth/me", &token(&changed)).await.expect(200);
    login(&app, DONOR_A_EMAIL, PASSWORD).await.expect(401);
    let fresh = token(&login(&app, DONOR_A_EMAIL, new_password).await.expect(200));

    // Disabling ends sessions; enabling again does not bring them back.
    let user = format!("/api/v1/users/{}", w.a.user_id);
    app.patch(&user, &w.admin, json!({ "disabled": true })).await.expect(200);
    app.patch(&user, &w.admin, json!({ "disabled": false })).await.expect(200);
    replica.get("/api/v1/auth/me", &fresh).await.expect(401);
    login(&app, DONOR_A_EMAIL, new_password).await.expect(200);

    // Service tokens have no session to end.
    assert_eq!(app.request(Method::POST, "/api/v1/auth/logout", Some(&w.ci), None).await.status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_signing_key_rotates_without_logging_anyone_out() {
    let app = TestApp::spawn().await;
    let w = app.world().await;
    let old_key = app.state.config.jwt_secret.clone();
    let rotated = app.replica_with(|c| {
        c.jwt_secret = fleetyard::config::Secret("a-new-signing-key-that-is-32-bytes-or-more".into());
        c.auth.previous_jwt_secrets = vec![old_key.clone()];
    });
    // Sessions and service tokens signed with the old key still work...
    rotated.get("/api/v1/auth/me", &w.admin).await.expect(200);
    rotated.get("/api/v1/leases", &w.ci).await.expect(200);
    // ...new ones are signed with the new key...
    let fresh = login(&rotated, DONOR_A_EMAIL, PASSWORD).await.expect(200).body["token"].as_str().unwrap().to_owned();
    rotated.get("/api/v1/auth/me", &fresh).await.expect(200);
    // ...and once the old key is dropped, its tokens stop working.
    let dropped = rotated.replica_with(|c| c.auth.previous_jwt_secrets.clear());
    dropped.get("/api/v1/auth/me", &fresh).await.expect(200);
    let refused = dropped.get("/api/v1/auth/me", &w.admin).await.expect(401);
    assert!(refused.text.contains("no longer accepts"), "{}", refused.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleetyards_ssh_key_and_webhook_secrets_are_sealed_at_rest() {
    let app = TestApp::spawn().await;
    let w = app.world().await;
    let created =
        app.post("/api/v1/webhooks", &w.admin, json!({ "url": "https://hooks.example.org/f" })).await.expect(201);
    let secret = created.body["secret"].as_str().unwrap().to_owned();
    // Fleetyard's SSH key is made the first time it is needed.
    app.get("/api/v1/ssh-key", &w.admin).await.expect(200);
    let mut conn = app.pool().get().await.unwrap();

    #[derive(diesel::QueryableByName)]
    struct Stored {
        #[diesel(sql_type = diesel::sql_types::Text)]
        value: String,
    }
    let stored = |sql: &'static str| {
        let pool = app.pool().clone();
        async move {
            let mut conn = pool.get().await.unwrap();
            diesel::sql_query(sql)
                .load::<Stored>(&mut conn)
                .await
                .unwrap()
                .into_iter()
                .map(|s| s.value)
                .collect::<Vec<_>>()
        }
    };
    let keys = stored("SELECT private_key AS value FROM platform_keys").await;
    assert!(!keys.is_empty());
    for key in &keys {
        assert!(key.starts_with("fyseal1:") && !key.contains("PRIVATE KEY"), "the SSH key is stored plain");
    }
    let secrets = stored("SELECT secret AS value FROM webhook_subscriptions").await;
    assert_eq!(secrets.len(), 1);
    assert!(
        secrets[0].starts_with("fyseal1:") && !secrets[0].contains(&secret[6..]),
        "the webhook secret is stored plain"
    );

    // Secrets stored plain by an earlier version are sealed when a server starts; a new data
    // key seals again what the previous one sealed.
    diesel::sql_query(
        "INSERT INTO webhook_subscriptions (id, url, secret, event_types, active, created_at, updated_at)
         VALUES (gen_random_uuid(), 'https://hooks.example.org/old', 'whsec_stored-plain-before-sealing', '{}', true, now(), now())",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let old_data_key = app.state.config.auth.data_key.clone();
    let replica = app.replica_with(|c| {
        c.auth.data_key = fleetyard::config::Secret("another-data-key-of-at-least-32-bytes".into());
        c.auth.previous_data_keys = vec![old_data_key];
    });
    let mine = fleetyard::secrets::DataKeys::new(&replica.state.config.auth.data_key, &[]);
    let started = Instant::now();
    let after = loop {
        let after = stored("SELECT secret AS value FROM webhook_subscriptions ORDER BY created_at").await;
        if after.iter().all(|s| !mine.needs_sealing(s)) {
            break after;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "secrets left plain or under the old key: {after:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let keys = stored("SELECT private_key AS value FROM platform_keys").await;
    assert!(keys.iter().all(|k| !mine.needs_sealing(k)), "the SSH key is still under the old data key");
    // The replica still uses the key it sealed again.
    replica.get("/api/v1/ssh-key", &w.admin).await.expect(200);
    assert_eq!(mine.open(after.last().unwrap()).unwrap(), "whsec_stored-plain-before-sealing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_committed_by_a_slow_transaction_reaches_every_replica_within_a_poll() {
    let app = TestApp::spawn_with(|c| c.agent_token_cache_secs = 1).await;
    let w = app.world().await;
    let replica = app.replica();
    let machine = app.ready_pool(&w, "ownership", None, vec![pool_machine("aarch64", "SLOW-1", 8, 16)]).await.remove(0);
    let credential = app.agent_token(fleetyard::domain::MachineId(machine.parse().unwrap())).await;
    // The replica has checked the credential and remembers it.
    replica.get("/api/v1/agent/work?wait=0", &credential).await.expect(200);

    // Another replica revokes it in a transaction that takes longer than any clock-based
    // look-back would allow for: its `now()` is long past when it commits.
    let mut conn = app.pool().get().await.unwrap();
    conn.transaction::<_, diesel::result::Error, _>(async |conn| {
        diesel::sql_query("UPDATE api_tokens SET revoked_at = now() WHERE machine_id = $1::uuid")
            .bind::<diesel::sql_types::Text, _>(&machine)
            .execute(conn)
            .await?;
        diesel::sql_query("SELECT pg_sleep(12)").execute(conn).await?;
        Ok(())
    })
    .await
    .unwrap();
    let committed = Instant::now();
    while replica.get("/api/v1/agent/work?wait=0", &credential).await.status != 401 {
        assert!(committed.elapsed() < Duration::from_secs(3), "the replica still trusts a revoked credential");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
