//! `fleetyard-loadgen`: a heartbeat load generator for the ingest benchmark
//! (`deploy/bench/heartbeats.sh`). It talks only to loopback addresses.
//!
//! - `setup` registers N machines with agent credentials straight into the database (as
//!   enrollment would, only faster) and writes the credentials to a file.
//! - `run` sends heartbeats (or `GET /healthz`, the ceiling) over C kept-alive HTTP/1.1
//!   connections, either as fast as the server answers (closed loop) or at a fixed rate
//!   (open loop, latency measured from when each request was due, so a stall is counted in
//!   full rather than hidden).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use fleetyard::auth::{TokenKeys, TokenKind};
use fleetyard::config::{Config, Secret};
use fleetyard::db::{self, Json};
use fleetyard::domain::{Arch, LifecycleState, MachineId, Role, TokenId};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Registers machines with agent credentials; writes one credential per line to `out`.
    Setup {
        #[arg(long)]
        database_url: String,
        /// The server's FLEETYARD_JWT_SECRET, to sign the credentials.
        #[arg(long)]
        jwt_secret: String,
        #[arg(long)]
        identities: usize,
        #[arg(long)]
        out: PathBuf,
    },
    /// Sends load and prints one JSON line of results.
    Run {
        #[arg(long, default_value = "127.0.0.1:8080")]
        server: SocketAddr,
        #[arg(long, value_enum)]
        target: Target,
        /// Credentials file from `setup` (heartbeat target).
        #[arg(long)]
        credentials: Option<PathBuf>,
        /// Use only the first N credentials.
        #[arg(long)]
        identities: Option<usize>,
        #[arg(long, default_value_t = 64)]
        connections: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Requests per second in all (open loop); absent: as fast as answered.
        #[arg(long)]
        rate: Option<u64>,
        /// One heartbeat per identity, then stop (the warm-up: every machine reports its
        /// facts once, as agents do when they start).
        #[arg(long)]
        once: bool,
    },
    /// Prints `run`'s JSON lines (from a file) as a Markdown table, with the heartbeat/ceiling
    /// ratio.
    Table { results: PathBuf },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
enum Target {
    Heartbeat,
    Healthz,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // One thread: leave the other core to the server and PostgreSQL.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match cli.command {
        Command::Setup { database_url, jwt_secret, identities, out } => {
            runtime.block_on(setup(&database_url, &jwt_secret, identities, &out))
        }
        Command::Run { server, target, credentials, identities, connections, seconds, rate, once } => {
            if !server.ip().is_loopback() {
                bail!("the load generator only talks to loopback addresses");
            }
            let mut tokens = match (target, credentials) {
                (Target::Heartbeat, Some(path)) => {
                    std::fs::read_to_string(&path)?.lines().map(str::to_owned).collect::<Vec<_>>()
                }
                (Target::Heartbeat, None) => bail!("--credentials is required for heartbeats"),
                (Target::Healthz, _) => vec![String::new()],
            };
            if let Some(limit) = identities {
                tokens.truncate(limit);
            }
            let plan = Plan { target, connections, duration: Duration::from_secs(seconds), rate, once };
            let report = runtime.block_on(run(server, plan, tokens))?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Command::Table { results } => table(&std::fs::read_to_string(results)?),
    }
}

fn table(results: &str) -> anyhow::Result<()> {
    let reports: Vec<serde_json::Value> = results.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    println!("| identities | measurement | requests/s | of the ceiling | p50 ms | p99 ms | errors |");
    println!("| ---: | --- | ---: | ---: | ---: | ---: | ---: |");
    let mut ceiling = 0.0;
    for r in &reports {
        let per_second = r["per_second"].as_f64().unwrap_or_default();
        let (what, share) = match (r["target"].as_str(), r["rate_asked"].as_u64()) {
            (Some("healthz"), _) => {
                ceiling = per_second;
                ("`GET /healthz`, as fast as answered (the ceiling)".to_owned(), "100 %".to_owned())
            }
            (_, Some(rate)) => (format!("heartbeats at {rate}/s (open loop)"), "".to_owned()),
            _ => (
                "heartbeats, as fast as answered".to_owned(),
                format!("{:.0} %", 100.0 * per_second / ceiling.max(1.0)),
            ),
        };
        println!(
            "| {} | {what} | {per_second:.0} | {share} | {:.2} | {:.2} | {} |",
            r["identities"],
            r["p50_ms"].as_f64().unwrap_or_default(),
            r["p99_ms"].as_f64().unwrap_or_default(),
            r["errors"]
        );
    }
    Ok(())
}

