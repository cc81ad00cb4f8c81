//! Real `fleetyard-agent` processes.

use std::process::Stdio;

use tempfile::TempDir;
use tokio::process::{Child, Command};

use crate::binary;

pub struct AgentProcess {
    pub state_dir: TempDir,
    server: String,
    /// The account leases' SSH keys are for (`--lease-user`).
    lease_user: Option<String>,
    child: Option<Child>,
}

impl AgentProcess {
    /// Enrolls with `token` into a fresh state directory.
    pub async fn enroll(server: &str, token: &str) -> AgentProcess {
        let state_dir = tempfile::tempdir().expect("a temporary directory");
        let agent = AgentProcess { state_dir, server: server.to_owned(), lease_user: None, child: None };
        agent.re_enroll(token).await;
        agent
    }

    /// Boots a cloud instance's agent as its cloud-init would: writes the bootstrap file,
    /// enrolls with the launch's secret and `instance_id`, and starts it. `None` (after saying
    /// why) when enrolling failed.
    pub async fn boot_cloud_instance(bootstrap: &serde_json::Value, instance_id: &str) -> Option<AgentProcess> {
        let state_dir = tempfile::tempdir().expect("a temporary directory");
        let file = state_dir.path().join("bootstrap.json");
        std::fs::write(&file, bootstrap.to_string()).expect("writing the bootstrap file");
        let server = bootstrap["server"].as_str().expect("the bootstrap names its server").to_owned();
        let mut agent = AgentProcess { state_dir, server, lease_user: None, child: None };
        let output = agent
            .command()
            .arg("enroll")
            .arg("--bootstrap")
            .arg(&file)
            .args(["--instance-id", instance_id])
            .output()
            .await
            .expect("running fleetyard-agent");
        if !output.status.success() {
            eprintln!("booting {instance_id}: enroll failed: {}", String::from_utf8_lossy(&output.stderr));
            return None;
        }
        agent.start();
        Some(agent)
    }

    /// Enrolls again with `token` into the same state directory, as someone re-enrolling a
    /// machine whose agent keeps running would.
    pub async fn re_enroll(&self, token: &str) {
        let output = self.command().args(["enroll", "--token", token]).output().await.expect("running fleetyard-agent");
        assert!(output.status.success(), "enroll failed: {}", String::from_utf8_lossy(&output.stderr));
    }

    fn command(&self) -> Command {
        let mut command = Command::new(binary("fleetyard-agent"));
        command
            .arg("--server")
            .arg(&self.server)
            .arg("--state-dir")
            .arg(self.state_dir.path())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if let Some(user) = &self.lease_user {
            command.arg("--lease-user").arg(user);
        }
        command
    }

    /// Lets leases' SSH keys in for `user` (set before [`start`](Self::start)).
    pub fn lease_user(&mut self, user: &str) {
        self.lease_user = Some(user.to_owned());
    }

    /// What sshd's `AuthorizedKeysCommand` should run to ask this agent for leases' keys.
    pub fn authorized_keys_command(&self) -> String {
        let user = self.lease_user.as_deref().expect("a lease user");
        format!(
            "{} --state-dir {} --lease-user {user} authorized-keys %u",
            binary("fleetyard-agent").display(),
            self.state_dir.path().display()
        )
    }

    /// Starts sending heartbeats.
    pub fn start(&mut self) {
        let child = self.command().arg("run").stderr(Stdio::null()).spawn().expect("starting fleetyard-agent");
        self.child = Some(child);
    }

    /// Kills it without warning, as a crash or power cut would.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
            let _ = child.wait().await;
        }
    }

    /// Asks it to stop (SIGTERM) and returns its exit status.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("the agent is running");
        let pid = child.id().expect("a pid").to_string();
        std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("sending SIGTERM");
        tokio::time::timeout(std::time::Duration::from_secs(10), child.wait())
            .await
            .expect("the agent did not stop")
            .unwrap()
    }

    /// The running agent's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    pub fn credential_path(&self) -> std::path::PathBuf {
        self.state_dir.path().join("credential.json")
    }
}
