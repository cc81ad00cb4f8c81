//! Enrolling, and the heartbeat loop: jittered heartbeats, exponential backoff with full
//! jitter when the server cannot be reached (never faster than once a second, never slower
//! than once a minute), credential renewal, and a clean stop on SIGTERM or SIGINT.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::client::{CallError, Client, Credential};
use crate::config::Settings;
use crate::credential::{self, Stored};
use crate::facts::{self, Facts};
use crate::{jobs, leases, say, work};

/// The longest wait between attempts while the server is unreachable. After an outage of its
/// own the server waits this long for agents to come back before it judges their silence
/// (`AGENT_MAX_BACKOFF_SECS` on the server side): change both together.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// The shortest: a broken network never turns into a busy loop.
const MIN_WAIT: Duration = Duration::from_secs(1);
/// After a renewal that failed, the next attempt waits this long...
const RENEWAL_RETRY: Duration = Duration::from_secs(5 * 60);
/// ...or this long, when the server says the credential is too fresh to renew.
const RENEWAL_TOO_EARLY_RETRY: Duration = Duration::from_secs(60 * 60);

pub fn enroll(settings: &Settings, token: &str) -> Result<(), String> {
    let server = settings.server.as_deref().ok_or("no server: pass --server or set `server` in the configuration")?;
    let client = Client::new(server, settings.ca_file.as_deref())?;
    let (facts, _) = facts::collect(&settings.disk_path)?;
    let credential = client.enroll(token.trim(), &facts).map_err(|e| e.to_string())?;
    credential::save(&settings.state_dir, &stored(server, &credential))?;
    say!("info", "enrolled as machine {}; credential saved in {}", credential.machine_id, settings.state_dir.display());
    Ok(())
}

/// What cloud-init leaves on an instance Fleetyard launched (see the server's
/// `domain::cloud::cloud_init`).
#[derive(serde::Deserialize)]
struct Bootstrap {
    server: String,
    launch_secret: String,
}

/// Enrolls a cloud instance with its launch's secret, from the bootstrap file its user data
/// wrote. The instance may boot before Fleetyard has recorded it, and the network may come up
/// late: retried with backoff for up to ten minutes.
pub fn enroll_instance(settings: &Settings, bootstrap: &Path, instance_id: &str) -> Result<(), String> {
    let text = std::fs::read_to_string(bootstrap).map_err(|e| format!("reading {}: {e}", bootstrap.display()))?;
    let file: Bootstrap = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", bootstrap.display()))?;
    let server = settings.server.clone().unwrap_or(file.server);
    let client = Client::new(&server, settings.ca_file.as_deref())?;
    let (facts, _) = facts::collect(&settings.disk_path)?;
    let give_up = Instant::now() + Duration::from_secs(600);
    let mut pause = Duration::from_secs(1);
    let credential = loop {
        match client.enroll_instance(file.launch_secret.trim(), instance_id.trim(), &facts) {
            Ok(credential) => break credential,
            Err(e @ CallError::Refused { status: 400..=499, .. })
                if !matches!(&e, CallError::Refused { status: 409, .. }) =>
            {
                return Err(e.to_string());
            }
            Err(e) if Instant::now() >= give_up => return Err(e.to_string()),
            Err(e) => {
                say!("warn", "enrolling: {e}; trying again in {}s", pause.as_secs());
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(15));
            }
        }
    };
    credential::save(&settings.state_dir, &stored(&server, &credential))?;
    say!("info", "enrolled as machine {}; credential saved in {}", credential.machine_id, settings.state_dir.display());
    Ok(())
}

fn stored(server: &str, credential: &Credential) -> Stored {
    Stored {
        server: server.to_owned(),
        machine_id: credential.machine_id.clone(),
        credential: credential.credential.clone(),
        expires_at: credential.credential_expires_at.clone(),
        issued_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
    }
}

