//! Local accounts the agent hands work to (the job user, the lease user), looked up by name.

use std::path::PathBuf;

/// An account as the system's user database (NSS) knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    /// Its primary group; the agent gives it no supplementary groups.
    pub gid: u32,
    pub home: PathBuf,
}

impl Account {
    pub fn lookup(name: &str) -> Result<Account, String> {
        match nix::unistd::User::from_name(name) {
            Ok(Some(user)) => {
                Ok(Account { name: user.name, uid: user.uid.as_raw(), gid: user.gid.as_raw(), home: user.dir })
            }
            Ok(None) => Err(format!("there is no user {name:?} on this machine")),
            Err(e) => Err(format!("looking up user {name:?}: {e}")),
        }
    }

    /// Refuses an account the agent must never hand to others, nor kill or wipe: root, and
    /// the agent's own user.
    pub fn dedicated(self, role: &str) -> Result<Account, String> {
        let own = rustix::process::geteuid().as_raw();
        if self.uid == 0 {
            return Err(format!("{role} {:?} is root; it must be a dedicated unprivileged account", self.name));
        }
        if self.uid == own {
            return Err(format!("{role} {:?} is the agent's own user; it must be an account of its own", self.name));
        }
        Ok(self)
    }
}
