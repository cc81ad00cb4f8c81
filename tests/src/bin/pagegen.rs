//! `fleetyard-pagegen`: the web pages' benchmark (`deploy/bench/pages.sh`). It talks only to
//! loopback addresses.
//!
//! - `setup` writes an inventory straight into the database: N machines (a quarter of each
//!   architecture, mostly ready and healthy, some unreachable, in maintenance or onboarding),
//!   L past leases spread over the last 60 days, some queued leases, and an ops user; it writes
//!   that user's session token (the pages' cookie) to `out`.
//! - `measure` asks for one path again and again over one kept-alive connection, the way one
//!   person clicks, and prints one JSON line: latency percentiles and the answer's size.
//! - `weight` fetches a page and every stylesheet and script it links, and prints their sizes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use fleetyard::auth::TokenKeys;
use fleetyard::config::{Config, Secret};
use fleetyard::db::{self, Json};
use fleetyard::domain::{Arch, LifecycleState, MachineId, Role, UserId};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Writes the inventory, the leases and an ops user; writes its session token to `out`.
    Setup {
        #[arg(long)]
        database_url: String,
        /// The server's FLEETYARD_JWT_SECRET, to sign the session.
        #[arg(long)]
        jwt_secret: String,
        #[arg(long)]
        machines: usize,
        #[arg(long)]
        leases: usize,
        #[arg(long)]
        out: PathBuf,
    },
    /// GETs `path` `requests` times in a row; prints one JSON line.
    Measure {
        #[arg(long, default_value = "127.0.0.1:8080")]
        server: SocketAddr,
        /// A file with the session token, sent as the `fy_session` cookie.
        #[arg(long)]
        session: PathBuf,
        /// Sent as `Authorization: Bearer` instead of the cookie (the API's baseline).
        #[arg(long)]
        bearer: bool,
        #[arg(long)]
        path: String,
        #[arg(long, default_value_t = 200)]
        requests: usize,
    },
    /// Fetches `path` and what it links; prints one JSON line of sizes.
    Weight {
        #[arg(long, default_value = "127.0.0.1:8080")]
        server: SocketAddr,
        #[arg(long)]
        session: PathBuf,
        #[arg(long)]
        path: String,
    },
}

const ARCHES: [Arch; 4] = [Arch::X86_64, Arch::Aarch64, Arch::Riscv64, Arch::Loongarch64];

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Setup { database_url, jwt_secret, machines, leases, out } => {
            setup(&database_url, &jwt_secret, machines, leases, &out).await
        }
        Command::Measure { server, session, bearer, path, requests } => {
            let session = std::fs::read_to_string(&session).context("reading the session")?;
            let report = measure(server, session.trim(), bearer, &path, requests).await?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Command::Weight { server, session, path } => {
            let session = std::fs::read_to_string(&session).context("reading the session")?;
            let report = weight(server, session.trim(), &path).await?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
    }
}

async fn setup(
    database_url: &str,
    secret: &str,
    count: usize,
    leases: usize,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    let mut conn = AsyncPgConnection::establish(database_url).await.context("connecting")?;
    let (donation_id, donor_id, site_id) = fleetyard_tests::bench::lab_donation(&mut conn, "Pages bench").await?;
    let labels = Default::default();
    let hostnames: Vec<String> = (0..count).map(|i| format!("bench-{}-{i:05}", ARCHES[i % 4])).collect();
    for chunk in (0..count).collect::<Vec<_>>().chunks(2_000) {
        let machines: Vec<_> = chunk
            .iter()
            .map(|&i| db::machines::NewMachine {
                id: MachineId::generate(),
                donation_id: Some(donation_id),
                donor_id: Some(donor_id),
                site_id,
                hostname: Some(&hostnames[i]),
                asset_tag: None,
                arch: ARCHES[i % 4],
                cpu_model: ["EPYC 7763", "Kunpeng 920", "SG2042", "3A6000"][i % 4],
                cpu_cores: [16, 64, 64, 8][i % 4],
                memory_mib: [64, 256, 128, 32][i % 4] * 1024,
                disk_gib: 500,
                accelerators: Json(&[]),
                labels: Json(&labels),
                ssh_host: Some("192.0.2.1"),
                ssh_port: Some(22),
                ssh_user: Some("runner"),
                warranty_until: None,
                lifecycle: match i % 50 {
                    0 => LifecycleState::Maintenance,
                    1 => LifecycleState::Onboarding,
                    _ => LifecycleState::Ready,
                },
                lifecycle_deadline: None,
            })
            .collect();
        db::machines::insert_many(&mut conn, &machines).await?;
    }
    // Most machines beat; one in fifty went quiet some hours ago.
    diesel::sql_query(
        "UPDATE machines SET health = CASE WHEN right(hostname, 2) IN ('07', '57') THEN 'unreachable' ELSE 'healthy' END,
                             health_changed_at = now() - (right(hostname, 3)::int % 48) * interval '1 hour'
         WHERE donation_id = $1",
    )
    .bind::<diesel::sql_types::Uuid, _>(donation_id.0)
    .execute(&mut conn)
    .await?;
    // Past leases over the last 60 days, each of 10 to 190 minutes on one of the machines.
    diesel::sql_query(
        "WITH m AS (SELECT id, arch, donation_id, donor_id, row_number() OVER (ORDER BY id) - 1 AS n
                    FROM machines WHERE donation_id = $2)
         INSERT INTO leases (id, state, holder_kind, holder_id, holder_name, request_hash, tenant, purpose, priority,
             arch, min_cores, min_memory_mib, min_disk_gib, labels, trusted_only, duration_secs, queued_at, deadline,
             machine_id, donation_id, donor_id, granted_at, expires_at, ended_at, end_reason)
         SELECT gen_random_uuid(), 'released', 'service', '00000000-0000-0000-0000-000000000001', 'pagegen', '\\x00',
                'sig-' || (g % 4), 'ci', 50, m.arch, 1, 0, 0, '{}', false, 3600, t.at - interval '2 minutes', t.at,
                m.id, m.donation_id, m.donor_id, t.at, t.at + interval '1 hour',
                t.at + ((10 + g % 180) * interval '1 minute'), 'released by its holder'
         FROM generate_series(1, $1) g
         CROSS JOIN LATERAL (SELECT now() - (g::float8 / $1) * interval '60 days' - interval '4 hours' AS at) t
         JOIN m ON m.n = (g::bigint * 7919) % $3",
    )
    .bind::<diesel::sql_types::Integer, _>(i32::try_from(leases)?)
    .bind::<diesel::sql_types::Uuid, _>(donation_id.0)
    .bind::<diesel::sql_types::Integer, _>(i32::try_from(count)?)
    .execute(&mut conn)
    .await?;
    diesel::sql_query(
        "INSERT INTO leases (id, state, holder_kind, holder_id, holder_name, request_hash, tenant, purpose, priority,
             arch, min_cores, min_memory_mib, min_disk_gib, labels, trusted_only, duration_secs, queued_at, deadline)
         SELECT gen_random_uuid(), 'queued', 'service', '00000000-0000-0000-0000-000000000001', 'pagegen', '\\x00',
                'sig-' || (g % 4), 'ci', 50, (ARRAY['x86_64', 'aarch64', 'riscv64', 'loongarch64'])[g % 4 + 1],
                512, 0, 0, '{}', false, 3600, now() - g * interval '1 minute', now() + interval '1 day'
         FROM generate_series(1, 200) g",
    )
    .execute(&mut conn)
    .await?;
    diesel::sql_query("VACUUM ANALYZE leases, machines, machine_status").execute(&mut conn).await?;
    let hash = fleetyard::auth::hash_password("pagegen password".to_owned()).await?;
    let user = db::users::insert(
        &mut conn,
        &db::users::NewUser {
            id: UserId::generate(),
            email: &format!("pagegen-{}@fleetyard.test", uuid::Uuid::new_v4().simple()),
            display_name: "Ops",
            password_hash: &hash,
            role: Role::Admin,
            donor_id: None,
        },
    )
    .await?;
    let keys = TokenKeys::new(&Config { jwt_secret: Secret(secret.into()), ..Config::default() });
    std::fs::write(out, keys.issue_session(user.id.0, user.session_generation)?.token)?;
    eprintln!("wrote {count} machines, {leases} past leases, 200 queued");
    Ok(())
}

