//! Leases ending clean with the real agent: the lease user's processes die and its home is made anew, at release and at expiry.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::{Account, Agent, Fleetyard, Scratch, account, gone_within, kill_processes_of, listing, must_be_root};
use serde_json::json;

const LEASE_USER: &str = "fy-agent-lease";
const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFleetyardAgentLeaseTestKeyOnlyXXXXXXXXXXXX runner@ci";

fn lease(id: &str, ends_in: Duration) -> serde_json::Value {
    let end = humantime::format_rfc3339_seconds(SystemTime::now() + ends_in).to_string();
    json!({ "lease_id": id, "ssh_public_key": KEY, "expires_at": end })
}

/// Runs `script` with `sh` as the lease user in its home, as a session of the lease holder
/// would, and returns what it prints.
fn as_lease_user(user: &Account, script: &str) -> String {
    let out = Command::new("/bin/sh")
        .args(["-c", script])
        .current_dir(&user.home)
        .env_clear()
        .env("HOME", &user.home)
        .env("PATH", "/usr/bin:/bin")
        .uid(user.uid)
        .gid(user.gid)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What a lease holder leaves behind: a key of their own, a read-only directory, a link out of
/// the home, and processes that outlive the session: one with nohup, one double-forked into a
/// session of its own. Returns the processes' pids.
fn leave_traces(user: &Account) -> Vec<i32> {
    let printed = as_lease_user(
        user,
        "mkdir -p .ssh && echo 'ssh-ed25519 AAAAappended' >> .ssh/authorized_keys; \
         mkdir -p stuck/deeper && touch stuck/deeper/file && chmod 500 stuck/deeper stuck; \
         ln -s /etc escape; echo secret > notes.txt; \
         nohup sleep 1000 >/dev/null 2>&1 & echo $!; \
         ( setsid sh -c 'echo $$ >&3; exec sleep 1001 3>&-' 3>&1 >/dev/null 2>&1 & )",
    );
    printed.split_whitespace().filter_map(|p| p.parse().ok()).collect()
}

/// Waits until the account has no process left and its home is the skeleton again.
fn assert_reset(user: &Account, skeleton: &Scratch, pids: &[i32], agent: &Agent, why: &str) {
    for pid in pids {
        assert!(
            gone_within(*pid, Duration::from_secs(40)),
            "{why}: process {pid} of the lease user survived:\n{}",
            agent.log()
        );
    }
    let started = Instant::now();
    while listing(&user.home) != listing(&skeleton.path) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{why}: the home was not reset: {:?}\n{}",
            listing(&user.home),
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(common::processes_of(user.uid).is_empty(), "{why}: processes of the lease user remain");
    let meta = std::fs::metadata(&user.home).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (user.uid, 0o700), "{why}: the home is the lease user's, 0700");
    assert_eq!(std::fs::read_to_string(user.home.join(".profile")).unwrap(), "# skeleton\n");
    assert_eq!(std::fs::metadata(user.home.join(".profile")).unwrap().uid(), user.uid);
    assert!(std::path::Path::new("/etc/passwd").exists(), "the link out of the home was followed");
    assert_eq!(agent.authorized_keys(LEASE_USER), "", "{why}: a key outlived its lease");
}

// One test, so that nothing else uses the lease user while the agent resets it.
#[test]
fn a_lease_that_ends_by_release_or_by_time_takes_every_process_of_the_lease_user_and_its_home_with_it() {
    must_be_root();
    let user = account(LEASE_USER, true);
    kill_processes_of(user.uid);
    let skeleton = Scratch::new(0o755);
    std::fs::write(skeleton.path.join(".profile"), "# skeleton\n").unwrap();
    std::fs::create_dir(skeleton.path.join(".config")).unwrap();
    std::fs::write(skeleton.path.join(".config/tool.toml"), "x = 1\n").unwrap();
    std::fs::set_permissions(skeleton.path.join(".config"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let server = Fleetyard::start();
    let mut agent = Agent::new(
        &server,
        &format!("lease_user = {LEASE_USER:?}\nlease_skeleton = {:?}", skeleton.path.display().to_string()),
    );
    agent.start();

    // Released: the server stops listing the lease.
    server.set_leases(vec![lease("lease-1", Duration::from_secs(3600))]);
    wait_for_key(&agent);
    let pids = leave_traces(&user);
    assert_eq!(pids.len(), 2, "{pids:?}");
    assert!(user.home.join(".ssh/authorized_keys").exists());
    server.set_leases(Vec::new());
    assert_reset(&user, &skeleton, &pids, &agent, "released");

    // Run out: the lease's time passes while the server still lists it.
    server.set_leases(vec![lease("lease-2", Duration::from_secs(6))]);
    wait_for_key(&agent);
    let pids = leave_traces(&user);
    assert_reset(&user, &skeleton, &pids, &agent, "expired");
    kill_processes_of(user.uid);
}

fn wait_for_key(agent: &Agent) {
    let started = Instant::now();
    while agent.authorized_keys(LEASE_USER).trim() != KEY {
        assert!(started.elapsed() < Duration::from_secs(15), "the lease's key was never let in:\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}
