//! Settings: the configuration file, overridden by flags.

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub const DEFAULT_PATH: &str = "/etc/fleetyard-agent/agent.toml";
const DEFAULT_STATE_DIR: &str = "/var/lib/fleetyard-agent";

/// The configuration file's keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    server: Option<String>,
    state_dir: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    /// The file system whose size and use are reported.
    disk_path: Option<PathBuf>,
    /// The account lease holders log in as (the machine's SSH user in Fleetyard). Unset: no
    /// lease keys are let in.
    lease_user: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Settings {
    /// Without a trailing slash.
    pub server: Option<String>,
    pub state_dir: PathBuf,
    pub ca_file: Option<PathBuf>,
    pub disk_path: PathBuf,
    pub lease_user: Option<String>,
}

impl Settings {
    /// Reads `path` if it exists (only the default path may be missing), then applies flags.
    pub fn load(
        path: &Path,
        server: Option<String>,
        state_dir: Option<PathBuf>,
        ca_file: Option<PathBuf>,
        lease_user: Option<String>,
    ) -> Result<Self, String> {
        let file = match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str::<File>(&text).map_err(|e| format!("{}: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && path == Path::new(DEFAULT_PATH) => File::default(),
            Err(e) => return Err(format!("reading {}: {e}", path.display())),
        };
        Ok(Self {
            server: server.or(file.server).map(|s| s.trim_end_matches('/').to_owned()),
            state_dir: state_dir.or(file.state_dir).unwrap_or_else(|| DEFAULT_STATE_DIR.into()),
            ca_file: ca_file.or(file.ca_file),
            disk_path: file.disk_path.unwrap_or_else(|| "/".into()),
            lease_user: lease_user.or(file.lease_user),
        })
    }
}