/// The machine credential in use, and where renewing it stands.
struct Keeper<'a> {
    state_dir: &'a Path,
    server: String,
    stored: Stored,
    /// The credential in use, shared with the work thread.
    shared: Arc<Mutex<String>>,
    /// A renewed credential the disk would not take yet: kept in memory, saved again later.
    unsaved: bool,
    next_renewal: Instant,
}

impl Keeper<'_> {
    /// Renews the credential when it is due, saving what the server hands out.
    fn renew_if_due(&mut self, client: &Client) {
        if self.unsaved {
            self.save();
        }
        if !self.stored.due_for_renewal(SystemTime::now()) || Instant::now() < self.next_renewal {
            return;
        }
        match client.renew(&self.stored.credential) {
            Ok(fresh) => {
                self.stored = stored(&self.server, &fresh);
                self.share();
                self.unsaved = true;
                self.save();
                say!("info", "renewed the machine credential");
            }
            Err(CallError::Refused { status: 409, message }) => {
                self.next_renewal = Instant::now() + RENEWAL_TOO_EARLY_RETRY;
                say!("warn", "the server will not renew the credential yet: {message}");
            }
            Err(e) => {
                self.next_renewal = Instant::now() + RENEWAL_RETRY;
                say!("warn", "could not renew the machine credential: {e}");
            }
        }
    }

    fn share(&self) {
        *self.shared.lock().unwrap_or_else(|p| p.into_inner()) = self.stored.credential.clone();
    }

    fn save(&mut self) {
        match credential::save(self.state_dir, &self.stored) {
            Ok(()) => self.unsaved = false,
            // The server retires the old credential in minutes: the new one must not be lost
            // to a full disk, so it stays in memory and saving is tried again at each beat.
            Err(e) => say!("warn", "could not save the renewed credential (using it from memory): {e}"),
        }
    }

    /// After the server refused the credential: takes up the one on disk if it is another
    /// (the machine was enrolled again while this agent ran). Returns whether it did.
    fn reload(&mut self) -> bool {
        if self.unsaved {
            return false;
        }
        match credential::load(self.state_dir) {
            Ok(on_disk) if on_disk.credential != self.stored.credential => {
                say!("info", "the credential was refused; using the newer one in {}", self.state_dir.display());
                self.stored = on_disk;
                self.share();
                true
            }
            _ => false,
        }
    }
}

pub fn heartbeats(settings: &Settings) -> Result<(), String> {
    let stored = credential::load(&settings.state_dir)?;
    let server = settings.server.clone().unwrap_or_else(|| stored.server.clone());
    let client = Client::new(&server, settings.ca_file.as_deref())?;
    let stop = stop_on_signals()?;
    say!("info", "reporting for machine {} to {server}", stored.machine_id);
    let shared = Arc::new(Mutex::new(stored.credential.clone()));
    let reach = jobs::Reach {
        server: server.clone(),
        ca_file: settings.ca_file.clone(),
        credential: shared.clone(),
        state_dir: settings.state_dir.clone(),
    };
    let previous = work::load(&settings.state_dir).map(|w| w.leases).unwrap_or_default();
    let sessions = leases::Sessions::new(settings, &previous);
    let setup = jobs::Setup::prepare(settings, settings.lease_user.as_deref());
    work::start(Client::new(&server, settings.ca_file.as_deref())?, reach, setup, sessions, stop.clone());
    let mut keeper =
        Keeper { state_dir: &settings.state_dir, server, stored, shared, unsaved: false, next_renewal: Instant::now() };

    let mut interval = Duration::from_secs(10);
    let mut failures: u32 = 0;
    let mut facts_sent = None;
    while !stop.load(Ordering::Relaxed) {
        let wait = match beat(&client, &keeper.stored, &settings.disk_path, &mut facts_sent) {
            Ok(next) => {
                if failures > 0 {
                    say!("info", "the server answers again after {failures} failed attempts");
                }
                failures = 0;
                interval = next;
                keeper.renew_if_due(&client);
                jittered(interval)
            }
            // Busy (its heartbeat queue is full): keep to the usual pace rather than back off,
            // which would make this machine look silent.
            Err(e @ CallError::Refused { status: 503, .. }) => {
                say!("warn", "heartbeat deferred: {e}");
                jittered(interval)
            }
            Err(CallError::Refused { status: 401, .. }) if keeper.reload() => MIN_WAIT,
            Err(e) => {
                failures = failures.saturating_add(1);
                // Say so the first time and then now and again, not at every attempt.
                if failures == 1 || failures.is_power_of_two() {
                    say!("warn", "heartbeat failed ({failures} in a row): {e}");
                }
                backoff(failures)
            }
        };
        sleep_unless_stopped(wait, &stop);
    }
    say!("info", "stopped");
    Ok(())
}

