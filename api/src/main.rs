//! The `fleetyard` command: serve the API, migrate, print the OpenAPI document, administer.

use std::io::BufRead;
use std::net::TcpListener;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use fleetyard::{AppState, Config, admin, db, routes, schedules, startup, telemetry};

// mimalloc rather than glibc's malloc: the request path allocates many small, short-lived
// buffers, and the switch took about 0.4 µs of user CPU off each heartbeat (README,
// "Heartbeat ingest").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "fleetyard", version, about = "Fleetyard: one pool of donated and rented hardware")]
struct Cli {
    /// A TOML configuration file; `FLEETYARD_*` environment variables override it.
    #[arg(long, global = true, env = "FLEETYARD_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP API (applies pending migrations first unless switched off).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Print the OpenAPI document (what `openapi/openapi.json` holds).
    Openapi,
    /// Administration.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create an ops (admin) account.
    CreateAdmin {
        #[arg(long)]
        email: String,
        #[arg(long, default_value = "Administrator")]
        name: String,
        /// Read the password from the first line of standard input instead of
        /// `FLEETYARD_ADMIN_PASSWORD`. Without either, a password is generated and printed.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Load demo data (idempotent) and print the demo logins.
    SeedDemo,
    /// Register this computer as a ready lab machine (once) and print a fresh enrollment token
    /// for its agent (what `deploy/run-local` does, so leases and jobs can run here).
    LocalMachine,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::Openapi = cli.command {
        print!("{}", routes::openapi_json());
        return Ok(());
    }
    let config = Config::load(cli.config.as_deref())?;
    telemetry::init(config.log_format, &config.log_filter);
    match cli.command {
        Command::Openapi => unreachable!("handled above"),
        Command::Serve => serve(config).await,
        Command::Migrate => {
            let applied = db::run_migrations(&config.database_url).await?;
            tracing::info!(count = applied.len(), ?applied, "migrations applied");
            Ok(())
        }
        Command::Admin { command } => {
            db::run_migrations(&config.database_url).await?;
            let mut conn =
                AsyncPgConnection::establish(&config.database_url).await.context("connecting to PostgreSQL")?;
            match command {
                AdminCommand::CreateAdmin { email, name, password_stdin } => {
                    let (password, generated) = admin_password(password_stdin)?;
                    let id = admin::create_admin(&mut conn, &email, &name, &password).await?;
                    println!("created admin {email} ({id})");
                    if generated {
                        println!("generated password (shown once): {password}");
                    }
                    Ok(())
                }
                AdminCommand::LocalMachine => {
                    let (machine, token) = admin::local_machine(&mut conn, config.enrollment_token_hours).await?;
                    eprintln!("this computer is machine {machine}; enroll its agent with the token below");
                    println!("{token}");
                    Ok(())
                }
                AdminCommand::SeedDemo => {
                    if admin::seed_demo(&mut conn).await? {
                        println!("demo data loaded");
                    } else {
                        println!("demo data already present");
                    }
                    for login in admin::DEMO_LOGINS {
                        println!("  {:<34} {:<26} {}", login.who, login.email, login.password);
                    }
                    Ok(())
                }
            }
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    if config.migrate_on_start {
        let applied = db::run_migrations(&config.database_url).await?;
        if !applied.is_empty() {
            tracing::info!(?applied, "migrations applied");
        }
    }
    let pool = db::pool(&config.database_url, config.db_pool_size)?;
    let listener = TcpListener::bind(&config.listen).with_context(|| format!("binding {}", config.listen))?;
    let clouds = fleetyard::cloud::Clouds::from_config(&config.clouds).context("connecting to the clouds")?;
    let state = AppState::new(pool, config, clouds);
    let key = state.ssh_key().await.context("loading Fleetyard's SSH key")?;
    tracing::info!(fingerprint = %key.fingerprint, "SSH key ready");
    let mut scheduler = schedules::start(state.clone()).await.context("starting the background schedules")?;
    let server = startup::build_server(state.clone(), listener, true)?;
    tracing::info!("Fleetyard listening on http://{}", server.address);
    let served = server.server.await.context("HTTP server");
    // Stopped (SIGTERM/SIGINT, or failed): no new job runs, and the last heartbeats are stored.
    if let Some(scheduler) = scheduler.as_mut() {
        let _ = scheduler.shutdown().await;
    }
    state.heartbeats.shutdown().await;
    tracing::info!("stopped");
    served
}

fn admin_password(from_stdin: bool) -> anyhow::Result<(String, bool)> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).context("reading the password from standard input")?;
        let password = line.trim_end_matches(['\r', '\n']).to_owned();
        if password.is_empty() {
            bail!("no password on standard input");
        }
        return Ok((password, false));
    }
    if let Ok(password) = std::env::var("FLEETYARD_ADMIN_PASSWORD") {
        return Ok((password, false));
    }
    use rand::distr::{Alphanumeric, SampleString};
    Ok((Alphanumeric.sample_string(&mut rand::rng(), 24), true))
}
