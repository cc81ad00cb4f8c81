//! Every endpoint against every kind of caller: nobody, ops, the owning donor, another donor,
//! a CI service account and a machine's agent. Each cell states what that caller must get.

use fleetyard_tests::TestApp;
use fleetyard_tests::fixtures::{heartbeat, id_of, machine, pool_machine, usage_right_form};
use reqwest::Method;
use serde_json::{Value, json};

/// What a caller must get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Let in: the request reached the endpoint's own rules (2xx, or 409 from the rules).
    In,
    /// 401: who are you?
    Unauthenticated,
    /// 403: not for your role.
    Forbidden,
    /// 404: not yours, and its existence is not yours to learn.
    Hidden,
    /// 422: the request names something that is not yours.
    Refused,
}
use Expect::*;

impl Expect {
    fn accepts(self, status: u16) -> bool {
        match self {
            In => (200..300).contains(&status) || status == 409,
            Unauthenticated => status == 401,
            Forbidden => status == 403,
            Hidden => status == 404,
            Refused => status == 422,
        }
    }
}

/// Callers, in the order each row is tried: refusals first, so the writes of those let in
/// cannot change what a later caller sees.
const CALLERS: [&str; 6] = ["nobody", "agent", "ci", "other donor", "donor", "admin"];

struct Row {
    method: Method,
    path: String,
    body: Option<Value>,
    /// Expectations in `CALLERS` order.
    expect: [Expect; 6],
}

