//! `fleetyard-cloudgen`: the cloud benchmark's driver (`deploy/bench/cloud-burst.sh`). It talks
//! only to loopback addresses.
//!
//! - `setup` registers a full lab: `--lab` ready, healthy x86_64 machines, each holding a
//!   granted lease, and a CI service token;
//! - `burst` sends `--requests` x86_64 lease requests at once (`placement: any`, no tolerance
//!   for the lab), waits until every one is granted, and reports from the database: cloud
//!   calls by operation, throttling errors, the time from each request to its launch call and
//!   to a usable lease (p50, p99);
//! - `baseline-burst` makes the same number of instances the way a provisioner without
//!   batching does: one RunInstances call per request, all at once, straight to EC2 (moto);
//! - `reconcile` times a reconcile round over `--instances` instances in moto tagged with the
//!   platform, first all known to the database, then all orphans; `baseline-reconcile` checks
//!   the same known instances one DescribeInstances call each.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};
use clap::{Parser, Subcommand};
use diesel::sql_types::{Double, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use fleetyard::config::{Config, Secret};
use fleetyard::db::{self, Json};
use fleetyard::domain::{Arch, LifecycleState, MachineId};
use fleetyard_tests::clouds::{Emulator, Kind};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A full lab of x86_64 machines and a CI token (written to `out`).
    Setup {
        #[arg(long)]
        database_url: String,
        #[arg(long)]
        jwt_secret: String,
        #[arg(long, default_value_t = 20)]
        lab: usize,
        #[arg(long)]
        out: PathBuf,
    },
    /// `requests` lease requests at once; waits for every grant; one JSON line.
    Burst {
        #[arg(long)]
        server: String,
        #[arg(long)]
        token: PathBuf,
        #[arg(long)]
        database_url: String,
        #[arg(long, default_value_t = 100)]
        requests: usize,
        #[arg(long, default_value_t = 300)]
        timeout_secs: u64,
    },
    /// One RunInstances call per request, all at once, on moto; one JSON line.
    BaselineBurst {
        #[arg(long)]
        moto: String,
        #[arg(long, default_value_t = 100)]
        requests: usize,
    },
    /// A reconcile round over `instances` tagged instances, known then orphaned; one JSON line.
    Reconcile {
        /// The server's configuration file (its clouds); the round runs in this process.
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        database_url: String,
        #[arg(long)]
        jwt_secret: String,
        #[arg(long)]
        moto: String,
        #[arg(long, default_value_t = 1000)]
        instances: usize,
    },
}

fn loopback(url: &str) -> anyhow::Result<()> {
    let host = reqwest::Url::parse(url)?.host_str().unwrap_or_default().to_owned();
    if host != "127.0.0.1" && host != "localhost" {
        bail!("the benchmark only talks to loopback addresses, not {host}");
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Setup { database_url, jwt_secret, lab, out } => setup(&database_url, &jwt_secret, lab, &out).await,
        Command::Burst { server, token, database_url, requests, timeout_secs } => {
            loopback(&server)?;
            let token = std::fs::read_to_string(token)?.trim().to_owned();
            let report = burst(&server, &token, &database_url, requests, Duration::from_secs(timeout_secs)).await?;
            println!("{report}");
            Ok(())
        }
        Command::BaselineBurst { moto, requests } => {
            loopback(&moto)?;
            println!("{}", baseline_burst(&moto, requests).await?);
            Ok(())
        }
        Command::Reconcile { config, database_url, jwt_secret, moto, instances } => {
            loopback(&moto)?;
            println!("{}", reconcile(&config, &database_url, &jwt_secret, &moto, instances).await?);
            Ok(())
        }
    }
}

