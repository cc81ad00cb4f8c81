//! Clouds with real parts: moto's EC2 server for AWS, and fakes of Huawei Cloud and CTyun that
//! check every request's signature with the vendors' official SDKs. Real `fleetyard-agent`
//! processes play the booted instances. Bursts go to the cheapest cloud in batched calls and
//! become usable leases; failures fail over; budgets, boot timeouts, releases, imports, orphans
//! and lost instances are handled; nothing is ever left running by mistake.

use std::sync::Arc;
use std::time::Duration;

use fleetyard::config::Config;
use fleetyard::config::clouds::{AccountConfig, FlavourConfig, ImageConfig, RegionConfig};
use fleetyard::domain::cloud::Market;
use fleetyard::domain::{Arch, CloudProvider};
use fleetyard::schedules::{cloud_reconcile, liveness};
use fleetyard_tests::clouds::{ACCESS_KEY, Booter, Emulator, SECRET_KEY};
use fleetyard_tests::fixtures::World;
use fleetyard_tests::{Response, TestApp};
use serde_json::{Value, json};
use tempfile::TempDir;

/// The key files every test account reads its credentials from, and the agent binaries the
/// server hands out (the booter runs the real agent; these only need a digest).
fn key_files() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ak"), ACCESS_KEY).unwrap();
    std::fs::write(dir.path().join("sk"), SECRET_KEY).unwrap();
    for arch in ["x86_64", "aarch64"] {
        std::fs::write(dir.path().join(format!("fleetyard-agent-{arch}")), format!("agent for {arch}")).unwrap();
    }
    dir
}

fn flavour(name: &str, arch: Arch, price: f64, market: Market) -> FlavourConfig {
    FlavourConfig {
        name: name.into(),
        arch,
        cores: 4,
        memory_gib: 8,
        disk_gib: 40,
        hourly_price: price,
        market,
        labels: Default::default(),
        min_idle: 0,
    }
}

fn image(id: &str, arch: Arch) -> ImageConfig {
    ImageConfig { id: id.into(), arch, os: "openEuler 24.03 LTS".into(), ssh_user: "root".into() }
}

fn region(name: &str, endpoint: &str, flavours: Vec<FlavourConfig>) -> RegionConfig {
    RegionConfig {
        name: name.into(),
        endpoint: Some(endpoint.into()),
        project_id: None,
        zone: None,
        vpc_id: None,
        subnet_id: None,
        security_group_id: None,
        disk_type: None,
        rate_limits: Default::default(),
        flavours,
        images: vec![image("img-x86", Arch::X86_64), image("img-arm", Arch::Aarch64)],
    }
}

fn account(name: &str, provider: CloudProvider, keys: &TempDir, regions: Vec<RegionConfig>) -> AccountConfig {
    AccountConfig {
        name: name.into(),
        provider,
        access_key_env: None,
        access_key_file: Some(keys.path().join("ak")),
        secret_key_env: None,
        secret_key_file: Some(keys.path().join("sk")),
        max_instances: 20,
        regions,
        credentials: None,
    }
}

/// A Huawei Cloud region: its project id names it in the fake.
fn huawei_region(name: &str, endpoint: &str, flavours: Vec<FlavourConfig>) -> RegionConfig {
    RegionConfig {
        project_id: Some(format!("project-{name}")),
        vpc_id: Some("vpc-test".into()),
        subnet_id: Some("subnet-test".into()),
        ..region(name, endpoint, flavours)
    }
}

fn ctyun_region(name: &str, endpoint: &str, flavours: Vec<FlavourConfig>) -> RegionConfig {
    RegionConfig {
        zone: Some(format!("{name}-az1")),
        vpc_id: Some("vpc-test".into()),
        subnet_id: Some("subnet-test".into()),
        ..region(name, endpoint, flavours)
    }
}

/// A server with three clouds configured, the emulators, and a booter playing the instances.
struct Clouds {
    app: TestApp,
    w: World,
    moto: Arc<Emulator>,
    huawei: Arc<Emulator>,
    ctyun: Arc<Emulator>,
    booter: Booter,
    _keys: TempDir,
}

