//! A small world to test against, built through the API itself: ops, two donors (each with
//! a user and a site), a foundation lab, a service account.

use fleetyard::db;
use fleetyard::domain::{MachineId, Role, UserId};
use serde_json::{Value, json};

use crate::TestApp;

/// A donor organisation with one logged-in user and one site of its own.
#[derive(Debug, Clone)]
pub struct DonorFixture {
    pub id: String,
    pub user_id: String,
    pub token: String,
    pub site_id: String,
}

#[derive(Debug, Clone)]
pub struct World {
    pub admin: String,
    pub admin_id: String,
    pub lab_site: String,
    pub a: DonorFixture,
    pub b: DonorFixture,
    /// A `ci` service-account token.
    pub ci: String,
    pub ci_token_id: String,
}

/// The password every fixture user has.
pub const PASSWORD: &str = "correct horse battery staple";

impl TestApp {
    /// An admin account written straight to the database (the API needs one to start from,
    /// as `fleetyard admin create-admin` does), and a session token for it.
    pub async fn bootstrap_admin(&self) -> (UserId, String) {
        let hash = fleetyard::auth::hash_password(PASSWORD.to_owned()).await.expect("hashing");
        let mut conn = self.state.pool.get().await.expect("db");
        let email = format!("ops-{}@fleetyard.test", uuid::Uuid::new_v4().simple());
        let user = db::users::insert(
            &mut conn,
            &db::users::NewUser {
                id: UserId::generate(),
                email: &email,
                display_name: "Ops",
                password_hash: &hash,
                role: Role::Admin,
                donor_id: None,
            },
        )
        .await
        .expect("inserting the first admin");
        (user.id, self.session_for(user.id))
    }

    /// Everything most tests need, created through the API.
    pub async fn world(&self) -> World {
        let (admin_id, admin) = self.bootstrap_admin().await;
        let lab = self
            .post(
                "/api/v1/sites",
                &admin,
                json!({
                    "name": "Foundation Lab", "kind": "foundation_lab", "country": "CN", "time_zone": "Asia/Shanghai"
                }),
            )
            .await
            .expect(201);
        let a = self.donor(&admin, "Plumtree Semiconductor", "Asia/Shanghai").await;
        let b = self.donor(&admin, "Westlake Open Hardware Lab", "Europe/Berlin").await;
        let issued = self
            .post(
                "/api/v1/service-tokens",
                &admin,
                json!({ "name": "ci-gate", "expires_in_days": 30, "tenants": ["*"] }),
            )
            .await
            .expect(201);
        World {
            admin,
            admin_id: admin_id.to_string(),
            lab_site: id_of(&lab.body),
            a,
            b,
            ci: issued.body["token"].as_str().expect("token").to_owned(),
            ci_token_id: id_of(&issued.body),
        }
    }

    /// A donor with a user (session token) and a donor site, created by ops.
    pub async fn donor(&self, admin: &str, name: &str, time_zone: &str) -> DonorFixture {
        let donor = self
            .post(
                "/api/v1/donors",
                admin,
                json!({
                    "name": name, "kind": "company", "time_zone": time_zone,
                    "contacts": [{ "name": "Mei", "email": "mei@example.org" }]
                }),
            )
            .await
            .expect(201);
        let id = id_of(&donor.body);
        let slug: String = name.to_lowercase().chars().filter(char::is_ascii_alphanumeric).collect();
        let user = self
            .post(
                "/api/v1/users",
                admin,
                json!({
                    "email": format!("staff@{slug}.example"), "display_name": "Staff", "password": PASSWORD,
                    "role": "donor", "donor_id": id
                }),
            )
            .await
            .expect(201);
        let user_id = id_of(&user.body);
        let token = self.session_for(UserId(user_id.parse().expect("uuid")));
        let site = self
            .post(
                "/api/v1/sites",
                admin,
                json!({
                    "name": format!("{name} site"), "kind": "donor_site", "donor_id": id, "time_zone": time_zone
                }),
            )
            .await
            .expect(201);
        DonorFixture { id, user_id, token, site_id: id_of(&site.body) }
    }
}

pub fn id_of(body: &Value) -> String {
    body["id"].as_str().unwrap_or_else(|| panic!("no id in {body}")).to_owned()
}

