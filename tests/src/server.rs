//! Real `fleetyard serve` processes, as replicas of a test's server on its database.

use std::process::Stdio;
use std::time::Duration;

use reqwest::Method;
use serde_json::Value;
use tokio::process::{Child, Command};

use crate::app::{Response, read};
use crate::sshd::free_port;
use crate::{TestApp, binary};

pub struct ServerProcess {
    pub base_url: String,
    client: reqwest::Client,
    child: Child,
}

impl ServerProcess {
    /// Starts `fleetyard serve` on a loopback port, on `app`'s database and with its signing
    /// secret (so `app`'s tokens work here), background schedules off; waits until it is ready.
    pub async fn replica_of(app: &TestApp) -> ServerProcess {
        Self::start(app, |_| {}).await
    }

    /// Like [`replica_of`](Self::replica_of), with the command adjusted first (more
    /// environment, a configuration file, where its logs go).
    pub async fn start(app: &TestApp, adjust: impl FnOnce(&mut Command)) -> ServerProcess {
        let config = &app.state.config;
        let address = format!("127.0.0.1:{}", free_port());
        let mut command = Command::new(binary("fleetyard"));
        command
            .arg("serve")
            .env("FLEETYARD_DATABASE_URL", &config.database_url)
            .env("FLEETYARD_JWT_SECRET", &config.jwt_secret.0)
            .env("FLEETYARD_AUTH__DATA_KEY", &config.auth.data_key.0)
            .env("FLEETYARD_LISTEN", &address)
            .env("FLEETYARD_WORKERS", "1")
            .env("FLEETYARD_DB_POOL_SIZE", "4")
            .env("FLEETYARD_LOG_FILTER", "warn")
            .env("FLEETYARD_SCHEDULES__ENABLED", "false")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true);
        adjust(&mut command);
        let child = command.spawn().expect("starting fleetyard serve");
        let server = ServerProcess { base_url: format!("http://{address}"), client: reqwest::Client::new(), child };
        for _ in 0..200 {
            if server
                .client
                .get(format!("{}/readyz", server.base_url))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("fleetyard serve did not become ready at {}", server.base_url);
    }

    /// Waits (at most `within`) for the process to end by itself, and returns how it ended.
    pub async fn exited(&mut self, within: Duration) -> std::process::ExitStatus {
        tokio::time::timeout(within, self.child.wait())
            .await
            .expect("the server did not exit in time")
            .expect("waiting for the server")
    }

    pub async fn get(&self, path: &str, token: &str) -> Response {
        let request = self.client.request(Method::GET, format!("{}{path}", self.base_url)).bearer_auth(token);
        read(request.send().await.expect("sending the request")).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Response {
        let request =
            self.client.request(Method::POST, format!("{}{path}", self.base_url)).bearer_auth(token).json(&body);
        read(request.send().await.expect("sending the request")).await
    }
}
