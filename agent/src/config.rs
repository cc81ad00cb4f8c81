//! Settings: the configuration file, overridden by flags.

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub const DEFAULT_PATH: &str = "/etc/fleetyard-agent/agent.toml";
const DEFAULT_STATE_DIR: &str = "/var/lib/fleetyard-agent";
/// Isolated jobs' working directories: outside the state directory, which their user must
/// not be able to reach.
const DEFAULT_JOBS_DIR: &str = "/var/lib/fleetyard-jobs";
const DEFAULT_SKELETON: &str = "/etc/skel";

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
    /// What a lease account's home is made from again when a lease ends.
    lease_skeleton: Option<PathBuf>,
    /// The unprivileged account jobs run as. Unset: jobs run as the agent's own user, not
    /// isolated from it.
    job_user: Option<String>,
    /// Where jobs' working directories are made.
    jobs_dir: Option<PathBuf>,
    /// The cgroup (v2) directory jobs' cgroups are made in; by default the agent's own.
    job_cgroup_parent: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Settings {
    /// Without a trailing slash.
    pub server: Option<String>,
    pub state_dir: PathBuf,
    pub ca_file: Option<PathBuf>,
    pub disk_path: PathBuf,
    pub lease_user: Option<String>,
    pub lease_skeleton: PathBuf,
    pub job_user: Option<String>,
    /// By default `/var/lib/fleetyard-jobs` for isolated jobs, and `jobs` in the state
    /// directory for jobs that run as the agent's own user (as before isolation existed).
    pub jobs_dir: PathBuf,
    pub job_cgroup_parent: Option<PathBuf>,
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
        let state_dir: PathBuf = state_dir.or(file.state_dir).unwrap_or_else(|| DEFAULT_STATE_DIR.into());
        let jobs_dir = match (file.jobs_dir, &file.job_user) {
            (Some(dir), _) => dir,
            (None, Some(_)) => DEFAULT_JOBS_DIR.into(),
            (None, None) => state_dir.join("jobs"),
        };
        Ok(Self {
            server: server.or(file.server).map(|s| s.trim_end_matches('/').to_owned()),
            ca_file: ca_file.or(file.ca_file),
            disk_path: file.disk_path.unwrap_or_else(|| "/".into()),
            lease_user: lease_user.or(file.lease_user),
            lease_skeleton: file.lease_skeleton.unwrap_or_else(|| DEFAULT_SKELETON.into()),
            job_user: file.job_user,
            jobs_dir,
            job_cgroup_parent: file.job_cgroup_parent,
            state_dir,
        })
    }
}
