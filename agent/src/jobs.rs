//! Running jobs: each attempt as the job user, in a cgroup and a working directory of its own, killed whole at its end.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{ErrorKind, Read};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rustix::fs::{Mode, OFlags};
use rustix::process::{Gid, Pid, Signal, Uid, kill_process, kill_process_group};
use rustix::thread::CapabilitySet;
use serde::{Deserialize, Serialize};

use crate::accounts::Account;
use crate::cgroup::{self, Cgroup};
use crate::client::{CallError, Client, JobWork};
use crate::config::Settings;
use crate::confine::{self, Ids, Launch, Reset};
use crate::say;

/// Output is sent at least this often while a job prints.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// ...or when this much is waiting.
const FLUSH_BYTES: usize = 64 * 1024;
/// After SIGTERM, this long before SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// Once the command has exited and its cgroup is killed, the output pipe closes at once. A
/// job without a cgroup may have left a process holding it: its output is read this much
/// longer, then no more.
const OUTPUT_AFTER_EXIT: Duration = Duration::from_secs(2);
/// The capabilities a non-root agent needs to run jobs as their user: to become it, to
/// signal its processes, and to hand it its working directory.
const JOB_CAPABILITIES: CapabilitySet =
    CapabilitySet::SETUID.union(CapabilitySet::SETGID).union(CapabilitySet::KILL).union(CapabilitySet::CHOWN);

/// What the server and the credential are, for the job threads.
#[derive(Clone)]
pub struct Reach {
    pub server: String,
    pub ca_file: Option<PathBuf>,
    pub credential: Arc<Mutex<String>>,
    pub state_dir: PathBuf,
}

/// How this agent runs jobs, settled once at start (and logged then, once).
#[derive(Debug)]
pub struct Setup {
    /// Whom jobs run as: the job user, or `None` for the agent's own user (not isolated).
    user: Option<Account>,
    /// The agent's own user name, for a job's `USER` when it runs as the agent.
    own_name: Option<String>,
    jobs_dir: PathBuf,
    /// Where jobs' cgroups are made; `None`: only their process group is killed.
    cgroups: Option<PathBuf>,
    /// Why every job is refused, if they are.
    refused: Option<String>,
}

impl Setup {
    /// Checks what running jobs as configured needs, and says once how jobs will run.
    /// `lease_user` is the lease account, which jobs must never share.
    pub fn prepare(settings: &Settings, lease_user: Option<&str>) -> Setup {
        let cgroups = cgroup::parent(settings.job_cgroup_parent.as_deref()).and_then(|parent| {
            if !cgroup::probe(&parent)? {
                say!("info", "no cgroup.kill (Linux before 5.14): jobs' cgroups are frozen and emptied one by one");
            }
            Ok(parent)
        });
        let own_name = nix::unistd::User::from_uid(rustix::process::geteuid().as_raw().into()).ok().flatten();
        let mut setup = Setup {
            user: None,
            own_name: own_name.map(|u| u.name),
            jobs_dir: settings.jobs_dir.clone(),
            cgroups: None,
            refused: None,
        };
        let Some(name) = settings.job_user.as_deref() else {
            say!(
                "warn",
                "job_user is not set: jobs run as the agent's own user, NOT isolated from it nor from its \
                 credential (deploy/agent/README.md, \"Jobs\")"
            );
            match cgroups {
                Ok(parent) => setup.cgroups = Some(parent),
                Err(e) => say!("warn", "jobs get no cgroup ({e}): a job's end kills its process group only"),
            }
            return setup;
        };
        let checked = (|| {
            let account = Account::lookup(name)?.dedicated("job_user")?;
            if lease_user == Some(name) {
                return Err(format!("job_user and lease_user are both {name:?}; jobs need an account of their own"));
            }
            confine::holds(JOB_CAPABILITIES)?;
            let parent = cgroups.map_err(|e| format!("isolated jobs need a cgroup (v2) of their own: {e}"))?;
            private_state_dir(&settings.state_dir)?;
            jobs_dir_ready(&settings.jobs_dir, &settings.state_dir)?;
            Ok((account, parent))
        })();
        match checked {
            Ok((account, parent)) => {
                say!(
                    "info",
                    "jobs run as {} (uid {}) in {}, each in a cgroup under {}",
                    account.name,
                    account.uid,
                    settings.jobs_dir.display(),
                    parent.display()
                );
                setup.user = Some(account);
                setup.cgroups = Some(parent);
            }
            Err(why) => {
                say!("error", "this agent refuses every job: {why}");
                setup.refused = Some(why);
            }
        }
        setup
    }

