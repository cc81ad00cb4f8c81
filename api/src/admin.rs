//! `fleetyard admin ...`: the first admin account, and demo data for a local run.

use anyhow::{Context, bail};
use chrono::{Duration, NaiveDate, Utc};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use serde_json::json;

use crate::auth::{MIN_PASSWORD_CHARS, hash_password};
use crate::db::audit::{self, Actor, Change};
use crate::db::{self, Json};
use crate::domain::lifecycle;
use crate::domain::usage_policy::{ClockTime, Purpose, TimeWindow, Weekday};
use crate::domain::validation::check_email;
use crate::domain::{
    Accelerator, Arch, Contact, DonationId, DonationModel, DonationStatus, DonorId, DonorKind, Labels, LifecycleState,
    MachineId, Role, SiteId, SiteKind, UsagePolicy, UserId,
};

/// Creates an admin account. Fails if the email is taken.
pub async fn create_admin(
    conn: &mut AsyncPgConnection,
    email: &str,
    name: &str,
    password: &str,
) -> anyhow::Result<UserId> {
    if let Err(problem) = check_email(email) {
        bail!("email {problem}");
    }
    if password.chars().count() < MIN_PASSWORD_CHARS {
        bail!("the password must be at least {MIN_PASSWORD_CHARS} characters");
    }
    let hash = hash_password(password.to_owned()).await?;
    let actor = Actor::system("fleetyard admin create-admin");
    let email = email.to_owned();
    let name = name.to_owned();
    conn.transaction::<_, anyhow::Error, _>(async move |conn| {
        if db::users::find_by_email(conn, &email).await?.is_some() {
            bail!("an account with email {email} already exists");
        }
        let user = db::users::insert(
            conn,
            &db::users::NewUser {
                id: UserId::generate(),
                email: &email,
                display_name: &name,
                password_hash: &hash,
                role: Role::Admin,
                donor_id: None,
            },
        )
        .await?;
        audit::record(
            conn,
            &actor,
            &[Change::new("user.created", "user", user.id).after(&json!({ "email": user.email, "role": user.role }))],
        )
        .await?;
        Ok(user.id)
    })
    .await
}

/// Who can log in to the demo, printed by `fleetyard admin seed-demo`.
#[derive(Debug)]
pub struct DemoLogin {
    pub who: &'static str,
    pub email: &'static str,
    pub password: &'static str,
}

pub const DEMO_LOGINS: &[DemoLogin] = &[
    DemoLogin { who: "ops (admin)", email: "admin@fleetyard.local", password: "fleetyard-admin-demo" },
    DemoLogin { who: "donor Plumtree Semiconductor", email: "ops@plumtree.example", password: "plumtree-demo-pass" },
    DemoLogin {
        who: "donor Westlake Open Hardware Lab",
        email: "lab@westlake.example",
        password: "westlake-demo-pass",
    },
    DemoLogin { who: "donor Dragonfly Computing", email: "loans@dragonfly.example", password: "dragonfly-demo-pass" },
    DemoLogin {
        who: "donor Northbridge University",
        email: "it@northbridge.example",
        password: "northbridge-demo-pass",
    },
];

/// Loads demo data: an admin, the foundation lab and two donor sites, donors of all three
/// models and about twenty machines over the four architectures in various lifecycle states.
/// Does nothing when the demo admin already exists. Returns whether it loaded anything.
pub async fn seed_demo(conn: &mut AsyncPgConnection) -> anyhow::Result<bool> {
    if db::users::find_by_email(conn, DEMO_LOGINS[0].email).await?.is_some() {
        return Ok(false);
    }
    let mut hashes = Vec::new();
    for login in DEMO_LOGINS {
        hashes.push(hash_password(login.password.to_owned()).await?);
    }
    conn.transaction::<_, anyhow::Error, _>(async move |conn| seed(conn, &hashes).await)
        .await
        .context("loading demo data")?;
    Ok(true)
}

struct DemoMachine {
    arch: Arch,
    cpu: &'static str,
    cores: i32,
    memory_gib: i64,
    disk_gib: i64,
    state: LifecycleState,
    labels: &'static [(&'static str, &'static str)],
}

const fn m(
    arch: Arch,
    cpu: &'static str,
    cores: i32,
    memory_gib: i64,
    disk_gib: i64,
    state: LifecycleState,
    labels: &'static [(&'static str, &'static str)],
) -> DemoMachine {
    DemoMachine { arch, cpu, cores, memory_gib, disk_gib, state, labels }
}

