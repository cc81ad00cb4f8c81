//! SSH checks with russh: connect with Fleetyard's own key, compare the host key with the
//! pinned one, run the probe script, parse the facts. Nothing here touches the database;
//! jobs decide what a result means.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::IpNet;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use russh::client::{self, Handle};
use russh::keys::ssh_key::LineEnding;
use russh::keys::{Algorithm, HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::{ChannelMsg, Disconnect};

use crate::domain::facts::{Facts, Metrics, PROBE_SCRIPT, parse_probe_output};
use crate::domain::{MachineId, SiteId};

/// The limits on SSH checks, shared by everything in this process that checks: at most `all`
/// at once, at most `per_site` at once at any one site, and never two of the same machine.
#[derive(Debug)]
pub struct SshLimits {
    all: Arc<Semaphore>,
    per_site: usize,
    sites: Mutex<HashMap<SiteId, Arc<Semaphore>>>,
    in_flight: Arc<Mutex<HashSet<MachineId>>>,
}

/// A machine being checked; dropping it lets the machine be checked again.
#[derive(Debug)]
pub struct InFlight {
    machine: MachineId,
    in_flight: Arc<Mutex<HashSet<MachineId>>>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut set) = self.in_flight.lock() {
            set.remove(&self.machine);
        }
    }
}

impl SshLimits {
    pub fn new(all: usize, per_site: usize) -> Self {
        Self {
            all: Arc::new(Semaphore::new(all)),
            per_site,
            sites: Mutex::new(HashMap::new()),
            in_flight: Arc::new(Mutex::new(HashSet::new())),
        }
    }

    /// Marks `machine` as being checked, unless it already is.
    pub fn begin(&self, machine: MachineId) -> Option<InFlight> {
        let mut set = self.in_flight.lock().ok()?;
        set.insert(machine).then(|| InFlight { machine, in_flight: self.in_flight.clone() })
    }

    /// Waits for a slot at `site` and then for a slot in all, in that order: a check waiting
    /// on its busy site holds no global slot.
    pub async fn permit(&self, site: SiteId) -> (OwnedSemaphorePermit, OwnedSemaphorePermit) {
        let site = {
            let mut sites = self.sites.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            sites.entry(site).or_insert_with(|| Arc::new(Semaphore::new(self.per_site))).clone()
        };
        let site = site.acquire_owned().await.expect("the semaphore is never closed");
        let all = self.all.clone().acquire_owned().await.expect("the semaphore is never closed");
        (site, all)
    }
}

/// The largest output a probe keeps; the script prints well under 1 KiB.
const MAX_OUTPUT: usize = 64 * 1024;

/// Where and as whom to log in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    pub host: String,
    pub port: u16,
    pub user: String,
}

/// A freshly generated key pair, in OpenSSH formats.
pub struct GeneratedKey {
    pub private_openssh: String,
    /// `ssh-ed25519 AAAA... fleetyard`, for `authorized_keys`.
    pub public_openssh: String,
    pub fingerprint: String,
}

/// Generates Fleetyard's ed25519 key pair.
pub fn generate_key(comment: &str) -> anyhow::Result<GeneratedKey> {
    let mut key = PrivateKey::random(&mut russh::keys::key::safe_rng(), Algorithm::Ed25519)?;
    key.set_comment(comment);
    Ok(GeneratedKey {
        private_openssh: key.to_openssh(LineEnding::LF)?.as_str().to_owned(),
        public_openssh: key.public_key().to_openssh()?,
        fingerprint: key.public_key().fingerprint(HashAlg::Sha256).to_string(),
    })
}

/// What a successful probe saw.
#[derive(Debug, Clone)]
pub struct ProbeReport {
    /// The host key, in OpenSSH public-key form.
    pub host_key: String,
    pub host_key_fingerprint: String,
    pub facts: Facts,
    pub metrics: Metrics,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error("{UNREACHABLE}: {0}")]
    Unreachable(String),
    #[error("{UNREACHABLE}: Fleetyard does not connect to {0}, which is in the refused network {1}")]
    Refused(std::net::IpAddr, IpNet),
    #[error("the host key changed: pinned {pinned}, presented {presented}")]
    HostKeyChanged { pinned: String, presented: String, presented_key: String },
    #[error("Fleetyard's key was refused for user `{0}`; authorise it on the machine")]
    AuthRejected(String),
    #[error("the probe failed: {0}")]
    ProbeFailed(String),
}

/// How every "could not get to it" error starts.
const UNREACHABLE: &str = "unreachable";

/// A stored probe error as a donor may read it. Why a connection failed (refused, timed out,
/// not SSH) would tell a donor which ports answer on networks Fleetyard reaches, so that part
/// is for ops; what the donor can act on (a refused key, a changed host key, a failing
/// script) is shown whole.
pub fn error_for_donors(error: &str) -> &str {
    if error.starts_with(UNREACHABLE) { "unreachable: no SSH session could be opened" } else { error }
}

/// Runs probes with one key, one set of time limits and one set of networks never to connect to.
#[derive(Clone)]
pub struct SshProber {
    key: Arc<PrivateKey>,
    connect_timeout: Duration,
    command_timeout: Duration,
    refused: Arc<[IpNet]>,
}

