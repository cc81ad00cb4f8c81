//! Running jobs: each attempt in its own process group, as the agent's (unprivileged) user,
//! in a fresh working directory, with its output sent back as it comes and its exit reported.
//! A timeout or a cancel kills the whole group: everything the command started.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process_group};

use crate::client::{CallError, Client, JobWork};
use crate::say;

/// Output is sent at least this often while a job prints.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// ...or when this much is waiting.
const FLUSH_BYTES: usize = 64 * 1024;
/// After SIGTERM, this long before SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(5);

/// What the server and the credential are, for the job threads.
#[derive(Clone)]
pub struct Reach {
    pub server: String,
    pub ca_file: Option<PathBuf>,
    pub credential: Arc<Mutex<String>>,
    pub state_dir: PathBuf,
}

/// The jobs this agent runs, by job and attempt.
#[derive(Default)]
pub struct Runner {
    running: HashMap<(String, i32), Arc<Handle>>,
}

struct Handle {
    /// The process group (the job's shell's pid), once started.
    group: Mutex<Option<i32>>,
    /// Cancelled: the server no longer wants it.
    stop: AtomicBool,
    /// The command has exited (the timeout watch and the killer stop waiting).
    exited: AtomicBool,
    /// The attempt is over and reported: it may leave the runner's table.
    done: AtomicBool,
}

impl Handle {
    /// Ends the whole process group: SIGTERM, then SIGKILL after a grace period.
    fn kill(&self) {
        let Some(group) = *self.group.lock().unwrap_or_else(|p| p.into_inner()) else { return };
        let Some(pid) = Pid::from_raw(group) else { return };
        let _ = kill_process_group(pid, Signal::TERM);
        let deadline = Instant::now() + KILL_GRACE;
        while Instant::now() < deadline && !self.exited.load(Ordering::Relaxed) {
            thread::sleep(Duration::from_millis(100));
        }
        // Whatever is left of the group, including what outlived the shell.
        let _ = kill_process_group(pid, Signal::KILL);
    }
}

impl Runner {
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
                group: Mutex::new(None),
                stop: AtomicBool::new(false),
                exited: AtomicBool::new(false),
                done: AtomicBool::new(false),
            });
            self.running.insert(key, handle.clone());
            let (job, reach) = (job.clone(), reach.clone());
            let spawned = thread::Builder::new().name(format!("job-{}", job.job_id)).spawn(move || {
                run(&job, &reach, handle.clone());
                handle.done.store(true, Ordering::Relaxed);
            });
            if let Err(e) = spawned {
                say!("warn", "could not start a thread for a job: {e}");
            }
        }
    }
}

/// Runs one attempt to its end and reports it.
fn run(job: &JobWork, reach: &Reach, handle: Arc<Handle>) {
    say!("info", "running job {} (attempt {})", job.job_id, job.attempt);
    let client = match Client::new(&reach.server, reach.ca_file.as_deref()) {
        Ok(client) => client,
        Err(e) => return say!("warn", "job {}: {e}", job.job_id),
    };
    let workdir = reach.state_dir.join("jobs").join(&job.job_id);
    let exit = match start(job, &workdir) {
        Ok((mut child, output)) => {
            *handle.group.lock().unwrap_or_else(|p| p.into_inner()) = i32::try_from(child.id()).ok();
            // Remembered, so that an agent restarted after a crash can end what this one left.
            let _ = std::fs::write(group_file(reach, job), child.id().to_string());
            let timed_out = Arc::new(AtomicBool::new(false));
            watch_timeout(job, handle.clone(), timed_out.clone());
            stream_output(job, reach, &client, output, &handle);
            let status = child.wait();
            // Whatever the command left behind in its group goes with it.
            handle.exited.store(true, Ordering::Relaxed);
            if let Some(pid) = i32::try_from(child.id()).ok().and_then(Pid::from_raw) {
                let _ = kill_process_group(pid, Signal::KILL);
            }
            match status {
                Ok(status) => Finished {
                    exit_code: status.code(),
                    signal: status.signal(),
                    timed_out: timed_out.load(Ordering::Relaxed),
                },
                Err(e) => {
                    say!("warn", "job {}: waiting for the command: {e}", job.job_id);
                    Finished { exit_code: None, signal: None, timed_out: false }
                }
            }
        }
        Err(e) => {
            let message = format!("fleetyard-agent could not start the command: {e}\n");
            let _ = client.job_output(&credential(reach), &job.job_id, job.attempt, &message);
            Finished { exit_code: Some(127), signal: None, timed_out: false }
        }
    };
    let _ = std::fs::remove_dir_all(&workdir);
    let _ = std::fs::remove_file(group_file(reach, job));
    if handle.stop.load(Ordering::Relaxed) {
        return; // cancelled: the server has already ended it
    }
    report(job, reach, &client, &exit);
}

fn group_file(reach: &Reach, job: &JobWork) -> PathBuf {
    reach.state_dir.join("jobs").join(format!("{}.pgid", job.job_id))
}

/// Kills the process groups of jobs a previous run of the agent left running, and clears
/// their working directories.
pub fn end_leftovers(state_dir: &Path) {
    let dir = state_dir.join("jobs");
    let Ok(entries) = std::fs::read_dir(&dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "pgid")
            && let Some(pid) =
                std::fs::read_to_string(&path).ok().and_then(|t| t.trim().parse().ok()).and_then(Pid::from_raw)
        {
            say!("info", "ending a job left running by an earlier agent (process group {})", pid.as_raw_nonzero());
            let _ = kill_process_group(pid, Signal::KILL);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

struct Finished {
    exit_code: Option<i32>,
    signal: Option<i32>,
    timed_out: bool,
}

fn credential(reach: &Reach) -> String {
    reach.credential.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Starts `/bin/sh -c command` in a new process group, stdout and stderr into one pipe.
fn start(job: &JobWork, workdir: &Path) -> std::io::Result<(std::process::Child, std::io::PipeReader)> {
    std::fs::create_dir_all(workdir)?;
    let (reader, writer) = std::io::pipe()?;
    let child = Command::new("/bin/sh")
        .arg("-c")
        .arg(&job.command)
        .current_dir(workdir)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", workdir)
        .env("FLEETYARD_JOB_ID", &job.job_id)
        .env("FLEETYARD_JOB_ATTEMPT", job.attempt.to_string())
        .envs(&job.env)
        .stdin(Stdio::null())
        .stdout(writer.try_clone()?)
        .stderr(writer)
        .process_group(0)
        .spawn()?;
    Ok((child, reader))
}

/// Kills the group when the timeout passes, unless the job ended first.
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
    loop {
        let next = receiver.recv_timeout(FLUSH_EVERY);
        let closed = matches!(next, Err(std::sync::mpsc::RecvTimeoutError::Disconnected));
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
    let _ = reader.join();
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