async fn seed(conn: &mut AsyncPgConnection, hashes: &[String]) -> anyhow::Result<()> {
    use Arch::*;
    use LifecycleState::*;
    let actor = Actor::system("fleetyard admin seed-demo");
    let mut changes = Vec::new();

    let admin = db::users::insert(
        conn,
        &db::users::NewUser {
            id: UserId::generate(),
            email: DEMO_LOGINS[0].email,
            display_name: "Demo Ops",
            password_hash: &hashes[0],
            role: Role::Admin,
            donor_id: None,
        },
    )
    .await?;
    changes.push(Change::new("user.created", "user", admin.id));

    let lab = site(conn, "Foundation Lab Beijing", SiteKind::FoundationLab, None, "CN", "Asia/Shanghai").await?;
    changes.push(Change::new("site.created", "site", lab));

    let donors = [
        ("Plumtree Semiconductor", DonorKind::Company, "Asia/Shanghai", "Plumtree Hangzhou Board Farm", "CN"),
        ("Westlake Open Hardware Lab", DonorKind::University, "Europe/Berlin", "Westlake Lab Munich", "DE"),
        ("Dragonfly Computing", DonorKind::Company, "Asia/Shanghai", "", "CN"),
        ("Northbridge University", DonorKind::University, "Asia/Shanghai", "", "CN"),
    ];
    let mut donor_ids = Vec::new();
    let mut site_ids = Vec::new();
    for (i, (name, kind, zone, site_name, country)) in donors.iter().enumerate() {
        let login = &DEMO_LOGINS[i + 1];
        let contacts = [Contact {
            name: format!("{name} contact"),
            email: login.email.into(),
            phone: None,
            role: Some("technical".into()),
        }];
        let donor = db::donors::insert(
            conn,
            &db::donors::NewDonor {
                id: DonorId::generate(),
                name,
                kind: *kind,
                website: None,
                time_zone: zone,
                contacts: Json(&contacts),
                notes: None,
            },
        )
        .await?;
        changes.push(Change::new("donor.created", "donor", donor.id).donor(Some(donor.id)));
        let user = db::users::insert(
            conn,
            &db::users::NewUser {
                id: UserId::generate(),
                email: login.email,
                display_name: login.who,
                password_hash: &hashes[i + 1],
                role: Role::Donor,
                donor_id: Some(donor.id),
            },
        )
        .await?;
        changes.push(Change::new("user.created", "user", user.id).donor(Some(donor.id)));
        let donor_site = if site_name.is_empty() {
            lab
        } else {
            let id = site(conn, site_name, SiteKind::DonorSite, Some(donor.id), country, zone).await?;
            changes.push(Change::new("site.created", "site", id).donor(Some(donor.id)));
            id
        };
        donor_ids.push(donor.id);
        site_ids.push(donor_site);
    }

    let weeknights = UsagePolicy {
        purposes: vec![Purpose::Ci, Purpose::Test],
        time_zone: Some("Asia/Shanghai".into()),
        windows: vec![
            TimeWindow {
                days: vec![Weekday::Mon, Weekday::Tue, Weekday::Wed, Weekday::Thu, Weekday::Fri],
                start: ClockTime::parse("20:00").expect("constant"),
                end: ClockTime::parse("08:00").expect("constant"),
            },
            TimeWindow {
                days: vec![Weekday::Sat, Weekday::Sun],
                start: ClockTime::parse("00:00").expect("constant"),
                end: ClockTime::END_OF_DAY,
            },
        ],
        max_concurrent_leases: 4,
        max_lease_minutes: 240,
    };
    let any_time = UsagePolicy {
        purposes: vec![Purpose::Build, Purpose::Ci, Purpose::Test],
        time_zone: Some("Europe/Berlin".into()),
        windows: vec![],
        max_concurrent_leases: 2,
        max_lease_minutes: 480,
    };
    let today = Utc::now().date_naive();
    let date = |y, m, d| NaiveDate::from_ymd_opt(y, m, d).expect("constant date");

    let plans = [
        (
            0,
            DonationModel::UsageRight,
            DonationStatus::Approved,
            "PLUM-2026-007",
            Some(weeknights),
            None,
            "PLUM-RV",
            vec![
                m(Riscv64, "Sophgo SG2042", 64, 128, 1000, Ready, &[("board", "milkv-pioneer")]),
                m(Riscv64, "Sophgo SG2042", 64, 128, 1000, Ready, &[("board", "milkv-pioneer")]),
                m(Riscv64, "StarFive JH7110", 4, 8, 64, Ready, &[("board", "visionfive2")]),
                m(Riscv64, "StarFive JH7110", 4, 8, 64, Ready, &[("board", "visionfive2")]),
                m(Riscv64, "StarFive JH7110", 4, 8, 64, Maintenance, &[("board", "visionfive2")]),
                m(Riscv64, "SpacemiT K1", 8, 16, 128, Onboarding, &[("board", "bananapi-f3")]),
            ],
        ),
        (
            1,
            DonationModel::UsageRight,
            DonationStatus::Submitted,
            "WOHL-2026-03",
            Some(any_time),
            None,
            "WOHL",
            vec![
                m(Riscv64, "SpacemiT K1", 8, 16, 128, PendingReview, &[("board", "bananapi-f3")]),
                m(Riscv64, "SpacemiT K1", 8, 16, 128, PendingReview, &[("board", "bananapi-f3")]),
                m(Aarch64, "Rockchip RK3588", 8, 32, 256, PendingReview, &[("board", "rock5b")]),
            ],
        ),
        (
            2,
            DonationModel::Loan,
            DonationStatus::Approved,
            "DFC-LOAN-0042",
            None,
            Some(date(2027, 6, 30)),
            "DFC-LA",
            vec![
                m(Loongarch64, "Loongson 3C5000", 16, 64, 960, Ready, &[("generation", "3c5000")]),
                m(Loongarch64, "Loongson 3C5000", 16, 64, 960, Ready, &[("generation", "3c5000")]),
                m(Loongarch64, "Loongson 3A6000", 4, 32, 512, Received, &[("generation", "3a6000")]),
                m(Loongarch64, "Loongson 3A6000", 4, 32, 512, InTransit, &[("generation", "3a6000")]),
            ],
        ),
        (
            3,
            DonationModel::Ownership,
            DonationStatus::Approved,
            "NBU-GIFT-2025-11",
            None,
            None,
            "NBU",
            vec![
                m(X86_64, "Intel Xeon Gold 6338", 64, 256, 3840, Ready, &[("rack-zone", "a")]),
                m(X86_64, "Intel Xeon Gold 6338", 64, 256, 3840, Ready, &[("rack-zone", "a")]),
                m(X86_64, "AMD EPYC 7763", 128, 512, 7680, Ready, &[("rack-zone", "b")]),
                m(Aarch64, "HiSilicon Kunpeng 920", 128, 512, 3840, Ready, &[("rack-zone", "b")]),
                m(Aarch64, "HiSilicon Kunpeng 920", 128, 512, 3840, Maintenance, &[("rack-zone", "b")]),
                m(Aarch64, "Ampere Altra Q80-30", 80, 256, 1920, Retired, &[("rack-zone", "c")]),
                m(X86_64, "Intel Xeon E5-2690 v4", 28, 128, 960, Ready, &[("rack-zone", "c")]),
            ],
        ),
    ];

    for (donor, model, status, reference, policy, ends_on, tag_prefix, machines) in plans {
        let donation = db::donations::insert(
            conn,
            &db::donations::NewDonation {
                id: DonationId::generate(),
                donor_id: donor_ids[donor],
                site_id: site_ids[donor],
                model,
                status,
                agreement_ref: reference,
                description: Some("Demo data"),
                starts_on: today - Duration::days(60),
                ends_on,
                usage_policy: policy.as_ref().map(Json),
                submitted_by: None,
            },
        )
        .await?;
        changes.push(Change::new("donation.submitted", "donation", donation.id).donor(Some(donation.donor_id)));
        for (i, spec) in machines.iter().enumerate() {
            let labels: Labels = spec.labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
            let tag = format!("{tag_prefix}-{:04}", i + 1);
            let hostname = tag.to_lowercase();
            let in_lab = model != DonationModel::UsageRight;
            let accelerators: Vec<Accelerator> = Vec::new();
            let row = db::machines::NewMachine {
                id: MachineId::generate(),
                donation_id: Some(donation.id),
                donor_id: Some(donation.donor_id),
                site_id: donation.site_id,
                hostname: Some(&hostname),
                asset_tag: Some(&tag),
                arch: spec.arch,
                cpu_model: spec.cpu,
                cpu_cores: spec.cores,
                memory_mib: spec.memory_gib * 1024,
                disk_gib: spec.disk_gib,
                accelerators: Json(&accelerators),
                labels: Json(&labels),
                ssh_host: (!in_lab).then_some(hostname.as_str()),
                ssh_port: (!in_lab).then_some(22),
                ssh_user: (!in_lab).then_some("fleetyard"),
                warranty_until: in_lab.then(|| date(2028, 12, 31)),
                lifecycle: spec.state,
                lifecycle_deadline: lifecycle::deadline(spec.state).map(|d| Utc::now() + d),
            };
            let machine = db::machines::insert_many(conn, &[row]).await?.remove(0);
            if in_lab && !matches!(spec.state, InTransit | Approved) {
                let change = db::machines::LifecycleChange {
                    to: spec.state,
                    deadline: machine.lifecycle_deadline,
                    maintenance_reason: (spec.state == Maintenance).then_some("demo: fan replacement"),
                    location: Some(("B3", &format!("U{:02}", 10 + 2 * i))),
                };
                db::machines::set_lifecycle(conn, &[machine.id], &change).await?;
            }
            changes.push(Change::new("machine.registered", "machine", machine.id).donor(machine.donor_id));
        }
    }
    audit::record(conn, &actor, &changes).await?;
    Ok(())
}