    fn ids(&self) -> Option<Ids> {
        self.user.as_ref().map(|a| Ids { uid: a.uid, gid: a.gid })
    }
}

/// The state directory holds the credential and `work.json`: no one but the agent may read
/// or write in it. One the agent owns is made private; one it does not is refused.
fn private_state_dir(state_dir: &Path) -> Result<(), String> {
    let meta = fs::metadata(state_dir).map_err(|e| format!("{}: {e}", state_dir.display()))?;
    if meta.uid() != rustix::process::geteuid().as_raw() {
        return Err(format!("the state directory {} is not the agent's own", state_dir.display()));
    }
    if meta.mode() & 0o077 != 0 {
        say!("warn", "the state directory {} was open to others: making it 0700", state_dir.display());
        fs::set_permissions(state_dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("making {} private: {e}", state_dir.display()))?;
    }
    Ok(())
}

/// Jobs' working directories sit in a directory the agent owns and no one else may write
/// (mode 0711: the job user can reach its own directory, not list nor change the others),
/// apart from the state directory on both sides.
fn jobs_dir_ready(jobs_dir: &Path, state_dir: &Path) -> Result<(), String> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(jobs_dir)
        .map_err(|e| format!("making {}: {e}", jobs_dir.display()))?;
    let (jobs, state) = (
        fs::canonicalize(jobs_dir).map_err(|e| format!("{}: {e}", jobs_dir.display()))?,
        fs::canonicalize(state_dir).map_err(|e| format!("{}: {e}", state_dir.display()))?,
    );
    if jobs.starts_with(&state) || state.starts_with(&jobs) {
        return Err(format!(
            "jobs_dir {} and the state directory {} must not contain one another",
            jobs.display(),
            state.display()
        ));
    }
    let meta = fs::metadata(&jobs).map_err(|e| format!("{}: {e}", jobs.display()))?;
    if meta.uid() != rustix::process::geteuid().as_raw() {
        return Err(format!("jobs_dir {} is not the agent's own", jobs.display()));
    }
    if meta.mode() & 0o7777 != 0o711 {
        fs::set_permissions(&jobs, fs::Permissions::from_mode(0o711))
            .map_err(|e| format!("setting {} to 0711: {e}", jobs.display()))?;
    }
    Ok(())
}

/// The jobs this agent runs, by job and attempt.
pub struct Runner {
    setup: Arc<Setup>,
    running: HashMap<(String, i32), Arc<Handle>>,
}

struct Handle {
    /// Where the attempt's processes are, once started.
    contained: Mutex<Option<Contained>>,
    /// Cancelled: the server no longer wants it.
    stop: AtomicBool,
    /// The command has exited (the timeout watch and the killer stop waiting).
    exited: AtomicBool,
    /// The attempt is over and reported: it may leave the runner's table.
    done: AtomicBool,
}

/// An attempt's processes: its cgroup, and its first process, which leads its process group
/// (all there is to kill where there are no cgroups).
#[derive(Clone)]
struct Contained {
    cgroup: Option<Cgroup>,
    leader: Pid,
}

