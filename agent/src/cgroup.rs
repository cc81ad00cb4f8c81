//! Jobs' cgroups (v2): made beside nothing else of the agent's, and killed whole at a job's end.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};

/// How long a killed cgroup may take to empty before its end is reported as failed.
const EMPTY_WITHIN: Duration = Duration::from_secs(10);

/// One job's cgroup, a directory in the cgroup2 file system.
#[derive(Debug, Clone)]
pub struct Cgroup {
    path: PathBuf,
}

/// Where jobs' cgroups are made: `configured`, or else the agent's own cgroup (under systemd
/// with `Delegate=yes`, the unit's, which systemd hands to the agent).
pub fn parent(configured: Option<&Path>) -> Result<PathBuf, String> {
    let dir = match configured {
        Some(dir) => dir.to_owned(),
        None => {
            let (mount, root) = cgroup2_mount()?;
            let own = own_cgroup()?;
            // A mount of part of the hierarchy (a container's) shows paths below its root.
            let below = Path::new(&own).strip_prefix(&root).unwrap_or(Path::new(&own));
            mount.join(below.strip_prefix("/").unwrap_or(below))
        }
    };
    if !dir.join("cgroup.procs").exists() {
        return Err(format!("{} is not a cgroup (v2) directory", dir.display()));
    }
    Ok(dir)
}

/// Makes and removes a cgroup under `parent`, proving jobs' cgroups can be made there.
/// Returns whether the kernel has `cgroup.kill` (5.14 and later).
pub fn probe(parent: &Path) -> Result<bool, String> {
    let probe = Cgroup::create(parent, &format!("fleetyard-probe-{}", std::process::id()))?;
    let has_kill = probe.path.join("cgroup.kill").exists();
    probe.remove()?;
    Ok(has_kill)
}

/// The cgroup2 file system's mount point and the part of the hierarchy mounted there, from
/// `/proc/self/mountinfo`.
fn cgroup2_mount() -> Result<(PathBuf, String), String> {
    let text = fs::read_to_string("/proc/self/mountinfo").map_err(|e| format!("reading /proc/self/mountinfo: {e}"))?;
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else { continue };
        if right.split(' ').next() != Some("cgroup2") {
            continue;
        }
        let fields: Vec<&str> = left.split(' ').collect();
        if let (Some(root), Some(mount)) = (fields.get(3), fields.get(4)) {
            return Ok((PathBuf::from(unescape(mount)), unescape(root)));
        }
    }
    Err("no cgroup2 file system is mounted (jobs need cgroups v2)".into())
}

/// The agent's own cgroup in the v2 hierarchy: the `0::` line of `/proc/self/cgroup`.
fn own_cgroup() -> Result<String, String> {
    let text = fs::read_to_string("/proc/self/cgroup").map_err(|e| format!("reading /proc/self/cgroup: {e}"))?;
    text.lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(str::to_owned)
        .ok_or_else(|| "the agent is in no cgroup v2 (no 0:: line in /proc/self/cgroup)".into())
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Cgroup {
    /// The cgroup at `path`, as recorded by an earlier run of the agent.
    pub fn at(path: PathBuf) -> Cgroup {
        Cgroup { path }
    }

    /// Makes `parent/name`. One left over from an earlier attempt is killed and made afresh.
    pub fn create(parent: &Path, name: &str) -> Result<Cgroup, String> {
        let cgroup = Cgroup { path: parent.join(name) };
        match fs::create_dir(&cgroup.path) {
            Ok(()) => Ok(cgroup),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                cgroup.end()?;
                fs::create_dir(&cgroup.path).map_err(|e| format!("making cgroup {}: {e}", cgroup.path.display()))?;
                Ok(cgroup)
            }
            Err(e) => Err(format!("making cgroup {}: {e}", cgroup.path.display())),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The processes in it now.
    pub fn procs(&self) -> Vec<Pid> {
        fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .filter_map(Pid::from_raw)
            .collect()
    }

    /// Sends `signal` to every process in it (a polite SIGTERM before the kill).
    pub fn signal(&self, signal: Signal) {
        for pid in self.procs() {
            let _ = kill_process(pid, signal);
        }
    }

    /// Whether any process is left in it (`cgroup.events` says `populated 0` once none is).
    pub fn populated(&self) -> bool {
        match fs::read_to_string(self.path.join("cgroup.events")) {
            Ok(events) => events.lines().any(|l| l == "populated 1"),
            Err(_) => !self.procs().is_empty(),
        }
    }

    /// SIGKILLs everything in it at once. Kernels before 5.14 have no `cgroup.kill`: there
    /// the cgroup is frozen (so nothing in it can fork) and every process listed is killed,
    /// until none is left.
    pub fn kill(&self) {
        match fs::write(self.path.join("cgroup.kill"), "1") {
            Ok(()) => return,
            Err(e) if e.kind() == ErrorKind::NotFound && self.path.exists() => {}
            Err(_) => return,
        }
        let _ = fs::write(self.path.join("cgroup.freeze"), "1");
        let deadline = Instant::now() + EMPTY_WITHIN;
        loop {
            let procs = self.procs();
            if procs.is_empty() || Instant::now() > deadline {
                break;
            }
            for pid in procs {
                let _ = kill_process(pid, Signal::KILL);
            }
            thread::sleep(Duration::from_millis(10));
        }
        let _ = fs::write(self.path.join("cgroup.freeze"), "0");
    }

    /// Kills everything in it, waits until it is empty, and removes it.
    pub fn end(&self) -> Result<(), String> {
        if !self.path.exists() {
            return Ok(());
        }
        self.kill();
        let deadline = Instant::now() + EMPTY_WITHIN;
        while self.populated() {
            if Instant::now() > deadline {
                let left: Vec<i32> = self.procs().into_iter().map(Pid::as_raw_nonzero).map(i32::from).collect();
                return Err(format!("cgroup {} still holds processes {left:?}", self.path.display()));
            }
            thread::sleep(Duration::from_millis(20));
        }
        self.remove()
    }

    /// Removes the (empty) directory. Processes that have just died may keep it busy for a
    /// moment.
    fn remove(&self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match fs::remove_dir(&self.path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("removing cgroup {}: {e}", self.path.display()));
                }
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape("/sys/fs/cgroup"), "/sys/fs/cgroup");
        assert_eq!(unescape("/mnt/with\\040space\\134x"), "/mnt/with space\\x");
        assert_eq!(unescape("/trailing\\04"), "/trailing\\04");
    }
}
