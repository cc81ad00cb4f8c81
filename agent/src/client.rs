//! Talking to Fleetyard over HTTP(S): rustls with a pure-Rust crypto provider, one kept-alive
//! connection, small buffers and firm time limits.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use ureq::Agent;
use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig, TlsProvider};

use crate::facts::{Facts, Metrics};

/// What went wrong talking to the server.
#[derive(Debug)]
pub enum CallError {
    /// Could not reach it, or it did not answer in time.
    Transport(String),
    /// It answered with an error status.
    Refused { status: u16, message: String },
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Transport(e) => write!(f, "could not reach the server: {e}"),
            CallError::Refused { status, message } => write!(f, "the server refused ({status}): {message}"),
        }
    }
}

/// The server's answer to enroll and renew.
#[derive(Debug, Deserialize)]
pub struct Credential {
    pub machine_id: String,
    pub credential: String,
    pub credential_expires_at: String,
}

#[derive(Debug, Deserialize)]
pub struct HeartbeatAck {
    pub heartbeat_interval_secs: u64,
}

/// What the server wants the machine to do (`GET /agent/work`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Work {
    pub version: String,
    pub leases: Vec<LeaseWork>,
    #[serde(default)]
    pub jobs: Vec<JobWork>,
}

/// A job attempt to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobWork {
    pub job_id: String,
    pub attempt: i32,
    pub command: String,
    pub env: std::collections::BTreeMap<String, String>,
    pub timeout_secs: i32,
}

/// A lease this machine holds: whose key to let in, until when (RFC 3339).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseWork {
    pub lease_id: String,
    pub ssh_public_key: Option<String>,
    pub expires_at: String,
}

pub struct Client {
    agent: Agent,
    server: String,
}

impl Client {
    pub fn new(server: &str, ca_file: Option<&Path>) -> Result<Self, String> {
        let mut provider = rustls_rustcrypto::provider();
        // Boards without AES instructions do ChaCha20 far faster: offer it first.
        provider.cipher_suites.sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256);
        let tls = TlsConfig::builder()
            .provider(TlsProvider::Rustls)
            .root_certs(roots(ca_file)?)
            .unversioned_rustls_crypto_provider(Arc::new(provider) as Arc<CryptoProvider>)
            .build();
        let agent = Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .user_agent(concat!("fleetyard-agent/", env!("CARGO_PKG_VERSION")))
            .timeout_global(Some(Duration::from_secs(30)))
            .timeout_connect(Some(Duration::from_secs(10)))
            .max_idle_connections(1)
            .max_idle_connections_per_host(1)
            .max_idle_age(Duration::from_secs(60))
            .input_buffer_size(16 * 1024)
            .output_buffer_size(16 * 1024)
            .build()
            .new_agent();
        Ok(Self { agent, server: server.trim_end_matches('/').to_owned() })
    }

    pub fn enroll(&self, token: &str, facts: &Facts) -> Result<Credential, CallError> {
        self.post("/api/v1/agent/enroll", None, &serde_json::json!({ "token": token, "facts": facts }))
    }

    /// Enrolls a cloud instance with its launch's secret and its instance id.
    pub fn enroll_instance(&self, secret: &str, instance_id: &str, facts: &Facts) -> Result<Credential, CallError> {
        let body = serde_json::json!({ "launch_secret": secret, "instance_id": instance_id, "facts": facts });
        self.post("/api/v1/agent/enroll", None, &body)
    }

    /// A heartbeat; `facts` only when the server may not know them (see `run::beat`).
    pub fn heartbeat(
        &self,
        credential: &str,
        facts: Option<&Facts>,
        metrics: &Metrics,
        sent_at: &str,
    ) -> Result<HeartbeatAck, CallError> {
        let mut body = serde_json::json!({
            "agent_version": env!("CARGO_PKG_VERSION"),
            "sent_at": sent_at,
            "metrics": metrics,
        });
        if let Some(facts) = facts {
            body["facts"] = serde_json::json!(facts);
        }
        self.post("/api/v1/agent/heartbeat", Some(credential), &body)
    }

    /// What the machine should be doing; waits up to `wait_secs` for a version other than
    /// `since`.
    pub fn work(&self, credential: &str, since: Option<&str>, wait_secs: u64) -> Result<Work, CallError> {
        let mut request = self
            .agent
            .get(format!("{}/api/v1/agent/work", self.server))
            .header("Authorization", format!("Bearer {credential}"))
            .query("wait", wait_secs.to_string());
        if let Some(since) = since {
            request = request.query("since", since);
        }
        let response = request.call().map_err(|e| CallError::Transport(e.to_string()))?;
        read(response)
    }

    pub fn job_output(&self, credential: &str, job: &str, attempt: i32, data: &str) -> Result<(), CallError> {
        let body = serde_json::json!({ "attempt": attempt, "data": data });
        self.post_empty(&format!("/api/v1/agent/jobs/{job}/output"), credential, &body)
    }

    pub fn job_finished(
        &self,
        credential: &str,
        job: &str,
        attempt: i32,
        exit_code: Option<i32>,
        signal: Option<i32>,
        timed_out: bool,
    ) -> Result<(), CallError> {
        let body = serde_json::json!({
            "attempt": attempt, "exit_code": exit_code, "signal": signal, "timed_out": timed_out,
        });
        self.post_empty(&format!("/api/v1/agent/jobs/{job}/finish"), credential, &body)
    }

    /// A POST whose success has no body (204).
    fn post_empty(&self, path: &str, credential: &str, body: &serde_json::Value) -> Result<(), CallError> {
        let response = self
            .agent
            .post(format!("{}{path}", self.server))
            .header("Authorization", format!("Bearer {credential}"))
            .send_json(body)
            .map_err(|e| CallError::Transport(e.to_string()))?;
        if response.status().is_success() { Ok(()) } else { read::<serde_json::Value>(response).map(drop) }
    }

    pub fn renew(&self, credential: &str) -> Result<Credential, CallError> {
        self.post("/api/v1/agent/credential", Some(credential), &serde_json::json!({}))
    }

    fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        credential: Option<&str>,
        body: &serde_json::Value,
    ) -> Result<T, CallError> {
        let mut request = self.agent.post(format!("{}{path}", self.server));
        if let Some(credential) = credential {
            request = request.header("Authorization", format!("Bearer {credential}"));
        }
        let response = request.send_json(body).map_err(|e| CallError::Transport(e.to_string()))?;
        read(response)
    }
}

/// The answer's JSON, or the server's refusal with its message.
fn read<T: DeserializeOwned>(mut response: ureq::http::Response<ureq::Body>) -> Result<T, CallError> {
    let status = response.status().as_u16();
    let body = response.body_mut().with_config().limit(64 * 1024);
    if (200..300).contains(&status) {
        body.read_json::<T>().map_err(|e| CallError::Transport(format!("unreadable answer: {e}")))
    } else {
        let text = body.read_to_string().unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_owned))
            .unwrap_or(text);
        Err(CallError::Refused { status, message })
    }
}

fn roots(ca_file: Option<&Path>) -> Result<RootCerts, String> {
    let Some(path) = ca_file else { return Ok(RootCerts::WebPki) };
    let pem = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let certs: Vec<Certificate<'static>> = ureq::tls::parse_pem(&pem)
        .filter_map(|item| match item {
            Ok(PemItem::Certificate(cert)) => Some(cert),
            _ => None,
        })
        .collect();
    if certs.is_empty() {
        return Err(format!("{} holds no certificate", path.display()));
    }
    Ok(RootCerts::from(certs))
}