impl Contained {
    fn signal(&self, signal: Signal, exited: bool) {
        if let Some(cgroup) = &self.cgroup {
            cgroup.signal(signal);
        }
        // Until it has exited the leader is still ours, even if it has not entered its
        // cgroup yet.
        if !exited {
            let _ = kill_process(self.leader, signal);
        }
        if self.cgroup.is_none() {
            let _ = kill_process_group(self.leader, signal);
        }
    }

    /// Kills everything: the whole cgroup at once, or the process group.
    fn kill(&self, exited: bool) {
        match &self.cgroup {
            Some(cgroup) => cgroup.kill(),
            None => {
                let _ = kill_process_group(self.leader, Signal::KILL);
            }
        }
        if !exited {
            let _ = kill_process(self.leader, Signal::KILL);
        }
    }
}

impl Handle {
    fn contained(&self) -> Option<Contained> {
        self.contained.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Ends everything the attempt started: SIGTERM, then SIGKILL after a grace period.
    fn kill(&self) {
        let Some(contained) = self.contained() else { return };
        contained.signal(Signal::TERM, self.exited.load(Ordering::Relaxed));
        let deadline = Instant::now() + KILL_GRACE;
        while Instant::now() < deadline && !self.exited.load(Ordering::Relaxed) {
            thread::sleep(Duration::from_millis(100));
        }
        // Whatever is left, including what outlived the shell or left its process group.
        contained.kill(self.exited.load(Ordering::Relaxed));
    }
}

impl Runner {
    pub fn new(setup: Setup) -> Runner {
        Runner { setup: Arc::new(setup), running: HashMap::new() }
    }

    /// Starts the jobs that are new and stops those no longer wanted.
    pub fn reconcile(&mut self, wanted: &[JobWork], reach: &Reach) {
        self.running.retain(|_, handle| !handle.done.load(Ordering::Relaxed));
        for (key, handle) in &self.running {
            let gone = !wanted.iter().any(|j| (j.job_id.as_str(), j.attempt) == (key.0.as_str(), key.1));
            // A job that already exited is being reported; the server dropping it is the echo.
            if gone && !handle.exited.load(Ordering::Relaxed) {
                say!("info", "job {} (attempt {}) was cancelled or moved: stopping it", key.0, key.1);
                handle.stop.store(true, Ordering::Relaxed);
                let handle = handle.clone();
                thread::spawn(move || handle.kill());
            }
        }
        for job in wanted {
            let key = (job.job_id.clone(), job.attempt);
            if self.running.contains_key(&key) {
                continue;
            }
            let handle = Arc::new(Handle {
                contained: Mutex::new(None),
                stop: AtomicBool::new(false),
                exited: AtomicBool::new(false),
                done: AtomicBool::new(false),
            });
            self.running.insert(key, handle.clone());
            let (job, reach, setup) = (job.clone(), reach.clone(), self.setup.clone());
            let spawned = thread::Builder::new().name(format!("job-{}", job.job_id)).spawn(move || {
                run(&job, &reach, &setup, handle.clone());
                handle.done.store(true, Ordering::Relaxed);
            });
            if let Err(e) = spawned {
                say!("warn", "could not start a thread for a job: {e}");
            }
        }
    }
}

/// What the agent records of a running attempt in `<state_dir>/jobs/<job>.json`, so that an
/// agent restarted after a crash can end it.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    workdir: PathBuf,
    cgroup: Option<PathBuf>,
    /// The process group, where there is no cgroup.
    group: Option<i32>,
    /// Who owns the working directory, if not the agent.
    user: Option<Ids>,
}

fn record_path(state_dir: &Path, job_id: &str) -> PathBuf {
    state_dir.join("jobs").join(format!("{job_id}.json"))
}

fn save_record(state_dir: &Path, job_id: &str, record: &Record) -> Result<(), String> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir.join("jobs"))
        .map_err(|e| format!("making {}: {e}", state_dir.join("jobs").display()))?;
    let json = serde_json::to_vec(record).map_err(|e| e.to_string())?;
    crate::credential::write_private(&record_path(state_dir, job_id), &json)
}

