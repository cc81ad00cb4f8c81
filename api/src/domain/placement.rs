//! Placement: which machines may take a lease (the filter), which of them fits it best (the
//! score), and whether any machine in the inventory could ever take it (the honest answer).
//! Pure: the scheduler gathers the facts and applies what this module decides.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use std::collections::HashMap;

use super::cloud::Placement;
use super::queue::{Queue, Waiting};
use super::usage_policy::{Purpose, UsagePolicy};
use super::{Arch, DonationId, DonorId, Labels, LeaseId, MachineId};

/// What a lease needs from a machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Requirements {
    pub arch: Arch,
    /// Fewest CPU cores; default 1.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 4096)]
    pub min_cores: i32,
    /// Least memory in GiB; default 0.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 65536)]
    pub min_memory_gib: i64,
    /// Least disk in GiB; default 0.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1048576)]
    pub min_disk_gib: i64,
    /// Labels the machine must carry, with these values.
    #[serde(default)]
    pub labels: Labels,
}

/// A request as placement sees it.
#[derive(Debug, Clone)]
pub struct Demand {
    pub requirements: Requirements,
    pub purpose: Purpose,
    pub duration: Duration,
    /// Foundation-lab machines only.
    pub trusted_only: bool,
    /// Lab machines, cloud instances, or either.
    pub placement: Placement,
}

/// A machine as placement sees it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub machine_id: MachineId,
    /// `None` for a machine rented from a cloud.
    pub donor_id: Option<DonorId>,
    pub donation_id: Option<DonationId>,
    /// A cloud instance (rented, or imported), not a donated machine.
    pub cloud: bool,
    pub arch: Arch,
    pub cores: i32,
    pub memory_mib: i64,
    pub disk_gib: i64,
    pub labels: Labels,
    /// Owned by or lent to the foundation, and in its lab.
    pub trusted: bool,
    /// A usage-right donor's terms; `None` for the foundation's own machines.
    pub policy: Option<std::sync::Arc<UsagePolicy>>,
    /// Leases this machine has been granted so far.
    pub leases_granted: i64,
    /// Times it went silent, leases it lost, and jobs that died there by a signal.
    pub unreachable_episodes: i32,
    pub lost_leases: i32,
    pub crashed_jobs: i32,
}

/// Why a machine cannot take a lease. The order is the order of the checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Misfit {
    Arch,
    /// A cloud instance for a request that wants the labs, or the other way round.
    Placement,
    Untrusted,
    Cores,
    Memory,
    Disk,
    Label(String),
    Purpose,
    TooLong {
        max_minutes: i64,
    },
    /// Outside the donor's time windows, now or before the lease would end.
    Window,
    /// The donation already has as many leases as its donor allows at once.
    Cap,
}

/// What a machine is and always will be: the checks that no amount of waiting changes.
pub fn lasting_misfit(machine: &Candidate, demand: &Demand) -> Option<Misfit> {
    let r = &demand.requirements;
    if machine.arch != r.arch {
        return Some(Misfit::Arch);
    }
    let wanted = match demand.placement {
        Placement::Any => true,
        Placement::Lab => !machine.cloud,
        Placement::Cloud => machine.cloud,
    };
    if !wanted {
        return Some(Misfit::Placement);
    }
    if demand.trusted_only && !machine.trusted {
        return Some(Misfit::Untrusted);
    }
    if machine.cores < r.min_cores {
        return Some(Misfit::Cores);
    }
    if machine.memory_mib < r.min_memory_gib * 1024 {
        return Some(Misfit::Memory);
    }
    if machine.disk_gib < r.min_disk_gib {
        return Some(Misfit::Disk);
    }
    if let Some((key, _)) = r.labels.iter().find(|(k, v)| machine.labels.get(*k) != Some(v)) {
        return Some(Misfit::Label(key.clone()));
    }
    if let Some(policy) = &machine.policy {
        if !policy.allows(demand.purpose) {
            return Some(Misfit::Purpose);
        }
        if demand.duration > Duration::minutes(policy.max_lease_minutes) {
            return Some(Misfit::TooLong { max_minutes: policy.max_lease_minutes });
        }
    }
    None
}