/// One heartbeat. The facts go with it only when they differ from those last taken by the
/// server (`facts_sent`), or when the server asks for them (409 `facts-wanted`: it restarted,
/// or another replica or a new credential answers): they rarely change, and are most of a
/// heartbeat's size.
fn beat(client: &Client, stored: &Stored, disk: &Path, facts_sent: &mut Option<Facts>) -> Result<Duration, CallError> {
    let (facts, metrics) = facts::collect(disk).map_err(CallError::Transport)?;
    let sent_at = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    let known = facts_sent.as_ref() == Some(&facts);
    let ack = match client.heartbeat(&stored.credential, (!known).then_some(&facts), &metrics, &sent_at) {
        Err(CallError::Refused { status: 409, .. }) if known => {
            client.heartbeat(&stored.credential, Some(&facts), &metrics, &sent_at)?
        }
        answer => answer?,
    };
    *facts_sent = Some(facts);
    Ok(Duration::from_secs(ack.heartbeat_interval_secs.max(1)))
}

/// The interval, give or take a tenth, so a fleet started together does not beat together.
fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(0.9 + fastrand::f64() * 0.2).max(MIN_WAIT)
}

/// Full-jitter exponential backoff: a random wait up to `2^failures` seconds, capped.
fn backoff(failures: u32) -> Duration {
    let ceiling = Duration::from_secs(1 << failures.min(16)).min(MAX_BACKOFF);
    ceiling.mul_f64(fastrand::f64()).max(MIN_WAIT)
}

/// A flag set by SIGTERM or SIGINT; the signal also wakes the sleeping main thread.
fn stop_on_signals() -> Result<Arc<AtomicBool>, String> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut signals = Signals::new([SIGTERM, SIGINT]).map_err(|e| format!("installing signal handlers: {e}"))?;
    let (flag, main) = (stop.clone(), thread::current());
    thread::Builder::new()
        .name("signals".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            if signals.forever().next().is_some() {
                flag.store(true, Ordering::Relaxed);
                main.unpark();
            }
        })
        .map_err(|e| format!("starting the signal thread: {e}"))?;
    Ok(stop)
}

fn sleep_unless_stopped(wait: Duration, stop: &AtomicBool) {
    let deadline = Instant::now() + wait;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        thread::park_timeout(deadline - now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_but_never_below_a_second_nor_above_a_minute() {
        for failures in 1..40 {
            for _ in 0..50 {
                let wait = backoff(failures);
                assert!(wait >= MIN_WAIT && wait <= MAX_BACKOFF, "{failures}: {wait:?}");
            }
        }
        let early: Duration = (0..200).map(|_| backoff(1)).sum();
        let late: Duration = (0..200).map(|_| backoff(8)).sum();
        assert!(late > early * 4);
    }

    #[test]
    fn heartbeats_are_jittered_around_the_interval() {
        for _ in 0..100 {
            let wait = jittered(Duration::from_secs(10));
            assert!(wait >= Duration::from_secs(9) && wait <= Duration::from_secs(11));
        }
    }
}
