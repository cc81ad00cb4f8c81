//! Configuration: defaults, then an optional TOML file, then `FLEETYARD_*` environment
//! variables. Every option is documented in `.env.example`.

use std::path::Path;

use anyhow::{Context, bail};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
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
        let config: Config = figment
            .merge(Env::prefixed("FLEETYARD_").ignore(&["config"]))
            .extract()
            .context("invalid configuration")?;
        config.check()?;
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
        Ok(())
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
            jail.set_env("FLEETYARD_DB_POOL_SIZE", "3");
            let config = Config::load(Some(Path::new("fleetyard.toml"))).expect("loads");
            assert_eq!(config.database_url, "postgres://file@127.0.0.1/fleetyard");
            assert_eq!(config.listen, "127.0.0.1:9999");
            assert_eq!(config.db_pool_size, 3);
            assert_eq!(config.log_format, LogFormat::Json);
            assert_eq!(config.session_ttl_minutes, 720, "default kept");
            assert!(!format!("{config:?}").contains("a-secret-from-the-file"), "secrets stay out of Debug");
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
            assert!(Config::load(None).is_ok());
            assert!(Config::load(Some(Path::new("missing.toml"))).is_err());
            Ok(())
        });
    }
}
