//! `fleetyard-loadgen`: a heartbeat load generator for the ingest benchmark
//! (`deploy/bench/heartbeats.sh`). It talks only to loopback addresses.
//!
//! - `setup` registers N machines with agent credentials straight into the database (as
//!   enrollment would, only faster) and writes the credentials to a file.
//! - `run` sends heartbeats (or `GET /healthz`, the ceiling) over C kept-alive HTTP/1.1
//!   connections, either as fast as the server answers (closed loop) or at a fixed rate
//!   (open loop, latency measured from when each request was due, so a stall is counted in
//!   full rather than hidden).
//! - `compare` measures heartbeats against the ceiling in alternating slices (ceiling,
//!   heartbeats, heartbeats, ceiling, ...), so that both see the same machine: the
//!   project's VM changes speed every few tens of seconds, by up to 1.8 times.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use fleetyard::auth::{TokenKeys, TokenKind};
use fleetyard::config::{Config, Secret};
use fleetyard::db::{self, Json};
use fleetyard::domain::{Arch, LifecycleState, MachineId, TokenId};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::header::HeaderValue;
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
    /// Alternates closed-loop slices of `GET /healthz` and heartbeats; prints one JSON line
    /// with the medians and the heartbeat/ceiling ratio of each pair of neighbouring slices.
    Compare {
        #[arg(long, default_value = "127.0.0.1:8080")]
        server: SocketAddr,
        #[arg(long)]
        credentials: PathBuf,
        /// Use only the first N credentials.
        #[arg(long)]
        identities: Option<usize>,
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// Pairs of slices (one of each target).
        #[arg(long, default_value_t = 6)]
        rounds: usize,
        #[arg(long, default_value_t = 5)]
        slice_seconds: u64,
        /// The server's process id: its CPU time per request is reported for each target.
        #[arg(long)]
        server_pid: Option<u32>,
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
                (Target::Heartbeat, Some(path)) => read_credentials(&path)?,
                (Target::Heartbeat, None) => bail!("--credentials is required for heartbeats"),
                (Target::Healthz, _) => vec![String::new()],
            };
            if let Some(limit) = identities {
                tokens.truncate(limit);
            }
            let plan = Plan { target, connections, duration: Duration::from_secs(seconds), rate, once };
            let report = runtime.block_on(run(server, plan, bearer_headers(&tokens)?))?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Command::Compare { server, credentials, identities, connections, rounds, slice_seconds, server_pid } => {
            if !server.ip().is_loopback() {
                bail!("the load generator only talks to loopback addresses");
            }
            let mut tokens = read_credentials(&credentials)?;
            if let Some(limit) = identities {
                tokens.truncate(limit);
            }
            let slice = Duration::from_secs(slice_seconds);
            let plan = Comparing { connections, rounds, slice, server_pid };
            let report = runtime.block_on(compare(server, plan, tokens))?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Command::Table { results } => table(&std::fs::read_to_string(results)?),
    }
}

