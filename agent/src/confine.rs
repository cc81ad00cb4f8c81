//! Handing work to another account: the agent's internal helper commands, which drop every privilege before acting.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io::{ErrorKind, Read};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use rustix::process::{Gid, Pid, Signal, Uid, getuid, kill_process_group};
use rustix::thread::{CapabilitySet, CapabilitySets};
use serde::{Deserialize, Serialize};

/// The agent's own binary, whatever its path (and even if an upgrade replaced it since).
const SELF: &str = "/proc/self/exe";
/// How long the processes of an account may take to die before resetting it fails.
const KILL_WITHIN: Duration = Duration::from_secs(10);

/// A user and group id to become.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ids {
    pub uid: u32,
    pub gid: u32,
}

/// What the `start-job` helper reads on its standard input: never in its arguments (anyone
/// may read those in `ps`) nor its environment (the job's `LD_PRELOAD` must not reach a
/// helper that is still privileged).
#[derive(Debug, Serialize, Deserialize)]
pub struct Launch {
    pub command: String,
    /// The job's whole environment.
    pub env: BTreeMap<String, String>,
    pub workdir: PathBuf,
    /// The job's cgroup directory, entered before anything else.
    pub cgroup: Option<PathBuf>,
    /// Whom to become; `None` for jobs that run as the agent's own user.
    pub user: Option<Ids>,
}

/// Starts the `start-job` helper for `launch`, its output into `output`, in a process group
/// of its own. Its exit status is the command's.
pub fn spawn_job(launch: &Launch, output: std::io::PipeWriter) -> std::io::Result<std::process::Child> {
    let input = serde_json::to_vec(launch).map_err(std::io::Error::other)?;
    let mut child = Command::new(SELF)
        .arg("start-job")
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(output.try_clone()?)
        .stderr(output)
        .process_group(0)
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        // A helper that failed before reading says why in the job's output itself.
        let _ = stdin.write_all(&input);
    }
    Ok(child)
}

/// The `start-job` helper: enters the cgroup, becomes the job's user and runs
/// `/bin/sh -c COMMAND` in its place. Returns only on failure.
///
/// The agent never switches user between `fork` and `exec` itself (that would take `unsafe`
/// code, which the workspace forbids). It runs its own binary again as this helper, with an
/// empty environment: a fresh single-threaded process, which enters the job's cgroup while it
/// still may, becomes the job's user for good, clears every capability (the ambient ones a
/// non-root agent was granted would otherwise pass on through `exec`) and forbids regaining
/// any (`no_new_privs`), and only then runs anything of the job's.
pub fn start_job() -> String {
    let mut input = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut input) {
        return format!("reading the job: {e}");
    }
    let launch: Launch = match serde_json::from_str(&input) {
        Ok(launch) => launch,
        Err(e) => return format!("reading the job: {e}"),
    };
    if let Some(cgroup) = &launch.cgroup
        && let Err(e) = fs::write(cgroup.join("cgroup.procs"), std::process::id().to_string())
    {
        return format!("entering the job's cgroup {}: {e}", cgroup.display());
    }
    match launch.user {
        Some(ids) => {
            if let Err(e) = become_user(ids) {
                return e;
            }
        }
        // Runs as the agent, as it did before jobs had a user of their own; only the ambient
        // capabilities a non-root agent was granted must not pass on to it.
        None => {
            let _ = rustix::thread::clear_ambient_capability_set();
        }
    }
    let error = Command::new("/bin/sh")
        .arg("-c")
        .arg(&launch.command)
        .current_dir(&launch.workdir)
        .env_clear()
        .envs(&launch.env)
        .stdin(Stdio::null())
        .exec();
    format!("running /bin/sh in {}: {error}", launch.workdir.display())
}

/// Becomes `ids` for good: no supplementary groups, every gid and uid, no capability left
/// and none to be had again.
fn become_user(ids: Ids) -> Result<(), String> {
    let (uid, gid) = (Uid::from_raw(ids.uid), Gid::from_raw(ids.gid));
    rustix::thread::set_thread_groups(&[]).map_err(|e| format!("dropping supplementary groups: {e}"))?;
    rustix::thread::set_thread_res_gid(gid, gid, gid).map_err(|e| format!("becoming group {}: {e}", ids.gid))?;
    rustix::thread::set_thread_res_uid(uid, uid, uid).map_err(|e| format!("becoming user {}: {e}", ids.uid))?;
    drop_capabilities()?;
    if getuid() != uid || rustix::process::geteuid() != uid {
        return Err(format!("still not user {} after switching", ids.uid));
    }
    Ok(())
}