/// Job ids name directories and cgroups: only plain names are taken (the server's are UUIDs).
fn plain_name(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Runs one attempt to its end and reports it.
fn run(job: &JobWork, reach: &Reach, setup: &Setup, handle: Arc<Handle>) {
    say!("info", "running job {} (attempt {})", job.job_id, job.attempt);
    let client = match Client::new(&reach.server, reach.ca_file.as_deref()) {
        Ok(client) => client,
        Err(e) => return say!("warn", "job {}: {e}", job.job_id),
    };
    let refusal = match (&setup.refused, plain_name(&job.job_id)) {
        (Some(why), _) => Some(format!("this machine's agent runs no jobs: {why}")),
        (None, false) => Some(format!("the job id {:?} cannot name a directory", job.job_id)),
        (None, true) => None,
    };
    if let Some(why) = refusal {
        let _ = client.job_output(&credential(reach), &job.job_id, job.attempt, &format!("fleetyard-agent: {why}\n"));
        return report(job, reach, &client, &Finished { exit_code: Some(127), signal: None, timed_out: false });
    }
    let workdir = setup.jobs_dir.join(&job.job_id);
    let cgroup_path = setup.cgroups.as_ref().map(|p| p.join(format!("fleetyard-job-{}-{}", job.job_id, job.attempt)));
    let mut record = Record { workdir: workdir.clone(), cgroup: cgroup_path, group: None, user: setup.ids() };
    let exit = match start(job, setup, &mut record, &reach.state_dir) {
        Ok((child, contained, output)) => {
            *handle.contained.lock().unwrap_or_else(|p| p.into_inner()) = Some(contained.clone());
            let timed_out = Arc::new(AtomicBool::new(false));
            watch_timeout(job, handle.clone(), timed_out.clone());
            let waiter = wait_and_end(job, child, contained, handle.clone());
            stream_output(job, reach, &client, output, &handle);
            match waiter.join() {
                Ok(Ok(status)) => Finished {
                    exit_code: status.code(),
                    signal: status.signal(),
                    timed_out: timed_out.load(Ordering::Relaxed),
                },
                Ok(Err(e)) => {
                    say!("warn", "job {}: waiting for the command: {e}", job.job_id);
                    Finished { exit_code: None, signal: None, timed_out: false }
                }
                Err(_) => Finished { exit_code: None, signal: None, timed_out: false },
            }
        }
        Err(e) => {
            let message = format!("fleetyard-agent could not start the command: {e}\n");
            let _ = client.job_output(&credential(reach), &job.job_id, job.attempt, &message);
            if let Some(path) = &record.cgroup
                && let Err(e) = Cgroup::at(path.clone()).end()
            {
                say!("warn", "job {}: {e}", job.job_id);
            }
            Finished { exit_code: Some(127), signal: None, timed_out: false }
        }
    };
    match remove_workdir(&workdir, record.user) {
        Ok(()) => {
            let _ = fs::remove_file(record_path(&reach.state_dir, &job.job_id));
        }
        Err(e) => say!("warn", "job {}: could not remove its working directory: {e}", job.job_id),
    }
    if handle.stop.load(Ordering::Relaxed) {
        return; // cancelled: the server has already ended it
    }
    report(job, reach, &client, &exit);
}

/// Waits for the command in a thread of its own; the moment it exits, everything it left
/// behind is killed, which also closes the output pipe those processes held.
fn wait_and_end(
    job: &JobWork,
    mut child: std::process::Child,
    contained: Contained,
    handle: Arc<Handle>,
) -> thread::JoinHandle<std::io::Result<std::process::ExitStatus>> {
    let id = job.job_id.clone();
    thread::spawn(move || {
        let status = child.wait();
        handle.exited.store(true, Ordering::Relaxed);
        match &contained.cgroup {
            Some(cgroup) => {
                if let Err(e) = cgroup.end() {
                    say!("warn", "job {id}: {e}");
                }
            }
            None => contained.kill(true),
        }
        status
    })
}

/// Makes the working directory and the cgroup, and starts the command through the
/// `start-job` helper (see `confine`), stdout and stderr into one pipe.
fn start(
    job: &JobWork,
    setup: &Setup,
    record: &mut Record,
    state_dir: &Path,
) -> Result<(std::process::Child, Contained, std::io::PipeReader), String> {
    // Recorded before anything is made, so a crash at any point leaves nothing unrecorded.
    save_record(state_dir, &job.job_id, record)?;
    make_workdir(&record.workdir, record.user)?;
    let cgroup = match (&setup.cgroups, &record.cgroup) {
        (Some(parent), Some(path)) => {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            Some(Cgroup::create(parent, name)?)
        }
        _ => None,
    };
    let (reader, writer) = std::io::pipe().map_err(|e| e.to_string())?;
    let launch = Launch {
        command: job.command.clone(),
        env: environment(job, setup, &record.workdir),
        workdir: record.workdir.clone(),
        cgroup: cgroup.as_ref().map(|c| c.path().to_owned()),
        user: record.user,
    };
    let child = confine::spawn_job(&launch, writer).map_err(|e| e.to_string())?;
    let leader = Pid::from_child(&child);
    if cgroup.is_none() {
        record.group = Some(leader.as_raw_nonzero().get());
        save_record(state_dir, &job.job_id, record)?;
    }
    Ok((child, Contained { cgroup, leader }, reader))
}

/// A job's environment: what it asked for, over a minimal set (documented in
/// deploy/agent/README.md, "Jobs"). Nothing of the agent's own environment passes.
fn environment(job: &JobWork, setup: &Setup, workdir: &Path) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert("PATH".to_owned(), "/usr/local/bin:/usr/bin:/bin".to_owned());
    env.insert("HOME".to_owned(), workdir.display().to_string());
    if let Some(user) = setup.user.as_ref().map(|a| a.name.clone()).or_else(|| setup.own_name.clone()) {
        env.insert("USER".to_owned(), user.clone());
        env.insert("LOGNAME".to_owned(), user);
    }
    env.insert("FLEETYARD_JOB_ID".to_owned(), job.job_id.clone());
    env.insert("FLEETYARD_JOB_ATTEMPT".to_owned(), job.attempt.to_string());
    env.extend(job.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}

/// Makes a fresh working directory, mode 0700, owned by whoever runs the job. One left by an
/// earlier attempt is removed first.
fn make_workdir(workdir: &Path, user: Option<Ids>) -> Result<(), String> {
    remove_workdir(workdir, user)?;
    if let Some(parent) = workdir.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|e| format!("making {}: {e}", parent.display()))?;
    }
    fs::DirBuilder::new().mode(0o700).create(workdir).map_err(|e| format!("making {}: {e}", workdir.display()))?;
    if let Some(ids) = user {
        // Through a descriptor of the directory itself, never following a link.
        let dir = rustix::fs::open(workdir, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW, Mode::empty())
            .map_err(|e| format!("opening {}: {e}", workdir.display()))?;
        rustix::fs::fchown(&dir, Some(Uid::from_raw(ids.uid)), Some(Gid::from_raw(ids.gid)))
            .map_err(|e| format!("handing {} to the job user: {e}", workdir.display()))?;
    }
    Ok(())
}