/// What `setup` declares, and what `run` reports: no contradiction to flag.
const FACTS: &str = r#"{"arch":"x86_64","kernel":"6.1.0","os_release":"Debian GNU/Linux 12 (bookworm)","cpu_model":"loadgen","cpu_count":4,"memory_mib":8192,"disk_gib":100,"hostname":null}"#;

async fn setup(database_url: &str, secret: &str, identities: usize, out: &PathBuf) -> anyhow::Result<()> {
    let mut conn = AsyncPgConnection::establish(database_url).await.context("connecting")?;
    let (donation_id, donor_id, site_id) = fleetyard_tests::bench::lab_donation(&mut conn, "Load generator").await?;
    let keys = TokenKeys::new(&Config { jwt_secret: Secret(secret.into()), ..Config::default() });
    let expires_at = chrono::Utc::now() + chrono::Duration::days(30);
    let labels = Default::default();
    let mut lines = String::new();
    let started = Instant::now();
    for chunk in (0..identities).collect::<Vec<_>>().chunks(2_000) {
        let machines: Vec<_> = chunk
            .iter()
            .map(|_| db::machines::NewMachine {
                id: MachineId::generate(),
                donation_id,
                donor_id,
                site_id,
                hostname: None,
                asset_tag: None,
                arch: Arch::X86_64,
                cpu_model: "loadgen",
                cpu_cores: 4,
                memory_mib: 8192,
                disk_gib: 100,
                accelerators: Json(&[]),
                labels: Json(&labels),
                ssh_host: None,
                ssh_port: None,
                ssh_user: None,
                warranty_until: None,
                lifecycle: LifecycleState::Ready,
                lifecycle_deadline: None,
            })
            .collect();
        let inserted = db::machines::insert_many(&mut conn, &machines).await?;
        let tokens: Vec<(TokenId, MachineId)> = inserted.iter().map(|m| (TokenId::generate(), m.id)).collect();
        let rows: Vec<db::api_tokens::NewApiToken<'_>> = tokens
            .iter()
            .map(|(id, machine)| db::api_tokens::NewApiToken {
                id: *id,
                name: "loadgen agent",
                role: Role::Agent,
                machine_id: Some(*machine),
                created_by: None,
                expires_at,
            })
            .collect();
        db::api_tokens::insert_many(&mut conn, &rows).await?;
        for (id, _) in &tokens {
            lines.push_str(&keys.issue_api_token(id.0, TokenKind::Agent, expires_at)?.token);
            lines.push('\n');
        }
    }
    std::fs::write(out, lines)?;
    eprintln!("registered {identities} machines with credentials in {:.1?}", started.elapsed());
    Ok(())
}