/// Clears the ambient, effective, permitted and inheritable capabilities and sets
/// `no_new_privs`, so that nothing run later (a setuid binary included) gains any.
fn drop_capabilities() -> Result<(), String> {
    // Kernels before 4.3 have no ambient set, and so nothing to clear.
    let _ = rustix::thread::clear_ambient_capability_set();
    let none = CapabilitySet::empty();
    rustix::thread::set_capabilities(None, CapabilitySets { effective: none, permitted: none, inheritable: none })
        .map_err(|e| format!("dropping capabilities: {e}"))?;
    rustix::thread::set_no_new_privs(true).map_err(|e| format!("setting no_new_privs: {e}"))?;
    let left = rustix::thread::capabilities(None).map_err(|e| format!("reading capabilities: {e}"))?;
    if !left.permitted.is_empty() || !left.effective.is_empty() {
        return Err(format!("capabilities left after dropping them: {:?}", left.permitted));
    }
    Ok(())
}

/// What the `reset-account` helper does, as the account itself.
#[derive(Debug, Default)]
pub struct Reset {
    /// Kill every process of the account.
    pub kill_all: bool,
    /// Empty this directory (the account's home, or a job's working directory).
    pub empty: Option<PathBuf>,
    /// Then fill it again from this skeleton, and leave it mode 0700.
    pub skeleton: Option<PathBuf>,
}

impl Reset {
    fn args(&self) -> Vec<OsString> {
        let mut args = Vec::new();
        if self.kill_all {
            args.push("--kill-all".into());
        }
        if let Some(dir) = &self.empty {
            args.extend(["--empty".into(), dir.clone().into_os_string()]);
        }
        if let Some(dir) = &self.skeleton {
            args.extend(["--skeleton".into(), dir.clone().into_os_string()]);
        }
        args
    }
}

/// Runs the `reset-account` helper as `ids` and waits for it; its error is the helper's.
pub fn reset_as(ids: Ids, reset: &Reset) -> Result<(), String> {
    let output = Command::new(SELF)
        .arg("reset-account")
        .args(["--uid", &ids.uid.to_string(), "--gid", &ids.gid.to_string()])
        .args(reset.args())
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("starting the reset helper: {e}"))?;
    if output.status.success() {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&output.stderr);
    let said = said.trim().trim_start_matches("fleetyard-agent: error: ");
    Err(if said.is_empty() { format!("the reset helper failed ({})", output.status) } else { said.to_owned() })
}

/// The `reset-account` helper: becomes `ids` (never root), then does what `reset` says.
pub fn reset_account(ids: Ids, reset: &Reset) -> Result<(), String> {
    if ids.uid == 0 {
        return Err("refusing to reset root".into());
    }
    become_user(ids)?;
    if reset.kill_all {
        kill_every_process_of_mine()?;
    }
    if let Some(dir) = &reset.empty {
        // Its own, so it may open it up again whatever its owner did to its mode.
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("opening up {}: {e}", dir.display()))?;
        empty_dir(dir).map_err(|e| format!("emptying {}: {e}", dir.display()))?;
        if let Some(skeleton) = &reset.skeleton {
            copy_tree(skeleton, dir)
                .map_err(|e| format!("filling {} from {}: {e}", dir.display(), skeleton.display()))?;
        }
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    Ok(())
}

/// SIGKILLs every process this (unprivileged, capability-less) user may signal, until none
/// is left. `kill(-1, SIGKILL)` reaches them all at once, and the kernel lets none of them
/// fork once the signal is pending, so nothing escapes by forking.
fn kill_every_process_of_mine() -> Result<(), String> {
    let me = getuid();
    if me.is_root() {
        return Err("refusing to kill every process as root".into());
    }
    // kill(2) with -1: rustix spells it as process group 1, whose negation is -1.
    let everyone = Pid::from_raw(1).expect("1 is a process id");
    let deadline = Instant::now() + KILL_WITHIN;
    loop {
        match kill_process_group(everyone, Signal::KILL) {
            Ok(()) => {}
            Err(e) if e == rustix::io::Errno::SRCH => {}
            Err(e) => return Err(format!("killing the account's processes: {e}")),
        }
        let left = processes_of(me.as_raw());
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("processes {left:?} of user {} would not die", me.as_raw()));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// The live processes (not zombies) other than this one whose real or saved uid is `uid`:
/// those `kill` reaches.
pub fn processes_of(uid: u32) -> Vec<i32> {
    let own = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != own)
        .filter(|pid| {
            let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) else { return false };
            let zombie = status.lines().any(|l| l.starts_with("State:") && (l.contains('Z') || l.contains('X')));
            let uids: Vec<u32> = status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|ids| ids.split_whitespace().filter_map(|n| n.parse().ok()).collect())
                .unwrap_or_default();
            !zombie && (uids.first() == Some(&uid) || uids.get(2) == Some(&uid))
        })
        .filter_map(|pid| i32::try_from(pid).ok())
        .collect()
}

