//! Options for who may call and how hard they may try: signing keys, the key that encrypts
//! secrets at rest, login throttling, password hashing, and what one service token may queue.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::Secret;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthConfig {
    /// Keys that tokens signed before a key rotation were signed with: still accepted, never
    /// used to sign. Move the old `jwt_secret` here when setting a new one, and drop it once the
    /// longest token lifetime has passed.
    pub previous_jwt_secrets: Vec<Secret>,
    /// Encrypts secrets Fleetyard stores (its SSH private key, webhook signing secrets); at
    /// least 32 bytes, shared by all replicas. Required.
    pub data_key: Secret,
    /// Data keys of before a rotation: stored secrets are read with them and written again with
    /// `data_key` when the server starts.
    pub previous_data_keys: Vec<Secret>,
    /// Failed logins for one account within `login_window_secs` before more are refused (429).
    pub login_failures_per_account: i32,
    /// Failed logins from one source address within the window before more are refused.
    pub login_failures_per_address: i32,
    pub login_window_secs: i64,
    /// Reverse proxies in front of the server: for a request from one of these, the client's
    /// address (for the per-address login limit) is read from `X-Forwarded-For`.
    pub trusted_proxies: Vec<IpNet>,
    /// Password hashes computed at once (each takes about 19 MiB and a core for ~50 ms)...
    pub password_hash_concurrency: usize,
    /// ...and logins that may wait for one; beyond, the answer is 503 with `Retry-After`.
    pub password_hash_queue: usize,
    /// Leases one service token may have queued at once, unless ops set its own cap.
    pub max_queued_leases: i32,
    /// Jobs one service token may have waiting or running at once, unless ops set its own cap.
    pub max_queued_jobs: i32,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            previous_jwt_secrets: Vec::new(),
            data_key: Secret(String::new()),
            previous_data_keys: Vec::new(),
            login_failures_per_account: 5,
            login_failures_per_address: 30,
            login_window_secs: 900,
            trusted_proxies: Vec::new(),
            password_hash_concurrency: 2,
            password_hash_queue: 16,
            max_queued_leases: 200,
            max_queued_jobs: 1000,
        }
    }
}

impl AuthConfig {
    pub(super) fn check(&self) -> anyhow::Result<()> {
        if self.data_key.0.len() < 32 {
            anyhow::bail!("FLEETYARD_AUTH__DATA_KEY must be at least 32 bytes (try `openssl rand -hex 32`)");
        }
        if self.previous_jwt_secrets.iter().chain(&self.previous_data_keys).any(|s| s.0.len() < 32) {
            anyhow::bail!(
                "FLEETYARD_AUTH__PREVIOUS_JWT_SECRETS and __PREVIOUS_DATA_KEYS must each be at least 32 bytes"
            );
        }
        if self.login_failures_per_account < 1 || self.login_failures_per_address < 1 || self.login_window_secs < 1 {
            anyhow::bail!("FLEETYARD_AUTH__LOGIN_FAILURES_* and FLEETYARD_AUTH__LOGIN_WINDOW_SECS must be positive");
        }
        if self.password_hash_concurrency == 0 {
            anyhow::bail!("FLEETYARD_AUTH__PASSWORD_HASH_CONCURRENCY must be positive");
        }
        if self.max_queued_leases < 0 || self.max_queued_jobs < 0 {
            anyhow::bail!("FLEETYARD_AUTH__MAX_QUEUED_LEASES and __MAX_QUEUED_JOBS must not be negative");
        }
        Ok(())
    }
}
