//! What the agent's own tests share: a stand-in for Fleetyard's agent API, the real agent binary run against it, and test accounts.

#![allow(dead_code)]

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub const AGENT: &str = env!("CARGO_BIN_EXE_fleetyard-agent");
pub const CREDENTIAL: &str = "fyagent_test-credential-that-jobs-must-never-see";

/// These tests switch users, make cgroups and kill processes: they need root, and say so
/// rather than pass without having proved anything.
pub fn must_be_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "the agent's isolation tests must run as root (they create users, cgroups and processes of other users); \
         run them as root, as deploy/test and CI do"
    );
}

/// A directory removed when dropped.
pub struct Scratch {
    pub path: PathBuf,
}

impl Scratch {
    /// A fresh directory with `mode`.
    pub fn new(mode: u32) -> Scratch {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "fy-agent-test-{}-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed),
            fastrand::u32(..)
        ));
        std::fs::create_dir(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        Scratch { path }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A test account.
#[derive(Debug, Clone)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

/// The system account `name`, created if missing (with a home under /home if `home`).
/// Tests running at once may race to create it: useradd's lock makes all but one fail, and
/// those find it made.
pub fn account(name: &str, home: bool) -> Account {
    for _ in 0..50 {
        if let Some(account) = lookup(name) {
            return account;
        }
        let mut useradd = Command::new("useradd");
        useradd.args(["--system", "--shell", "/bin/sh"]);
        if home {
            useradd.args(["--create-home", "--home-dir", &format!("/home/{name}")]);
        }
        let _ = useradd.arg(name).stdout(Stdio::null()).stderr(Stdio::null()).status();
        thread::sleep(Duration::from_millis(100));
    }
    panic!("could not create the test user {name} with useradd");
}

fn lookup(name: &str) -> Option<Account> {
    let out = Command::new("getent").args(["passwd", name]).output().ok()?;
    let line = String::from_utf8(out.stdout).ok()?;
    let fields: Vec<&str> = line.trim().split(':').collect();
    Some(Account {
        name: name.to_owned(),
        uid: fields.get(2)?.parse().ok()?,
        gid: fields.get(3)?.parse().ok()?,
        home: PathBuf::from(fields.get(5)?),
    })
}

/// Whether a process runs (a zombie waiting to be reaped does not).
pub fn alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    let state = stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next());
    !matches!(state, Some('Z' | 'X') | None)
}

/// Waits up to `within` for `pid` to be gone.
pub fn gone_within(pid: i32, within: Duration) -> bool {
    let started = Instant::now();
    while alive(pid) {
        if started.elapsed() > within {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
    true
}

/// The live processes whose real uid is `uid`.
pub fn processes_of(uid: u32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let real = status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|l| l.split_whitespace().next());
            real == Some(&uid.to_string()) && alive(*pid)
        })
        .collect()
}