/// The prices below make CTyun the cheapest for x86_64, then Huawei Cloud's spot, then its
/// on-demand, then AWS; tests move them with `adjust`.
async fn clouds(adjust: impl FnOnce(&mut Config)) -> Clouds {
    let (moto, huawei, ctyun) = tokio::join!(Emulator::moto(), Emulator::huawei(), Emulator::ctyun());
    let (moto, huawei, ctyun) = (Arc::new(moto), Arc::new(huawei), Arc::new(ctyun));
    let keys = key_files();
    let app = TestApp::spawn_at(|config, url| {
        let c = &mut config.clouds;
        c.agent_server_url = url.to_owned();
        c.agent_binaries_dir = Some(keys.path().to_owned());
        c.batch_window_millis = 200;
        c.boot_timeout_secs = 60;
        c.attempt_timeout_secs = 10;
        c.tenant_budgets.insert("sig-ci".into(), 100.0);
        c.accounts = vec![
            account(
                "aws-test",
                CloudProvider::Aws,
                &keys,
                vec![region(
                    "us-east-1",
                    &moto.url,
                    vec![
                        flavour("c6i.xlarge", Arch::X86_64, 0.17, Market::OnDemand),
                        flavour("m7g.xlarge", Arch::Aarch64, 0.16, Market::OnDemand),
                    ],
                )],
            ),
            account(
                "huawei-test",
                CloudProvider::HuaweiCloud,
                &keys,
                vec![
                    huawei_region(
                        "cn-north-4",
                        &huawei.url,
                        vec![
                            flavour("c7.xlarge.2", Arch::X86_64, 0.12, Market::OnDemand),
                            flavour("c7.xlarge.2", Arch::X86_64, 0.05, Market::Spot),
                        ],
                    ),
                    huawei_region(
                        "cn-east-3",
                        &huawei.url,
                        vec![flavour("c7.xlarge.2", Arch::X86_64, 0.13, Market::OnDemand)],
                    ),
                ],
            ),
            account(
                "ctyun-test",
                CloudProvider::Ctyun,
                &keys,
                vec![ctyun_region(
                    "cn-huadong1",
                    &ctyun.url,
                    vec![flavour("s7.xlarge.2", Arch::X86_64, 0.04, Market::OnDemand)],
                )],
            ),
        ];
        config.schedules.enabled = false;
        adjust(config);
    })
    .await;
    let w = app.world().await;
    let booter = Booter::start(vec![
        (moto.clone(), vec!["us-east-1".into()]),
        (huawei.clone(), Vec::new()),
        (ctyun.clone(), Vec::new()),
    ]);
    Clouds { app, w, moto, huawei, ctyun, booter, _keys: keys }
}

/// Removes every account but `name` (and sets its region list as given).
fn only(config: &mut Config, name: &str) {
    config.clouds.accounts.retain(|a| a.name == name);
}

fn runner(arch: &str) -> Value {
    json!({
        "requirements": { "arch": arch, "min_cores": 2 }, "purpose": "ci", "duration_minutes": 60,
        "tenant": "sig-ci", "max_lab_wait_minutes": 0
    })
}

impl Clouds {
    async fn ask(&self, body: Value) -> Response {
        self.app.post("/api/v1/leases", &self.w.ci, body).await
    }

    async fn lease(&self, id: &str) -> Value {
        self.app.get(&format!("/api/v1/leases/{id}"), &self.w.ci).await.expect(200).body
    }

