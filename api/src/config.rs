//! Configuration: defaults, then an optional TOML file, then `FLEETYARD_*` environment
//! variables. Every option is documented in `.env.example`; the clouds (accounts, regions,
//! catalogues) live in the TOML file and are documented in `deploy/clouds.example.toml`.

pub mod auth;
pub mod clouds;

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, bail};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    /// PostgreSQL URL, e.g. `postgres://fleetyard@127.0.0.1:54329/fleetyard`.
    pub database_url: String,
    /// Address the HTTP server listens on.
    pub listen: String,
    /// HTTP worker threads; 0 means one per CPU.
    pub workers: usize,
    /// Connections in the database pool.
    pub db_pool_size: usize,
    /// HMAC key for signing tokens (HS256); at least 32 bytes. Shared by all replicas.
    pub jwt_secret: Secret,
    pub jwt_issuer: String,
    pub jwt_audience: String,
    /// Lifetime of a login session token.
    pub session_ttl_minutes: i64,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// A tracing filter, e.g. `info` or `fleetyard=debug,info`.
    pub log_filter: String,
    /// How long in-flight requests may take to finish on shutdown.
    pub shutdown_timeout_secs: u64,
    /// Apply pending migrations when `serve` starts.
    pub migrate_on_start: bool,

    /// How often agents send a heartbeat (they add jitter).
    pub heartbeat_interval_secs: u64,
    /// Heartbeats an agent may miss before it counts as silent.
    pub missed_heartbeats: u32,
    /// How long heartbeats gather in memory before one batched write.
    pub heartbeat_flush_millis: u64,
    /// How often a replica polls for revoked machine credentials: a revocation made on
    /// another replica takes at most this long to reach this one.
    pub agent_token_cache_secs: u64,
    /// Lifetime of a machine credential; agents renew it when a tenth of it is left.
    pub agent_credential_days: i64,
    /// Lifetime of a one-time enrollment token.
    pub enrollment_token_hours: i64,

    /// Root file system use (percent) that degrades a machine.
    pub disk_full_pct: f32,
    /// Clock skew that degrades a machine.
    pub max_clock_skew_secs: i64,
    /// Five-minute load per CPU above which a machine counts as overloaded...
    pub overload_per_cpu: f32,
    /// ...for this long before it is degraded.
    pub overload_minutes: i64,
    /// Consecutive failed SSH checks that make a machine without an agent unreachable.
    pub ssh_failures_unreachable: u32,

    pub ssh_connect_timeout_secs: u64,
    /// Time limit for each command of an SSH check.
    pub ssh_command_timeout_secs: u64,
    /// SSH checks in flight at once, in all...
    pub ssh_concurrency: usize,
    /// ...and per site, so one unreachable site never holds up the others.
    pub ssh_site_concurrency: usize,
    /// How often each machine without a reporting agent is checked over SSH.
    pub ssh_check_interval_secs: u64,
    /// Networks SSH checks never connect to, whatever a machine's SSH endpoint says: by
    /// default loopback, link-local (cloud metadata services), unspecified and multicast, so
    /// that a declared endpoint cannot point Fleetyard at itself or its host.
    pub ssh_refused_networks: Vec<IpNet>,

    /// Time limit for one webhook delivery.
    pub webhook_timeout_secs: u64,
    /// Attempts before a delivery is abandoned (backoff doubles from 5 s, capped at 1 h).
    pub webhook_max_attempts: i32,

    /// The longest a lease may last, extensions included (a donor may allow less).
    pub lease_max_minutes: i64,
    /// How long a lease request waits in the queue, unless it says otherwise.
    pub lease_default_wait_minutes: i64,
    /// The longest a caller may wait for a grant in one request (long poll).
    pub lease_long_poll_max_secs: u64,
    /// Each replica runs a placement round at least this often, besides on every request,
    /// release and newly ready machine.
    pub scheduler_tick_millis: u64,
    /// Fair-share weights by tenant; a tenant not named has weight 1.
    pub tenant_weights: BTreeMap<String, f64>,

    /// The background schedules; see `schedules::JOBS`.
    pub schedules: SchedulesConfig,

    /// Cloud accounts and their catalogues; see `deploy/clouds.example.toml`.
    pub clouds: clouds::CloudsConfig,

    /// Signing and data keys, login throttling, what one service token may queue.
    pub auth: auth::AuthConfig,
}