async fn site(
    conn: &mut AsyncPgConnection,
    name: &str,
    kind: SiteKind,
    donor_id: Option<DonorId>,
    country: &str,
    zone: &str,
) -> anyhow::Result<SiteId> {
    let site = db::sites::insert(
        conn,
        &db::sites::NewSite {
            id: SiteId::generate(),
            name,
            kind,
            donor_id,
            cloud_provider: None,
            cloud_region: None,
            address: None,
            country: Some(country),
            time_zone: zone,
        },
    )
    .await?;
    Ok(site.id)
}

/// The asset tag of the machine `local_machine` registers.
const LOCAL_ASSET_TAG: &str = "LOCAL-HOST";

/// Registers this very computer as a ready machine in the foundation's lab (once), and issues
/// a fresh enrollment token for it, so that `deploy/run-local` can run a real agent here and
/// leases and jobs for this architecture have somewhere to go. Needs the demo data.
pub async fn local_machine(conn: &mut AsyncPgConnection, token_hours: i64) -> anyhow::Result<(MachineId, String)> {
    let arch: Arch = std::env::consts::ARCH.parse().map_err(|_| {
        anyhow::anyhow!("Fleetyard has no machines of this computer's architecture ({})", std::env::consts::ARCH)
    })?;
    let Some(lab) = db::sites::first_of_kind(conn, SiteKind::FoundationLab).await? else {
        bail!("there is no foundation lab to put this computer in; run `fleetyard admin seed-demo` first");
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let memory_mib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().find_map(|l| l.strip_prefix("MemTotal:").map(|v| v.trim().trim_end_matches(" kB").to_owned()))
        })
        .and_then(|kib| kib.parse::<i64>().ok())
        .map_or(1024, |kib| kib / 1024);
    let actor = Actor::system("fleetyard admin local-machine");
    conn.transaction::<_, anyhow::Error, _>(async move |conn| {
        let machine = match db::machines::find_by_asset_tag(conn, LOCAL_ASSET_TAG).await? {
            Some(machine) => machine.id,
            None => {
                let donor = db::donors::insert(
                    conn,
                    &db::donors::NewDonor {
                        id: DonorId::generate(),
                        name: "This workstation (local demo)",
                        kind: DonorKind::Other,
                        website: None,
                        time_zone: "UTC",
                        contacts: Json(&[]),
                        notes: Some("Registered by deploy/run-local so that leases and jobs can run here."),
                    },
                )
                .await?;
                let donation = db::donations::insert(
                    conn,
                    &db::donations::NewDonation {
                        id: DonationId::generate(),
                        donor_id: donor.id,
                        site_id: lab.id,
                        model: DonationModel::Ownership,
                        status: DonationStatus::Approved,
                        agreement_ref: LOCAL_ASSET_TAG,
                        description: Some("This computer, for trying leases and jobs locally"),
                        starts_on: Utc::now().date_naive(),
                        ends_on: None,
                        usage_policy: None,
                        submitted_by: None,
                    },
                )
                .await?;
                let labels = Labels::from([("local".to_owned(), "true".to_owned())]);
                let row = db::machines::NewMachine {
                    id: MachineId::generate(),
                    donation_id: Some(donation.id),
                    donor_id: Some(donor.id),
                    site_id: lab.id,
                    hostname: None,
                    asset_tag: Some(LOCAL_ASSET_TAG),
                    arch,
                    cpu_model: "this computer",
                    cpu_cores: i32::try_from(cores).unwrap_or(1),
                    memory_mib,
                    disk_gib: 20,
                    accelerators: Json(&[]),
                    labels: Json(&labels),
                    ssh_host: None,
                    ssh_port: None,
                    ssh_user: None,
                    warranty_until: None,
                    lifecycle: LifecycleState::Ready,
                    lifecycle_deadline: None,
                };
                let machine = db::machines::insert_many(conn, &[row]).await?.remove(0);
                audit::record(
                    conn,
                    &actor,
                    &[
                        Change::new("donor.created", "donor", donor.id).donor(Some(donor.id)),
                        Change::new("donation.created", "donation", donation.id).donor(Some(donor.id)),
                        Change::new("machine.created", "machine", machine.id)
                            .donor(Some(donor.id))
                            .after(&json!({ "arch": arch, "lifecycle": LifecycleState::Ready })),
                    ],
                )
                .await?;
                machine.id
            }
        };
        let (secret, hash) = crate::operations::inventory::new_enrollment_secret();
        db::enrollment::issue(conn, machine, &hash, None, Utc::now() + Duration::hours(token_hours)).await?;
        audit::record(conn, &actor, &[Change::new("machine.enrollment_token_issued", "machine", machine)]).await?;
        Ok((machine, secret))
    })
    .await
}