/// Whether a free machine may take the lease now. `held_on_donation` is how many leases its
/// donation holds at this moment.
pub fn misfit(machine: &Candidate, demand: &Demand, now: DateTime<Utc>, held_on_donation: i64) -> Option<Misfit> {
    if let Some(misfit) = lasting_misfit(machine, demand) {
        return Some(misfit);
    }
    if let Some(policy) = &machine.policy {
        if held_on_donation >= policy.max_concurrent_leases {
            return Some(Misfit::Cap);
        }
        if !policy.is_open_for(now, demand.duration) {
            return Some(Misfit::Window);
        }
    }
    None
}

/// Why a queued lease still waits, as people are told (the queue page, `GET /queue`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WaitReason {
    /// No machine in the pool could ever take it: it waits for a cloud instance, or for a
    /// machine that fits to join.
    NoMachineFits,
    /// Every machine that fits is leased, or not ready and healthy now.
    AllBusy,
    /// Free machines fit, but their donors' time windows are closed now or before it would end.
    WindowClosed,
    /// Free machines fit, but their donations hold as many leases as their donors allow.
    CapReached,
    /// A free machine fits now: the next placement round grants it, unless leases ahead in the
    /// queue take the machine first.
    NextRound,
}

impl std::fmt::Display for WaitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WaitReason::NoMachineFits => "no_machine_fits",
            WaitReason::AllBusy => "all_busy",
            WaitReason::WindowClosed => "window_closed",
            WaitReason::CapReached => "cap_reached",
            WaitReason::NextRound => "next_round",
        })
    }
}

/// Why `demand` still waits: against the whole pool (`inventory`), the machines free now, and
/// how many leases each donation holds (`held_on`).
pub fn why_waiting(
    demand: &Demand,
    inventory: &[Candidate],
    free: &[Candidate],
    held_on: impl Fn(Option<DonationId>) -> i64,
    now: DateTime<Utc>,
) -> WaitReason {
    if !inventory.iter().any(|m| lasting_misfit(m, demand).is_none()) {
        return WaitReason::NoMachineFits;
    }
    let (mut window, mut cap, mut fitting_free) = (0, 0, 0);
    for machine in free.iter().filter(|m| lasting_misfit(m, demand).is_none()) {
        fitting_free += 1;
        match misfit(machine, demand, now, held_on(machine.donation_id)) {
            None => return WaitReason::NextRound,
            Some(Misfit::Window) => window += 1,
            Some(Misfit::Cap) => cap += 1,
            Some(_) => {}
        }
    }
    match (fitting_free, window, cap) {
        (0, _, _) => WaitReason::AllBusy,
        (_, w, c) if w >= c && w > 0 => WaitReason::WindowClosed,
        (_, _, c) if c > 0 => WaitReason::CapReached,
        _ => WaitReason::AllBusy,
    }
}

/// How well a machine suits a lease; higher is better. A cloud instance always comes after
/// every donated machine that fits (it costs money by the hour). Four parts, each between 0
/// and 1:
/// - fit: little surplus of cores, memory and disk (big machines stay free for big requests);
/// - rest: fewer leases so far (wear and use spread over the pool);
/// - spread: fewer leases held on this machine's donor right now (no one donor carries all);
/// - reliability: fewer silences (heartbeat gaps), lost leases and jobs killed by a signal.
pub fn score(machine: &Candidate, demand: &Demand, held_by_donor: i64) -> f64 {
    let r = &demand.requirements;
    let surplus = |have: f64, need: f64| if have <= 0.0 { 0.0 } else { (have - need).max(0.0) / have };
    let fit = 1.0
        - (surplus(machine.cores as f64, r.min_cores as f64)
            + surplus(machine.memory_mib as f64, (r.min_memory_gib * 1024) as f64)
            + surplus(machine.disk_gib as f64, r.min_disk_gib as f64))
            / 3.0;
    let rest = 1.0 / (1.0 + (machine.leases_granted as f64).ln_1p());
    let spread = 1.0 / (1.0 + held_by_donor as f64);
    let reliability = 1.0
        / (1.0 + machine.unreachable_episodes as f64 + 2.0 * machine.lost_leases as f64 + machine.crashed_jobs as f64);
    let rented = if machine.cloud { 10.0 } else { 0.0 };
    3.0 * reliability + 2.0 * fit + spread + rest - rented
}

