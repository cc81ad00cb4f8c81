//! SSH checks with russh: connect with Fleetyard's own key, compare the host key with the
//! pinned one, run the probe script, parse the facts. Nothing here touches the database;
//! jobs decide what a result means.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client::{self, Handle};
use russh::keys::ssh_key::LineEnding;
use russh::keys::{Algorithm, HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::{ChannelMsg, Disconnect};

use crate::domain::facts::{Facts, Metrics, PROBE_SCRIPT, parse_probe_output};

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
    #[error("unreachable: {0}")]
    Unreachable(String),
    #[error("the host key changed: pinned {pinned}, presented {presented}")]
    HostKeyChanged { pinned: String, presented: String, presented_key: String },
    #[error("Fleetyard's key was refused for user `{0}`; authorise it on the machine")]
    AuthRejected(String),
    #[error("the probe failed: {0}")]
    ProbeFailed(String),
}

/// Runs probes with one key and one set of time limits.
#[derive(Clone)]
pub struct SshProber {
    key: Arc<PrivateKey>,
    connect_timeout: Duration,
    command_timeout: Duration,
}

impl SshProber {
    pub fn new(private_openssh: &str, connect_timeout: Duration, command_timeout: Duration) -> anyhow::Result<Self> {
        Ok(Self { key: Arc::new(PrivateKey::from_openssh(private_openssh)?), connect_timeout, command_timeout })
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
        let connecting = client::connect(config, (target.host.as_str(), target.port), handler);
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
        Ok(ProbeReport { host_key, host_key_fingerprint, facts, metrics })
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