/// The Markdown tables of `compare`'s and `run`'s JSON lines.
fn table(results: &str) -> anyhow::Result<()> {
    let reports: Vec<serde_json::Value> = results.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    let (comparisons, runs): (Vec<_>, Vec<_>) = reports.iter().partition(|r| r["ratios"].is_array());
    let list = |r: &serde_json::Value, key: &str| -> Vec<f64> {
        r[key].as_array().map(|v| v.iter().filter_map(serde_json::Value::as_f64).collect()).unwrap_or_default()
    };
    if !comparisons.is_empty() {
        println!(
            "| identities | `GET /healthz` (ceiling), req/s | heartbeats, req/s | **heartbeats / ceiling** | heartbeat p50 / p99 ms | server CPU µs per request: ceiling / heartbeat | of which user space | server CPUs busy: ceiling / heartbeat | errors |"
        );
        println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    }
    for r in &comparisons {
        let (ceiling, beats, ratios) =
            (list(r, "ceiling_per_second"), list(r, "heartbeats_per_second"), list(r, "ratios"));
        let spread = |v: &[f64], scale: f64, unit: &str| {
            let (low, high) = (v.iter().copied().fold(f64::INFINITY, f64::min), v.iter().copied().fold(0.0, f64::max));
            format!("{:.0}{unit} ({:.0}–{:.0})", median(v) * scale, low * scale, high * scale)
        };
        let (ceiling_cpu, beat_cpu) =
            (list(r, "server_cpu_us_per_ceiling_request"), list(r, "server_cpu_us_per_heartbeat"));
        let (ceiling_user, beat_user) =
            (list(r, "server_user_cpu_us_per_ceiling_request"), list(r, "server_user_cpu_us_per_heartbeat"));
        // CPU seconds per second: whether the server, rather than the load generator, was the limit.
        let busy = |rates: &[f64], costs: &[f64]| {
            median(&rates.iter().zip(costs).map(|(rate, us)| rate * us / 1e6).collect::<Vec<_>>())
        };
        println!(
            "| {} | {} | {} | **{}** | {:.2} / {:.2} | {:.1} / {:.1} | {:.1} / {:.1} | {:.2} / {:.2} | {} |",
            r["identities"],
            spread(&ceiling, 1.0, ""),
            spread(&beats, 1.0, ""),
            spread(&ratios, 100.0, " %"),
            r["heartbeat_p50_ms"].as_f64().unwrap_or_default(),
            r["heartbeat_p99_ms"].as_f64().unwrap_or_default(),
            median(&ceiling_cpu),
            median(&beat_cpu),
            median(&ceiling_user),
            median(&beat_user),
            busy(&ceiling, &ceiling_cpu),
            busy(&beats, &beat_cpu),
            r["errors"]
        );
    }
    if !runs.is_empty() {
        println!();
        println!("| identities | measurement | requests/s | p50 ms | p99 ms | max ms | errors |");
        println!("| ---: | --- | ---: | ---: | ---: | ---: | ---: |");
    }
    for r in &runs {
        let what = match (r["target"].as_str(), r["rate_asked"].as_u64()) {
            (Some("healthz"), _) => "`GET /healthz`, as fast as answered".to_owned(),
            (_, Some(rate)) => format!("heartbeats at {rate}/s (open loop)"),
            _ => "heartbeats, as fast as answered".to_owned(),
        };
        println!(
            "| {} | {what} | {:.0} | {:.2} | {:.2} | {:.2} | {} |",
            r["identities"],
            r["per_second"].as_f64().unwrap_or_default(),
            r["p50_ms"].as_f64().unwrap_or_default(),
            r["p99_ms"].as_f64().unwrap_or_default(),
            r["max_ms"].as_f64().unwrap_or_default(),
            r["errors"]
        );
    }
    Ok(())
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

fn read_credentials(path: &PathBuf) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text.lines().map(str::to_owned).collect())
}

/// The `Authorization` header of each credential, built once: the generator should spend its
/// CPU sending, not formatting.
fn bearer_headers(tokens: &[String]) -> anyhow::Result<Arc<Vec<HeaderValue>>> {
    let headers = tokens.iter().map(|t| HeaderValue::from_str(&format!("Bearer {t}"))).collect::<Result<_, _>>()?;
    Ok(Arc::new(headers))
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
                donation_id: Some(donation_id),
                donor_id: Some(donor_id),
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
            .map(|(id, machine)| db::api_tokens::NewApiToken::agent(*id, "loadgen agent", *machine, expires_at))
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

/// How to compare.
#[derive(Debug, Clone, Copy)]
struct Comparing {
    connections: usize,
    rounds: usize,
    slice: Duration,
    server_pid: Option<u32>,
}

/// One `compare`: slices of each target in turn.
#[derive(Debug, Default, serde::Serialize)]
struct Comparison {
    identities: usize,
    connections: usize,
    slice_seconds: u64,
    ceiling_per_second: Vec<f64>,
    heartbeats_per_second: Vec<f64>,
    /// Per round: heartbeats over the ceiling measured next to them.
    ratios: Vec<f64>,
    /// Medians over the heartbeat slices.
    heartbeat_p50_ms: f64,
    heartbeat_p99_ms: f64,
    errors: u64,
    /// Per slice, the server's CPU time per request (µs), when its process id was given.
    server_cpu_us_per_ceiling_request: Vec<f64>,
    server_cpu_us_per_heartbeat: Vec<f64>,
    /// Per slice, the part of it spent in user space (the rest is the kernel's).
    server_user_cpu_us_per_ceiling_request: Vec<f64>,
    server_user_cpu_us_per_heartbeat: Vec<f64>,
    /// Per slice, this load generator's own CPU time per request (µs): it shares the machine.
    loadgen_cpu_us_per_ceiling_request: Vec<f64>,
    loadgen_cpu_us_per_heartbeat: Vec<f64>,
    /// Per slice, the share of the machine's CPU time that was busy (all processes).
    machine_busy_ceiling: Vec<f64>,
    machine_busy_heartbeats: Vec<f64>,
}

/// CPU time a process used so far, in clock ticks (`/proc/<pid>/stat`): in user space and in
/// the kernel.
fn process_ticks(pid: u32) -> anyhow::Result<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces): state is the first, utime the 12th.
    let fields: Vec<&str> = stat.rsplit_once(')').context("unexpected /proc stat")?.1.split_whitespace().collect();
    Ok((fields[11].parse()?, fields[12].parse()?))
}