/// Why no machine in `inventory` could ever take the lease, in words for the caller, or
/// `None` when some machine could (perhaps not now). The reason names the first requirement
/// that narrows the inventory to nothing, with the requirements before it for context:
/// "no loongarch64 machine has 256 GiB of memory".
pub fn unsatisfiable<'a>(inventory: impl IntoIterator<Item = &'a Candidate>, demand: &Demand) -> Option<String> {
    let r = &demand.requirements;
    let mut left: Vec<&Candidate> = inventory
        .into_iter()
        .filter(|c| match demand.placement {
            Placement::Any => true,
            Placement::Lab => !c.cloud,
            Placement::Cloud => c.cloud,
        })
        .collect();
    let mut described = format!("{} machine", r.arch);
    let narrow = |left: &mut Vec<&Candidate>, keep: &dyn Fn(&Candidate) -> bool| {
        left.retain(|c| keep(c));
        left.is_empty()
    };
    if narrow(&mut left, &|c| c.arch == r.arch) {
        return Some(format!("there is no {} machine in the inventory", r.arch));
    }
    if demand.trusted_only {
        if narrow(&mut left, &|c| c.trusted) {
            return Some(format!("no {described} is in the foundation's lab (trusted_only)"));
        }
        described = format!("foundation-lab {described}");
    }
    if r.min_cores > 0 && narrow(&mut left, &|c| c.cores >= r.min_cores) {
        return Some(format!("no {described} has {} cores", r.min_cores));
    }
    if r.min_memory_gib > 0 && narrow(&mut left, &|c| c.memory_mib >= r.min_memory_gib * 1024) {
        return Some(format!("no {described} has {} GiB of memory", r.min_memory_gib));
    }
    if r.min_disk_gib > 0 && narrow(&mut left, &|c| c.disk_gib >= r.min_disk_gib) {
        return Some(format!("no {described} has {} GiB of disk", r.min_disk_gib));
    }
    for (key, value) in &r.labels {
        if narrow(&mut left, &|c| c.labels.get(key) == Some(value)) {
            return Some(format!("no {described} with the other requirements has the label {key}={value}"));
        }
    }
    if narrow(&mut left, &|c| c.policy.as_ref().is_none_or(|p| p.allows(demand.purpose))) {
        return Some(format!("no donor of a matching {described} allows the purpose `{}`", demand.purpose));
    }
    // What is left differs only in how long its donors allow a lease to last.
    let longest = left.iter().filter_map(|c| c.policy.as_ref().map(|p| p.max_lease_minutes)).max().unwrap_or(0);
    if narrow(&mut left, &|c| lasting_misfit(c, demand).is_none()) {
        return Some(format!(
            "no donor of a matching {described} allows a lease of {} minutes (the longest allowed is {longest})",
            demand.duration.num_minutes()
        ));
    }
    None
}

/// Leases held right now: per donation (for donors' caps), per donor (to spread the load) and
/// per tenant (for fair share).
#[derive(Debug, Clone, Default)]
pub struct Holdings {
    pub by_donation: HashMap<DonationId, i64>,
    pub by_donor: HashMap<DonorId, i64>,
    pub by_tenant: HashMap<String, i64>,
}