/// One machine for a donation form.
pub fn machine(arch: &str, asset_tag: &str) -> Value {
    json!({
        "arch": arch, "cpu_model": "Test CPU", "cpu_cores": 8, "memory_mib": 16384, "disk_gib": 256,
        "asset_tag": asset_tag, "labels": { "board": "test-board" }
    })
}

/// A usage-right donation form for `site` with the given machines.
pub fn usage_right_form(site: &str, reference: &str, machines: Vec<Value>) -> Value {
    json!({
        "model": "usage_right", "site_id": site, "agreement_ref": reference, "starts_on": "2026-01-01",
        "usage_policy": {
            "purposes": ["ci", "test"],
            "windows": [{ "days": ["sat", "sun"], "start": "00:00", "end": "24:00" }],
            "max_concurrent_leases": 2, "max_lease_minutes": 240
        },
        "machines": machines
    })
}

/// A foundation-lab donation form (`ownership` or `loan`) for `lab`.
pub fn lab_form(model: &str, lab: &str, reference: &str, machines: Vec<Value>) -> Value {
    let mut form = json!({
        "model": model, "site_id": lab, "agreement_ref": reference, "starts_on": "2026-01-01", "machines": machines
    });
    if model == "loan" {
        form["ends_on"] = json!("2027-06-30");
    }
    form
}

/// A machine taken through the API: registered by donor A, approved by ops (which issues its
/// enrollment token), onboarded and, unless `stop_at` says otherwise, made ready.
#[derive(Debug, Clone)]
pub struct ApprovedMachine {
    pub id: String,
    pub donation_id: String,
    pub enrollment_token: String,
}

/// What this very machine is, so an agent or probe running here reports no contradiction.
pub fn this_host_machine(asset_tag: &str) -> Value {
    json!({
        "arch": std::env::consts::ARCH, "cpu_model": "Test host", "cpu_cores": 1, "memory_mib": 256, "disk_gib": 1,
        "asset_tag": asset_tag
    })
}

/// A heartbeat body as an agent sends it once the server has its facts: idle metrics, sent now.
pub fn heartbeat_without_facts() -> Value {
    json!({
        "agent_version": "test", "sent_at": chrono::Utc::now(),
        "metrics": { "load1": 0.0, "load5": 0.0, "load15": 0.0, "uptime_secs": 1, "disk_used_pct": 1.0, "memory_available_mib": 1 }
    })
}

/// A heartbeat body carrying `facts`.
pub fn heartbeat(facts: Value) -> Value {
    let mut beat = heartbeat_without_facts();
    beat["facts"] = facts;
    beat
}

impl TestApp {
    pub async fn machine_in(&self, w: &World, machine: Value, stop_at: &str) -> ApprovedMachine {
        let reference = format!("M-{}", uuid::Uuid::new_v4().simple());
        let created = self
            .post("/api/v1/donations", &w.a.token, usage_right_form(&w.a.site_id, &reference, vec![machine]))
            .await
            .expect(201);
        let donation_id = id_of(&created.body);
        let approved = self
            .post(&format!("/api/v1/donations/{donation_id}/actions"), &w.admin, json!({ "action": "approve" }))
            .await
            .expect(200);
        let id = id_of(&created.body["machines"][0]);
        let enrollment_token =
            approved.body["enrollment_tokens"][0]["token"].as_str().expect("an enrollment token").to_owned();
        for to in ["onboarding", "ready"] {
            if stop_at == "approved" || (stop_at == "onboarding" && to == "ready") {
                break;
            }
            self.post(&format!("/api/v1/machines/{id}/transitions"), &w.admin, json!({ "to": to })).await.expect(200);
        }
        ApprovedMachine { id, donation_id, enrollment_token }
    }

    /// The machine as ops see it (with its monitoring block).
    pub async fn machine(&self, w: &World, id: &str) -> Value {
        self.get(&format!("/api/v1/machines/{id}"), &w.admin).await.expect(200).body
    }

    /// Event types recorded so far, oldest first.
    pub async fn event_types(&self, w: &World) -> Vec<String> {
        let page = self.get("/api/v1/events?limit=200", &w.admin).await.expect(200);
        let mut types: Vec<String> =
            page.body["items"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap().to_owned()).collect();
        types.reverse();
        types
    }
}