/// Removes everything inside `dir`, opening up first any directory its owner made
/// read-only (Go's module cache does). Symbolic links are removed, never followed.
pub fn empty_dir(dir: &Path) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if fs::symlink_metadata(&path)?.is_dir() {
            open_up(&path)?;
            fs::remove_dir_all(&path)?;
        } else {
            fs::remove_file(&path)?;
        }
    }
    Ok(())
}

fn open_up(dir: &Path) -> std::io::Result<()> {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if fs::symlink_metadata(&path)?.is_dir() {
            open_up(&path)?;
        }
    }
    Ok(())
}

/// Copies `from`'s contents into `to`: directories, files (with their modes) and symbolic
/// links (as links).
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let (source, target) = (entry.path(), to.join(entry.file_name()));
        let meta = fs::symlink_metadata(&source)?;
        if meta.is_dir() {
            match fs::create_dir(&target) {
                Err(e) if e.kind() != ErrorKind::AlreadyExists => return Err(e),
                _ => {}
            }
            copy_tree(&source, &target)?;
            fs::set_permissions(&target, fs::Permissions::from_mode(meta.permissions().mode() & 0o777))?;
        } else if meta.is_symlink() {
            symlink(fs::read_link(&source)?, &target)?;
        } else if meta.is_file() {
            fs::copy(&source, &target)?;
        }
    }
    Ok(())
}

/// Whether this process holds every capability in `needed` (root normally does).
pub fn holds(needed: CapabilitySet) -> Result<(), String> {
    let held = rustix::thread::capabilities(None).map_err(|e| format!("reading the agent's capabilities: {e}"))?;
    let missing = needed.difference(held.effective);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the agent lacks {} (run it as root, or grant them as deploy/agent/fleetyard-agent.service does)",
            names(missing)
        ))
    }
}

fn names(set: CapabilitySet) -> String {
    let known = [
        (CapabilitySet::SETUID, "CAP_SETUID"),
        (CapabilitySet::SETGID, "CAP_SETGID"),
        (CapabilitySet::KILL, "CAP_KILL"),
        (CapabilitySet::CHOWN, "CAP_CHOWN"),
    ];
    known.iter().filter(|(cap, _)| set.contains(*cap)).map(|(_, name)| *name).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emptying_a_directory_opens_up_read_only_ones_and_never_follows_links() {
        let outside = std::env::temp_dir().join(format!("fy-confine-outside-{}", std::process::id()));
        let dir = std::env::temp_dir().join(format!("fy-confine-{}", std::process::id()));
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("keep"), "x").unwrap();
        fs::create_dir_all(dir.join("cache/mod")).unwrap();
        fs::write(dir.join("cache/mod/file"), "x").unwrap();
        fs::set_permissions(dir.join("cache/mod"), fs::Permissions::from_mode(0o500)).unwrap();
        fs::set_permissions(dir.join("cache"), fs::Permissions::from_mode(0o500)).unwrap();
        symlink(&outside, dir.join("link")).unwrap();
        fs::write(dir.join(".hidden"), "x").unwrap();

        empty_dir(&dir).unwrap();
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
        assert!(outside.join("keep").exists(), "a link's target was touched");
        fs::remove_dir_all(&dir).unwrap();
        fs::remove_dir_all(&outside).unwrap();
    }

    #[test]
    fn a_skeleton_is_copied_with_its_modes_and_links() {
        let base = std::env::temp_dir().join(format!("fy-skel-{}", std::process::id()));
        let (skeleton, home) = (base.join("skel"), base.join("home"));
        fs::create_dir_all(skeleton.join(".config")).unwrap();
        fs::create_dir_all(&home).unwrap();
        fs::write(skeleton.join(".profile"), "profile").unwrap();
        fs::set_permissions(skeleton.join(".profile"), fs::Permissions::from_mode(0o640)).unwrap();
        fs::write(skeleton.join(".config/app"), "app").unwrap();
        symlink(".profile", skeleton.join(".bashrc")).unwrap();

        copy_tree(&skeleton, &home).unwrap();
        assert_eq!(fs::read_to_string(home.join(".config/app")).unwrap(), "app");
        assert_eq!(fs::metadata(home.join(".profile")).unwrap().permissions().mode() & 0o777, 0o640);
        assert_eq!(fs::read_link(home.join(".bashrc")).unwrap(), Path::new(".profile"));
        fs::remove_dir_all(&base).unwrap();
    }
}