impl SshProber {
    pub fn new(
        private_openssh: &str,
        connect_timeout: Duration,
        command_timeout: Duration,
        refused: Vec<IpNet>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            key: Arc::new(PrivateKey::from_openssh(private_openssh)?),
            connect_timeout,
            command_timeout,
            refused: refused.into(),
        })
    }

    /// The address to connect to for `target`: the first it resolves to outside the refused
    /// networks. Connecting to that very address (not the name again) leaves no room for a
    /// name that resolves differently the second time.
    async fn address(&self, target: &SshTarget) -> Result<SocketAddr, ProbeError> {
        let resolving = tokio::net::lookup_host((target.host.as_str(), target.port));
        let addresses: Vec<SocketAddr> = tokio::time::timeout(self.connect_timeout, resolving)
            .await
            .map_err(|_| ProbeError::Unreachable(format!("`{}` did not resolve in time", target.host)))?
            .map_err(|e| ProbeError::Unreachable(format!("`{}` does not resolve: {e}", target.host)))?
            .collect();
        let mut refusal = None;
        for address in &addresses {
            let ip = address.ip().to_canonical();
            match self.refused.iter().find(|net| net.contains(&ip)) {
                Some(net) => refusal = refusal.or(Some(ProbeError::Refused(ip, *net))),
                None => return Ok(*address),
            }
        }
        Err(refusal.unwrap_or_else(|| ProbeError::Unreachable(format!("`{}` has no address", target.host))))
    }

    /// Probes `target`. With `pinned` (an OpenSSH public key), any other host key is refused
    /// before authenticating: a swapped machine learns nothing and gets no command.
    pub async fn probe(&self, target: &SshTarget, pinned: Option<&str>) -> Result<ProbeReport, ProbeError> {
        let pinned_fingerprint = pinned.map(fingerprint_of).transpose()?;
        let seen = Arc::new(Mutex::new(None));
        let handler = PinningHandler { pinned: pinned_fingerprint.clone(), seen: seen.clone() };
        let config = Arc::new(client::Config {
            inactivity_timeout: Some(self.command_timeout + self.connect_timeout),
            nodelay: true,
            ..Default::default()
        });
        let presented = || seen.lock().ok().and_then(|slot| slot.clone());
        let connecting = client::connect(config, self.address(target).await?, handler);
        let mut session = match tokio::time::timeout(self.connect_timeout, connecting).await {
            Err(_) => {
                return Err(ProbeError::Unreachable(format!("no SSH handshake within {:?}", self.connect_timeout)));
            }
            Ok(Err(russh::Error::UnknownKey)) => {
                let (presented_key, presented) = presented().unwrap_or_default();
                return Err(ProbeError::HostKeyChanged {
                    pinned: pinned_fingerprint.unwrap_or_default(),
                    presented,
                    presented_key,
                });
            }
            Ok(Err(e)) => return Err(ProbeError::Unreachable(e.to_string())),
            Ok(Ok(session)) => session,
        };
        let (host_key, host_key_fingerprint) = presented().unwrap_or_default();
        let outcome = self.authenticate_and_run(&mut session, &target.user).await;
        let _ = session.disconnect(Disconnect::ByApplication, "", "").await;
        let output = outcome?;
        let (facts, metrics) = parse_probe_output(&output).map_err(ProbeError::ProbeFailed)?;
        Ok(ProbeReport { host_key, host_key_fingerprint, facts: facts.sanitized(), metrics })
    }

    async fn authenticate_and_run(
        &self,
        session: &mut Handle<PinningHandler>,
        user: &str,
    ) -> Result<String, ProbeError> {
        let key = PrivateKeyWithHashAlg::new(self.key.clone(), None);
        let auth = tokio::time::timeout(self.connect_timeout, session.authenticate_publickey(user, key))
            .await
            .map_err(|_| ProbeError::Unreachable("authentication timed out".into()))?
            .map_err(|e| ProbeError::Unreachable(e.to_string()))?;
        if !auth.success() {
            return Err(ProbeError::AuthRejected(user.to_owned()));
        }
        let mut channel = session.channel_open_session().await.map_err(|e| ProbeError::ProbeFailed(e.to_string()))?;
        channel.exec(true, PROBE_SCRIPT).await.map_err(|e| ProbeError::ProbeFailed(e.to_string()))?;
        let mut stdout = Vec::new();
        let mut status = None;
        let collect = async {
            while let Some(message) = channel.wait().await {
                match message {
                    ChannelMsg::Data { data } if stdout.len() < MAX_OUTPUT => stdout.extend_from_slice(&data),
                    ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
                    ChannelMsg::Failure | ChannelMsg::Close => break,
                    _ => {}
                }
            }
        };
        let finished = tokio::time::timeout(self.command_timeout, collect).await.is_ok();
        let _ = channel.close().await;
        if !finished {
            return Err(ProbeError::ProbeFailed(format!(
                "the probe script did not finish within {:?}",
                self.command_timeout
            )));
        }
        match status {
            Some(0) => Ok(String::from_utf8_lossy(&stdout).into_owned()),
            Some(code) => Err(ProbeError::ProbeFailed(format!("the probe script exited with status {code}"))),
            None => Err(ProbeError::ProbeFailed("the probe script gave no exit status".into())),
        }
    }
}

/// The SHA-256 fingerprint of an OpenSSH public key.
pub fn fingerprint_of(openssh: &str) -> Result<String, ProbeError> {
    russh::keys::PublicKey::from_openssh(openssh.trim())
        .map(|key| key.fingerprint(HashAlg::Sha256).to_string())
        .map_err(|e| ProbeError::ProbeFailed(format!("the pinned host key does not parse: {e}")))
}

/// Records the host key the server presents and refuses it when it is not the pinned one.
struct PinningHandler {
    pinned: Option<String>,
    seen: Arc<Mutex<Option<(String, String)>>>,
}

impl client::Handler for PinningHandler {
    type Error = russh::Error;

    async fn check_server_key(&mut self, server_key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let key = server_key.public_key();
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        let accepted = self.pinned.as_deref().is_none_or(|pinned| pinned == fingerprint);
        if let Ok(mut slot) = self.seen.lock() {
            *slot = Some((key.to_openssh()?, fingerprint));
        }
        Ok(accepted)
    }
}
