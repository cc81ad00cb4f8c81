//! The clouds the tests talk to, each a real process on a loopback port: moto's EC2 server
//! (`moto[ec2,server]` from PyPI) for AWS, and the Huawei Cloud and CTyun fakes of
//! `deploy/cloud-fakes`, which check every request's signature with the vendor's official
//! SDK. And [`Booter`], which plays the instances' boot: when a cloud shows a new instance it
//! reads the instance's user data, as cloud-init would, and starts a real `fleetyard-agent`
//! that enrolls with the launch's secret and the instance's id.
//!
//! The Python tools live in the venv `deploy/need-python.sh` makes (`deploy/test` runs it and
//! passes its `bin` directory in `FLEETYARD_TEST_PYTHON_BIN`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_ec2::types::{InstanceAttributeName, InstanceStateName};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::agent::AgentProcess;
use crate::sshd::free_port;

/// The keys the emulators accept (moto any; the fakes these).
pub const ACCESS_KEY: &str = "FLEETYARDTESTACCESSKEY";
pub const SECRET_KEY: &str = "fleetyard-test-secret-key-0123456789abcdef";

fn python_bin() -> PathBuf {
    let dir = std::env::var("FLEETYARD_TEST_PYTHON_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.local/venv/bin"));
    assert!(
        dir.join("python").exists(),
        "no Python venv at {}; run deploy/need-python.sh (deploy/test does)",
        dir.display()
    );
    dir
}

fn fakes_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/cloud-fakes")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Moto,
    Huawei,
    Ctyun,
}

/// One cloud emulator process.
pub struct Emulator {
    pub kind: Kind,
    /// Its base URL, `http://127.0.0.1:PORT`.
    pub url: String,
    http: reqwest::Client,
    /// `None` for an emulator some other process started.
    _child: Option<Child>,
}

impl Emulator {
    /// An emulator already running at `url` (the fakes share their control API, so either
    /// fake kind reads both).
    pub fn at(kind: Kind, url: &str) -> Emulator {
        Emulator { kind, url: url.trim_end_matches('/').to_owned(), http: reqwest::Client::new(), _child: None }
    }