/// Kills the processes of `uid` a failed test may have left (each by its id).
pub fn kill_processes_of(uid: u32) {
    for pid in processes_of(uid) {
        if let Some(pid) = rustix::process::Pid::from_raw(pid) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
}

/// What the stand-in server holds: the machine's work, and what the agent reported.
#[derive(Default)]
pub struct State {
    version: u64,
    leases: Vec<Value>,
    jobs: Vec<Value>,
    pub output: HashMap<String, String>,
    pub finished: HashMap<String, Value>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

/// A stand-in for Fleetyard's agent API on a loopback port: work by long poll, heartbeats,
/// and jobs' output and ends, as the real server answers them.
pub struct Fleetyard {
    pub url: String,
    shared: Arc<Shared>,
}

impl Fleetyard {
    pub fn start() -> Fleetyard {
        let server = tiny_http::Server::http("127.0.0.1:0").expect("a loopback port");
        let url = format!("http://{}", server.server_addr().to_ip().expect("an IP address"));
        let shared = Arc::new(Shared { state: Mutex::new(State::default()), changed: Condvar::new() });
        let serving = shared.clone();
        thread::spawn(move || {
            for request in server.incoming_requests() {
                let shared = serving.clone();
                thread::spawn(move || answer(&shared, request));
            }
        });
        Fleetyard { url, shared }
    }

    fn change(&self, edit: impl FnOnce(&mut State)) {
        let mut state = self.shared.state.lock().unwrap();
        edit(&mut state);
        state.version += 1;
        self.shared.changed.notify_all();
    }

    pub fn set_jobs(&self, jobs: Vec<Value>) {
        self.change(|s| s.jobs = jobs);
    }

    pub fn set_leases(&self, leases: Vec<Value>) {
        self.change(|s| s.leases = leases);
    }

    /// Waits up to `within` for `found` to find something in what the agent reported.
    pub fn wait_for<T>(&self, within: Duration, found: impl Fn(&State) -> Option<T>) -> Option<T> {
        let started = Instant::now();
        loop {
            if let Some(value) = found(&self.shared.state.lock().unwrap()) {
                return Some(value);
            }
            if started.elapsed() > within {
                return None;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn output(&self, job: &str) -> String {
        self.shared.state.lock().unwrap().output.get(job).cloned().unwrap_or_default()
    }

    pub fn finished(&self, job: &str) -> Option<Value> {
        self.shared.state.lock().unwrap().finished.get(job).cloned()
    }
}

fn answer(shared: &Shared, mut request: tiny_http::Request) {
    let mut body = String::new();
    let _ = request.as_reader().read_to_string(&mut body);
    let (path, query) = request.url().split_once('?').unwrap_or((request.url(), ""));
    let (path, query) = (path.to_owned(), query.to_owned());
    let param = |name: &str| {
        query.split('&').find_map(|p| p.strip_prefix(name).and_then(|v| v.strip_prefix('='))).map(str::to_owned)
    };
    let authorised = request
        .headers()
        .iter()
        .any(|h| h.field.equiv("Authorization") && h.value.as_str() == format!("Bearer {CREDENTIAL}"));
    let (status, reply) = if !authorised {
        (401, json!({ "code": "unauthorized", "message": "no such credential" }))
    } else if path == "/api/v1/agent/heartbeat" {
        (200, json!({ "heartbeat_interval_secs": 30 }))
    } else if path == "/api/v1/agent/work" {
        let wait = Duration::from_secs(param("wait").and_then(|w| w.parse().ok()).unwrap_or(0));
        let since = param("since");
        let deadline = Instant::now() + wait;
        let mut state = shared.state.lock().unwrap();
        while since.as_deref() == Some(&format!("v{}", state.version)) && Instant::now() < deadline {
            state = shared.changed.wait_timeout(state, deadline - Instant::now()).unwrap().0;
        }
        (200, json!({ "version": format!("v{}", state.version), "leases": state.leases, "jobs": state.jobs }))
    } else if let Some(rest) = path.strip_prefix("/api/v1/agent/jobs/") {
        let (job, action) = rest.split_once('/').unwrap_or((rest, ""));
        let report: Value = serde_json::from_str(&body).unwrap_or_default();
        let mut state = shared.state.lock().unwrap();
        let running = state.jobs.iter().any(|j| j["job_id"] == job && j["attempt"] == report["attempt"]);
        match (action, running) {
            (_, false) => (409, json!({ "code": "job-not-running-here", "message": "not running here" })),
            ("output", true) => {
                state.output.entry(job.to_owned()).or_default().push_str(report["data"].as_str().unwrap_or_default());
                (204, Value::Null)
            }
            ("finish", true) => {
                state.finished.insert(job.to_owned(), report);
                state.jobs.retain(|j| j["job_id"] != job);
                state.version += 1;
                shared.changed.notify_all();
                (204, Value::Null)
            }
            _ => (404, json!({ "code": "not-found", "message": "no such route" })),
        }
    } else {
        (404, json!({ "code": "not-found", "message": "no such route" }))
    };
    let response = if status == 204 {
        tiny_http::Response::from_string(String::new()).with_status_code(204)
    } else {
        tiny_http::Response::from_string(reply.to_string())
            .with_status_code(status)
            .with_header(tiny_http::Header::from_bytes("Content-Type", "application/json").unwrap())
    };
    let _ = request.respond(response);
}

/// A job for the stand-in server to hand out.
pub fn job(id: &str, command: &str, timeout_secs: i32, env: Value) -> Value {
    json!({ "job_id": id, "attempt": 1, "command": command, "env": env, "timeout_secs": timeout_secs })
}

/// A job id no other test uses.
pub fn job_id() -> String {
    format!("job-{}-{}", std::process::id(), fastrand::u64(..))
}

/// The real agent binary, enrolled (its credential written as `enroll` would) and running
/// against a stand-in server.
pub struct Agent {
    pub base: Scratch,
    pub state_dir: PathBuf,
    pub config: PathBuf,
    child: Option<Child>,
}

impl Agent {
    /// An agent whose configuration file holds `extra` (TOML lines) besides the server and
    /// the state directory. Its state directory sits in a scratch directory others may cross
    /// (0755), as /var/lib is.
    pub fn new(server: &Fleetyard, extra: &str) -> Agent {
        let base = Scratch::new(0o755);
        let state_dir = base.path.join("state");
        std::fs::create_dir(&state_dir).unwrap();
        std::fs::set_permissions(&state_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let credential = json!({
            "server": server.url, "machine_id": "0192f3a4-0000-7000-8000-000000000001", "credential": CREDENTIAL,
            "expires_at": "2099-01-01T00:00:00Z", "issued_at": "2026-01-01T00:00:00Z",
        });
        std::fs::write(state_dir.join("credential.json"), credential.to_string()).unwrap();
        std::fs::set_permissions(state_dir.join("credential.json"), std::fs::Permissions::from_mode(0o600)).unwrap();
        let config = base.path.join("agent.toml");
        std::fs::write(
            &config,
            format!("server = {:?}\nstate_dir = {:?}\n{extra}\n", server.url, state_dir.display().to_string()),
        )
        .unwrap();
        Agent { base, state_dir, config, child: None }
    }

    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.base.path.join("agent.log")).unwrap();
        let child = Command::new(AGENT)
            .arg("--config")
            .arg(&self.config)
            .arg("run")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting fleetyard-agent");
        self.child = Some(child);
    }

    /// Kills it without warning, as a crash would.
    pub fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// What it has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.base.path.join("agent.log")).unwrap_or_default()
    }

    /// What `authorized-keys USER` prints for this agent, as sshd would see it.
    pub fn authorized_keys(&self, user: &str) -> String {
        let out =
            Command::new(AGENT).arg("--config").arg(&self.config).args(["authorized-keys", user]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn jobs_record(&self, job: &str) -> PathBuf {
        self.state_dir.join("jobs").join(format!("{job}.json"))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.crash();
    }
}

/// The names in `dir` and below, relative to it, sorted.
pub fn listing(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            out.push(path.strip_prefix(root).unwrap().display().to_string());
            if std::fs::symlink_metadata(&path).unwrap().is_dir() {
                walk(root, &path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}