#[derive(Debug, serde::Serialize)]
struct Latency {
    path: String,
    via: &'static str,
    requests: usize,
    p50_ms: f64,
    p95_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    bytes: usize,
}

async fn connect(server: SocketAddr) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(server).await?;
    stream.set_nodelay(true)?;
    let (sender, link) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(link);
    Ok(sender)
}

fn get(path: &str, session: &str, bearer: bool) -> anyhow::Result<Request<Empty<Bytes>>> {
    let request = Request::get(path).header(hyper::header::HOST, "127.0.0.1");
    let request = if bearer {
        request.header(hyper::header::AUTHORIZATION, format!("Bearer {session}"))
    } else {
        request.header(hyper::header::COOKIE, format!("fy_session={session}"))
    };
    Ok(request.body(Empty::new())?)
}

async fn measure(
    server: SocketAddr,
    session: &str,
    bearer: bool,
    path: &str,
    requests: usize,
) -> anyhow::Result<Latency> {
    let mut sender = connect(server).await?;
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut bytes = 0;
    // One warm-up request: the first answer also fills the server's connection pool.
    for i in 0..=requests {
        let sent = Instant::now();
        let response = sender.send_request(get(path, session, bearer)?).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!("GET {path} answered {status}: {}", String::from_utf8_lossy(&body));
        }
        if i > 0 {
            histogram.record(u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX).max(1))?;
        }
        bytes = body.len();
    }
    let ms = |us: u64| us as f64 / 1000.0;
    Ok(Latency {
        path: path.to_owned(),
        via: if bearer { "api" } else { "page" },
        requests,
        p50_ms: ms(histogram.value_at_quantile(0.50)),
        p95_ms: ms(histogram.value_at_quantile(0.95)),
        p99_ms: ms(histogram.value_at_quantile(0.99)),
        max_ms: ms(histogram.max()),
        bytes,
    })
}

#[derive(Debug, serde::Serialize)]
struct Weight {
    path: String,
    html_bytes: usize,
    /// Every stylesheet and script the page links, with its size.
    assets: Vec<(String, usize)>,
    total_bytes: usize,
}

async fn weight(server: SocketAddr, session: &str, path: &str) -> anyhow::Result<Weight> {
    let mut sender = connect(server).await?;
    let response = sender.send_request(get(path, session, false)?).await?;
    let html = String::from_utf8(response.into_body().collect().await?.to_bytes().to_vec())?;
    let mut assets = Vec::new();
    for attribute in ["href=\"", "src=\""] {
        for piece in html.split(attribute).skip(1) {
            let link = &piece[..piece.find('"').unwrap_or(0)];
            if link.starts_with("/ui/assets/") && !assets.iter().any(|(l, _): &(String, usize)| l == link) {
                let response = sender.send_request(get(link, session, false)?).await?;
                let size = response.into_body().collect().await?.to_bytes().len();
                assets.push((link.to_owned(), size));
            }
        }
    }
    let total_bytes = html.len() + assets.iter().map(|(_, s)| s).sum::<usize>();
    Ok(Weight { path: path.to_owned(), html_bytes: html.len(), assets, total_bytes })
}