    /// Runs the liveness sweep (the schedules are off) while waiting for `check` to hold.
    async fn until(&self, what: &str, seconds: u64, mut check: impl AsyncFnMut(&Self) -> bool) {
        let until = tokio::time::Instant::now() + Duration::from_secs(seconds);
        while tokio::time::Instant::now() < until {
            liveness::sweep(&self.app.state).await.expect("the liveness sweep");
            if check(self).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let instances = self.instances("").await;
        let clouds = self.clouds().await;
        panic!("waited {seconds} s for {what}; instances: {instances:#?}; clouds: {clouds:#}");
    }

    async fn instances(&self, query: &str) -> Vec<Value> {
        let page = self.app.get(&format!("/api/v1/cloud-instances?limit=200{query}"), &self.w.admin).await.expect(200);
        page.body["items"].as_array().cloned().unwrap_or_default()
    }

    async fn clouds(&self) -> Value {
        self.app.get("/api/v1/clouds", &self.w.admin).await.expect(200).body
    }

    /// Launch calls the fake received, successful ones only.
    async fn creates(&self, fake: &Emulator) -> Vec<Value> {
        fake.requests().await.into_iter().filter(|r| r["op"] == "create" && r["status"] == 200).collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_goes_to_the_cheapest_cloud_in_one_batched_call_and_becomes_usable_leases() {
    let c = clouds(|_| {}).await;
    // Five x86_64 runners at once; no lab machine exists, so all five go to a cloud.
    let asks = (0..5).map(|_| c.ask(runner("x86_64")));
    let answers = futures_util::future::join_all(asks).await;
    let ids: Vec<String> =
        answers.iter().map(|a| a.clone().expect(202).body["id"].as_str().unwrap().to_owned()).collect();

    c.until("every lease to be granted", 60, async |c| {
        let mut granted = 0;
        for id in &ids {
            if c.lease(id).await["state"] == "granted" {
                granted += 1;
            }
        }
        granted == ids.len()
    })
    .await;
    // CTyun is the cheapest: one batch-create call for all five, every request signed right.
    let creates = c.creates(&c.ctyun).await;
    assert_eq!(creates.len(), 1, "{creates:?}");
    assert_eq!(creates[0]["count"], 5);
    assert!(c.ctyun.requests().await.iter().all(|r| r["signature_ok"] != false));
    assert!(c.creates(&c.huawei).await.is_empty());
    for id in &ids {
        let lease = c.lease(id).await;
        assert_eq!(lease["cloud"]["provider"], "ctyun", "{lease}");
        assert_eq!(lease["cloud"]["state"], "ready");
        assert!(lease["connection"]["host"].as_str().is_some_and(|h| h.starts_with("192.168.")), "{lease}");
        assert_eq!(lease["connection"]["user"], "root");
    }

    // Released, every instance is terminated.
    for id in &ids {
        c.app.post(&format!("/api/v1/leases/{id}/release"), &c.w.ci, json!({})).await.expect(200);
    }
    c.until("every instance to be terminated", 30, async |c| c.ctyun.instances(&[]).await.iter().all(|i| !i.alive))
        .await;
    c.until("the rows to say so", 30, async |c| c.instances("").await.iter().all(|i| i["state"] == "terminated")).await;
    let lease = c.lease(&ids[0]).await;
    assert!(lease["cloud"]["cost"].as_f64().unwrap() > 0.0, "each lease's cost is recorded: {lease}");
    let view = c.clouds().await;
    let ctyun = view["accounts"].as_array().unwrap().iter().find(|a| a["name"] == "ctyun-test").unwrap();
    let calls = &ctyun["regions"][0]["calls"];
    let launches = calls.as_array().unwrap().iter().find(|k| k["operation"] == "launch").unwrap();
    assert_eq!((launches["ok"].as_i64(), launches["throttled"].as_i64()), (Some(1), Some(0)), "{calls}");
    assert!(view["spend_by_tenant"]["sig-ci"].as_f64().unwrap() > 0.0, "{view}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_aws_a_burst_is_one_run_instances_call_and_release_terminates_in_moto() {
    let c = clouds(|config| only(config, "aws-test")).await;
    let asks = (0..3).map(|_| c.ask(runner("aarch64")));
    let ids: Vec<String> = futures_util::future::join_all(asks)
        .await
        .into_iter()
        .map(|a| a.expect(202).body["id"].as_str().unwrap().to_owned())
        .collect();
    c.until("the leases to be granted", 60, async |c| {
        let mut granted = 0;
        for id in &ids {
            granted += usize::from(c.lease(id).await["state"] == "granted");
        }
        granted == ids.len()
    })
    .await;
    let moto = c.moto.instances(&["us-east-1"]).await;
    assert_eq!(moto.iter().filter(|i| i.alive).count(), 3);
    for instance in &moto {
        assert_eq!(instance.tags["fleetyard-platform"], "fleetyard");
        assert!(instance.tags.contains_key("fleetyard-launch"));
        // Each instance of the batch was tagged with its row and lease after the launch.
        assert!(instance.tags.contains_key("fleetyard-instance") && instance.tags.contains_key("fleetyard-lease"));
    }
    let launches: Vec<String> = moto.iter().map(|i| i.tags["fleetyard-launch"].clone()).collect();
    assert!(launches.iter().all(|l| *l == launches[0]), "one RunInstances call for the three: {launches:?}");
    let view = c.clouds().await;
    let calls = &view["accounts"][0]["regions"][0]["calls"];
    assert!(calls.as_array().unwrap().iter().any(|k| k["operation"] == "launch" && k["ok"] == 1), "{calls}");

    for id in &ids {
        c.app.post(&format!("/api/v1/leases/{id}/release"), &c.w.ci, json!({})).await.expect(200);
    }
    c.until("moto to terminate them", 30, async |c| c.moto.instances(&["us-east-1"]).await.iter().all(|i| !i.alive))
        .await;
    // The reconcile finds nothing to do.
    let report = cloud_reconcile::reconcile(&c.app.state).await.unwrap();
    assert_eq!((report.orphans_terminated, report.lost, report.errors.len()), (0, 0, 0), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spot_falls_back_to_on_demand_and_a_throttled_region_fails_over_to_the_next() {
    let c = clouds(|config| only(config, "huawei-test")).await;
    // No spot capacity anywhere, and cn-north-4 throttles everything.
    c.huawei.fault(json!({ "op": "create", "kind": "capacity", "market": "spot", "times": -1 })).await;
    let spot_gone = c.ask(runner("x86_64")).await.expect(202);
    let id = spot_gone.body["id"].as_str().unwrap().to_owned();
    c.until("the lease to be granted", 60, async |c| c.lease(&id).await["state"] == "granted").await;
    let lease = c.lease(&id).await;
    assert_eq!(
        (lease["cloud"]["region"].as_str(), lease["cloud"]["market"].as_str()),
        (Some("cn-north-4"), Some("on_demand"))
    );

    c.huawei.fault(json!({ "region": "project-cn-north-4", "op": "any", "kind": "throttle", "times": -1 })).await;
    let throttled = c.ask(runner("x86_64")).await.expect(202);
    let id = throttled.body["id"].as_str().unwrap().to_owned();
    c.until("the second lease to be granted", 60, async |c| c.lease(&id).await["state"] == "granted").await;
    assert_eq!(c.lease(&id).await["cloud"]["region"], "cn-east-3");
    let view = c.clouds().await;
    let north = &view["accounts"][0]["regions"][0];
    assert!(
        north["unavailable"].as_array().unwrap().iter().any(|u| u["reason"].as_str().unwrap().contains("throttled")),
        "{north}"
    );
    assert!(north["calls"].as_array().unwrap().iter().any(|k| k["throttled"].as_i64() > Some(0)), "{north}");
    // Every request the fake saw carried a signature the official SDK accepts.
    assert!(c.huawei.requests().await.iter().all(|r| r["signature_ok"] != false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_batch_keeps_what_started_and_places_the_rest_elsewhere() {
    let c = clouds(|config| only(config, "huawei-test")).await;
    // Two of four on-demand servers in cn-north-4 start; spot is sold out.
    c.huawei.fault(json!({ "op": "create", "kind": "capacity", "market": "spot", "times": -1 })).await;
    c.huawei.fault(json!({ "region": "project-cn-north-4", "op": "create", "kind": "partial", "succeed": 2 })).await;
    let asks = (0..4).map(|_| c.ask(runner("x86_64")));
    let ids: Vec<String> = futures_util::future::join_all(asks)
        .await
        .into_iter()
        .map(|a| a.expect(202).body["id"].as_str().unwrap().to_owned())
        .collect();
    c.until("every lease to be granted", 90, async |c| {
        let mut granted = 0;
        for id in &ids {
            granted += usize::from(c.lease(id).await["state"] == "granted");
        }
        granted == ids.len()
    })
    .await;
    let mut regions = Vec::new();
    for id in &ids {
        regions.push(c.lease(id).await["cloud"]["region"].as_str().unwrap().to_owned());
    }
    regions.sort();
    assert_eq!(regions, ["cn-east-3", "cn-east-3", "cn-north-4", "cn-north-4"]);
    let failed = c.instances("&state=failed").await;
    let short = failed.iter().filter(|i| i["end_reason"].as_str().unwrap().contains("fewer instances")).count();
    assert_eq!(short, 2, "the two that never started: {failed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_budget_refuses_a_cloud_only_request_and_says_why_a_queued_one_waits() {
    let c =
        clouds(|config| config.clouds.tenant_budgets.insert("sig-poor".into(), 0.001).map(drop).unwrap_or(())).await;
    let before = c.app.row_counts().await;
    let mut cloud_only = runner("x86_64");
    cloud_only["tenant"] = json!("sig-poor");
    cloud_only["placement"] = json!("cloud");
    let refused = c.ask(cloud_only).await.expect(422);
    assert_eq!(refused.code(), "cloud-budget-exhausted");
    assert!(refused.body["message"].as_str().unwrap().contains("budget"), "{}", refused.text);
    assert_eq!(c.app.row_counts().await, before, "a refusal writes nothing");

    let mut any = runner("x86_64");
    any["tenant"] = json!("sig-poor");
    let queued = c.ask(any).await.expect(202);
    let note = queued.body["queue"]["cloud_note"].as_str().unwrap_or_default().to_owned();
    assert!(note.contains("budget") && note.contains("waiting for the labs"), "{}", queued.text);
    // No budget configured at all for a tenant: no cloud, said so.
    let mut unknown = runner("x86_64");
    unknown["tenant"] = json!("sig-unknown");
    let queued = c.ask(unknown).await.expect(202);
    assert!(queued.body["queue"]["cloud_note"].as_str().unwrap().contains("has no cloud budget"), "{}", queued.text);
    assert!(c.instances("").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_never_boots_is_terminated_and_its_lease_gets_another() {
    let c = clouds(|config| {
        only(config, "ctyun-test");
        config.clouds.boot_timeout_secs = 3;
        config.clouds.capacity_backoff_secs = 2;
    })
    .await;
    c.booter.pause(true);
    let id = c.ask(runner("x86_64")).await.expect(202).body["id"].as_str().unwrap().to_owned();
    c.until("the first instance to be given up", 30, async |c| c.instances("&state=terminated").await.len() == 1).await;
    let first = c.instances("&state=terminated").await.remove(0);
    assert!(first["end_reason"].as_str().unwrap().contains("boot timeout"), "{first}");
    // The offer is passed over for its backoff before it is tried again.
    let region = &c.clouds().await["accounts"][0]["regions"][0];
    assert!(region["unavailable"][0]["reason"].as_str().unwrap().contains("boot timeout"), "{region}");
    c.booter.pause(false);
    c.until("the lease to be granted on a second instance", 60, async |c| c.lease(&id).await["state"] == "granted")
        .await;
    assert_ne!(c.lease(&id).await["cloud"]["instance_id"], first["id"]);
    assert!(c.ctyun.instances(&[]).await.iter().filter(|i| i.alive).count() == 1, "the first is gone from the cloud");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn riscv64_waits_for_the_labs_with_an_estimate_and_never_goes_to_a_cloud() {
    let c = clouds(|_| {}).await;
    let machines = vec![fleetyard_tests::fixtures::pool_machine("riscv64", "RV-1", 8, 16)];
    c.app.ready_pool(&c.w, "ownership", None, machines).await;
    c.ask(runner("riscv64")).await.expect(201);
    let queued = c.ask(runner("riscv64")).await.expect(202);
    assert!(queued.body["queue"]["estimated_start_at"].is_string(), "{}", queued.text);
    assert_eq!(queued.body["queue"]["cloud_note"], "no cloud offers riscv64; waiting for the labs");
    let mut cloud_only = runner("loongarch64");
    cloud_only["placement"] = json!("cloud");
    let refused = c.ask(cloud_only).await.expect(422);
    assert_eq!(refused.body["message"], "no cloud offers loongarch64");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(c.instances("").await.is_empty());
    assert!(c.creates(&c.huawei).await.is_empty() && c.creates(&c.ctyun).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imported_server_joins_the_pool_and_is_never_terminated() {
    let c = clouds(|config| {
        only(config, "huawei-test");
        config.clouds.reconcile_grace_secs = 0;
    })
    .await;
    let existing = c
        .huawei
        .add_servers(
            "project-cn-north-4",
            json!([{ "name": "oe-builder-01", "flavor": "c7.xlarge.2", "image": "img-x86", "tags": { "team": "infra" } }]),
        )
        .await;
    let server_id = existing[0]["id"].as_str().unwrap().to_owned();
    let import = c
        .app
        .post(
            "/api/v1/cloud-imports",
            &c.w.admin,
            json!({ "account": "huawei-test", "region": "cn-north-4", "tag": { "key": "team", "value": "infra" } }),
        )
        .await
        .expect(202);
    let import_id = import.body["id"].as_str().unwrap().to_owned();
    c.until("the import to finish", 30, async |c| {
        c.app.get(&format!("/api/v1/cloud-imports/{import_id}"), &c.w.admin).await.body["state"] == "done"
    })
    .await;
    let done = c.app.get(&format!("/api/v1/cloud-imports/{import_id}"), &c.w.admin).await.body;
    let machine = done["machine_ids"][0].as_str().unwrap().to_owned();
    let view = c.app.get(&format!("/api/v1/machines/{machine}"), &c.w.admin).await.expect(200).body;
    assert_eq!((view["lifecycle"].as_str(), view["cpu_cores"].as_i64()), (Some("ready"), Some(4)), "{view}");
    assert!(view["donation_id"].is_null() && view["donation_model"].is_null());
    assert_eq!(view["labels"]["cloud"], "huawei_cloud");
    // Its agent is enrolled the usual way, and it takes leases like any machine.
    let token =
        c.app.post(&format!("/api/v1/machines/{machine}/enrollment-token"), &c.w.admin, json!({})).await.expect(201);
    let mut agent =
        fleetyard_tests::agent::AgentProcess::enroll(&c.app.base_url, token.body["token"].as_str().unwrap()).await;
    agent.start();
    c.until("the server to be healthy", 30, async |c| {
        c.app.get(&format!("/api/v1/machines/{machine}"), &c.w.admin).await.body["health"] == "healthy"
    })
    .await;
    let mut lab_only = runner("x86_64");
    lab_only["placement"] = json!("cloud");
    let granted = c.ask(lab_only).await.expect(201);
    assert_eq!(granted.body["machine_id"], json!(machine));
    let lease = granted.body["id"].as_str().unwrap();
    c.app.post(&format!("/api/v1/leases/{lease}/release"), &c.w.ci, json!({})).await.expect(200);
    for _ in 0..3 {
        fleetyard::provisioner::pass_now(&c.app.state).await.unwrap();
        let report = cloud_reconcile::reconcile(&c.app.state).await.unwrap();
        assert_eq!(report.orphans_terminated, 0, "{report:?}");
    }
    let server = c.huawei.servers().await.into_iter().find(|s| s["id"] == json!(server_id)).unwrap();
    assert_eq!(server["deleted"], false, "an imported server is never terminated");
    let view = c.app.get(&format!("/api/v1/machines/{machine}"), &c.w.admin).await.body;
    assert_eq!(view["lifecycle"], "ready", "back in the pool");
    agent.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconcile_reaps_orphans_and_requeues_a_lease_whose_instance_vanished() {
    let c = clouds(|config| {
        only(config, "ctyun-test");
        config.clouds.reconcile_grace_secs = 1;
    })
    .await;
    // Someone (a crashed deployment of the same platform) left a tagged instance behind.
    let orphan = c
        .ctyun
        .add_servers(
            "cn-huadong1",
            json!([{ "name": "fleetyard-0000deadbeef", "flavor": "s7.xlarge.2", "image": "img-x86",
                     "tags": { "fleetyard-platform": "fleetyard" } }]),
        )
        .await;
    let orphan_id = orphan[0]["id"].as_str().unwrap().to_owned();
    let id = c.ask(runner("x86_64")).await.expect(202).body["id"].as_str().unwrap().to_owned();
    c.until("the lease to be granted", 60, async |c| c.lease(&id).await["state"] == "granted").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let report = cloud_reconcile::reconcile(&c.app.state).await.unwrap();
    assert_eq!(report.orphans_terminated, 1, "{report:?}");
    let gone = c.ctyun.servers().await.into_iter().find(|s| s["id"] == json!(orphan_id)).unwrap();
    assert_eq!(gone["deleted"], true);

    // The leased instance vanishes behind Fleetyard's back: missing twice, it is lost, and
    // the lease goes back to the queue (and gets another instance).
    let lost = c.lease(&id).await["cloud"]["instance_id"].as_str().unwrap().to_owned();
    let row = c.instances("").await.into_iter().find(|i| i["id"] == json!(lost)).unwrap();
    c.ctyun.vanish(row["provider_id"].as_str().unwrap()).await;
    cloud_reconcile::reconcile(&c.app.state).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let report = cloud_reconcile::reconcile(&c.app.state).await.unwrap();
    assert_eq!(report.lost, 1, "{report:?}");
    let lease = c.lease(&id).await;
    assert!(
        lease["state"] == "queued" || lease["cloud"]["instance_id"] != json!(lost),
        "the lease is queued again: {lease}"
    );
    c.until("the lease to be granted again", 60, async |c| c.lease(&id).await["state"] == "granted").await;
    let row = c.instances("").await.into_iter().find(|i| i["id"] == json!(lost)).unwrap();
    assert_eq!(row["state"], "lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_on_a_cloud_instance_which_is_terminated_when_it_ends() {
    let c = clouds(|config| only(config, "ctyun-test")).await;
    let job = c
        .app
        .post(
            "/api/v1/jobs",
            &c.w.ci,
            json!({ "requirements": { "arch": "x86_64" }, "purpose": "build", "command": "echo built on the cloud",
                    "timeout_secs": 60, "tenant": "sig-ci", "placement": "cloud" }),
        )
        .await
        .expect(201);
    let id = job.body["id"].as_str().unwrap().to_owned();
    c.until("the job to succeed", 60, async |c| {
        c.app.get(&format!("/api/v1/jobs/{id}"), &c.w.ci).await.body["state"] == "succeeded"
    })
    .await;
    let output = c.app.get(&format!("/api/v1/jobs/{id}/output"), &c.w.ci).await;
    assert!(output.text.contains("built on the cloud"), "{}", output.text);
    c.until("its instance to be terminated", 30, async |c| c.ctyun.instances(&[]).await.iter().all(|i| !i.alive)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_pool_hands_out_a_ready_instance_at_once_and_refills() {
    let c = clouds(|config| {
        only(config, "ctyun-test");
        config.clouds.accounts[0].regions[0].flavours[0].min_idle = 1;
    })
    .await;
    c.until("a warm instance to be ready", 60, async |c| {
        c.instances("&state=ready").await.iter().any(|i| i["lease_id"].is_null())
    })
    .await;
    let granted = c.ask(runner("x86_64")).await.expect(201);
    assert_eq!(granted.body["state"], "granted");
    let lease = granted.body["id"].as_str().unwrap().to_owned();
    c.until("the pool to refill", 60, async |c| {
        c.instances("&state=ready").await.iter().filter(|i| i["lease_id"].is_null()).count() == 1
    })
    .await;
    let taken = c.lease(&lease).await;
    assert_eq!(taken["cloud"]["state"], "ready");
    c.app.post(&format!("/api/v1/leases/{lease}/release"), &c.w.ci, json!({})).await.expect(200);
    let instance = taken["cloud"]["instance_id"].clone();
    c.until("the used instance to be terminated", 30, async |c| {
        c.instances("&state=terminated").await.iter().any(|i| i["id"] == instance)
    })
    .await;
}

/// The clouds of `config`, as the TOML file a `fleetyard serve` process reads.
fn config_file(config: &Config, dir: &TempDir) -> std::path::PathBuf {
    #[derive(serde::Serialize)]
    struct File<'a> {
        clouds: &'a fleetyard::config::clouds::CloudsConfig,
    }
    let path = dir.path().join("fleetyard.toml");
    std::fs::write(&path, toml::to_string(&File { clouds: &config.clouds }).unwrap()).unwrap();
    path
}

/// A server killed at `point` of a launch of `count` instances on Huawei Cloud: its launch is
/// resumed or adopted by another replica, every instance ends up with a row, and no create
/// call is ever answered with new servers twice.
async fn killed_at(point: &str, count: usize) -> (Clouds, TestApp, std::path::PathBuf) {
    let c = clouds(|config| {
        only(config, "huawei-test");
        config.clouds.attempt_timeout_secs = 2;
        config.clouds.worker = false;
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let file = config_file(&c.app.state.config, &dir);
    let text = std::fs::read_to_string(&file).unwrap().replace("worker = false", "worker = true");
    std::fs::write(&file, text).unwrap();
    let mut doomed = fleetyard_tests::server::ServerProcess::start(&c.app, |command| {
        command.env("FLEETYARD_CONFIG", &file).env("FLEETYARD_TEST_CRASH_AT", point);
    })
    .await;
    let asks = (0..count).map(|_| doomed.post("/api/v1/leases", &c.w.ci, runner("x86_64")));
    for answer in futures_util::future::join_all(asks).await {
        answer.expect(202);
    }
    let status = doomed.exited(Duration::from_secs(30)).await;
    assert!(!status.success(), "the server aborted at {point}");
    // The replica that carries on: its worker is off until the test says otherwise.
    let other = c.app.replica_with(|_| {});
    (c, other, dir.path().to_path_buf())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_between_the_launch_call_and_its_commit_leaves_no_orphan_after_one_reconcile() {
    let (c, other, _dir) = killed_at("after-launch-call", 3).await;
    c.booter.pause(true);
    // The cloud made three servers, tagged with their launch; the database knows none of them.
    let made: Vec<_> = c.huawei.instances(&[]).await.into_iter().filter(|i| i.alive).collect();
    assert_eq!(made.len(), 3);
    assert!(c.instances("").await.iter().all(|i| i["provider_id"].is_null()));
    // Once the dead replica's claim on the launch has lapsed, one reconcile round adopts them.
    tokio::time::sleep(Duration::from_secs(13)).await;
    let report = cloud_reconcile::reconcile(&other.state).await.unwrap();
    assert_eq!((report.adopted, report.orphans_terminated), (3, 0), "{report:?}");
    let known: Vec<String> =
        c.instances("").await.iter().filter_map(|i| i["provider_id"].as_str().map(str::to_owned)).collect();
    for server in &made {
        assert!(known.contains(&server.id), "{} has a row", server.id);
    }
    assert_eq!(c.creates(&c.huawei).await.len(), 1, "one create call, never a second");
    // And the leases are served once the instances boot (with a worker to notice).
    let _worker = c.app.replica_with(|config| config.clouds.worker = true);
    c.booter.pause(false);
    c.until("the instances to become ready", 60, async |c| c.instances("&state=ready").await.len() == 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_before_the_launch_call_has_its_launch_resumed_with_the_same_token_once() {
    let (c, _other, _dir) = killed_at("before-launch-call", 2).await;
    assert!(c.huawei.instances(&[]).await.is_empty(), "the call was never made");
    // A replica whose worker runs resumes the launch once its claim lapses, with the same token.
    let worker = c.app.replica_with(|config| config.clouds.worker = true);
    c.until("the instances to become ready", 60, async |c| c.instances("&state=ready").await.len() == 2).await;
    let creates = c.creates(&c.huawei).await;
    assert_eq!(creates.len(), 1, "{creates:?}");
    assert_eq!(c.huawei.instances(&[]).await.len(), 2, "launched exactly once");
    drop(worker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_never_reach_logs_responses_or_the_audit_log() {
    let c = clouds(|config| {
        only(config, "ctyun-test");
        config.clouds.worker = false;
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let file = config_file(&c.app.state.config, &dir);
    let text = std::fs::read_to_string(&file).unwrap().replace("worker = false", "worker = true");
    std::fs::write(&file, text).unwrap();
    let log = dir.path().join("server.log");
    let stderr = std::fs::File::create(&log).unwrap();
    let server = fleetyard_tests::server::ServerProcess::start(&c.app, |command| {
        command
            .env("FLEETYARD_CONFIG", &file)
            .env("FLEETYARD_LOG_FILTER", "trace")
            .env("FLEETYARD_SCHEDULES__ENABLED", "true")
            .env("FLEETYARD_SCHEDULES__CLOUD_RECONCILE__SCHEDULE", "* * * * * *")
            .stderr(stderr);
    })
    .await;
    let id = server.post("/api/v1/leases", &c.w.ci, runner("x86_64")).await.expect(202).body["id"].clone();
    let id = id.as_str().unwrap().to_owned();
    c.until("the lease to be granted", 60, async |c| c.lease(&id).await["state"] == "granted").await;
    let mut seen = String::new();
    for path in ["/api/v1/clouds", "/api/v1/cloud-instances", "/api/v1/audit?limit=200", "/api/v1/schedules"] {
        seen.push_str(&server.get(path, &c.w.admin).await.expect(200).text);
    }
    seen.push_str(&c.lease(&id).await.to_string());
    seen.push_str(&std::fs::read_to_string(&log).unwrap());
    assert!(seen.len() > 10_000, "there was something to look through");
    for secret in [ACCESS_KEY, SECRET_KEY] {
        assert!(!seen.contains(secret), "`{secret}` leaked");
    }
    // The launch's secret is in the user data only: never logged, never returned.
    let user_data = c.ctyun.servers().await[0]["user_data"].as_str().unwrap().to_owned();
    let launch_secret =
        fleetyard_tests::clouds::bootstrap_of(&user_data).unwrap()["launch_secret"].as_str().unwrap().to_owned();
    assert!(!seen.contains(&launch_secret));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launch_secret_enrolls_each_of_its_instances_once_and_then_stops_working() {
    let c = clouds(|config| only(config, "ctyun-test")).await;
    c.booter.pause(true);
    let asks = (0..2).map(|_| c.ask(runner("x86_64")));
    for answer in futures_util::future::join_all(asks).await {
        answer.expect(202);
    }
    c.until("both instances to be booting", 30, async |c| c.instances("&state=booting").await.len() == 2).await;
    let servers = c.ctyun.servers().await;
    let bootstrap = fleetyard_tests::clouds::bootstrap_of(servers[0]["user_data"].as_str().unwrap()).unwrap();
    let secret = bootstrap["launch_secret"].as_str().unwrap();
    assert!(secret.starts_with("fylaunch_"));
    let enroll = async |instance: &str| {
        let body = json!({ "launch_secret": secret, "instance_id": instance });
        c.app.request(reqwest::Method::POST, "/api/v1/agent/enroll", None, Some(&body)).await
    };
    let (first, second) = (servers[0]["id"].as_str().unwrap(), servers[1]["id"].as_str().unwrap());
    assert_eq!(enroll("i-not-of-this-launch").await.expect(401).code(), "invalid-launch-secret");
    enroll(first).await.expect(200);
    assert_eq!(enroll(first).await.expect(401).code(), "invalid-launch-secret", "an instance enrolls once");
    enroll(second).await.expect(200);
    // Every instance of the launch has enrolled: the secret is spent.
    assert_eq!(enroll(second).await.expect(401).code(), "invalid-launch-secret");
    let neither = json!({ "launch_secret": secret });
    c.app.request(reqwest::Method::POST, "/api/v1/agent/enroll", None, Some(&neither)).await.expect(422);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launches_are_paced_by_the_rate_limit_and_an_account_keeps_to_its_cap() {
    let c = clouds(|config| {
        only(config, "aws-test");
        let aws = &mut config.clouds.accounts[0];
        aws.max_instances = 2;
        // One launch call, then one every two seconds.
        aws.regions[0].rate_limits.launch_calls = fleetyard::domain::cloud::Bucket { burst: 1.0, per_sec: 0.5 };
    })
    .await;
    c.booter.pause(true);
    // Two launches (two flavours) in one round: the second waits for the bucket.
    let (x86, arm) = tokio::join!(c.ask(runner("x86_64")), c.ask(runner("aarch64")));
    x86.expect(202);
    arm.expect(202);
    c.until("both to be launched", 30, async |c| c.instances("&state=booting").await.len() == 2).await;
    // When each launch took its tokens (and was written down, just before its call).
    #[derive(diesel::QueryableByName)]
    struct Launch {
        #[diesel(sql_type = diesel::sql_types::Timestamptz)]
        created_at: chrono::DateTime<chrono::Utc>,
    }
    let mut conn = c.app.pool().get().await.unwrap();
    let query = diesel::sql_query("SELECT created_at FROM cloud_launches ORDER BY created_at");
    let launches: Vec<Launch> = diesel_async::RunQueryDsl::load(query, &mut conn).await.unwrap();
    assert_eq!(launches.len(), 2);
    let gap = launches[1].created_at - launches[0].created_at;
    assert!(gap >= chrono::Duration::milliseconds(1500), "the second launch waited for a token: {gap}");
    // A third request finds the account at its cap, and is told so.
    let third = c.ask(runner("x86_64")).await.expect(202);
    let note = third.body["queue"]["cloud_note"].as_str().unwrap_or_default();
    assert!(note.contains("as many instances as they may"), "{}", third.text);
    let view = c.clouds().await;
    assert_eq!(view["accounts"][0]["instances_running"], 2);
    let limits = &view["accounts"][0]["regions"][0]["rate_limits"];
    assert_eq!(limits[0]["bucket"], "launch_calls");
    assert!(limits[0]["tokens"].as_f64().unwrap() <= 1.0, "{limits}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_instance_is_launched_without_an_agent_binary_to_install_on_it() {
    let empty = tempfile::tempdir().unwrap();
    let path = empty.path().to_owned();
    let c = clouds(move |config| {
        only(config, "ctyun-test");
        config.clouds.agent_binaries_dir = Some(path);
    })
    .await;
    let id = c.ask(runner("x86_64")).await.expect(202).body["id"].as_str().unwrap().to_owned();
    c.until("the intent to fail", 30, async |c| !c.instances("&state=failed").await.is_empty()).await;
    let failed = c.instances("&state=failed").await.remove(0);
    assert!(failed["end_reason"].as_str().unwrap().contains("no agent binary for x86_64"), "{failed}");
    assert!(c.creates(&c.ctyun).await.is_empty(), "no call was made");
    assert_eq!(c.lease(&id).await["state"], "queued");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ctyun_gateway_that_reads_eop_date_as_utc_is_answered_in_its_convention() {
    let utc = Arc::new(Emulator::ctyun_utc().await);
    let url = utc.url.clone();
    let c = clouds(move |config| {
        only(config, "ctyun-test");
        config.clouds.accounts[0].regions[0].endpoint = Some(url);
    })
    .await;
    let _booter = Booter::start(vec![(utc.clone(), Vec::new())]);
    let id = c.ask(runner("x86_64")).await.expect(202).body["id"].as_str().unwrap().to_owned();
    c.until("the lease to be granted", 60, async |c| c.lease(&id).await["state"] == "granted").await;
    let log = utc.requests().await;
    let refused = log.iter().filter(|r| r["status"] == 401).count();
    assert_eq!(refused, 1, "one refusal, then the other convention is kept: {log:?}");
}
