//! Local test accounts for what only another user can show (a lease user sshd logs in), made with useradd if missing.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The lease user of the end-to-end tests: a system account with a home and a shell, which
/// only tests that reset it use (one at a time: it has one home).
pub const LEASE_USER: &str = "fy-lease-test";

/// A local account.
#[derive(Debug, Clone)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

/// The lease test user, created if missing, that sshd will log in: its password is `*` (no
/// password works, yet the account is not locked, which sshd without PAM would refuse).
pub fn lease_user() -> Account {
    assert!(is_root(), "the lease tests create {LEASE_USER} and log in as it: they must run as root");
    let account = system_account(LEASE_USER);
    let status = Command::new("usermod").args(["-p", "*", LEASE_USER]).status().expect("running usermod");
    assert!(status.success(), "usermod -p '*' {LEASE_USER} failed");
    account
}

/// The system account `name` with a home under /home, created if missing. Tests running at
/// once may race to create it: useradd's lock makes all but one fail, and those find it made.
fn system_account(name: &str) -> Account {
    for _ in 0..50 {
        if let Some(account) = lookup(name) {
            return account;
        }
        let _ = Command::new("useradd")
            .args(["--system", "--shell", "/bin/sh", "--create-home", "--home-dir", &format!("/home/{name}"), name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        std::thread::sleep(Duration::from_millis(100));
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

/// The live processes whose real uid is `uid` (zombies waiting to be reaped are not).
pub fn processes_of(uid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return false };
            let zombie = status.lines().any(|l| l.starts_with("State:") && (l.contains('Z') || l.contains('X')));
            let real = status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|l| l.split_whitespace().next());
            !zombie && real == Some(uid.to_string().as_str())
        })
        .collect()
}

/// The names in `dir` and below it, relative to it, sorted.
pub fn listing(dir: &std::path::Path) -> Vec<String> {
    fn walk(root: &std::path::Path, dir: &std::path::Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            out.push(path.strip_prefix(root).unwrap_or(&path).display().to_string());
            if std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
                walk(root, &path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}
