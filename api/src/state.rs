//! What every request handler and job can reach: the database pool, token keys, settings,
//! the agent-credential cache, the heartbeat ingest and Fleetyard's SSH key.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::OnceCell;

use crate::auth::{AgentCredentials, PasswordGate, TokenKeys};
use crate::cloud::Clouds;
use crate::config::Config;
use crate::db::{self, DbConn};
use crate::error::ApiError;
use crate::heartbeats::HeartbeatIngest;
use crate::probe::{self, SshLimits, SshProber};
use crate::provisioner;
use crate::scheduler::Scheduler;
use crate::secrets::DataKeys;
use crate::work::WorkBell;

#[derive(Clone)]
pub struct AppState {
    pub pool: db::Pool,
    pub tokens: Arc<TokenKeys>,
    /// Seals and opens the secrets Fleetyard stores.
    pub data_keys: Arc<DataKeys>,
    /// Bounds the password hashing this replica does at once.
    pub passwords: Arc<PasswordGate>,
    pub config: Arc<Config>,
    /// The OpenAPI document, rendered once at start-up.
    pub openapi_json: Arc<str>,
    pub agents: Arc<AgentCredentials>,
    pub heartbeats: Arc<HeartbeatIngest>,
    /// The limits every SSH check in this process shares.
    pub ssh_limits: Arc<SshLimits>,
    /// This replica's lease scheduler task.
    pub scheduler: Arc<Scheduler>,
    /// Wakes agents' long polls when their machine's work changes.
    pub work_bell: Arc<WorkBell>,
    /// The cloud providers, one per configured account and region (tests inject emulated ones).
    pub clouds: Arc<Clouds>,
    /// Wakes this replica's cloud worker (placement wrote intents).
    pub cloud_bell: Arc<tokio::sync::Notify>,
    ssh_key: Arc<OnceCell<SshKey>>,
}

/// Fleetyard's SSH identity: the public half to show donors, and a prober holding the private
/// half (which no endpoint ever returns).
pub struct SshKey {
    pub public_openssh: String,
    pub fingerprint: String,
    pub prober: SshProber,
}

/// The name of Fleetyard's SSH key in `platform_keys`.
const SSH_KEY_NAME: &str = "ssh-ed25519";

impl AppState {
    /// Builds the state and starts its background tasks: the heartbeat writer, the revocation
    /// poll, the scheduler and the cloud worker (needs a tokio runtime). `clouds` are the
    /// providers, usually `Clouds::from_config`.
    pub fn new(pool: db::Pool, config: Config, clouds: Clouds) -> Self {
        let config = Arc::new(config);
        let cloud_bell = Arc::new(tokio::sync::Notify::new());
        let state = Self {
            tokens: Arc::new(TokenKeys::new(&config)),
            data_keys: Arc::new(DataKeys::new(&config.auth.data_key, &config.auth.previous_data_keys)),
            passwords: Arc::new(PasswordGate::new(
                config.auth.password_hash_concurrency,
                config.auth.password_hash_queue,
            )),
            openapi_json: crate::routes::openapi_json().into(),
            agents: AgentCredentials::start(pool.clone(), Duration::from_secs(config.agent_token_cache_secs)),
            heartbeats: Arc::new(HeartbeatIngest::start(
                pool.clone(),
                Duration::from_millis(config.heartbeat_flush_millis),
                // Beats at the agents' interval are all written; faster ones are coalesced.
                Duration::from_millis(config.heartbeat_interval_secs * 1000 / 2),
            )),
            ssh_limits: Arc::new(SshLimits::new(config.ssh_concurrency, config.ssh_site_concurrency)),
            ssh_key: Arc::new(OnceCell::new()),
            scheduler: Arc::new(Scheduler::start(pool.clone(), config.clone(), cloud_bell.clone())),
            work_bell: WorkBell::start(config.database_url.clone()),
            clouds: Arc::new(clouds),
            cloud_bell,
            config,
            pool,
        };
        tokio::spawn(provisioner::run(state.clone()));
        tokio::spawn(seal_stored_secrets(state.pool.clone(), state.data_keys.clone()));
        state
    }

    /// A pooled connection, or 503 when the database cannot be reached.
    pub async fn db(&self) -> Result<DbConn, ApiError> {
        Ok(self.pool.get().await?)
    }

    /// Fleetyard's SSH key, generated the first time any replica needs it.
    pub async fn ssh_key(&self) -> anyhow::Result<&SshKey> {
        self.ssh_key
            .get_or_try_init(|| async {
                let mut conn = self.pool.get().await.context("connecting to load the SSH key")?;
                let stored = match db::platform_keys::find(&mut conn, SSH_KEY_NAME).await? {
                    Some(key) => key,
                    None => {
                        let generated = probe::generate_key("fleetyard")?;
                        let key = db::platform_keys::PlatformKey {
                            name: SSH_KEY_NAME.into(),
                            private_key: self.data_keys.seal(&generated.private_openssh),
                            public_key: generated.public_openssh,
                            fingerprint: generated.fingerprint,
                            created_at: chrono::Utc::now(),
                        };
                        let stored = db::platform_keys::insert_or_get(&mut conn, &key).await?;
                        tracing::info!(fingerprint = %stored.fingerprint, "generated Fleetyard's SSH key");
                        stored
                    }
                };
                let config = &self.config;
                let private_key = self.data_keys.open_or_plain(&stored.private_key).context("opening the SSH key")?;
                let prober = SshProber::new(
                    &private_key,
                    Duration::from_secs(config.ssh_connect_timeout_secs),
                    Duration::from_secs(config.ssh_command_timeout_secs),
                    config.ssh_refused_networks.clone(),
                )?;
                Ok(SshKey { public_openssh: stored.public_key, fingerprint: stored.fingerprint, prober })
            })
            .await
    }
}

/// Seals the secrets stored plain by versions before sealing, or sealed with a previous data
/// key, with the current one. Every replica runs it at start; they agree, as each row is
/// rewritten only if it still holds what was read.
async fn seal_stored_secrets(pool: db::Pool, keys: Arc<DataKeys>) {
    let sealed = async {
        let mut conn = pool.get().await?;
        let mut count = 0;
        for stored in db::secrets_at_rest::list(&mut conn).await? {
            if keys.needs_sealing(&stored.value) {
                let plain = keys.open_or_plain(&stored.value)?;
                count += db::secrets_at_rest::replace(&mut conn, &stored, &keys.seal(&plain)).await?;
            }
        }
        anyhow::Ok(count)
    };
    match sealed.await {
        Ok(0) => {}
        Ok(count) => tracing::info!(count, "sealed stored secrets with the current data key"),
        Err(e) => tracing::error!("sealing stored secrets: {e:#}"),
    }
}
