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

/// The key files every test account reads its credentials from.
fn key_files() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ak"), ACCESS_KEY).unwrap();
    std::fs::write(dir.path().join("sk"), SECRET_KEY).unwrap();
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
                vec![ctyun_region("cn-huadong1", &ctyun.url, vec![flavour("s7.xlarge.2", Arch::X86_64, 0.04, Market::OnDemand)])],
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
        panic!("waited {seconds} s for {what}");
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
    let ids: Vec<String> = answers.iter().map(|a| a.clone().expect(202).body["id"].as_str().unwrap().to_owned()).collect();

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
    c.until("every instance to be terminated", 30, async |c| {
        c.ctyun.instances(&[]).await.iter().all(|i| !i.alive)
    })
    .await;
    c.until("the rows to say so", 30, async |c| {
        c.instances("").await.iter().all(|i| i["state"] == "terminated")
    })
    .await;
    let lease = c.lease(&ids[0]).await;
    assert!(lease["cloud"]["cost"].as_f64().unwrap() > 0.0, "each lease's cost is recorded: {lease}");
    let view = c.clouds().await;
    let ctyun = view["accounts"].as_array().unwrap().iter().find(|a| a["name"] == "ctyun-test").unwrap();
    let calls = &ctyun["regions"][0]["calls"];
    let launches = calls.as_array().unwrap().iter().find(|k| k["operation"] == "launch").unwrap();
    assert_eq!((launches["ok"].as_i64(), launches["throttled"].as_i64()), (Some(1), Some(0)), "{calls}");
    assert!(view["spend_by_tenant"]["sig-ci"].as_f64().unwrap() > 0.0, "{view}");
}
