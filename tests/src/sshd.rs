//! A real OpenSSH server (Debian's `openssh-server`) on a loopback port, with a host key
//! generated for the test, authorising one public key for the current user (and, configured
//! for leases, a lease user's keys from the agent alone).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tempfile::TempDir;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

const SSHD: &str = "/usr/sbin/sshd";

pub struct Sshd {
    pub port: u16,
    /// The user Fleetyard logs in as: whoever runs the tests.
    pub user: String,
    /// sshd's `AuthorizedKeysCommand`, if any (run as `user`).
    keys_command: Option<String>,
    /// The lease user, whose keys come from `keys_command` alone (a `Match User` block).
    lease_user: Option<String>,
    dir: TempDir,
    child: Option<Child>,
}

/// A free loopback port, for a server that must be described before it starts.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Sshd {
    /// Starts sshd authorising `authorized_key` (an OpenSSH public-key line).
    pub async fn start(authorized_key: &str) -> Sshd {
        Self::start_on(free_port(), authorized_key, None).await
    }

    /// Starts sshd on `port`, authorising `authorized_key` and whatever `keys_command` (sshd's
    /// `AuthorizedKeysCommand`, `%u` for the user) prints.
    pub async fn start_on(port: u16, authorized_key: &str, keys_command: Option<String>) -> Sshd {
        Self::start_with(port, authorized_key, keys_command, None).await
    }

    /// Starts sshd on `port` configured for leases as deploy/agent/README.md ("Leases") says:
    /// `lease_user` gets in only with the keys `keys_command` (the agent's `authorized-keys`)
    /// prints, never with keys from a file of its own; this server's `user` with
    /// `authorized_key`. sshd runs as root to log anyone in, so the tests must too.
    pub async fn start_for_leases(port: u16, authorized_key: &str, lease_user: &str, keys_command: String) -> Sshd {
        assert!(rustix_is_root(), "sshd can log in another user only when the tests run as root");
        Self::start_with(port, authorized_key, Some(keys_command), Some(lease_user.to_owned())).await
    }

    async fn start_with(
        port: u16,
        authorized_key: &str,
        keys_command: Option<String>,
        lease_user: Option<String>,
    ) -> Sshd {
        assert!(std::path::Path::new(SSHD).exists(), "{SSHD} is missing; deploy/test installs Debian's openssh-server");
        let dir = tempfile::tempdir().expect("a temporary directory");
        std::fs::write(dir.path().join("authorized_keys"), format!("{authorized_key}\n")).unwrap();
        // Privilege separation wants this directory when sshd runs as root.
        if rustix_is_root() {
            let _ = std::fs::create_dir_all("/run/sshd");
        }
        let user = current_user();
        let mut sshd = Sshd { port, user, keys_command, lease_user, dir, child: None };
        sshd.new_host_key().await;
        sshd.write_config();
        sshd.run().await;
        sshd
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Generates a fresh ed25519 host key (replacing any).
    async fn new_host_key(&self) {
        let key = self.path("host_key");
        let _ = std::fs::remove_file(&key);
        let _ = std::fs::remove_file(key.with_extension("pub"));
        let status = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key)
            .status()
            .await
            .expect("running ssh-keygen");
        assert!(status.success(), "ssh-keygen failed");
    }

    fn write_config(&self) {
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {key}\nPidFile {pid}\nAuthorizedKeysFile {keys}\n\
             StrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             PubkeyAuthentication yes\nPermitRootLogin prohibit-password\nLogLevel ERROR\n",
            port = self.port,
            key = self.path("host_key").display(),
            pid = self.path("sshd.pid").display(),
            keys = self.path("authorized_keys").display(),
        );
        let config = match (&self.keys_command, &self.lease_user) {
            // As in production: the lease user's keys come from the agent, and from nowhere
            // else (not even a key the holder appends to ~/.ssh/authorized_keys).
            (Some(command), Some(lease_user)) => format!(
                "{config}Match User {lease_user}\n    AuthorizedKeysFile none\n    AuthorizedKeysCommand {command}\n    \
                 AuthorizedKeysCommandUser {}\n",
                self.user
            ),
            (Some(command), None) => {
                format!("{config}AuthorizedKeysCommand {command}\nAuthorizedKeysCommandUser {}\n", self.user)
            }
            (None, _) => config,
        };
        std::fs::write(self.path("sshd_config"), config).unwrap();
    }

    async fn run(&mut self) {
        let mut child = Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(self.path("sshd_config"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("starting sshd");
        for _ in 0..100 {
            if let Ok(Some(status)) = child.try_wait() {
                let mut stderr = String::new();
                if let Some(mut err) = child.stderr.take() {
                    let _ = err.read_to_string(&mut stderr).await;
                }
                panic!("sshd exited at start ({status}): {stderr}");
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                self.child = Some(child);
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("sshd did not listen on port {}", self.port);
    }

    /// Stops sshd: the machine becomes unreachable.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
            let _ = child.wait().await;
        }
    }

    /// Starts it again, same port and host key.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.run().await;
    }

    /// The machine was swapped (or compromised): same address, another host key.
    pub async fn swap_host_key(&mut self) {
        self.stop().await;
        self.new_host_key().await;
        self.run().await;
    }

    /// Whether `ssh` with the private key at `identity` gets in as this server's user.
    pub async fn lets_in(&self, identity: &std::path::Path) -> bool {
        self.lets_in_as(&self.user, identity).await
    }

    /// Whether `ssh` with the private key at `identity` gets in as `user`.
    pub async fn lets_in_as(&self, user: &str, identity: &std::path::Path) -> bool {
        self.ssh(user, identity, "true").await.status.success()
    }

    /// Runs `command` over `ssh` as `user` with the private key at `identity`, as a lease
    /// holder would, and returns what came of it.
    pub async fn ssh(&self, user: &str, identity: &std::path::Path, command: &str) -> std::process::Output {
        Command::new("ssh")
            .args(["-q", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"])
            .args(["-o", "ConnectTimeout=5", "-o", "IdentitiesOnly=yes", "-i"])
            .arg(identity)
            .args(["-p", &self.port.to_string(), &format!("{user}@127.0.0.1"), command])
            .stdin(Stdio::null())
            .output()
            .await
            .expect("running ssh")
    }

    /// The host key's OpenSSH public line.
    pub fn host_key(&self) -> String {
        std::fs::read_to_string(self.path("host_key.pub")).unwrap().trim().to_owned()
    }
}

fn current_user() -> String {
    std::env::var("USER").ok().filter(|u| !u.is_empty()).unwrap_or_else(|| {
        let out = std::process::Command::new("id").arg("-un").output().expect("running id");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    })
}

fn rustix_is_root() -> bool {
    std::process::Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0"))
}
