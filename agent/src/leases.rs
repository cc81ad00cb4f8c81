//! Ending leases clean: when the leases in force are over, every process of the lease user dies and its home is made anew.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use rustix::thread::CapabilitySet;

use crate::accounts::Account;
use crate::client::LeaseWork;
use crate::config::Settings;
use crate::confine::{self, Ids, Reset};
use crate::say;

/// A reset that failed is tried again this often while no lease is in force.
const RETRY_EVERY: Duration = Duration::from_secs(60);

/// The lease account: who it is, which leases are in force on it, and whether it still has
/// to be reset after one ended.
pub struct Sessions {
    /// `None`: no lease user, or one the agent cannot reset (said once at start).
    account: Option<Account>,
    skeleton: PathBuf,
    /// Where a pending reset is remembered across a restart of the agent.
    marker: PathBuf,
    /// Lease id to its end.
    in_force: BTreeMap<String, SystemTime>,
    /// A lease ended and the account has not been reset since.
    pending: bool,
    /// When a reset last failed.
    failed_at: Option<Instant>,
}

impl Sessions {
    /// The lease account of `settings`, with the leases `previous` (the last work the agent
    /// saved, before it stopped) held in force, so that leases that ended while it was down
    /// end clean all the same.
    pub fn new(settings: &Settings, previous: &[LeaseWork]) -> Sessions {
        let account = settings.lease_user.as_deref().and_then(|name| match lease_account(name, settings) {
            Ok(account) => {
                say!(
                    "info",
                    "leases' sessions run as {name}: at each lease's end its processes die and its home is reset"
                );
                Some(account)
            }
            Err(why) => {
                say!("warn", "leases will not end clean (processes killed, home reset): {why}");
                None
            }
        });
        let marker = settings.state_dir.join("lease-account-dirty");
        Sessions {
            account,
            skeleton: settings.lease_skeleton.clone(),
            pending: marker.exists(),
            marker,
            in_force: ends(previous),
            failed_at: None,
        }
    }

    /// Takes the leases the server now lists. Returns whether the account must be reset
    /// before any of them is let in: a lease that was in force is over, and none of those in
    /// force with it goes on. The caller then locks every lease out, calls [`reset`], and
    /// only then saves the new leases.
    ///
    /// [`reset`]: Sessions::reset
    pub fn take(&mut self, leases: &[LeaseWork], now: SystemTime) -> bool {
        let listed: BTreeMap<String, SystemTime> = ends(leases).into_iter().filter(|(_, end)| *end > now).collect();
        let ended = self.in_force.keys().any(|id| !listed.contains_key(id));
        let goes_on = self.in_force.keys().any(|id| listed.contains_key(id));
        self.in_force = listed;
        if ended {
            self.mark_pending();
        }
        self.pending && !goes_on && self.account.is_some()
    }

    /// Ends the leases whose time is up although the server still lists them (it may be
    /// unreachable), and retries a reset that failed while no lease is in force.
    pub fn tick(&mut self, now: SystemTime) {
        let before = self.in_force.len();
        self.in_force.retain(|_, end| *end > now);
        if self.in_force.len() < before {
            self.mark_pending();
        }
        let retry_due = self.failed_at.is_none_or(|at| at.elapsed() >= RETRY_EVERY);
        if self.pending && self.in_force.is_empty() && self.account.is_some() && retry_due {
            self.reset();
        }
    }

    /// How long the next poll for work may wait: no longer than until the next lease ends.
    pub fn poll_wait(&self, longest: u64, now: SystemTime) -> u64 {
        let next = self.in_force.values().min().and_then(|end| end.duration_since(now).ok());
        next.map_or(longest, |left| (left.as_secs() + 1).clamp(1, longest))
    }

    fn mark_pending(&mut self) {
        self.pending = true;
        if self.account.is_some() {
            let _ = fs::write(&self.marker, b"");
        }
    }

    /// Kills every process of the lease account and empties its home, then fills it again
    /// from the skeleton (mode 0700, the account's own).
    pub fn reset(&mut self) {
        let Some(account) = &self.account else { return };
        let started = Instant::now();
        let outcome = home_checked(account).and_then(|home| {
            let reset = Reset { kill_all: true, empty: Some(home), skeleton: Some(self.skeleton.clone()) };
            confine::reset_as(Ids { uid: account.uid, gid: account.gid }, &reset)
        });
        match outcome {
            Ok(()) => {
                self.pending = false;
                self.failed_at = None;
                let _ = fs::remove_file(&self.marker);
                say!(
                    "info",
                    "lease ended: {}'s processes killed and home reset in {:?}",
                    account.name,
                    started.elapsed()
                );
            }
            Err(e) => {
                self.failed_at = Some(Instant::now());
                say!("error", "lease ended, but resetting {} failed: {e}", account.name);
            }
        }
    }
}

