//! Work from Fleetyard: the leases this machine holds (their SSH keys) and jobs to run, heard by long poll.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, SystemTime};

use crate::client::{CallError, Client, Work};
use crate::{credential, jobs, leases, say};

/// How long one poll may be held by the server.
const POLL_SECS: u64 = 25;

fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("work.json")
}

/// Starts the work thread. It reads the credential from `reach` at each poll, so a renewed or
/// replaced one is used at once.
///
/// It long-polls `GET /agent/work` and writes what it hears to `work.json` in the state
/// directory (mode 0600), the moment it hears it. sshd asks for the keys through
/// `AuthorizedKeysCommand fleetyard-agent authorized-keys %u`, which reads that file and lets
/// in only keys whose lease has not expired: a key stops working at its lease's end even if
/// the agent or the network is down. When the leases in force are over, the lease account is
/// reset (`leases`) before the next lease's key is let in. A poll waits no longer than until
/// the next lease's end.
pub fn start(
    client: Client,
    reach: jobs::Reach,
    setup: jobs::Setup,
    mut sessions: leases::Sessions,
    stop: Arc<AtomicBool>,
) {
    let spawned = thread::Builder::new().name("work".into()).stack_size(256 * 1024).spawn(move || {
        let (state_dir, credential) = (reach.state_dir.clone(), reach.credential.clone());
        // Jobs a previous run of the agent left behind are ended; the server hands out again
        // whatever should still run. So the first poll does not wait.
        jobs::end_leftovers(&state_dir, &setup);
        let mut since: Option<String> = None;
        let mut runner = jobs::Runner::new(setup);
        let mut failures: u32 = 0;
        while !stop.load(Ordering::Relaxed) {
            sessions.tick(SystemTime::now());
            let current = credential.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let wait = sessions.poll_wait(POLL_SECS, SystemTime::now());
            match client.work(&current, since.as_deref(), wait) {
                Ok(work) => {
                    failures = 0;
                    if since.as_deref() != Some(work.version.as_str()) {
                        runner.reconcile(&work.jobs, &reach);
                        if sessions.take(&work.leases, SystemTime::now()) {
                            // Every key out first, so that no one logs in again mid-reset.
                            let locked = Work { leases: Vec::new(), ..work.clone() };
                            if let Err(e) = save(&state_dir, &locked) {
                                say!("warn", "could not lock the lease account out: {e}");
                            }
                            sessions.reset();
                        }
                        match save(&state_dir, &work) {
                            Ok(()) => {
                                say!(
                                    "info",
                                    "work updated: {} lease(s), {} job(s) on this machine",
                                    work.leases.len(),
                                    work.jobs.len()
                                );
                                since = Some(work.version);
                            }
                            Err(e) => {
                                say!("warn", "could not save the work: {e}");
                                thread::sleep(Duration::from_secs(5));
                            }
                        }
                    }
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    if failures == 1 || failures.is_power_of_two() {
                        say!("warn", "asking for work failed ({failures} in a row): {e}");
                    }
                    let ceiling = Duration::from_secs(1 << failures.min(6)).min(Duration::from_secs(60));
                    let wait = match e {
                        // Refused credential: the heartbeat loop sorts that out; look again soon.
                        CallError::Refused { status: 401, .. } => Duration::from_secs(2),
                        _ => ceiling.mul_f64(fastrand::f64()).max(Duration::from_secs(1)),
                    };
                    thread::sleep(wait);
                }
            }
        }
    });
    if let Err(e) = spawned {
        say!("warn", "could not start the work thread ({e}); leases' SSH keys will not be installed");
    }
}

/// The work last saved (a previous run's, at start).
pub fn load(state_dir: &Path) -> Result<Work, String> {
    let file = path(state_dir);
    let text = fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))
}

fn save(state_dir: &Path, work: &Work) -> Result<(), String> {
    let json = serde_json::to_vec(work).map_err(|e| e.to_string())?;
    credential::write_private(&path(state_dir), &json)
}

/// The `authorized-keys USER` subcommand: prints the keys of unexpired leases when `user` is
/// the account leases are for, and nothing otherwise. Never fails loudly: sshd treats any
/// output as keys, and an error as "no keys".
pub fn print_authorized_keys(state_dir: &Path, lease_user: Option<&str>, user: &str) -> Result<(), String> {
    if lease_user != Some(user) {
        return Ok(());
    }
    let Ok(work) = load(state_dir) else { return Ok(()) };
    for key in keys_in_force(&work, SystemTime::now()) {
        println!("{key}");
    }
    Ok(())
}

/// The keys of leases that have not expired at `now`, one line each.
fn keys_in_force(work: &Work, now: SystemTime) -> Vec<String> {
    work.leases
        .iter()
        .filter(|l| humantime::parse_rfc3339_weak(&l.expires_at).is_ok_and(|end| end > now))
        .filter_map(|l| l.ssh_public_key.as_deref())
        .map(|key| key.lines().next().unwrap_or_default().trim().to_owned())
        .filter(|key| !key.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::LeaseWork;

    #[test]
    fn only_unexpired_leases_let_their_key_in() {
        let lease = |key: &str, expires_at: &str| LeaseWork {
            lease_id: "l".into(),
            ssh_public_key: Some(key.into()),
            expires_at: expires_at.into(),
        };
        let work = Work {
            version: "v".into(),
            jobs: Vec::new(),
            leases: vec![
                lease("ssh-ed25519 AAAA current", "2026-11-22T12:00:00Z"),
                lease("ssh-ed25519 AAAA over", "2026-11-22T10:00:00Z"),
                // Anything after the first line is not a key.
                lease("ssh-ed25519 AAAA sneaky\ncommand=\"sh\" ssh-rsa BBBB", "2026-11-22T12:00:00Z"),
            ],
        };
        let now = humantime::parse_rfc3339("2026-11-22T11:00:00Z").unwrap();
        assert_eq!(keys_in_force(&work, now), ["ssh-ed25519 AAAA current", "ssh-ed25519 AAAA sneaky"]);
    }
}