    /// moto's EC2 server.
    pub async fn moto() -> Emulator {
        let port = free_port();
        let child = Command::new(python_bin().join("moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("starting moto_server");
        let emulator = Emulator {
            kind: Kind::Moto,
            url: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
            _child: Some(child),
        };
        for _ in 0..300 {
            if emulator.http.get(format!("{}/moto-api/", emulator.url)).send().await.is_ok() {
                return emulator;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("moto_server did not start on port {port}");
    }

    /// The Huawei Cloud ECS fake.
    pub async fn huawei() -> Emulator {
        Self::fake(Kind::Huawei, "huawei_fake.py", &[]).await
    }

    /// The CTyun ECS fake.
    pub async fn ctyun() -> Emulator {
        Self::fake(Kind::Ctyun, "ctyun_fake.py", &[]).await
    }

    /// The CTyun ECS fake, reading `Eop-date` as UTC (as an official SDK on a UTC host stamps
    /// it) rather than Beijing time (as the EOP guide says).
    pub async fn ctyun_utc() -> Emulator {
        Self::fake(Kind::Ctyun, "ctyun_fake.py", &["--eop-date-utc-offset-hours", "0"]).await
    }

    async fn fake(kind: Kind, script: &str, extra: &[&str]) -> Emulator {
        let mut child = Command::new(python_bin().join("python"))
            .arg(fakes_dir().join(script))
            .args(["--port", "0", "--ak", ACCESS_KEY, "--sk", SECRET_KEY])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("starting a cloud fake");
        let stdout = child.stdout.take().expect("its stdout");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("the fake did not start within 30 s")
            .expect("reading the fake's stdout")
            .expect("the fake printed nothing");
        let url = line.strip_prefix("listening ").expect("`listening URL`").trim().to_owned();
        Emulator { kind, url, http: reqwest::Client::new(), _child: Some(child) }
    }

    async fn control(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.http.request(method, format!("{}{path}", self.url));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("the fake's control API");
        assert!(response.status().is_success(), "{path}: {}", response.status());
        response.json().await.unwrap_or(Value::Null)
    }

    /// Queues a fault (see `deploy/cloud-fakes/fakebase.py`).
    pub async fn fault(&self, spec: Value) {
        assert_ne!(self.kind, Kind::Moto, "moto takes no faults");
        self.control(reqwest::Method::POST, "/_fake/faults", Some(spec)).await;
    }

    pub async fn clear_faults(&self) {
        self.control(reqwest::Method::DELETE, "/_fake/faults", None).await;
    }

    /// Every server the fake has made, deleted ones included (`deleted: true`).
    pub async fn servers(&self) -> Vec<Value> {
        self.control(reqwest::Method::GET, "/_fake/servers", None).await.as_array().cloned().unwrap_or_default()
    }

    /// The fake's request log.
    pub async fn requests(&self) -> Vec<Value> {
        self.control(reqwest::Method::GET, "/_fake/requests", None).await.as_array().cloned().unwrap_or_default()
    }

    /// Servers that existed before Fleetyard: `{"name", "flavor", "image", "tags"}` each.
    pub async fn add_servers(&self, region: &str, servers: Value) -> Vec<Value> {
        let made = self
            .control(reqwest::Method::POST, "/_fake/servers", Some(json!({ "region": region, "servers": servers })))
            .await;
        made.as_array().cloned().or_else(|| made["servers"].as_array().cloned()).unwrap_or_default()
    }

    /// Makes a server vanish, as if someone deleted it behind Fleetyard's back.
    pub async fn vanish(&self, id: &str) {
        self.control(reqwest::Method::POST, &format!("/_fake/servers/{id}/delete"), None).await;
    }

    /// An EC2 client for moto.
    pub fn ec2(&self, region: &str) -> aws_sdk_ec2::Client {
        let config = aws_sdk_ec2::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(region.to_owned()))
            .credentials_provider(Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "test"))
            .endpoint_url(self.url.clone())
            .build();
        aws_sdk_ec2::Client::from_conf(config)
    }

    /// What the emulator runs: `(id, region, alive, user data)` for each instance it ever made.
    pub async fn instances(&self, regions: &[&str]) -> Vec<Instance> {
        match self.kind {
            Kind::Moto => {
                let mut found = Vec::new();
                for region in regions {
                    let ec2 = self.ec2(region);
                    let Ok(out) = ec2.describe_instances().send().await else { continue };
                    for i in out.reservations().iter().flat_map(|r| r.instances()) {
                        let id = i.instance_id().unwrap_or_default().to_owned();
                        let alive = !matches!(
                            i.state().and_then(|s| s.name()),
                            Some(InstanceStateName::Terminated | InstanceStateName::ShuttingDown)
                        );
                        let tags: BTreeMap<String, String> = i
                            .tags()
                            .iter()
                            .filter_map(|t| Some((t.key()?.to_owned(), t.value().unwrap_or_default().to_owned())))
                            .collect();
                        found.push(Instance { id, region: region.to_string(), alive, user_data: None, tags });
                    }
                }
                found
            }
            Kind::Huawei | Kind::Ctyun => self
                .servers()
                .await
                .into_iter()
                .map(|s| Instance {
                    id: s["id"].as_str().unwrap_or_default().to_owned(),
                    region: s["region"].as_str().unwrap_or_default().to_owned(),
                    alive: !s["deleted"].as_bool().unwrap_or(false),
                    user_data: s["user_data"].as_str().map(str::to_owned),
                    tags: s["tags"]
                        .as_object()
                        .map(|t| {
                            t.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned())).collect()
                        })
                        .unwrap_or_default(),
                })
                .collect(),
        }
    }