impl Holdings {
    pub fn add(&mut self, machine: &Candidate, tenant: &str) {
        if let Some(donation) = machine.donation_id {
            *self.by_donation.entry(donation).or_default() += 1;
        }
        if let Some(donor) = machine.donor_id {
            *self.by_donor.entry(donor).or_default() += 1;
        }
        *self.by_tenant.entry(tenant.to_owned()).or_default() += 1;
    }

    /// Leases held on this machine's donation (none for a rented machine).
    fn on_donation(&self, machine: &Candidate) -> i64 {
        machine.donation_id.and_then(|d| self.by_donation.get(&d)).copied().unwrap_or(0)
    }

    /// Leases held on this machine's donor.
    fn on_donor(&self, machine: &Candidate) -> i64 {
        machine.donor_id.and_then(|d| self.by_donor.get(&d)).copied().unwrap_or(0)
    }
}

/// Decides which waiting leases get which free machines this round: leases in queue order
/// (see [`Queue`]), each to the best-scoring free machine that passes the filter. A lease no
/// free machine takes is passed over; those behind it still get their turn. Returns pairs of
/// a lease and an index into `free`.
pub fn plan(
    waiting: Vec<(Waiting, Demand)>,
    free: &[Candidate],
    mut holdings: Holdings,
    weight: impl Fn(&str) -> f64,
    now: DateTime<Utc>,
) -> Vec<(LeaseId, usize)> {
    let mut by_arch: HashMap<Arch, Vec<usize>> = HashMap::new();
    for (i, machine) in free.iter().enumerate() {
        by_arch.entry(machine.arch).or_default().push(i);
    }
    let mut demands: HashMap<LeaseId, Demand> = HashMap::with_capacity(waiting.len());
    let mut queued = Vec::with_capacity(waiting.len());
    for (w, demand) in waiting {
        // Nothing free of its architecture: not worth a place in this round's queue.
        if by_arch.contains_key(&demand.requirements.arch) {
            demands.insert(w.id, demand);
            queued.push(w);
        }
    }
    let mut queue = Queue::new(queued, &holdings.by_tenant, weight, now);
    let mut plan = Vec::new();
    while let Some(w) = queue.pop_next() {
        let demand = &demands[&w.id];
        let Some(pool) = by_arch.get_mut(&demand.requirements.arch) else { continue };
        let best = pool
            .iter()
            .enumerate()
            .filter(|(_, i)| {
                let machine = &free[**i];
                misfit(machine, demand, now, holdings.on_donation(machine)).is_none()
            })
            .map(|(at, i)| {
                let machine = &free[*i];
                (at, *i, score(machine, demand, holdings.on_donor(machine)))
            })
            .max_by(|a, b| a.2.total_cmp(&b.2));
        if let Some((at, i, _)) = best {
            pool.swap_remove(at);
            if pool.is_empty() {
                by_arch.remove(&demand.requirements.arch);
            }
            holdings.add(&free[i], &w.tenant);
            queue.granted(&w.tenant);
            plan.push((w.id, i));
            if by_arch.is_empty() {
                break;
            }
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::TimeZone;
    use serde_json::json;

    use super::*;

    fn machine(arch: Arch, cores: i32, memory_gib: i64) -> Candidate {
        Candidate {
            machine_id: MachineId::generate(),
            donor_id: Some(DonorId::generate()),
            donation_id: Some(DonationId::generate()),
            cloud: false,
            arch,
            cores,
            memory_mib: memory_gib * 1024,
            disk_gib: 500,
            labels: Labels::new(),
            trusted: true,
            policy: None,
            leases_granted: 0,
            unreachable_episodes: 0,
            lost_leases: 0,
            crashed_jobs: 0,
        }
    }

    fn demand(arch: Arch, cores: i32, memory_gib: i64) -> Demand {
        Demand {
            requirements: Requirements {
                arch,
                min_cores: cores,
                min_memory_gib: memory_gib,
                min_disk_gib: 0,
                labels: Labels::new(),
            },
            purpose: Purpose::Ci,
            duration: Duration::hours(2),
            trusted_only: false,
            placement: Placement::Any,
        }
    }

    fn policy(value: serde_json::Value) -> Arc<UsagePolicy> {
        Arc::new(serde_json::from_value(value).unwrap())
    }

    fn donor_hosted(mut m: Candidate, p: Arc<UsagePolicy>) -> Candidate {
        m.trusted = false;
        m.policy = Some(p);
        m
    }

    #[test]
    fn the_filter_checks_arch_resources_labels_and_trust() {
        let now = Utc::now();
        let board = machine(Arch::Riscv64, 4, 8);
        assert_eq!(misfit(&board, &demand(Arch::Riscv64, 4, 8), now, 0), None);
        assert_eq!(misfit(&board, &demand(Arch::Aarch64, 1, 1), now, 0), Some(Misfit::Arch));
        assert_eq!(misfit(&board, &demand(Arch::Riscv64, 8, 1), now, 0), Some(Misfit::Cores));
        assert_eq!(misfit(&board, &demand(Arch::Riscv64, 1, 16), now, 0), Some(Misfit::Memory));

        let mut wants_label = demand(Arch::Riscv64, 1, 1);
        wants_label.requirements.labels.insert("board".into(), "visionfive2".into());
        assert_eq!(misfit(&board, &wants_label, now, 0), Some(Misfit::Label("board".into())));
        let mut labelled = board.clone();
        labelled.labels.insert("board".into(), "visionfive2".into());
        assert_eq!(misfit(&labelled, &wants_label, now, 0), None);

        let mut release = demand(Arch::Riscv64, 1, 1);
        release.trusted_only = true;
        let hosted = donor_hosted(
            board.clone(),
            policy(json!({"purposes": ["ci"], "max_concurrent_leases": 2, "max_lease_minutes": 600})),
        );
        assert_eq!(misfit(&hosted, &release, now, 0), Some(Misfit::Untrusted));
        assert_eq!(misfit(&board, &release, now, 0), None);
    }

    #[test]
    fn a_donor_policy_limits_purpose_length_concurrency_and_hours() {
        // Weekdays 09:00-18:00 in Shanghai.
        let terms = policy(json!({
            "purposes": ["ci"], "time_zone": "Asia/Shanghai",
            "windows": [{"days": ["mon", "tue", "wed", "thu", "fri"], "start": "09:00", "end": "18:00"}],
            "max_concurrent_leases": 2, "max_lease_minutes": 240,
        }));
        let board = donor_hosted(machine(Arch::Riscv64, 4, 8), terms);
        let wednesday_10_local = Utc.with_ymd_and_hms(2026, 11, 18, 2, 0, 0).unwrap();
        let ci = demand(Arch::Riscv64, 1, 1);
        assert_eq!(misfit(&board, &ci, wednesday_10_local, 0), None);
        assert_eq!(misfit(&board, &ci, wednesday_10_local, 2), Some(Misfit::Cap));

        let mut build = ci.clone();
        build.purpose = Purpose::Build;
        assert_eq!(misfit(&board, &build, wednesday_10_local, 0), Some(Misfit::Purpose));

        let mut long = ci.clone();
        long.duration = Duration::hours(5);
        assert_eq!(misfit(&board, &long, wednesday_10_local, 0), Some(Misfit::TooLong { max_minutes: 240 }));

        // 17:00 local: a two-hour lease would run past 18:00.
        let wednesday_17_local = Utc.with_ymd_and_hms(2026, 11, 18, 9, 0, 0).unwrap();
        assert_eq!(misfit(&board, &ci, wednesday_17_local, 0), Some(Misfit::Window));
        // Saturday.
        let saturday = Utc.with_ymd_and_hms(2026, 11, 21, 2, 0, 0).unwrap();
        assert_eq!(misfit(&board, &ci, saturday, 0), Some(Misfit::Window));
    }

    #[test]
    fn a_waiting_lease_is_told_why_it_waits() {
        let terms = policy(json!({
            "purposes": ["ci"], "time_zone": "Asia/Shanghai",
            "windows": [{"days": ["mon", "tue", "wed", "thu", "fri"], "start": "09:00", "end": "18:00"}],
            "max_concurrent_leases": 1, "max_lease_minutes": 240,
        }));
        let board = donor_hosted(machine(Arch::Riscv64, 4, 8), terms);
        let (wednesday_10_local, saturday) = (
            Utc.with_ymd_and_hms(2026, 11, 18, 2, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(2026, 11, 21, 2, 0, 0).unwrap(),
        );
        let ci = demand(Arch::Riscv64, 1, 1);
        let pool = [board.clone()];
        let none_held = |_| 0;
        assert_eq!(
            why_waiting(&demand(Arch::Aarch64, 1, 1), &pool, &pool, none_held, saturday),
            WaitReason::NoMachineFits
        );
        assert_eq!(why_waiting(&ci, &pool, &[], none_held, saturday), WaitReason::AllBusy);
        assert_eq!(why_waiting(&ci, &pool, &pool, none_held, saturday), WaitReason::WindowClosed);
        assert_eq!(why_waiting(&ci, &pool, &pool, |_| 1, wednesday_10_local), WaitReason::CapReached);
        assert_eq!(why_waiting(&ci, &pool, &pool, none_held, wednesday_10_local), WaitReason::NextRound);
        assert_eq!(WaitReason::CapReached.to_string(), "cap_reached");
    }

    #[test]
    fn the_score_prefers_a_snug_rested_reliable_machine_on_a_quiet_donor() {
        let d = demand(Arch::X86_64, 4, 8);
        let snug = machine(Arch::X86_64, 4, 8);
        let big = machine(Arch::X86_64, 64, 256);
        assert!(score(&snug, &d, 0) > score(&big, &d, 0));

        let mut worn = snug.clone();
        worn.leases_granted = 500;
        assert!(score(&snug, &d, 0) > score(&worn, &d, 0));

        assert!(score(&snug, &d, 0) > score(&snug, &d, 3), "a donor already carrying leases scores lower");

        let mut flaky = snug.clone();
        flaky.unreachable_episodes = 3;
        assert!(score(&big, &d, 0) > score(&flaky, &d, 0), "reliability outweighs fit");
        let mut crashing = snug.clone();
        crashing.crashed_jobs = 3;
        assert!(score(&big, &d, 0) > score(&crashing, &d, 0), "jobs dying there count too");
    }

    #[test]
    fn an_impossible_request_is_told_which_requirement_no_machine_meets() {
        let inventory = [machine(Arch::Loongarch64, 32, 128), machine(Arch::Riscv64, 4, 16)];
        assert_eq!(
            unsatisfiable(&inventory, &demand(Arch::Loongarch64, 8, 256)).as_deref(),
            Some("no loongarch64 machine has 256 GiB of memory")
        );
        assert_eq!(
            unsatisfiable(&inventory, &demand(Arch::Aarch64, 1, 1)).as_deref(),
            Some("there is no aarch64 machine in the inventory")
        );
        assert_eq!(unsatisfiable(&inventory, &demand(Arch::Loongarch64, 8, 64)), None);

        let hosted = [donor_hosted(
            machine(Arch::Riscv64, 4, 16),
            policy(json!({"purposes": ["ci"], "max_concurrent_leases": 1, "max_lease_minutes": 60})),
        )];
        let mut release = demand(Arch::Riscv64, 1, 1);
        release.trusted_only = true;
        assert_eq!(
            unsatisfiable(&hosted, &release).as_deref(),
            Some("no riscv64 machine is in the foundation's lab (trusted_only)")
        );
        assert_eq!(
            unsatisfiable(&hosted, &demand(Arch::Riscv64, 1, 1)).as_deref(),
            Some("no donor of a matching riscv64 machine allows a lease of 120 minutes (the longest allowed is 60)")
        );
    }

    #[test]
    fn lab_machines_come_before_cloud_instances_and_placement_is_respected() {
        let lab = machine(Arch::X86_64, 64, 256);
        let mut rented = machine(Arch::X86_64, 4, 8);
        rented.cloud = true;
        rented.donor_id = None;
        rented.donation_id = None;
        let any = demand(Arch::X86_64, 4, 8);
        assert!(score(&lab, &any, 0) > score(&rented, &any, 0), "even a loose lab fit beats a snug rented one");
        let mut lab_only = any.clone();
        lab_only.placement = Placement::Lab;
        assert_eq!(misfit(&rented, &lab_only, Utc::now(), 0), Some(Misfit::Placement));
        let mut cloud_only = any.clone();
        cloud_only.placement = Placement::Cloud;
        assert_eq!(misfit(&lab, &cloud_only, Utc::now(), 0), Some(Misfit::Placement));
        assert_eq!(misfit(&rented, &cloud_only, Utc::now(), 0), None);
        let planned = plan(vec![(waiting("ci"), any)], &[rented, lab], Holdings::default(), |_| 1.0, Utc::now());
        assert_eq!(planned[0].1, 1, "the lab machine is taken");
    }

    fn waiting(tenant: &str) -> Waiting {
        Waiting { id: LeaseId::generate(), tenant: tenant.into(), priority: 50, queued_at: Utc::now() }
    }

    #[test]
    fn a_round_books_each_machine_once_and_passes_over_what_does_not_fit() {
        let free = [machine(Arch::Riscv64, 4, 8), machine(Arch::Riscv64, 64, 128), machine(Arch::X86_64, 8, 16)];
        let small = waiting("sig-a");
        let big = waiting("sig-a");
        let huge = waiting("sig-a");
        let asks = vec![
            (huge.clone(), demand(Arch::Riscv64, 128, 1)),
            (small.clone(), demand(Arch::Riscv64, 2, 4)),
            (big.clone(), demand(Arch::Riscv64, 32, 64)),
        ];
        let planned = plan(asks, &free, Holdings::default(), |_| 1.0, Utc::now());
        let got: HashMap<LeaseId, usize> = planned.iter().copied().collect();
        assert_eq!(got.len(), 2, "two riscv64 machines, two grants: {planned:?}");
        assert_eq!(got.get(&small.id), Some(&0), "the small request gets the snug machine");
        assert_eq!(got.get(&big.id), Some(&1), "which leaves the big machine for the big request");
        assert!(!got.contains_key(&huge.id), "128 cores fit nowhere");
    }

    #[test]
    fn a_round_keeps_to_a_donors_cap_and_spreads_across_donors() {
        let terms = policy(json!({"purposes": ["ci"], "max_concurrent_leases": 1, "max_lease_minutes": 600}));
        let a1 = donor_hosted(machine(Arch::Riscv64, 4, 8), terms.clone());
        let mut a2 = a1.clone();
        a2.machine_id = MachineId::generate();
        let asks = (0..3).map(|_| (waiting("ci"), demand(Arch::Riscv64, 1, 1))).collect();
        let first = plan(asks, &[a1.clone(), a2], Holdings::default(), |_| 1.0, Utc::now());
        assert_eq!(first.len(), 1, "the donation allows one lease at a time");

        let other_donor = machine(Arch::Riscv64, 4, 8);
        let same_donor = machine(Arch::Riscv64, 4, 8);
        let busy = Holdings { by_donor: HashMap::from([(same_donor.donor_id.unwrap(), 5)]), ..Holdings::default() };
        let second = plan(
            vec![(waiting("ci"), demand(Arch::Riscv64, 1, 1))],
            &[same_donor, other_donor],
            busy,
            |_| 1.0,
            Utc::now(),
        );
        assert_eq!(second[0].1, 1, "the donor already carrying five leases is spared");
    }
}
