//! `fleetyard-placegen`: the placement benchmark's load generator
//! (`deploy/bench/placement.sh`). It talks only to loopback addresses.
//!
//! - `setup` registers N ready, healthy foundation-lab machines (a quarter of each
//!   architecture) straight into the database, and a CI service token.
//! - `burst` sends lease requests from C concurrent clients (kept-alive HTTP/1.1 connections),
//!   architectures in turn, and reports grants per second and time-to-grant.
//! - `reset` ends every lease, so the next measurement starts from a free inventory.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use fleetyard::db::{self, Json};
use fleetyard::domain::{Arch, LifecycleState, MachineId};
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
    /// Registers machines and a CI token; writes the token to `out`.
    Setup {
        #[arg(long)]
        database_url: String,
        /// The server's FLEETYARD_JWT_SECRET, to sign the token.
        #[arg(long)]
        jwt_secret: String,
        #[arg(long)]
        machines: usize,
        #[arg(long)]
        out: PathBuf,
    },
    /// Sends `requests` lease requests over `connections` clients; prints one JSON line.
    Burst {
        #[arg(long, default_value = "127.0.0.1:8080")]
        server: SocketAddr,
        #[arg(long)]
        token: PathBuf,
        #[arg(long)]
        requests: usize,
        #[arg(long, default_value_t = 64)]
        connections: usize,
    },
    /// Ends every lease and forgets the machines' use.
    Reset {
        #[arg(long)]
        database_url: String,
    },
}

const ARCHES: [Arch; 4] = [Arch::X86_64, Arch::Aarch64, Arch::Riscv64, Arch::Loongarch64];

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // One thread: leave the other core to the server and PostgreSQL.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match cli.command {
        Command::Setup { database_url, jwt_secret, machines, out } => {
            runtime.block_on(setup(&database_url, &jwt_secret, machines, &out))
        }
        Command::Burst { server, token, requests, connections } => {
            if !server.ip().is_loopback() {
                bail!("the load generator only talks to loopback addresses");
            }
            let token = std::fs::read_to_string(token)?.trim().to_owned();
            let report = runtime.block_on(burst(server, &token, requests, connections))?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Command::Reset { database_url } => runtime.block_on(reset(&database_url)),
    }
}

async fn setup(database_url: &str, secret: &str, count: usize, out: &std::path::Path) -> anyhow::Result<()> {
    let mut conn = AsyncPgConnection::establish(database_url).await.context("connecting")?;
    let (donation_id, donor_id, site_id) = fleetyard_tests::bench::lab_donation(&mut conn, "Placement bench").await?;
    let labels = Default::default();
    for chunk in (0..count).collect::<Vec<_>>().chunks(2_000) {
        let machines: Vec<_> = chunk
            .iter()
            .map(|i| db::machines::NewMachine {
                id: MachineId::generate(),
                donation_id: Some(donation_id),
                donor_id: Some(donor_id),
                site_id,
                hostname: None,
                asset_tag: None,
                arch: ARCHES[i % ARCHES.len()],
                cpu_model: "placegen",
                cpu_cores: [4, 8, 16, 64][(i / 4) % 4],
                memory_mib: [8, 16, 32, 256][(i / 4) % 4] * 1024,
                disk_gib: 200,
                accelerators: Json(&[]),
                labels: Json(&labels),
                ssh_host: Some("192.0.2.1"),
                ssh_port: Some(22),
                ssh_user: Some("runner"),
                warranty_until: None,
                lifecycle: LifecycleState::Ready,
                lifecycle_deadline: None,
            })
            .collect();
        db::machines::insert_many(&mut conn, &machines).await?;
    }
    // As if every agent had reported in.
    diesel::sql_query(format!("UPDATE machines SET health = 'healthy' WHERE donation_id = '{}'", donation_id))
        .execute(&mut conn)
        .await?;
    fleetyard_tests::bench::service_token(&mut conn, "placegen", secret, out).await?;
    eprintln!("registered {count} ready, healthy machines");
    Ok(())
}

async fn reset(database_url: &str) -> anyhow::Result<()> {
    let mut conn = AsyncPgConnection::establish(database_url).await.context("connecting")?;
    diesel::sql_query("DELETE FROM leases").execute(&mut conn).await?;
    diesel::sql_query("UPDATE machine_status SET leases_granted = 0").execute(&mut conn).await?;
    diesel::sql_query("VACUUM ANALYZE leases, machine_status, machines").execute(&mut conn).await?;
    Ok(())
}

#[derive(Debug, serde::Serialize)]
struct Report {
    requests: usize,
    connections: usize,
    seconds: f64,
    granted: u64,
    other: u64,
    grants_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

async fn burst(server: SocketAddr, token: &str, requests: usize, connections: usize) -> anyhow::Result<Report> {
    let auth = hyper::header::HeaderValue::from_str(&format!("Bearer {token}"))?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for connection in 0..connections {
        // This client's share of the requests.
        let share = requests / connections + usize::from(connection < requests % connections);
        let auth = auth.clone();
        tasks.push(tokio::spawn(async move { client(server, auth, connection, share).await }));
    }
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let (mut granted, mut other) = (0, 0);
    for task in tasks {
        let (h, ok, not) = task.await??;
        histogram.add(h)?;
        granted += ok;
        other += not;
    }
    let seconds = started.elapsed().as_secs_f64();
    let ms = |us: u64| us as f64 / 1000.0;
    Ok(Report {
        requests,
        connections,
        seconds,
        granted,
        other,
        grants_per_second: granted as f64 / seconds,
        p50_ms: ms(histogram.value_at_quantile(0.50)),
        p99_ms: ms(histogram.value_at_quantile(0.99)),
        max_ms: ms(histogram.max()),
    })
}

/// One client: `count` requests in turn; returns time-to-grant (µs) of the granted ones.
async fn client(
    server: SocketAddr,
    auth: hyper::header::HeaderValue,
    connection: usize,
    count: usize,
) -> anyhow::Result<(Histogram<u64>, u64, u64)> {
    let stream = tokio::net::TcpStream::connect(server).await?;
    stream.set_nodelay(true)?;
    let (mut sender, link) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(link);
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let (mut granted, mut other) = (0, 0);
    for i in 0..count {
        let arch = ARCHES[(connection + i) % ARCHES.len()];
        let body = format!(
            r#"{{"requirements":{{"arch":"{arch}","min_cores":4}},"purpose":"ci","duration_minutes":60,"tenant":"sig-{}","max_wait_minutes":0}}"#,
            connection % 4
        );
        let request = Request::post("/api/v1/leases")
            .header(hyper::header::HOST, "127.0.0.1")
            .header(hyper::header::AUTHORIZATION, auth.clone())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))?;
        let sent = Instant::now();
        let response = sender.send_request(request).await?;
        let status = response.status();
        response.into_body().collect().await?;
        if status == hyper::StatusCode::CREATED {
            granted += 1;
            histogram.record(u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX).max(1))?;
        } else {
            other += 1;
        }
    }
    Ok((histogram, granted, other))
}