    /// An instance's user data (moto: asked for; the fakes: listed).
    async fn user_data(&self, instance: &Instance) -> Option<String> {
        match self.kind {
            Kind::Moto => {
                let ec2 = self.ec2(&instance.region);
                let out = ec2
                    .describe_instance_attribute()
                    .instance_id(&instance.id)
                    .attribute(InstanceAttributeName::UserData)
                    .send()
                    .await
                    .ok()?;
                let b64 = out.user_data()?.value()?.to_owned();
                String::from_utf8(STANDARD.decode(b64).ok()?).ok()
            }
            _ => instance.user_data.clone(),
        }
    }
}

/// An instance as an emulator shows it.
#[derive(Debug, Clone)]
pub struct Instance {
    pub id: String,
    pub region: String,
    pub alive: bool,
    pub user_data: Option<String>,
    pub tags: BTreeMap<String, String>,
}

/// The bootstrap file the user data writes, read back from a `#cloud-config` document.
pub fn bootstrap_of(user_data: &str) -> Option<Value> {
    let (first, rest) = user_data.split_once('\n')?;
    if first.trim() != "#cloud-config" {
        return None;
    }
    let doc: Value = serde_json::from_str(rest).ok()?;
    let file = doc["write_files"]
        .as_array()?
        .iter()
        .find(|f| f["path"].as_str().is_some_and(|p| p.ends_with("bootstrap.json")))?;
    serde_json::from_str(file["content"].as_str()?).ok()
}

/// Plays the boot of every new instance the emulators show: writes its bootstrap file and
/// runs `fleetyard-agent enroll --bootstrap FILE --instance-id ID`, then `fleetyard-agent run`,
/// as its cloud-init would. Paused, instances never boot (for boot timeouts).
pub struct Booter {
    paused: Arc<Mutex<bool>>,
    booted: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Booter {
    /// Watches `emulators` (with the regions to look in for moto).
    pub fn start(emulators: Vec<(Arc<Emulator>, Vec<String>)>) -> Booter {
        let paused = Arc::new(Mutex::new(false));
        let booted = Arc::new(Mutex::new(Vec::new()));
        let (p, b) = (paused.clone(), booted.clone());
        let task = tokio::spawn(async move {
            let mut seen: HashSet<String> = HashSet::new();
            let mut agents: HashMap<String, AgentProcess> = HashMap::new();
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if *p.lock().unwrap() {
                    continue;
                }
                for (emulator, regions) in &emulators {
                    let regions: Vec<&str> = regions.iter().map(String::as_str).collect();
                    for instance in emulator.instances(&regions).await {
                        if !instance.alive {
                            // Terminated: its agent goes with it.
                            if let Some(mut agent) = agents.remove(&instance.id) {
                                agent.kill().await;
                            }
                            continue;
                        }
                        if seen.contains(&instance.id) {
                            continue;
                        }
                        let Some(user_data) = emulator.user_data(&instance).await else {
                            seen.insert(instance.id.clone());
                            continue;
                        };
                        seen.insert(instance.id.clone());
                        let Some(bootstrap) = bootstrap_of(&user_data) else { continue };
                        let agent = AgentProcess::boot_cloud_instance(&bootstrap, &instance.id).await;
                        b.lock().unwrap().push(instance.id.clone());
                        if let Some(agent) = agent {
                            agents.insert(instance.id, agent);
                        }
                    }
                }
            }
        });
        Booter { paused, booted, task }
    }

    /// Stops (or resumes) booting new instances.
    pub fn pause(&self, paused: bool) {
        *self.paused.lock().unwrap() = paused;
    }

    /// The instances booted so far.
    pub fn booted(&self) -> Vec<String> {
        self.booted.lock().unwrap().clone()
    }

    /// Stops watching and kills every agent it started.
    pub async fn stop(mut self) {
        let task = std::mem::replace(&mut self.task, tokio::spawn(async {}));
        task.abort();
        let _ = task.await;
    }
}

impl Drop for Booter {
    fn drop(&mut self) {
        self.task.abort();
    }
}