fn ends(leases: &[LeaseWork]) -> BTreeMap<String, SystemTime> {
    leases
        .iter()
        .filter_map(|l| Some((l.lease_id.clone(), humantime::parse_rfc3339_weak(&l.expires_at).ok()?)))
        .collect()
}

/// The lease account, if the agent may reset it: a dedicated account (not root, not the
/// agent's, not the job user's), and the capabilities to become it.
fn lease_account(name: &str, settings: &Settings) -> Result<Account, String> {
    let account = Account::lookup(name)?.dedicated("lease_user")?;
    if settings.job_user.as_deref() == Some(name) {
        return Err(format!("lease_user and job_user are both {name:?}; leases need an account of their own"));
    }
    confine::holds(CapabilitySet::SETUID | CapabilitySet::SETGID)?;
    Ok(account)
}

/// The account's home, if it is one the agent may empty: an absolute path other than `/`,
/// a real directory (not a link), owned by the account.
fn home_checked(account: &Account) -> Result<PathBuf, String> {
    let home = &account.home;
    if !home.is_absolute() || home == Path::new("/") {
        return Err(format!("refusing to empty the home {:?}", home.display()));
    }
    let meta = fs::symlink_metadata(home).map_err(|e| format!("{}: {e}", home.display()))?;
    if !meta.is_dir() || meta.uid() != account.uid {
        return Err(format!("{} is not a directory of {}'s own", home.display(), account.name));
    }
    Ok(home.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(id: &str, end: &str) -> LeaseWork {
        LeaseWork { lease_id: id.into(), ssh_public_key: Some("ssh-ed25519 AAAA".into()), expires_at: end.into() }
    }

    fn at(time: &str) -> SystemTime {
        humantime::parse_rfc3339(time).unwrap()
    }

    fn sessions(previous: &[LeaseWork]) -> Sessions {
        Sessions {
            account: Some(Account { name: "runner".into(), uid: 990, gid: 990, home: "/home/runner".into() }),
            skeleton: "/etc/skel".into(),
            marker: std::env::temp_dir().join(format!("fy-marker-{}-{}", std::process::id(), fastrand::u64(..))),
            in_force: ends(previous),
            pending: false,
            failed_at: None,
        }
    }

    #[test]
    fn the_account_is_reset_when_the_last_lease_in_force_is_gone_and_before_the_next_is_let_in() {
        let now = at("2026-11-22T11:00:00Z");
        let mut s = sessions(&[]);
        assert!(!s.take(&[lease("a", "2026-11-22T12:00:00Z")], now), "a first lease resets nothing");
        assert!(!s.take(&[lease("a", "2026-11-22T12:00:00Z")], now), "nor does hearing of it again");
        // Released, and the next lease already granted: reset before it is let in.
        assert!(s.take(&[lease("b", "2026-11-22T12:00:00Z")], now));
        let _ = fs::remove_file(&s.marker);
    }

    #[test]
    fn a_lease_ending_while_another_goes_on_waits_for_that_one() {
        let now = at("2026-11-22T11:00:00Z");
        let mut s = sessions(&[lease("a", "2026-11-22T12:00:00Z"), lease("b", "2026-11-22T12:00:00Z")]);
        assert!(!s.take(&[lease("b", "2026-11-22T12:00:00Z")], now));
        assert!(s.take(&[], now));
        let _ = fs::remove_file(&s.marker);
    }

    #[test]
    fn leases_past_their_end_are_over_even_if_still_listed() {
        let mut s = sessions(&[lease("a", "2026-11-22T11:00:30Z")]);
        assert_eq!(s.poll_wait(25, at("2026-11-22T11:00:00Z")), 25);
        assert_eq!(s.poll_wait(25, at("2026-11-22T11:00:20Z")), 11);
        // Still listed by a server that has not reclaimed it yet: over all the same.
        assert!(s.take(&[lease("a", "2026-11-22T11:00:30Z")], at("2026-11-22T11:00:31Z")));
        let _ = fs::remove_file(&s.marker);
    }
}