impl TestApp {
    /// Machines registered by donor A in one donation (see [`ready_pool`](Self::ready_pool)),
    /// reviewed and taken to `ready`, with no heartbeat yet. Returns each machine's id and
    /// one-time enrollment token.
    pub async fn onboard(
        &self,
        w: &World,
        model: &str,
        policy: Option<Value>,
        machines: Vec<Value>,
    ) -> Vec<(String, String)> {
        let reference = format!("P-{}", uuid::Uuid::new_v4().simple());
        let form = if model == "usage_right" {
            let mut form = usage_right_form(&w.a.site_id, &reference, machines);
            if let Some(policy) = policy {
                form["usage_policy"] = policy;
            }
            form
        } else {
            lab_form(model, &w.lab_site, &reference, machines)
        };
        let created = self.post("/api/v1/donations", &w.a.token, form).await.expect(201);
        let donation = id_of(&created.body);
        let approved = self
            .post(&format!("/api/v1/donations/{donation}/actions"), &w.admin, json!({ "action": "approve" }))
            .await
            .expect(200);
        let ids: Vec<String> = created.body["machines"].as_array().unwrap().iter().map(id_of).collect();
        let path = if model == "usage_right" {
            vec![json!({ "to": "onboarding" }), json!({ "to": "ready" })]
        } else {
            vec![
                json!({ "to": "in_transit" }),
                json!({ "to": "received", "location": { "rack": "R1", "slot": "U1" } }),
                json!({ "to": "onboarding" }),
                json!({ "to": "ready" }),
            ]
        };
        for id in &ids {
            for step in &path {
                self.post(&format!("/api/v1/machines/{id}/transitions"), &w.admin, step.clone()).await.expect(200);
            }
        }
        let tokens = approved.body["enrollment_tokens"].as_array().expect("enrollment tokens");
        ids.into_iter()
            .map(|id| {
                let token = tokens.iter().find(|t| t["machine_id"] == json!(id)).expect("a token per machine");
                let token = token["token"].as_str().unwrap().to_owned();
                (id, token)
            })
            .collect()
    }

    /// Machines registered by donor A in one donation (`usage_right` with `policy`, or the
    /// foundation-lab `ownership`/`loan`), taken through review and onboarding to `ready`, and
    /// made healthy by one real heartbeat each and a liveness sweep. Returns their ids.
    pub async fn ready_pool(&self, w: &World, model: &str, policy: Option<Value>, machines: Vec<Value>) -> Vec<String> {
        let ids: Vec<String> =
            self.onboard(w, model, policy, machines.clone()).await.into_iter().map(|(id, _)| id).collect();
        for (id, declared) in ids.iter().zip(&machines) {
            let credential = self.agent_token(MachineId(id.parse().unwrap())).await;
            let beat = json!({
                "agent_version": "test", "sent_at": chrono::Utc::now(),
                "facts": {
                    "arch": declared["arch"], "kernel": "6.6.0", "os_release": "openEuler 24.03 (LTS)",
                    "cpu_model": declared["cpu_model"], "cpu_count": declared["cpu_cores"],
                    "memory_mib": declared["memory_mib"], "disk_gib": declared["disk_gib"]
                },
                "metrics": { "load1": 0.1, "load5": 0.1, "load15": 0.1, "uptime_secs": 100,
                             "disk_used_pct": 10.0, "memory_available_mib": 1000 }
            });
            self.post("/api/v1/agent/heartbeat", &credential, beat).await.expect(200);
        }
        // The batch writer stores heartbeats every few milliseconds; the sweep then judges them.
        for _ in 0..50 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            fleetyard::schedules::liveness::sweep(&self.state).await.expect("the liveness sweep");
            let mut healthy = 0;
            for id in &ids {
                if self.machine(w, id).await["health"] == "healthy" {
                    healthy += 1;
                }
            }
            if healthy == ids.len() {
                return ids;
            }
        }
        panic!("the pool did not turn healthy");
    }
}

/// A machine for a pool: `arch` with `cores` and `memory_gib`, reachable over SSH at a
/// documentation address (nothing connects to it in these tests).
pub fn pool_machine(arch: &str, asset_tag: &str, cores: i32, memory_gib: i64) -> Value {
    json!({
        "arch": arch, "cpu_model": "Pool CPU", "cpu_cores": cores, "memory_mib": memory_gib * 1024, "disk_gib": 200,
        "asset_tag": asset_tag, "labels": { "board": "pool" },
        "ssh": { "host": "192.0.2.10", "port": 2222, "user": "runner" }
    })
}
