//! The machine credential, kept in the state directory readable by the agent alone.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stored {
    pub server: String,
    pub machine_id: String,
    pub credential: String,
    /// RFC 3339.
    pub expires_at: String,
    /// RFC 3339; when it was issued, to know when a tenth of its life is left.
    pub issued_at: String,
}

fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("credential.json")
}

pub fn load(state_dir: &Path) -> Result<Stored, String> {
    let file = path(state_dir);
    let text = fs::read_to_string(&file).map_err(|e| {
        format!("no credential in {} ({e}); run `fleetyard-agent enroll --token ...` first", file.display())
    })?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))
}

/// Writes the credential atomically with mode 0600 (the directory 0700).
pub fn save(state_dir: &Path, stored: &Stored) -> Result<(), String> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir)
        .map_err(|e| format!("creating {}: {e}", state_dir.display()))?;
    let json = serde_json::to_vec_pretty(stored).map_err(|e| e.to_string())?;
    write_private(&path(state_dir), &json)
}

/// Replaces `file` atomically (write beside it, sync, rename) with a file of mode 0600.
pub fn write_private(file: &Path, bytes: &[u8]) -> Result<(), String> {
    let temporary = file.with_extension("new");
    let mut out = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .map_err(|e| format!("writing {}: {e}", temporary.display()))?;
    out.write_all(bytes).and_then(|()| out.sync_all()).map_err(|e| format!("writing {}: {e}", temporary.display()))?;
    fs::rename(&temporary, file).map_err(|e| format!("saving {}: {e}", file.display()))
}

impl Stored {
    /// Whether less than a tenth of the credential's life is left.
    pub fn due_for_renewal(&self, now: SystemTime) -> bool {
        let (Ok(issued), Ok(expires)) =
            (humantime::parse_rfc3339_weak(&self.issued_at), humantime::parse_rfc3339_weak(&self.expires_at))
        else {
            return false;
        };
        let life = expires.duration_since(issued).unwrap_or_default();
        expires.duration_since(now).map_or(true, |left| left < life / 10)
    }
}