fn row(method: Method, path: impl Into<String>, body: Option<Value>, expect: [Expect; 6]) -> Row {
    Row { method, path: path.into(), body, expect }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_answers_every_kind_of_caller_as_its_rule_says() {
    // One cloud account (at an address where nothing listens) and an agent binary to serve.
    let files = tempfile::tempdir().unwrap();
    for (name, text) in [("ak", "AKIDMATRIX"), ("sk", "matrix-secret"), ("fleetyard-agent-x86_64", "\x7fELF")] {
        std::fs::write(files.path().join(name), text).unwrap();
    }
    let account: fleetyard::config::clouds::AccountConfig = serde_json::from_value(json!({
        "name": "aws-matrix", "provider": "aws", "max_instances": 1,
        "access_key_file": files.path().join("ak"), "secret_key_file": files.path().join("sk"),
        "regions": [{ "name": "us-east-1", "endpoint": "http://127.0.0.1:9", "flavours": [], "images": [] }]
    }))
    .unwrap();
    let app = TestApp::spawn_with(|config| {
        config.clouds.agent_server_url = "http://127.0.0.1:9".into();
        config.clouds.agent_binaries_dir = Some(files.path().to_owned());
        config.clouds.accounts = vec![account];
    })
    .await;
    let w = app.world().await;
    let (a, b) = (&w.a, &w.b);
    let donation = app
        .post("/api/v1/donations", &a.token, usage_right_form(&a.site_id, "A-1", vec![machine("riscv64", "MX-1")]))
        .await
        .expect(201);
    let donation_id = id_of(&donation.body);
    let machine_id = donation.body["machines"][0]["id"].as_str().unwrap().to_owned();
    let agent = app.agent_token(fleetyard::domain::MachineId(machine_id.parse().unwrap())).await;

    let donor_user = json!({ "email": "new@example.org", "display_name": "N", "password": "long enough password", "role": "donor", "donor_id": a.id });
    let policy = json!({ "purposes": ["ci"], "max_concurrent_leases": 1, "max_lease_minutes": 60 });
    // Donors register their own premises; ops may register any kind of site.
    let site = |n: &str| json!({ "name": format!("site {n}"), "kind": "donor_site", "time_zone": "UTC" });
    let heartbeat = heartbeat(
        json!({ "arch": "riscv64", "kernel": "k", "os_release": "o", "cpu_model": "c", "cpu_count": 8, "memory_mib": 16384, "disk_gib": 256 }),
    );
    // A lab machine with a lease on it, held by the CI account and donated by donor A.
    let lab_machine =
        app.ready_pool(&w, "ownership", None, vec![pool_machine("x86_64", "LX-1", 8, 16)]).await.remove(0);
    let runner =
        json!({ "requirements": { "arch": "x86_64" }, "purpose": "ci", "duration_minutes": 30, "tenant": "ci-gate" });
    let lease = app.post("/api/v1/leases", &w.ci, runner.clone()).await.expect(201);
    let lease_id = id_of(&lease.body);
    // A job of the CI account, queued behind that lease; once the lease is released (below) it
    // runs on donor A's machine, in the foundation's lab: donor A may see that it ran, but not
    // what it printed, nor cancel it.
    let build = json!({ "requirements": { "arch": "x86_64" }, "purpose": "build", "command": "make", "timeout_secs": 60, "tenant": "ci-gate" });
    let job = app.post("/api/v1/jobs", &w.ci, build.clone()).await.expect(201);
    let job_id = id_of(&job.body);
    let donate =
        |n: &str| usage_right_form(&a.site_id, &format!("A-{n}"), vec![machine("riscv64", &format!("MX-{n}"))]);

    #[rustfmt::skip]
    let rows = vec![
        //                                                                         nobody           agent      ci         other donor  donor      admin
        row(Method::GET,   "/healthz", None,                                      [In,              In,        In,        In,          In,        In]),
        row(Method::GET,   "/readyz", None,                                       [In,              In,        In,        In,          In,        In]),
        row(Method::GET,   "/api/openapi.json", None,                             [In,              In,        In,        In,          In,        In]),
        row(Method::GET,   "/api/v1/auth/me", None,                               [Unauthenticated, In,        In,        In,          In,        In]),
        // A wrong current password: people are heard (and refused), tokens have no password.
        row(Method::POST,  "/api/v1/auth/password", Some(json!({"current_password": "wrong", "new_password": "a long new password"})),
                                                                                  [Unauthenticated, Forbidden, Forbidden, Unauthenticated, Unauthenticated, Unauthenticated]),
        row(Method::GET,   "/api/v1/users", None,                                 [Unauthenticated, Forbidden, Forbidden, In,          In,        In]),
        row(Method::POST,  "/api/v1/users", Some(donor_user.clone()),             [Unauthenticated, Forbidden, Forbidden, Forbidden,   Forbidden, In]),
        row(Method::PATCH, format!("/api/v1/users/{}", b.user_id), Some(json!({"display_name": "B"})),
                                                                                  [Unauthenticated, Forbidden, Forbidden, Forbidden,   Forbidden, In]),
        row(Method::GET,   "/api/v1/service-tokens", None,                        [Unauthenticated, Forbidden, Forbidden, Forbidden,   Forbidden, In]),
        row(Method::POST,  "/api/v1/service-tokens", Some(json!({"name": "x", "tenants": ["x"]})),  [Unauthenticated, Forbidden, Forbidden, Forbidden,   Forbidden, In]),
        row(Method::PATCH, format!("/api/v1/service-tokens/{}", w.ci_token_id), Some(json!({"max_priority": 100})),
                                                                                  [Unauthenticated, Forbidden, Forbidden, Forbidden,   Forbidden, In]),
        row(Method::POST,  format!("/api/v1/service-tokens/{}/revoke", uuid::Uuid::now_v7()), None,
                                                                                  [Unauthenticated, Forbidden, Forbidden, Forbidden,   Forbidden, Hidden]),
        row(Method::POST,  "/api/v1/donors", Some(json!({"name": "D", "kind": "company", "time_zone": "UTC"})),
                                                                                  [Unauthenticated, Forbidden, Forbidden, Forbidden,   Forbidden, In]),
        row(Method::GET,   "/api/v1/donors", None,                                [Unauthenticated, Forbidden, Forbidden, In,          In,        In]),
        row(Method::GET,   format!("/api/v1/donors/{}", a.id), None,              [Unauthenticated, Forbidden, Forbidden, Hidden,      In,        In]),
        row(Method::PATCH, format!("/api/v1/donors/{}", a.id), Some(json!({"notes": "n"})),
                                                                                  [Unauthenticated, Forbidden, Forbidden, Hidden,      In,        In]),
        row(Method::GET,   "/api/v1/sites", None,                                 [Unauthenticated, Forbidden, In,        In,          In,        In]),
        row(Method::POST,  "/api/v1/sites", Some(site("x")),                      [Unauthenticated, Forbidden, Forbidden, In,          In,        Refused]),
        row(Method::GET,   format!("/api/v1/sites/{}", a.site_id), None,          [Unauthenticated, Forbidden, In,        Hidden,      In,        In]),
        row(Method::GET,   format!("/api/v1/sites/{}", w.lab_site), None,         [Unauthenticated, Forbidden, In,        In,          In,        In]),
        row(Method::PATCH, format!("/api/v1/sites/{}", a.site_id), Some(json!({"address": "Hangzhou"})),
                                                                                  [Unauthenticated, Forbidden, Forbidden, Hidden,      In,        In]),
        row(Method::PATCH, format!("/api/v1/sites/{}", w.lab_site), Some(json!({"address": "Beijing"})),
                                                                                  [Unauthenticated, Forbidden, Forbidden, Forbidden,   Forbidden, In]),
        row(Method::POST,  "/api/v1/donations", Some(donate("2")),                [Unauthenticated, Forbidden, Forbidden, Refused,     In,        Refused]),
        row(Method::GET,   "/api/v1/donations", None,                             [Unauthenticated, Forbidden, Forbidden, In,          In,        In]),
        row(Method::GET,   format!("/api/v1/donations/{donation_id}"), None,      [Unauthenticated, Forbidden, Forbidden, Hidden,      In,        In]),
        row(Method::POST,  format!("/api/v1/donations/{donation_id}/actions"), Some(json!({"action": "pause"})),
                                                                                  [Unauthenticated, Forbidden, Forbidden, Hidden,      In,        In]),
        row(Method::PUT,   format!("/api/v1/donations/{donation_id}/usage-policy"), Some(policy),
                                                                                  [Unauthenticated, Forbidden, Forbidden, Hidden,      In,        In]),
        row(Method::GET,   "/api/v1/machines", None,                              [Unauthenticated, Forbidden, In,        In,          In,        In]),
        row(Method::GET,   format!("/api/v1/machines/{machine_id}"), None,        [Unauthenticated, Forbidden, In,        Hidden,      In,        In]),
        row(Method::PATCH, format!("/api/v1/machines/{machine_id}/labels"), Some(json!({"set": {"k": "v"}})),
                                                                                  [Unauthenticated, Forbidden, Forbidden, Hidden,      In,        In]),
        row(Method::POST,  format!("/api/v1/machines/{machine_id}/transitions"), Some(json!({"to": "paused_by_donor"})),
                                                                                  [Unauthenticated, Forbidden, Forbidden, Hidden,      In,        In]),
        row(Method::PUT,   format!("/api/v1/machines/{machine_id}/maintenance"), Some(json!({"reason": "fan"})),
                                                                                  [Unauthenticated, Forbidden, Forbidden, Forbidden,   Forbidden, In]),
        row(Method::DELETE, format!("/api/v1/machines/{machine_id}/maintenance"), None,
                                                                                  [Unauthenticated, Forbidden, Forbidden, Forbidden,   Forbidden, In]),
        row(Method::GET,   "/api/v1/audit", None,                                 [Unauthenticated, Forbidden, Forbidden, In,          In,        In]),
        row(Method::GET,   "/api/v1/overview", None,                              [Unauthenticated, Forbidden, Forbidden, Forbidden,   Forbidden, In]),
        row(Method::GET,   format!("/api/v1/donors/{}/usage", a.id), None,        [Unauthenticated, Forbidden, Forbidden, Hidden,      In,        In]),
        row(Method::GET,   "/api/v1/queue", None,                                 [Unauthenticated, Forbidden, Forbidden, Forbidden,   Forbidden, In]),
        row(Method::POST,  format!("/api/v1/machines/{machine_id}/enrollment-token"), None,
                                                                                  [Unauthenticated, Forbidden, Forbidden, Hidden,      In,        In]),
        row(Method::POST,  format!("/api/v1/machines/{machine_id}/ssh-probe"), None,
                                                                                  [Unauthenticated, Forbidden, Forbidden, Hidden,      In,        In]),
        row(Method::DELETE, format!("/api/v1/machines/{machine_id}/quarantine"), Some(json!({"note": "checked"})),
                                                                                  [Unauthenticated, Forbidden, Forbidden, Forbidden,   Forbidden, In]),
        row(Method::GET,   "/api/v1/ssh-key", None,                               [Unauthenticated, Forbidden, Forbidden, In,          In,        In]),
        row(Method::GET,   "/api/v1/schedules", None,                                  [Unauthenticated, Forbidden, Forbidden, Forbidden,   Forbidden, In]),
        row(Method::POST,  "/api/v1/schedules/enrollment-expiry/run", None,            [Unauthenticated, Forbidden, Forbidden, Forbidden,   Forbidden, In]),
        row(Method::GET,   "/api/v1/events", None,                                [Unauthenticated, Forbidden, Forbidden, Forbidden,   Forbidden, In]),
        row(Method::POST,  "/api/v1/webhooks", Some(json!({"url": "https://hooks.example.org/f"})),
                                                                                  [Unauthenticated, Forbidden, Forbidden, Forbidden,   Forbidden, In]),
        row(Method::GET,   "/api/v1/webhooks", None,                              [Unauthenticated, Forbidden, Forbidden, Forbidden,   Forbidden, In]),
        row(Method::PATCH, format!("/api/v1/webhooks/{}", uuid::Uuid::now_v7()), Some(json!({"active": false})),
                                                                                  [Unauthenticated, Forbidden, Forbidden, Forbidden,   Forbidden, Hidden]),
        row(Method::DELETE, format!("/api/v1/webhooks/{}", uuid::Uuid::now_v7()), None,
                                                                                  [Unauthenticated, Forbidden, Forbidden, Forbidden,   Forbidden, Hidden]),
        row(Method::GET,   format!("/api/v1/webhooks/{}/deliveries", uuid::Uuid::now_v7()), None,
                                                                                  [Unauthenticated, Forbidden, Forbidden, Forbidden,   Forbidden, Hidden]),
        row(Method::POST,  "/api/v1/leases", Some(runner),                        [Unauthenticated, Forbidden, In,        Forbidden,   Forbidden, In]),
        row(Method::GET,   "/api/v1/leases", None,                                [Unauthenticated, Forbidden, In,        In,          In,        In]),
        row(Method::GET,   format!("/api/v1/leases/{lease_id}"), None,            [Unauthenticated, Forbidden, In,        Hidden,      In,        In]),
        row(Method::POST,  format!("/api/v1/leases/{lease_id}/extend"), Some(json!({"minutes": 1})),
                                                                                  [Unauthenticated, Forbidden, In,        Hidden,      Forbidden, In]),
        // The holder releases it first; ops then find it ended (409).
        row(Method::POST,  format!("/api/v1/leases/{lease_id}/release"), None,    [Unauthenticated, Forbidden, In,        Hidden,      Forbidden, In]),
        row(Method::POST,  "/api/v1/jobs", Some(build),                           [Unauthenticated, Forbidden, In,        Forbidden,   Forbidden, In]),
        row(Method::GET,   "/api/v1/jobs", None,                                  [Unauthenticated, Forbidden, In,        In,          In,        In]),
        row(Method::GET,   format!("/api/v1/jobs/{job_id}"), None,                [Unauthenticated, Forbidden, In,        Hidden,      In,        In]),
        row(Method::GET,   format!("/api/v1/jobs/{job_id}/output"), None,         [Unauthenticated, Forbidden, In,        Hidden,      Forbidden, In]),
        row(Method::POST,  format!("/api/v1/jobs/{job_id}/cancel"), None,         [Unauthenticated, Forbidden, In,        Hidden,      Forbidden, In]),
        row(Method::GET,   "/api/v1/agent/work?wait=0", None,                     [Unauthenticated, In,        Forbidden, Forbidden,   Forbidden, Forbidden]),
        // Not this agent's job: as if it did not exist.
        row(Method::POST,  format!("/api/v1/agent/jobs/{job_id}/output"), Some(json!({"attempt": 1, "data": "x"})),
                                                                                  [Unauthenticated, Hidden,    Forbidden, Forbidden,   Forbidden, Forbidden]),
        row(Method::POST,  format!("/api/v1/agent/jobs/{job_id}/finish"), Some(json!({"attempt": 1, "exit_code": 0})),
                                                                                  [Unauthenticated, Hidden,    Forbidden, Forbidden,   Forbidden, Forbidden]),
        // The enrollment token in the body is the credential; a made-up one is refused for all.
        row(Method::POST,  "/api/v1/agent/enroll", Some(json!({"token": "fyenroll_made_up"})),
                                                                                  [Unauthenticated, Unauthenticated, Unauthenticated, Unauthenticated, Unauthenticated, Unauthenticated]),
        // So is a launch's secret on a cloud instance.
        row(Method::POST,  "/api/v1/agent/enroll", Some(json!({"launch_secret": "fylaunch_made_up", "instance_id": "i-1"})),
                                                                                  [Unauthenticated, Unauthenticated, Unauthenticated, Unauthenticated, Unauthenticated, Unauthenticated]),
        // The agent binary holds no secret: anyone may download it.
        row(Method::GET,   "/api/v1/agent/binaries/x86_64", None,                 [In,              In,        In,        In,          In,        In]),
        row(Method::GET,   "/api/v1/clouds", None,                                [Unauthenticated, Forbidden, Forbidden, Forbidden,   Forbidden, In]),
        row(Method::GET,   "/api/v1/cloud-instances", None,                       [Unauthenticated, Forbidden, Forbidden, Forbidden,   Forbidden, In]),
        row(Method::POST,  "/api/v1/cloud-imports", Some(json!({"account": "aws-matrix", "region": "us-east-1", "instance_ids": ["i-1"]})),
                                                                                  [Unauthenticated, Forbidden, Forbidden, Forbidden,   Forbidden, In]),
        row(Method::GET,   format!("/api/v1/cloud-imports/{}", uuid::Uuid::now_v7()), None,
                                                                                  [Unauthenticated, Forbidden, Forbidden, Forbidden,   Forbidden, Hidden]),
        row(Method::POST,  "/api/v1/agent/heartbeat", Some(heartbeat),            [Unauthenticated, In,        Forbidden, Forbidden,   Forbidden, Forbidden]),
        // Donor A's machine in the foundation's lab: it may read it, not act on it.
        row(Method::GET,   format!("/api/v1/machines/{lab_machine}"), None,       [Unauthenticated, Forbidden, In,        Hidden,      In,        In]),
        row(Method::PATCH, format!("/api/v1/machines/{lab_machine}/labels"), Some(json!({"set": {"k": "v"}})),
                                                                                  [Unauthenticated, Forbidden, Forbidden, Hidden,      Forbidden, In]),
        row(Method::POST,  format!("/api/v1/machines/{lab_machine}/enrollment-token"), None,
                                                                                  [Unauthenticated, Forbidden, Forbidden, Hidden,      Forbidden, In]),
        row(Method::POST,  format!("/api/v1/machines/{lab_machine}/ssh-probe"), None,
                                                                                  [Unauthenticated, Forbidden, Forbidden, Hidden,      Forbidden, In]),
        row(Method::DELETE, format!("/api/v1/machines/{lab_machine}/agent"), None,
                                                                                  [Unauthenticated, Forbidden, Forbidden, Hidden,      Forbidden, In]),
        // Near the end: renewing replaces the agent's credential.
        row(Method::POST,  "/api/v1/agent/credential", None,                      [Unauthenticated, In,        Forbidden, Forbidden,   Forbidden, Forbidden]),
        // And after it: cutting the agent off revokes that credential.
        row(Method::DELETE, format!("/api/v1/machines/{machine_id}/agent"), None,
                                                                                  [Unauthenticated, Forbidden, Forbidden, Hidden,      In,        In]),
        // Last: logging out ends the sessions every later row would use. (The agent was cut
        // off above.)
        row(Method::POST,  "/api/v1/auth/logout", None,                           [Unauthenticated, Unauthenticated, Forbidden, In,    In,        In]),
    ];

    let tokens = [
        None,
        Some(agent.as_str()),
        Some(w.ci.as_str()),
        Some(b.token.as_str()),
        Some(a.token.as_str()),
        Some(w.admin.as_str()),
    ];
    let mut failures = Vec::new();
    for row in &rows {
        for (i, caller) in CALLERS.iter().enumerate() {
            let response = app.request(row.method.clone(), &row.path, tokens[i], row.body.as_ref()).await;
            if !row.expect[i].accepts(response.status) {
                failures.push(format!(
                    "{} {} as {caller}: expected {:?}, got {} {}",
                    row.method, row.path, row.expect[i], response.status, response.text
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{} cells failed:\n{}", failures.len(), failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_never_show_another_donors_data() {
    let app = TestApp::spawn().await;
    let w = app.world().await;
    app.post("/api/v1/donations", &w.a.token, usage_right_form(&w.a.site_id, "A-1", vec![machine("riscv64", "A-M1")]))
        .await
        .expect(201);
    app.post("/api/v1/donations", &w.b.token, usage_right_form(&w.b.site_id, "B-1", vec![machine("aarch64", "B-M1")]))
        .await
        .expect(201);

    for path in
        ["/api/v1/donations", "/api/v1/machines", "/api/v1/donors", "/api/v1/users", "/api/v1/sites", "/api/v1/audit"]
    {
        let seen_by_b = app.get(path, &w.b.token).await.expect(200);
        assert!(!seen_by_b.text.contains(&w.a.id), "{path} shows donor A's id to donor B: {}", seen_by_b.text);
        assert!(!seen_by_b.text.contains("A-M1"), "{path} shows donor A's machine to donor B");
        let seen_by_admin = app.get(path, &w.admin).await.expect(200);
        assert!(seen_by_admin.text.contains(&w.a.id) || path.ends_with("sites"), "{path} hides donor A from ops");
    }
    // Asking for another donor's data by filter is refused, not silently emptied.
    for path in ["/api/v1/donations", "/api/v1/machines", "/api/v1/audit"] {
        let asked = app.get(&format!("{path}?donor_id={}", w.a.id), &w.b.token).await.expect(422);
        assert_eq!(asked.fields(), ["donor_id"]);
    }
}