/// The background schedules and their switches.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SchedulesConfig {
    /// Off: this replica runs no background job (another may).
    pub enabled: bool,
    pub liveness_sweep: ScheduleSetting,
    pub ssh_checks: ScheduleSetting,
    pub reminders: ScheduleSetting,
    pub enrollment_expiry: ScheduleSetting,
    pub webhook_delivery: ScheduleSetting,
    pub outbox_retention: ScheduleSetting,
    pub cloud_reconcile: ScheduleSetting,
}

/// One schedule: a cron expression with seconds (`sec min hour day month weekday`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScheduleSetting {
    pub schedule: String,
    pub enabled: bool,
}

impl ScheduleSetting {
    fn every(schedule: &str) -> Self {
        Self { schedule: schedule.into(), enabled: true }
    }
}

impl Default for SchedulesConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            liveness_sweep: ScheduleSetting::every("*/5 * * * * *"),
            ssh_checks: ScheduleSetting::every("*/15 * * * * *"),
            reminders: ScheduleSetting::every("0 0 8 * * *"),
            enrollment_expiry: ScheduleSetting::every("0 */10 * * * *"),
            webhook_delivery: ScheduleSetting::every("* * * * * *"),
            outbox_retention: ScheduleSetting::every("0 30 3 * * *"),
            cloud_reconcile: ScheduleSetting::every("*/30 * * * * *"),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            database_url: String::new(),
            listen: "127.0.0.1:8080".into(),
            workers: 0,
            db_pool_size: 16,
            jwt_secret: Secret(String::new()),
            jwt_issuer: "fleetyard".into(),
            jwt_audience: "fleetyard-api".into(),
            session_ttl_minutes: 12 * 60,
            max_body_bytes: 256 * 1024,
            log_format: LogFormat::Text,
            log_filter: "info".into(),
            shutdown_timeout_secs: 30,
            migrate_on_start: true,
            heartbeat_interval_secs: 10,
            missed_heartbeats: 3,
            heartbeat_flush_millis: 100,
            agent_token_cache_secs: 5,
            agent_credential_days: 365,
            enrollment_token_hours: 7 * 24,
            disk_full_pct: 95.0,
            max_clock_skew_secs: 30,
            overload_per_cpu: 2.0,
            overload_minutes: 5,
            ssh_failures_unreachable: 3,
            ssh_connect_timeout_secs: 5,
            ssh_command_timeout_secs: 10,
            ssh_concurrency: 32,
            ssh_site_concurrency: 4,
            ssh_check_interval_secs: 60,
            ssh_refused_networks: [
                "0.0.0.0/8",
                "127.0.0.0/8",
                "169.254.0.0/16",
                "224.0.0.0/3",
                "::/128",
                "::1/128",
                "fe80::/10",
                "ff00::/8",
            ]
            .iter()
            .map(|net| net.parse().expect("a valid network"))
            .collect(),
            webhook_timeout_secs: 10,
            webhook_max_attempts: 12,
            lease_max_minutes: 24 * 60,
            lease_default_wait_minutes: 60,
            lease_long_poll_max_secs: 60,
            scheduler_tick_millis: 1000,
            tenant_weights: BTreeMap::new(),
            schedules: SchedulesConfig::default(),
            clouds: clouds::CloudsConfig::default(),
            auth: auth::AuthConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// A string that never shows up in logs or `Debug` output.
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl Config {
    /// Loads defaults, then `file` (if given), then the environment.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.exists() {
                bail!("config file {} does not exist", file.display());
            }
            figment = figment.merge(Toml::file(file));
        }
        let mut config: Config = figment
            // FLEETYARD_SCHEDULES__REMINDERS__ENABLED=false reaches `schedules.reminders.enabled`.
            .merge(Env::prefixed("FLEETYARD_").ignore(&["config"]).split("__"))
            .extract()
            .context("invalid configuration")?;
        config.check()?;
        config.auth.check()?;
        config.clouds.resolve()?;
        Ok(config)
    }

    fn check(&self) -> anyhow::Result<()> {
        if self.database_url.is_empty() {
            bail!("FLEETYARD_DATABASE_URL is not set");
        }
        if self.jwt_secret.0.len() < 32 {
            bail!("FLEETYARD_JWT_SECRET must be at least 32 bytes (try `openssl rand -hex 32`)");
        }
        if self.session_ttl_minutes < 1 {
            bail!("FLEETYARD_SESSION_TTL_MINUTES must be positive");
        }
        if self.heartbeat_interval_secs == 0 || self.missed_heartbeats == 0 {
            bail!("FLEETYARD_HEARTBEAT_INTERVAL_SECS and FLEETYARD_MISSED_HEARTBEATS must be positive");
        }
        if self.heartbeat_flush_millis == 0 || self.agent_token_cache_secs == 0 {
            bail!("FLEETYARD_HEARTBEAT_FLUSH_MILLIS and FLEETYARD_AGENT_TOKEN_CACHE_SECS must be positive");
        }
        if self.lease_max_minutes < 1 || self.lease_default_wait_minutes < 0 || self.scheduler_tick_millis == 0 {
            bail!("FLEETYARD_LEASE_MAX_MINUTES and FLEETYARD_SCHEDULER_TICK_MILLIS must be positive");
        }
        if let Some((tenant, _)) = self.tenant_weights.iter().find(|(_, w)| !(w.is_finite() && **w > 0.0)) {
            bail!("FLEETYARD_TENANT_WEIGHTS: the weight of `{tenant}` must be a positive number");
        }
        if self.ssh_concurrency == 0 || self.ssh_site_concurrency == 0 {
            bail!("FLEETYARD_SSH_CONCURRENCY and FLEETYARD_SSH_SITE_CONCURRENCY must be positive");
        }
        Ok(())
    }

    /// The health thresholds, as the domain wants them.
    pub fn health_policy(&self) -> crate::domain::health::HealthPolicy {
        use chrono::Duration;
        crate::domain::health::HealthPolicy {
            heartbeat_interval: Duration::seconds(self.heartbeat_interval_secs as i64),
            missed_heartbeats: self.missed_heartbeats,
            disk_full_pct: self.disk_full_pct,
            max_clock_skew: Duration::seconds(self.max_clock_skew_secs),
            overload_per_cpu: self.overload_per_cpu,
            overload_for: Duration::minutes(self.overload_minutes),
            ssh_failures_unreachable: self.ssh_failures_unreachable,
        }
    }
}