#[derive(Debug, serde::Serialize)]
struct Report {
    target: String,
    identities: usize,
    connections: usize,
    rate_asked: Option<u64>,
    seconds: f64,
    completed: u64,
    errors: u64,
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

/// How to send the load.
#[derive(Debug, Clone, Copy)]
struct Plan {
    target: Target,
    connections: usize,
    duration: Duration,
    rate: Option<u64>,
    once: bool,
}

async fn run(server: SocketAddr, plan: Plan, tokens: Vec<String>) -> anyhow::Result<Report> {
    let Plan { target, connections, duration, rate, .. } = plan;
    let identities = tokens.len();
    // Headers built once: the generator should spend its CPU sending, not formatting.
    let tokens: Vec<hyper::header::HeaderValue> = tokens
        .iter()
        .map(|t| hyper::header::HeaderValue::from_str(&format!("Bearer {t}")))
        .collect::<Result<_, _>>()?;
    let tokens = std::sync::Arc::new(tokens);
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for connection in 0..connections {
        let tokens = tokens.clone();
        // Open loop: this connection's share of the rate, its first request staggered.
        let spacing = rate.map(|r| Duration::from_secs_f64(connections as f64 / r as f64));
        let offset = spacing.map(|s| s.mul_f64(connection as f64 / connections as f64));
        tasks.push(tokio::spawn(
            async move { drive(server, plan, &tokens, connection, deadline, spacing, offset).await },
        ));
    }
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut completed, mut errors) = (0, 0);
    for task in tasks {
        let (h, ok, failed) = task.await??;
        histogram.add(h)?;
        completed += ok;
        errors += failed;
    }
    let seconds = started.elapsed().as_secs_f64();
    let ms = |us: u64| us as f64 / 1000.0;
    Ok(Report {
        target: format!("{target:?}").to_lowercase(),
        identities,
        connections,
        rate_asked: rate,
        seconds,
        completed,
        errors,
        per_second: completed as f64 / seconds,
        p50_ms: ms(histogram.value_at_quantile(0.50)),
        p99_ms: ms(histogram.value_at_quantile(0.99)),
        max_ms: ms(histogram.max()),
    })
}

/// One connection's requests until the deadline; returns its latencies (µs) and counts.
async fn drive(
    server: SocketAddr,
    plan: Plan,
    tokens: &[hyper::header::HeaderValue],
    connection: usize,
    deadline: Instant,
    spacing: Option<Duration>,
    offset: Option<Duration>,
) -> anyhow::Result<(Histogram<u64>, u64, u64)> {
    let Plan { target, connections, once, .. } = plan;
    let stream = tokio::net::TcpStream::connect(server).await?;
    stream.set_nodelay(true)?;
    let (mut sender, link) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(link);
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut ok, mut failed) = (0, 0);
    let mut next_due = Instant::now() + offset.unwrap_or_default();
    let mut index = connection;
    // The body, with the agent's clock as it would send it, rebuilt every 10 ms.
    let body = || {
        Bytes::from(format!(
            r#"{{"agent_version":"loadgen","sent_at":"{}","facts":{FACTS},"metrics":{{"load1":0.5,"load5":0.5,"load15":0.5,"uptime_secs":1000,"disk_used_pct":40.0,"memory_available_mib":4096}}}}"#,
            chrono::Utc::now().to_rfc3339()
        ))
    };
    let mut stamp = (Instant::now(), body());
    while Instant::now() < deadline && !(once && index >= tokens.len()) {
        if spacing.is_some() {
            tokio::time::sleep_until(next_due.into()).await;
        } else {
            next_due = Instant::now();
        }
        let request = match target {
            Target::Healthz => Request::get("/healthz").header("host", "127.0.0.1").body(Full::new(Bytes::new()))?,
            Target::Heartbeat => {
                let token = tokens[index % tokens.len()].clone();
                index += connections;
                if stamp.0.elapsed() > Duration::from_millis(10) {
                    stamp = (Instant::now(), body());
                }
                Request::post("/api/v1/agent/heartbeat")
                    .header("host", "127.0.0.1")
                    .header("content-type", "application/json")
                    .header("authorization", token)
                    .body(Full::new(stamp.1.clone()))?
            }
        };
        sender.ready().await?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        response.into_body().collect().await?;
        let latency = next_due.elapsed();
        if status.is_success() {
            ok += 1;
            histogram.record(latency.as_micros().max(1) as u64)?;
        } else {
            failed += 1;
        }
        if let Some(spacing) = spacing {
            next_due += spacing;
        }
    }
    Ok((histogram, ok, failed))
}
