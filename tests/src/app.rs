//! The server under test, running in-process on a loopback port, and a client for it.

use std::net::TcpListener;
use std::sync::Arc;

use fleetyard::auth::TokenKind;
use fleetyard::config::{Config, LogFormat, Secret};
use fleetyard::db::Pool;
use fleetyard::domain::{MachineId, TokenId, UserId};
use fleetyard::{AppState, db, startup};
use reqwest::Method;
use serde_json::Value;

use crate::db::TestDb;

pub struct TestApp {
    pub base_url: String,
    pub client: reqwest::Client,
    pub state: AppState,
    /// Shared with replicas; the database is dropped with the last of them.
    pub db: Arc<TestDb>,
    server: actix_web::dev::ServerHandle,
}

/// A response, read whole.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Response {
    /// The `code` of an error body.
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or_default()
    }

    /// The `field`s named by a `validation-failed` (or similar) error.
    pub fn fields(&self) -> Vec<String> {
        self.body["details"]["errors"]
            .as_array()
            .map(|errors| errors.iter().filter_map(|e| e["field"].as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    }

    #[track_caller]
    pub fn expect(self, status: u16) -> Self {
        assert_eq!(self.status, status, "unexpected status; body: {}", self.text);
        self
    }
}

pub fn test_config(database_url: &str) -> Config {
    Config {
        database_url: database_url.to_owned(),
        listen: "127.0.0.1:0".into(),
        workers: 1,
        db_pool_size: 4,
        jwt_secret: Secret("test-secret-that-is-at-least-32-bytes-long".into()),
        auth: fleetyard::config::auth::AuthConfig {
            data_key: Secret("test-data-key-that-is-at-least-32-bytes".into()),
            ..Default::default()
        },
        log_format: LogFormat::Text,
        log_filter: "warn".into(),
        shutdown_timeout_secs: 1,
        heartbeat_flush_millis: 20,
        ssh_connect_timeout_secs: 3,
        ssh_command_timeout_secs: 5,
        // The test sshd listens on loopback, which Fleetyard refuses by default.
        ssh_refused_networks: Vec::new(),
        ..Config::default()
    }
}

impl TestApp {
    /// A fresh database and the real server on a free loopback port.
    pub async fn spawn() -> TestApp {
        Self::spawn_with(|_| {}).await
    }

    /// Like [`spawn`](Self::spawn), with the configuration adjusted first.
    pub async fn spawn_with(adjust: impl FnOnce(&mut Config)) -> TestApp {
        let db = Arc::new(TestDb::create().await);
        let mut config = test_config(&db.url);
        adjust(&mut config);
        Self::serve(db, config)
    }

    /// Like [`spawn_with`](Self::spawn_with), but `adjust` also gets the URL the server will
    /// answer at (before it starts): for settings that name the server itself, such as the URL
    /// agents on cloud instances reach it at.
    pub async fn spawn_at(adjust: impl FnOnce(&mut Config, &str)) -> TestApp {
        let db = Arc::new(TestDb::create().await);
        let mut config = test_config(&db.url);
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
        let url = format!("http://{}", listener.local_addr().expect("the bound address"));
        adjust(&mut config, &url);
        Self::serve_on(db, config, listener)
    }

    /// Another server (replica) on the same database, configured like this one.
    pub fn replica(&self) -> TestApp {
        Self::serve(self.db.clone(), (*self.state.config).clone())
    }

    /// Another server on the same database, configured like this one and then adjusted.
    pub fn replica_with(&self, adjust: impl FnOnce(&mut Config)) -> TestApp {
        let mut config = (*self.state.config).clone();
        adjust(&mut config);
        Self::serve(self.db.clone(), config)
    }

    /// A replica listening on `address` (e.g. the address of a stopped server, to bring it back).
    pub fn replica_at(&self, address: &str) -> TestApp {
        let listener = TcpListener::bind(address).expect("binding the address again");
        Self::serve_on(self.db.clone(), (*self.state.config).clone(), listener)
    }

    /// This server's `host:port`.
    pub fn address(&self) -> String {
        self.base_url.trim_start_matches("http://").to_owned()
    }

    fn serve(db: Arc<TestDb>, config: Config) -> TestApp {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
        Self::serve_on(db, config, listener)
    }

    fn serve_on(db: Arc<TestDb>, mut config: Config, listener: TcpListener) -> TestApp {
        fleetyard::telemetry::init(config.log_format, &config.log_filter);
        config.clouds.resolve().expect("the clouds' configuration");
        let pool = db::pool(&config.database_url, config.db_pool_size).expect("pool");
        let clouds = fleetyard::cloud::Clouds::from_config(&config.clouds).expect("the clouds' configuration");
        let state = AppState::new(pool, config, clouds);
        let server = startup::build_server(state.clone(), listener, false).expect("building the server");
        let base_url = format!("http://{}", server.address);
        let handle = server.server.handle();
        tokio::spawn(server.server);
        TestApp { base_url, client: reqwest::Client::new(), state, db, server: handle }
    }

    /// Stops this server (the database stays), as a crash or shutdown would.
    pub async fn stop(self) {
        self.server.stop(false).await;
        self.state.heartbeats.shutdown().await;
    }

    pub fn pool(&self) -> &Pool {
        &self.state.pool
    }

    /// Sends a request; `token` goes in `Authorization: Bearer`, `body` as JSON.
    pub async fn request(&self, method: Method, path: &str, token: Option<&str>, body: Option<&Value>) -> Response {
        let mut request = self.client.request(method, format!("{}{path}", self.base_url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        read(request.send().await.expect("sending the request")).await
    }

    /// Sends a raw body with the given content type.
    pub async fn request_raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        content_type: &str,
        body: Vec<u8>,
    ) -> Response {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base_url))
            .header("content-type", content_type)
            .body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        read(request.send().await.expect("sending the request")).await
    }

    pub async fn get(&self, path: &str, token: &str) -> Response {
        self.request(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Response {
        self.request(Method::POST, path, Some(token), Some(&body)).await
    }

    pub async fn patch(&self, path: &str, token: &str, body: Value) -> Response {
        self.request(Method::PATCH, path, Some(token), Some(&body)).await
    }

    pub async fn put(&self, path: &str, token: &str, body: Value) -> Response {
        self.request(Method::PUT, path, Some(token), Some(&body)).await
    }

    pub async fn delete(&self, path: &str, token: &str) -> Response {
        self.request(Method::DELETE, path, Some(token), None).await
    }

    /// A session token for an existing user, as if they had logged in.
    pub fn session_for(&self, user: UserId) -> String {
        self.state.tokens.issue_session(user.0, 0).expect("signing a session").token
    }

    /// A machine credential for `machine`, stored like the agents issue will store them.
    pub async fn agent_token(&self, machine: MachineId) -> String {
        let mut conn = self.state.pool.get().await.expect("db");
        let row = db::api_tokens::insert(
            &mut conn,
            &db::api_tokens::NewApiToken::agent(
                TokenId::generate(),
                "test agent",
                machine,
                chrono::Utc::now() + chrono::Duration::days(1),
            ),
        )
        .await
        .expect("inserting an agent token");
        self.state.tokens.issue_api_token(row.id.0, TokenKind::Agent, row.expires_at).expect("signing").token
    }

    /// Enrolls a machine with its one-time token, as an agent would, and gives its credential.
    pub async fn enroll(&self, token: &str) -> String {
        let body = serde_json::json!({ "token": token });
        let enrolled = self.request(Method::POST, "/api/v1/agent/enroll", None, Some(&body)).await.expect(200);
        enrolled.body["credential"].as_str().expect("a credential").to_owned()
    }

    /// How many rows each table holds: to show a refused request wrote nothing.
    pub async fn row_counts(&self) -> Vec<(&'static str, i64)> {
        use diesel::sql_types::BigInt;
        use diesel_async::RunQueryDsl;

        #[derive(diesel::QueryableByName)]
        struct Count {
            #[diesel(sql_type = BigInt)]
            n: i64,
        }
        let mut conn = self.state.pool.get().await.expect("db");
        let mut counts = Vec::new();
        for table in ["donors", "sites", "users", "donations", "machines", "api_tokens", "audit_log", "leases", "jobs"]
        {
            let count: Count = diesel::sql_query(format!("SELECT count(*) AS n FROM {table}"))
                .get_result(&mut conn)
                .await
                .expect("counting rows");
            counts.push((table, count.n));
        }
        counts
    }
}

pub(crate) async fn read(response: reqwest::Response) -> Response {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.expect("reading the body");
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Response { status, headers, body, text }
}