/// Removes a working directory: its contents as their owner (the job user, through the
/// `reset-account` helper, so that nothing in it can lead the agent astray), then the
/// directory itself, which sits in the agent's own `jobs_dir`.
fn remove_workdir(workdir: &Path, user: Option<Ids>) -> Result<(), String> {
    match fs::symlink_metadata(workdir) {
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("{}: {e}", workdir.display())),
        Ok(meta) if !meta.is_dir() => {
            return fs::remove_file(workdir).map_err(|e| format!("removing {}: {e}", workdir.display()));
        }
        Ok(_) => {}
    }
    match user {
        Some(ids) => confine::reset_as(ids, &Reset { empty: Some(workdir.to_owned()), ..Reset::default() })?,
        None => confine::empty_dir(workdir).map_err(|e| format!("emptying {}: {e}", workdir.display()))?,
    }
    fs::remove_dir(workdir).map_err(|e| format!("removing {}: {e}", workdir.display()))
}

/// Ends the jobs a previous run of the agent left running (their cgroups, or process groups),
/// and removes their working directories.
pub fn end_leftovers(state_dir: &Path, setup: &Setup) {
    let dir = state_dir.join("jobs");
    let Ok(entries) = fs::read_dir(&dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(extension) = path.extension().and_then(|e| e.to_str()) else { continue };
        let text = fs::read_to_string(&path).unwrap_or_default();
        match extension {
            "json" => {
                let Ok(record) = serde_json::from_str::<Record>(&text) else { continue };
                say!("info", "ending a job left running by an earlier agent ({})", record.workdir.display());
                if let Some(cgroup) = record.cgroup {
                    if let Err(e) = Cgroup::at(cgroup).end() {
                        say!("warn", "{e}");
                    }
                } else if let Some(group) = record.group.and_then(Pid::from_raw) {
                    let _ = kill_process_group(group, Signal::KILL);
                }
                match remove_workdir(&record.workdir, record.user) {
                    Ok(()) => {
                        let _ = fs::remove_file(&path);
                    }
                    Err(e) => say!("warn", "could not remove a leftover working directory: {e}"),
                }
            }
            // Left by agents from before jobs had cgroups.
            "pgid" => {
                if let Some(group) = text.trim().parse().ok().and_then(Pid::from_raw) {
                    let _ = kill_process_group(group, Signal::KILL);
                }
                let _ = fs::remove_file(&path);
            }
            _ => {}
        }
    }
    // Jobs that run as the agent keep their working directories in here too (by default).
    if setup.user.is_none() && setup.jobs_dir == dir {
        let _ = fs::remove_dir_all(&dir);
    }
}

