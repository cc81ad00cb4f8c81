//! `fleetyard-agent`: enrolls a machine with Fleetyard once, then reports its health by
//! heartbeat and takes its work (leases' SSH keys) until stopped. Small and frugal: two
//! threads, blocking I/O, no async runtime; pure Rust throughout so it builds for riscv64 and
//! loongarch64.

mod accounts;
mod cgroup;
mod client;
mod config;
mod confine;
mod credential;
mod facts;
mod jobs;
mod leases;
mod run;
mod work;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Prints one line to stderr (systemd's journal adds the time).
macro_rules! say {
    ($level:literal, $($arg:tt)*) => {
        eprintln!(concat!("fleetyard-agent: ", $level, ": {}"), format_args!($($arg)*))
    };
}
pub(crate) use say;

#[derive(Parser)]
#[command(name = "fleetyard-agent", version, about = "Fleetyard's machine agent")]
struct Cli {
    /// Configuration file (TOML); flags override it.
    #[arg(long, global = true, default_value = config::DEFAULT_PATH)]
    config: PathBuf,
    /// Fleetyard's URL, e.g. https://fleetyard.example.org.
    #[arg(long, global = true)]
    server: Option<String>,
    /// Where the machine credential is kept (mode 0600).
    #[arg(long, global = true)]
    state_dir: Option<PathBuf>,
    /// PEM file of CA certificates to trust instead of the built-in Mozilla roots.
    #[arg(long, global = true)]
    ca_file: Option<PathBuf>,
    /// The account lease holders log in as (the machine's SSH user in Fleetyard).
    #[arg(long, global = true)]
    lease_user: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Exchange a one-time enrollment token for this machine's credential; or, on a cloud
    /// instance Fleetyard launched, its launch's secret (`--bootstrap`) and its instance id.
    Enroll {
        #[arg(long, env = "FLEETYARD_ENROLLMENT_TOKEN", required_unless_present = "bootstrap")]
        token: Option<String>,
        /// The bootstrap file the instance's cloud-init wrote (server and launch secret).
        #[arg(long, requires = "instance_id", conflicts_with = "token")]
        bootstrap: Option<PathBuf>,
        /// This cloud instance's id (`cloud-init query v1.instance_id`).
        #[arg(long)]
        instance_id: Option<String>,
    },
    /// Send heartbeats and take work (leases' SSH keys) until SIGTERM or SIGINT.
    Run,
    /// For sshd's `AuthorizedKeysCommand ... authorized-keys %u`: print the SSH keys of this
    /// machine's current leases if USER is the lease account.
    AuthorizedKeys { user: String },
    /// Print the facts and metrics a heartbeat would carry, as JSON.
    Facts,
    /// Internal: run by the agent to start a job (read on standard input) in its cgroup, as
    /// its user.
    #[command(hide = true)]
    StartJob,
    /// Internal: run by the agent to become an account and kill its processes, empty a
    /// directory of its, and fill that again from a skeleton.
    #[command(hide = true)]
    ResetAccount {
        #[arg(long)]
        uid: u32,
        #[arg(long)]
        gid: u32,
        #[arg(long)]
        kill_all: bool,
        #[arg(long)]
        empty: Option<PathBuf>,
        #[arg(long, requires = "empty")]
        skeleton: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The helpers act for the agent, which has already read its configuration.
    match cli.command {
        Command::StartJob => {
            say!("error", "{}", confine::start_job());
            return ExitCode::from(127);
        }
        Command::ResetAccount { uid, gid, kill_all, empty, skeleton } => {
            let reset = confine::Reset { kill_all, empty, skeleton };
            return match confine::reset_account(confine::Ids { uid, gid }, &reset) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    say!("error", "{e}");
                    ExitCode::FAILURE
                }
            };
        }
        _ => {}
    }
    let settings = match config::Settings::load(&cli.config, cli.server, cli.state_dir, cli.ca_file, cli.lease_user) {
        Ok(settings) => settings,
        Err(e) => {
            say!("error", "{e}");
            return ExitCode::from(2);
        }
    };
    let outcome = match cli.command {
        Command::Enroll { token: Some(token), .. } => run::enroll(&settings, &token),
        Command::Enroll { bootstrap: Some(file), instance_id: Some(id), .. } => {
            run::enroll_instance(&settings, &file, &id)
        }
        Command::Enroll { .. } => Err("give --token, or --bootstrap with --instance-id".into()),
        Command::Run => run::heartbeats(&settings),
        Command::AuthorizedKeys { user } => {
            work::print_authorized_keys(&settings.state_dir, settings.lease_user.as_deref(), &user)
        }
        Command::Facts => facts::collect(&settings.disk_path).and_then(|(facts, metrics)| {
            let json = serde_json::json!({ "facts": facts, "metrics": metrics });
            println!("{}", serde_json::to_string_pretty(&json).map_err(|e| e.to_string())?);
            Ok(())
        }),
        Command::StartJob | Command::ResetAccount { .. } => unreachable!("helpers return above"),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            say!("error", "{e}");
            ExitCode::FAILURE
        }
    }
}