async fn setup(database_url: &str, secret: &str, lab: usize, out: &std::path::Path) -> anyhow::Result<()> {
    let mut conn = AsyncPgConnection::establish(database_url).await.context("connecting")?;
    let (donation_id, donor_id, site_id) = fleetyard_tests::bench::lab_donation(&mut conn, "Cloud bench").await?;
    let labels = Default::default();
    let machines: Vec<_> = (0..lab)
        .map(|_| db::machines::NewMachine {
            id: MachineId::generate(),
            donation_id: Some(donation_id),
            donor_id: Some(donor_id),
            site_id,
            hostname: None,
            asset_tag: None,
            arch: Arch::X86_64,
            cpu_model: "cloudgen",
            cpu_cores: 8,
            memory_mib: 16 * 1024,
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
    // Every lab machine healthy and busy for the next day: the labs cannot take a lease.
    diesel::sql_query(format!("UPDATE machines SET health = 'healthy' WHERE donation_id = '{donation_id}'"))
        .execute(&mut conn)
        .await?;
    diesel::sql_query(format!(
        "INSERT INTO leases (id, state, holder_kind, holder_id, holder_name, request_hash, tenant, purpose, priority,
             arch, min_cores, min_memory_mib, min_disk_gib, labels, trusted_only, duration_secs, deadline,
             machine_id, donation_id, donor_id, granted_at, expires_at)
         SELECT gen_random_uuid(), 'granted', 'service', gen_random_uuid(), 'lab user', '\\x00', 'lab', 'ci', 50,
             'x86_64', 1, 0, 0, '{{}}', false, 86400, now(), id, donation_id, donor_id, now(), now() + interval '1 day'
         FROM machines WHERE donation_id = '{donation_id}'"
    ))
    .execute(&mut conn)
    .await?;
    fleetyard_tests::bench::service_token(&mut conn, "cloudgen", secret, out).await?;
    eprintln!("registered a full lab of {lab} x86_64 machines");
    Ok(())
}

fn quantiles(mut values: Vec<f64>) -> (f64, f64) {
    values.sort_by(f64::total_cmp);
    let at = |q: f64| values.get(((values.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(f64::NAN);
    (at(0.5), at(0.99))
}

#[derive(diesel::QueryableByName)]
struct Timing {
    #[diesel(sql_type = diesel::sql_types::Nullable<Double>)]
    to_launch_ms: Option<f64>,
    #[diesel(sql_type = diesel::sql_types::Nullable<Double>)]
    to_grant_ms: Option<f64>,
}

#[derive(diesel::QueryableByName)]
struct Calls {
    #[diesel(sql_type = Text)]
    operation: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    ok: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    failed: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    throttled: i64,
}

async fn burst(
    server: &str,
    token: &str,
    database_url: &str,
    requests: usize,
    timeout: Duration,
) -> anyhow::Result<serde_json::Value> {
    let http = reqwest::Client::new();
    let body = serde_json::json!({
        "requirements": { "arch": "x86_64", "min_cores": 2 }, "purpose": "ci", "duration_minutes": 60,
        "tenant": "bench", "max_lab_wait_minutes": 0
    });
    let started = Instant::now();
    let asks =
        (0..requests).map(|_| http.post(format!("{server}/api/v1/leases")).bearer_auth(token).json(&body).send());
    let answers = futures_util::future::join_all(asks).await;
    let answered = started.elapsed();
    let mut ids = Vec::new();
    for answer in answers {
        let answer = answer?;
        let status = answer.status();
        let value: serde_json::Value = answer.json().await?;
        if status.as_u16() != 202 && status.as_u16() != 201 {
            bail!("a request was answered {status}: {value}");
        }
        ids.push(value["id"].as_str().context("a lease id")?.to_owned());
    }
    let mut conn = AsyncPgConnection::establish(database_url).await.context("connecting")?;
    let list = ids.iter().map(|id| format!("'{id}'")).collect::<Vec<_>>().join(",");
    loop {
        #[derive(diesel::QueryableByName)]
        struct Count {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let granted: Count =
            diesel::sql_query(format!("SELECT count(*) AS n FROM leases WHERE id IN ({list}) AND state = 'granted'"))
                .get_result(&mut conn)
                .await?;
        if granted.n as usize == ids.len() {
            break;
        }
        if started.elapsed() > timeout {
            bail!("only {} of {} leases were granted within {timeout:?}", granted.n, ids.len());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all_granted = started.elapsed();
    // From each request to the launch call made for it, and to its grant (a usable lease).
    let timings: Vec<Timing> = diesel::sql_query(format!(
        "SELECT (extract(epoch FROM (c.created_at - l.queued_at)) * 1000)::float8 AS to_launch_ms,
                (extract(epoch FROM (l.granted_at - l.queued_at)) * 1000)::float8 AS to_grant_ms
         FROM leases l JOIN cloud_instances i ON i.id = l.cloud_instance_id
         LEFT JOIN cloud_launches c ON c.id = i.launch_id WHERE l.id IN ({list})"
    ))
    .load(&mut conn)
    .await?;
    let calls: Vec<Calls> = diesel::sql_query(
        "SELECT operation, sum(ok)::bigint AS ok, sum(failed)::bigint AS failed, sum(throttled)::bigint AS throttled
         FROM cloud_calls GROUP BY operation ORDER BY operation",
    )
    .load(&mut conn)
    .await?;
    #[derive(diesel::QueryableByName)]
    struct Launches {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let launches: Launches =
        diesel::sql_query("SELECT count(*) AS n FROM cloud_launches").get_result(&mut conn).await?;
    let (launch_p50, launch_p99) = quantiles(timings.iter().filter_map(|t| t.to_launch_ms).collect());
    let (grant_p50, grant_p99) = quantiles(timings.iter().filter_map(|t| t.to_grant_ms).collect());
    Ok(serde_json::json!({
        "requests": requests,
        "answered_secs": answered.as_secs_f64(),
        "all_usable_secs": all_granted.as_secs_f64(),
        "launch_calls": launches.n,
        "calls": calls.iter().map(|c| serde_json::json!({
            "operation": c.operation, "ok": c.ok, "failed": c.failed, "throttled": c.throttled
        })).collect::<Vec<_>>(),
        "request_to_launch_call_ms": { "p50": launch_p50, "p99": launch_p99 },
        "request_to_usable_lease_ms": { "p50": grant_p50, "p99": grant_p99 },
    }))
}

/// EC2's published RunInstances request bucket: a burst of 5 calls, then 2 a second.
fn ec2_would_throttle(calls: usize) -> (usize, f64) {
    let throttled = calls.saturating_sub(5);
    (throttled, throttled as f64 / 2.0)
}

async fn baseline_burst(moto: &str, requests: usize) -> anyhow::Result<serde_json::Value> {
    let ec2 = Emulator::at(Kind::Moto, moto).ec2("us-east-1");
    let started = Instant::now();
    let calls = (0..requests).map(|i| {
        let ec2 = ec2.clone();
        async move {
            let sent = Instant::now();
            ec2.run_instances()
                .image_id("img-baseline")
                .instance_type(aws_sdk_ec2::types::InstanceType::from("c6i.xlarge"))
                .min_count(1)
                .max_count(1)
                .client_token(format!("baseline-{i}-{}", uuid::Uuid::new_v4().simple()))
                .send()
                .await
                .map(|_| sent.elapsed())
        }
    });
    let results = futures_util::future::join_all(calls).await;
    let elapsed = started.elapsed();
    let mut done = Vec::new();
    for result in results {
        done.push(result.context("RunInstances on moto")?.as_secs_f64() * 1000.0);
    }
    let (p50, p99) = quantiles(done);
    let (throttled, secs) = ec2_would_throttle(requests);
    Ok(serde_json::json!({
        "requests": requests,
        "launch_calls": requests,
        "all_launched_secs": elapsed.as_secs_f64(),
        "launch_call_ms": { "p50": p50, "p99": p99 },
        "ec2_bucket_would_throttle": throttled,
        "ec2_bucket_seconds_needed": secs,
    }))
}

async fn launch_tagged(ec2: &aws_sdk_ec2::Client, count: usize, tags: &[(&str, &str)]) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::new();
    let mut left = count;
    while left > 0 {
        let n = left.min(500);
        let spec = TagSpecification::builder()
            .resource_type(ResourceType::Instance)
            .set_tags(Some(tags.iter().map(|(k, v)| Tag::builder().key(*k).value(*v).build()).collect()))
            .build();
        let out = ec2
            .run_instances()
            .image_id("img-reconcile")
            .instance_type(aws_sdk_ec2::types::InstanceType::from("c6i.xlarge"))
            .min_count(n as i32)
            .max_count(n as i32)
            .tag_specifications(spec)
            .send()
            .await
            .context("RunInstances on moto")?;
        ids.extend(out.instances().iter().filter_map(|i| i.instance_id().map(str::to_owned)));
        left -= n;
    }
    Ok(ids)
}

async fn reconcile(
    config: &std::path::Path,
    database_url: &str,
    secret: &str,
    moto: &str,
    instances: usize,
) -> anyhow::Result<serde_json::Value> {
    // This process runs the round itself, with the server's clouds, its cloud worker off.
    let mut config = Config::load(Some(config))?;
    config.database_url = database_url.to_owned();
    config.jwt_secret = Secret(secret.to_owned());
    config.clouds.worker = false;
    config.clouds.reconcile_grace_secs = 0;
    let platform = config.clouds.platform.clone();
    let [first, ..] = config.clouds.accounts.as_slice() else { bail!("the configuration has no cloud account") };
    let account = first.name.clone();
    let pool = db::pool(&config.database_url, 4)?;
    let clouds = fleetyard::cloud::Clouds::from_config(&config.clouds)?;
    let state = fleetyard::AppState::new(pool.clone(), config, clouds);
    let ec2 = Emulator::at(Kind::Moto, moto).ec2("us-east-1");

    // Known: instances with rows, as if launched by Fleetyard and serving leases.
    let ids = launch_tagged(&ec2, instances, &[("fleetyard-platform", &platform)]).await?;
    let mut conn = pool.get().await?;
    for chunk in ids.chunks(500) {
        let rows: Vec<_> = chunk
            .iter()
            .map(|id| {
                let mut row = db::clouds::NewCloudInstance::requested(
                    &fleetyard::domain::cloud::Offer {
                        account: account.clone(),
                        provider: fleetyard::domain::CloudProvider::Aws,
                        region: "us-east-1".into(),
                        flavour: "c6i.xlarge".into(),
                        market: fleetyard::domain::cloud::Market::OnDemand,
                        arch: Arch::X86_64,
                        cores: 4,
                        memory_mib: 8192,
                        disk_gib: 40,
                        labels: Default::default(),
                        hourly_micros: 170_000,
                    },
                    None,
                    None,
                );
                row.state = fleetyard::domain::cloud::InstanceState::Ready;
                row.provider_id = Some(id.clone());
                row.launched_at = Some(chrono::Utc::now() - chrono::Duration::minutes(5));
                row
            })
            .collect();
        db::clouds::insert_instances(&mut conn, &rows).await?;
    }
    drop(conn);
    let calls_before = list_calls(&pool).await?;
    let started = Instant::now();
    let known = fleetyard::schedules::cloud_reconcile::reconcile(&state).await?;
    let known_secs = started.elapsed().as_secs_f64();
    let known_calls = list_calls(&pool).await? - calls_before;

    // Orphans: as many tagged instances nobody knows (a deployment that lost its database).
    launch_tagged(&ec2, instances, &[("fleetyard-platform", &platform), ("fleetyard-launch", "lost")]).await?;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let calls_before = list_calls(&pool).await?;
    let started = Instant::now();
    let orphans = fleetyard::schedules::cloud_reconcile::reconcile(&state).await?;
    let orphan_secs = started.elapsed().as_secs_f64();
    let orphan_calls = list_calls(&pool).await? - calls_before;
    if !orphans.errors.is_empty() || !known.errors.is_empty() {
        bail!("reconcile errors: {:?} {:?}", known.errors, orphans.errors);
    }
    Ok(serde_json::json!({
        "instances": instances,
        "known": { "seconds": known_secs, "calls": known_calls, "listed": known.listed, "lost": known.lost,
                   "orphans_terminated": known.orphans_terminated },
        "orphans": { "seconds": orphan_secs, "calls": orphan_calls, "listed": orphans.listed,
                     "orphans_terminated": orphans.orphans_terminated },
        "baseline_describe_one_by_one": baseline_reconcile(&ec2, &ids).await?,
    }))
}

/// Calls the reconcile made (every operation, every region).
async fn list_calls(pool: &db::Pool) -> anyhow::Result<i64> {
    let mut conn = pool.get().await?;
    Ok(db::clouds::call_counts(&mut conn).await?.iter().map(|c| c.ok + c.failed).sum())
}

/// A checker without tags: one DescribeInstances call per known instance.
async fn baseline_reconcile(ec2: &aws_sdk_ec2::Client, ids: &[String]) -> anyhow::Result<serde_json::Value> {
    let started = Instant::now();
    for id in ids {
        ec2.describe_instances().instance_ids(id).send().await.context("DescribeInstances")?;
    }
    Ok(serde_json::json!({ "calls": ids.len(), "seconds": started.elapsed().as_secs_f64() }))
}
