//! `fleetyard-cloud-booter`: plays the boot of the instances that local cloud emulators start
//! (`deploy/cloud-emulators`), for `deploy/run-local --clouds` and the cloud benchmark. Each new
//! instance's user data is read as cloud-init would read it, and a real `fleetyard-agent`
//! enrolls with the launch's secret and the instance's id, then runs; a terminated instance's
//! agent is stopped. It talks only to loopback addresses.

use std::sync::Arc;

use clap::Parser;
use fleetyard_tests::clouds::{Booter, Emulator};

#[derive(Parser)]
struct Cli {
    /// moto's EC2 server, e.g. http://127.0.0.1:54340.
    #[arg(long)]
    moto: Option<String>,
    /// The AWS regions to watch on moto.
    #[arg(long, default_value = "us-east-1")]
    moto_regions: Vec<String>,
    /// The Huawei Cloud and CTyun fakes, e.g. http://127.0.0.1:54341.
    #[arg(long)]
    fake: Vec<String>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let cli = Cli::parse();
    let mut watched = Vec::new();
    if let Some(url) = cli.moto {
        watched.push((Arc::new(Emulator::at(fleetyard_tests::clouds::Kind::Moto, &url)), cli.moto_regions.clone()));
    }
    for url in cli.fake {
        watched.push((Arc::new(Emulator::at(fleetyard_tests::clouds::Kind::Huawei, &url)), Vec::new()));
    }
    let booter = Booter::start(watched);
    eprintln!("fleetyard-cloud-booter: booting the emulators' new instances; SIGINT or SIGTERM stops");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    // Its agents go with it.
    booter.stop().await;
}