/// The whole machine's busy and total clock ticks so far (`/proc/stat`).
fn machine_ticks() -> anyhow::Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let ticks: Vec<u64> = line.split_whitespace().skip(1).map(str::parse).collect::<Result<_, _>>()?;
    // user nice system idle iowait irq softirq steal ...
    let idle = ticks[3] + ticks.get(4).copied().unwrap_or_default();
    let total: u64 = ticks.iter().take(8).sum();
    Ok((total - idle, total))
}

async fn compare(server: SocketAddr, how: Comparing, tokens: Vec<String>) -> anyhow::Result<Comparison> {
    let Comparing { connections, rounds, slice, server_pid } = how;
    let headers = bearer_headers(&tokens)?;
    let plan = |target| Plan { target, connections, duration: slice, rate: None, once: false };
    let ticks_per_second = 100.0; // USER_HZ on Linux
    let mut result =
        Comparison { identities: tokens.len(), connections, slice_seconds: slice.as_secs(), ..Default::default() };
    let (mut p50, mut p99) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        // Ceiling first in even rounds, heartbeats first in odd ones: neither always runs on
        // the heels of the other.
        let order =
            if round % 2 == 0 { [Target::Healthz, Target::Heartbeat] } else { [Target::Heartbeat, Target::Healthz] };
        let (mut ceiling, mut beats) = (0.0, 0.0);
        for target in order {
            let server_before = server_pid.map(process_ticks).transpose()?;
            let (machine_before, own_before) = (machine_ticks()?, process_ticks(std::process::id())?);
            let report = run(server, plan(target), headers.clone()).await?;
            let (machine_after, own_after) = (machine_ticks()?, process_ticks(std::process::id())?);
            let per_request = |ticks: u64| ticks as f64 / ticks_per_second * 1e6 / report.completed.max(1) as f64;
            let own_us = per_request(own_after.0 + own_after.1 - own_before.0 - own_before.1);
            let busy = (machine_after.0 - machine_before.0) as f64 / (machine_after.1 - machine_before.1).max(1) as f64;
            let (server_us, server_user_us) = match (server_pid, server_before) {
                (Some(pid), Some(before)) => {
                    let after = process_ticks(pid)?;
                    (Some(per_request(after.0 + after.1 - before.0 - before.1)), Some(per_request(after.0 - before.0)))
                }
                _ => (None, None),
            };
            result.errors += report.errors;
            match target {
                Target::Healthz => {
                    ceiling = report.per_second;
                    result.server_cpu_us_per_ceiling_request.extend(server_us);
                    result.server_user_cpu_us_per_ceiling_request.extend(server_user_us);
                    result.loadgen_cpu_us_per_ceiling_request.push(own_us);
                    result.machine_busy_ceiling.push(busy);
                }
                Target::Heartbeat => {
                    beats = report.per_second;
                    p50.push(report.p50_ms);
                    p99.push(report.p99_ms);
                    result.server_cpu_us_per_heartbeat.extend(server_us);
                    result.server_user_cpu_us_per_heartbeat.extend(server_user_us);
                    result.loadgen_cpu_us_per_heartbeat.push(own_us);
                    result.machine_busy_heartbeats.push(busy);
                }
            }
        }
        result.ceiling_per_second.push(ceiling);
        result.heartbeats_per_second.push(beats);
        result.ratios.push(beats / ceiling.max(1.0));
    }
    result.heartbeat_p50_ms = median(&p50);
    result.heartbeat_p99_ms = median(&p99);
    Ok(result)
}

async fn run(server: SocketAddr, plan: Plan, tokens: Arc<Vec<HeaderValue>>) -> anyhow::Result<Report> {
    let Plan { target, connections, duration, rate, .. } = plan;
    let identities = tokens.len();
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
    tokens: &[HeaderValue],
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
    // The body, with the agent's clock as it would send it, rebuilt every 10 ms. As agents do,
    // the facts go with the first heartbeat (the warm-up) and are left out once the server has them.
    let facts = if once { format!(r#""facts":{FACTS},"#) } else { String::new() };
    let body = || {
        Bytes::from(format!(
            r#"{{"agent_version":"loadgen","sent_at":"{}",{facts}"metrics":{{"load1":0.5,"load5":0.5,"load15":0.5,"uptime_secs":1000,"disk_used_pct":40.0,"memory_available_mib":4096}}}}"#,
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