#[cfg(test)]
// figment::Jail fixes its closures' error type; its size is not ours to choose.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_overrides_the_file_which_overrides_the_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "fleetyard.toml",
                r#"
                database_url = "postgres://file@127.0.0.1/fleetyard"
                jwt_secret = "a-secret-from-the-file-that-is-long-enough"
                listen = "0.0.0.0:9000"
                log_format = "json"
                "#,
            )?;
            jail.set_env("FLEETYARD_LISTEN", "127.0.0.1:9999");
            jail.set_env("FLEETYARD_AUTH__DATA_KEY", "a-data-key-from-the-environment-32b");
            jail.set_env("FLEETYARD_DB_POOL_SIZE", "3");
            jail.set_env("FLEETYARD_SSH_REFUSED_NETWORKS", "[127.0.0.0/8, 10.8.0.0/16]");
            jail.set_env("FLEETYARD_SCHEDULES__REMINDERS__ENABLED", "false");
            let config = Config::load(Some(Path::new("fleetyard.toml"))).expect("loads");
            let refused: Vec<String> = config.ssh_refused_networks.iter().map(ToString::to_string).collect();
            assert_eq!(refused, ["127.0.0.0/8", "10.8.0.0/16"]);
            assert!(!config.schedules.reminders.enabled && config.schedules.ssh_checks.enabled);
            assert_eq!(config.database_url, "postgres://file@127.0.0.1/fleetyard");
            assert_eq!(config.listen, "127.0.0.1:9999");
            assert_eq!(config.db_pool_size, 3);
            assert_eq!(config.log_format, LogFormat::Json);
            assert_eq!(config.session_ttl_minutes, 720, "default kept");
            assert!(!format!("{config:?}").contains("a-secret-from-the-file"), "secrets stay out of Debug");
            assert!(!format!("{config:?}").contains("a-data-key-from"), "secrets stay out of Debug");
            Ok(())
        });
    }

    #[test]
    fn a_missing_or_short_secret_is_refused() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("FLEETYARD_DATABASE_URL", "postgres://x@127.0.0.1/x");
            let error = Config::load(None).unwrap_err().to_string();
            assert!(error.contains("FLEETYARD_JWT_SECRET"), "{error}");
            jail.set_env("FLEETYARD_JWT_SECRET", "0123456789abcdef0123456789abcdef");
            let error = Config::load(None).unwrap_err().to_string();
            assert!(error.contains("FLEETYARD_AUTH__DATA_KEY"), "{error}");
            jail.set_env("FLEETYARD_AUTH__DATA_KEY", "0123456789abcdef0123456789abcdef");
            assert!(Config::load(None).is_ok());
            assert!(Config::load(Some(Path::new("missing.toml"))).is_err());
            Ok(())
        });
    }

    /// `.env.example` names every option, and the values it shows are the defaults.
    #[test]
    fn the_example_environment_documents_every_option_with_its_default() {
        let example = include_str!("../../.env.example");
        let mentioned = |key: &str| example.lines().any(|l| l.trim_start_matches(['#', ' ']).starts_with(key));
        let defaults = serde_json::to_value(Config::default()).unwrap();
        for (option, value) in defaults.as_object().unwrap() {
            let key = format!("FLEETYARD_{}", option.to_uppercase());
            match value.as_object() {
                Some(group) if option == "clouds" || option == "auth" => {
                    for (key, value) in group {
                        let name = format!("FLEETYARD_{}__{}", option.to_uppercase(), key.to_uppercase());
                        let shown = if value.is_object() || value.is_array() {
                            mentioned(&name)
                        } else {
                            mentioned(&format!("{name}="))
                        };
                        assert!(shown, "`.env.example` does not mention {name}");
                    }
                }
                Some(jobs) => {
                    assert!(mentioned(&key), "`.env.example` does not mention {key}");
                    for job in jobs.keys().filter(|k| *k != "enabled") {
                        let prefix = format!("{key}__{}__", job.to_uppercase());
                        assert!(mentioned(&prefix), "`.env.example` does not mention {prefix}SCHEDULE");
                    }
                }
                None => assert!(mentioned(&format!("{key}=")), "`.env.example` does not mention {key}"),
            }
        }
        figment::Jail::expect_with(|jail| {
            for line in example.lines().filter(|l| l.starts_with("FLEETYARD_")) {
                let (key, value) = line.split_once('=').unwrap();
                jail.set_env(key, value);
            }
            jail.set_env("FLEETYARD_JWT_SECRET", "0123456789abcdef0123456789abcdef");
            jail.set_env("FLEETYARD_AUTH__DATA_KEY", "0123456789abcdef0123456789abcdef");
            let loaded = serde_json::to_value(Config::load(None).expect("the example loads")).unwrap();
            for group in ["clouds", "auth"] {
                for (key, default) in defaults[group].as_object().unwrap() {
                    if key != "data_key" {
                        assert_eq!(
                            &loaded[group][key], default,
                            "`.env.example` shows {group}.{key} other than its default"
                        );
                    }
                }
            }
            for (option, default) in defaults.as_object().unwrap() {
                if !["jwt_secret", "database_url", "clouds", "auth"].contains(&option.as_str()) {
                    assert_eq!(&loaded[option], default, "`.env.example` shows {option} other than its default");
                }
            }
            Ok(())
        });
    }
}