struct Finished {
    exit_code: Option<i32>,
    signal: Option<i32>,
    timed_out: bool,
}

fn credential(reach: &Reach) -> String {
    reach.credential.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Kills the attempt when the timeout passes, unless it ended first.
fn watch_timeout(job: &JobWork, handle: Arc<Handle>, timed_out: Arc<AtomicBool>) {
    let deadline = Instant::now() + Duration::from_secs(u64::try_from(job.timeout_secs).unwrap_or(1));
    let id = job.job_id.clone();
    let spawned = thread::Builder::new().name(format!("timeout-{id}")).spawn(move || {
        while !handle.exited.load(Ordering::Relaxed) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                timed_out.store(true, Ordering::Relaxed);
                say!("info", "job {id} ran past its timeout: killing it and everything it started");
                return handle.kill();
            }
            thread::sleep(left.min(Duration::from_millis(200)));
        }
    });
    if let Err(e) = spawned {
        say!("warn", "job {}: no timeout watch ({e})", job.job_id);
    }
}

/// Sends what the command prints, in chunks, until the pipe closes. A server that says the
/// attempt is no longer this machine's gets the job killed.
fn stream_output(job: &JobWork, reach: &Reach, client: &Client, mut output: std::io::PipeReader, handle: &Handle) {
    let (sender, receiver) = std::sync::mpsc::channel::<Vec<u8>>();
    let reader = thread::spawn(move || {
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            match output.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sender.send(buffer[..n].to_vec()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let mut pending: Vec<u8> = Vec::new();
    let mut last_flush = Instant::now();
    let mut exited_at: Option<Instant> = None;
    loop {
        let next = receiver.recv_timeout(FLUSH_EVERY.min(OUTPUT_AFTER_EXIT));
        if handle.exited.load(Ordering::Relaxed) {
            exited_at.get_or_insert_with(Instant::now);
        }
        let closed = matches!(next, Err(std::sync::mpsc::RecvTimeoutError::Disconnected))
            || exited_at.is_some_and(|at| at.elapsed() >= OUTPUT_AFTER_EXIT);
        if let Ok(bytes) = next {
            pending.extend_from_slice(&bytes);
        }
        if !pending.is_empty() && (closed || pending.len() >= FLUSH_BYTES || last_flush.elapsed() >= FLUSH_EVERY) {
            let text = String::from_utf8_lossy(&pending).into_owned();
            match client.job_output(&credential(reach), &job.job_id, job.attempt, &text) {
                Ok(()) => {}
                Err(CallError::Refused { status: 404 | 409, .. }) => {
                    handle.stop.store(true, Ordering::Relaxed);
                    handle.kill();
                }
                Err(e) => say!("warn", "job {}: sending output failed: {e}", job.job_id),
            }
            pending.clear();
            last_flush = Instant::now();
        }
        if closed {
            break;
        }
    }
    // A reader still blocked holds a pipe a runaway process keeps open: it ends with it.
    if reader.is_finished() {
        let _ = reader.join();
    }
}

/// Reports the end, retrying while the server cannot be reached (for up to an hour).
fn report(job: &JobWork, reach: &Reach, client: &Client, exit: &Finished) {
    let started = Instant::now();
    let mut wait = Duration::from_secs(1);
    loop {
        match client.job_finished(
            &credential(reach),
            &job.job_id,
            job.attempt,
            exit.exit_code,
            exit.signal,
            exit.timed_out,
        ) {
            Ok(()) => {
                return say!("info", "job {} (attempt {}) ended: {:?}", job.job_id, job.attempt, exit.exit_code);
            }
            Err(CallError::Refused { status, message }) if status != 401 && status < 500 => {
                return say!("warn", "job {}: the server refused the report ({status}): {message}", job.job_id);
            }
            Err(e) if started.elapsed() > Duration::from_secs(3600) => {
                return say!("warn", "job {}: giving up reporting its end: {e}", job.job_id);
            }
            Err(_) => {
                thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_secs(60));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(env: &[(&str, &str)]) -> JobWork {
        JobWork {
            job_id: "0192-ab".into(),
            attempt: 2,
            command: "true".into(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            timeout_secs: 60,
        }
    }

    fn setup(user: Option<&str>) -> Setup {
        Setup {
            user: user.map(|name| Account { name: name.into(), uid: 990, gid: 990, home: "/nonexistent".into() }),
            own_name: Some("fleetyard-agent".into()),
            jobs_dir: "/var/lib/fleetyard-jobs".into(),
            cgroups: None,
            refused: None,
        }
    }

    #[test]
    fn a_job_gets_the_minimal_environment_under_what_it_asked_for() {
        let env =
            environment(&job(&[("GREETING", "hello"), ("PATH", "/opt/bin")]), &setup(Some("builder")), "/w".as_ref());
        let expected: BTreeMap<String, String> = [
            ("FLEETYARD_JOB_ATTEMPT", "2"),
            ("FLEETYARD_JOB_ID", "0192-ab"),
            ("GREETING", "hello"),
            ("HOME", "/w"),
            ("LOGNAME", "builder"),
            ("PATH", "/opt/bin"),
            ("USER", "builder"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(env, expected);
        let unisolated = environment(&job(&[]), &setup(None), "/w".as_ref());
        assert_eq!(unisolated["USER"], "fleetyard-agent");
    }

    #[test]
    fn only_plain_job_ids_name_directories() {
        assert!(plain_name("0192f3a4-7c1e-7b2a-9d3e-1f2a3b4c5d6e"));
        for bad in ["", "..", "../etc", "a/b", "a b", &"x".repeat(65)] {
            assert!(!plain_name(bad), "{bad:?}");
        }
    }
}
