//! Clouds as placement sees them: offers and the cheapest one that fits a request, what is
//! unavailable for a while after a failure, budgets, token buckets, what an instance costs,
//! and the cloud-init document that brings an instance's agent up. Pure: the round, the cloud
//! worker and the reconcile gather the facts and apply what this module decides.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use super::placement::Demand;
use super::{Arch, CloudProvider, Labels};

text_enum! {
    /// Where a request may be placed.
    pub enum Placement {
        /// The labs first; a cloud when the labs cannot place it within its tolerance
        /// (`max_lab_wait_minutes`).
        Any => "any",
        /// Lab (and donor) machines only: never a cloud instance.
        Lab => "lab",
        /// A cloud instance only.
        Cloud => "cloud",
    }
}

text_enum! {
    /// How an instance is billed.
    pub enum Market {
        OnDemand => "on_demand",
        /// Cheaper, and the cloud may take it back; its offer falls back to on-demand.
        Spot => "spot",
    }
}

text_enum! {
    /// Where a cloud instance is in its life. Every state but the last three has a deadline.
    pub enum InstanceState {
        /// Placement decided to launch it; no cloud call has been made for it yet.
        Requested => "requested",
        /// In a launch whose call may be in flight (its idempotency token is recorded).
        Launching => "launching",
        /// The cloud created it; its agent has not enrolled and beaten yet.
        Booting => "booting",
        /// Its agent beats: the machine is in the pool (idle, or serving its lease).
        Ready => "ready",
        /// To be terminated (its lease ended, it never booted, or nobody wants it).
        Terminating => "terminating",
        /// Gone from the cloud.
        Terminated => "terminated",
        /// Never created: the launch failed.
        Failed => "failed",
        /// The cloud no longer has it, though nobody terminated it.
        Lost => "lost",
    }
}

text_enum! {
    /// The kinds of cloud failure that decide what happens next. Each provider maps its own
    /// error codes onto these.
    pub enum CloudErrorKind {
        /// No capacity for this flavour here now: try another offer.
        Capacity => "capacity",
        /// An account limit (instances, cores, money): try another region or provider.
        Quota => "quota",
        /// Too many calls: wait, and try elsewhere meanwhile.
        Throttled => "throttled",
        /// The request is wrong (an image or flavour that does not exist): configuration.
        Invalid => "invalid",
        /// The credentials were refused.
        Auth => "auth",
        /// A timeout, a 5xx or a dropped connection: the outcome may be unknown.
        Transient => "transient",
    }
}

text_enum! {
    /// Where one launch call (one batch, one offer, one idempotency token) stands.
    pub enum LaunchState {
        /// Recorded, with its token; the call may be in flight. A launch left here past its
        /// claim is resumed with the same token.
        Calling => "calling",
        /// The cloud answered with instances (perhaps fewer than asked).
        Done => "done",
        /// The cloud refused it: no instance exists.
        Failed => "failed",
        /// The call timed out: instances may exist; the reconcile finds them by tag.
        Unknown => "unknown",
    }
}

/// One way to get a machine from a cloud: an account's flavour in a region, in a market.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Offer {
    pub account: String,
    pub provider: CloudProvider,
    pub region: String,
    pub flavour: String,
    pub market: Market,
    pub arch: Arch,
    pub cores: i32,
    pub memory_mib: i64,
    pub disk_gib: i64,
    pub labels: Labels,
    /// Price per hour in millionths of the platform's currency.
    pub hourly_micros: i64,
}

/// Offers and scopes name an account's region's flavour in a market.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct OfferKey {
    pub account: String,
    pub region: String,
    pub flavour: String,
    pub market: Market,
}

impl Offer {
    pub fn key(&self) -> OfferKey {
        OfferKey {
            account: self.account.clone(),
            region: self.region.clone(),
            flavour: self.flavour.clone(),
            market: self.market,
        }
    }

    /// Whether an instance of this offer meets the request's requirements.
    pub fn fits(&self, demand: &Demand) -> bool {
        let r = &demand.requirements;
        self.arch == r.arch
            && self.cores >= r.min_cores
            && self.memory_mib >= r.min_memory_gib * 1024
            && self.disk_gib >= r.min_disk_gib
            && r.labels.iter().all(|(k, v)| self.labels.get(k) == Some(v))
    }

    /// The most an instance for `duration` can cost, booting included.
    pub fn bound(&self, duration: Duration, boot_timeout: Duration) -> i64 {
        cost_micros(self.hourly_micros, duration + boot_timeout)
    }
}

impl std::fmt::Display for OfferKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{} ({})", self.account, self.region, self.flavour, self.market)
    }
}

/// Part of the catalogue that failed recently and is passed over until `until`: a flavour in a
/// market (no capacity), a region (quota, throttling) or a whole account (credentials).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unavailable {
    pub account: String,
    pub region: Option<String>,
    pub flavour: Option<String>,
    pub market: Option<Market>,
    pub kind: CloudErrorKind,
    pub reason: String,
    pub until: DateTime<Utc>,
}

impl Unavailable {
    pub fn covers(&self, offer: &Offer) -> bool {
        self.account == offer.account
            && self.region.as_ref().is_none_or(|r| *r == offer.region)
            && self.flavour.as_ref().is_none_or(|f| *f == offer.flavour)
            && self.market.is_none_or(|m| m == offer.market)
    }
}

/// How long each kind of failure keeps its part of the catalogue out of placement.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub capacity: Duration,
    pub quota: Duration,
    pub throttled: Duration,
}

/// What a failed launch makes unavailable, and for how long. Capacity is a flavour's in one
/// market (spot falls back to on-demand by itself); quota and throttling a region of the
/// account; refused credentials the whole account. A bad request (an image that is not there)
/// stays out as long as a quota does: a person has to fix the configuration.
pub fn unavailable_after(
    kind: CloudErrorKind,
    offer: &OfferKey,
    reason: &str,
    backoff: Backoff,
    now: DateTime<Utc>,
) -> Unavailable {
    let (region, flavour, market, ttl) = match kind {
        CloudErrorKind::Capacity | CloudErrorKind::Transient => {
            (Some(&offer.region), Some(&offer.flavour), Some(offer.market), backoff.capacity)
        }
        CloudErrorKind::Invalid => (Some(&offer.region), Some(&offer.flavour), Some(offer.market), backoff.quota),
        CloudErrorKind::Quota => (Some(&offer.region), None, None, backoff.quota),
        CloudErrorKind::Throttled => (Some(&offer.region), None, None, backoff.throttled),
        CloudErrorKind::Auth => (None, None, None, backoff.quota),
    };
    Unavailable {
        account: offer.account.clone(),
        region: region.cloned(),
        flavour: flavour.cloned(),
        market,
        kind,
        reason: reason.to_owned(),
        until: now + ttl,
    }
}

/// Why a request gets no cloud instance now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoCloud {
    /// No configured offer could ever take it (its architecture, size or labels), or it is
    /// `trusted_only`. Waiting does not help.
    Never(String),
    /// Offers fit, but none can be used now (recent failures, the accounts' caps).
    NotNow(String),
    /// The cheapest fitting offer could cost more than the tenant has left this month.
    Budget(String),
}

impl NoCloud {
    pub fn reason(&self) -> &str {
        match self {
            NoCloud::Never(reason) | NoCloud::NotNow(reason) | NoCloud::Budget(reason) => reason,
        }
    }
}

/// What a choice must respect besides the catalogue.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    /// Instances each account may still start (its cap minus what it runs or launches).
    pub room: HashMap<String, i64>,
    /// What the tenant may still spend this month, in millionths; `None` when unlimited.
    pub budget_left: Option<i64>,
    /// The longest an instance may take to boot, counted in what it may cost.
    pub boot_timeout: Duration,
    /// The platform's currency, for the reasons given.
    pub currency: String,
}

/// The cheapest usable offer for `demand`; ties go to the snugger fit, then to the order of
/// the catalogue. `trusted_only` requests never leave the foundation's lab.
pub fn choose<'a>(
    offers: &'a [Offer],
    demand: &Demand,
    unavailable: &[Unavailable],
    limits: &Limits,
) -> Result<&'a Offer, NoCloud> {
    if demand.trusted_only {
        return Err(NoCloud::Never("trusted_only requests stay in the foundation's lab".into()));
    }
    let fitting: Vec<&Offer> = offers.iter().filter(|o| o.fits(demand)).collect();
    if fitting.is_empty() {
        return Err(NoCloud::Never(no_offer_reason(offers, demand)));
    }
    let usable: Vec<&Offer> = fitting.iter().copied().filter(|o| !unavailable.iter().any(|u| u.covers(o))).collect();
    if usable.is_empty() {
        // What tenants read: the kinds of failure, not the vendors' messages (ops see those).
        let covering: Vec<&Unavailable> = unavailable.iter().filter(|u| fitting.iter().any(|o| u.covers(o))).collect();
        let mut kinds: Vec<&str> = covering.iter().map(|u| u.kind.as_str()).collect();
        kinds.sort_unstable();
        kinds.dedup();
        return Err(NoCloud::NotNow(format!(
            "every cloud offer that fits failed recently ({}); trying again from {}",
            kinds.join(", "),
            covering.iter().map(|u| u.until).min().map(|t| t.to_rfc3339()).unwrap_or_default()
        )));
    }
    let with_room: Vec<&Offer> =
        usable.iter().copied().filter(|o| limits.room.get(&o.account).copied().unwrap_or(0) > 0).collect();
    if with_room.is_empty() {
        let accounts: Vec<&str> = dedup(usable.iter().map(|o| o.account.as_str()));
        return Err(NoCloud::NotNow(format!(
            "the cloud accounts that offer it run as many instances as they may ({})",
            accounts.join(", ")
        )));
    }
    let cheapest = with_room
        .iter()
        .copied()
        .min_by(|a, b| a.hourly_micros.cmp(&b.hourly_micros).then(surplus(a, demand).total_cmp(&surplus(b, demand))))
        .expect("not empty");
    if let Some(left) = limits.budget_left {
        let bound = cheapest.bound(demand.duration, limits.boot_timeout);
        if bound > left {
            return Err(NoCloud::Budget(format!(
                "the tenant's monthly cloud budget has {} {} left; the cheapest instance that fits ({} at {} {}/h) \
                 could cost up to {} {} for this request",
                money(left),
                limits.currency,
                cheapest.key(),
                money(cheapest.hourly_micros),
                limits.currency,
                money(bound),
                limits.currency
            )));
        }
    }
    Ok(cheapest)
}

fn surplus(offer: &Offer, demand: &Demand) -> f64 {
    let r = &demand.requirements;
    let part = |have: f64, need: f64| if have <= 0.0 { 0.0 } else { (have - need).max(0.0) / have };
    part(offer.cores as f64, r.min_cores as f64) + part(offer.memory_mib as f64, (r.min_memory_gib * 1024) as f64)
}

fn dedup<'a>(names: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut seen: Vec<&str> = names.collect();
    seen.sort_unstable();
    seen.dedup();
    seen
}

/// Names the first requirement no offer meets: "no cloud offers riscv64".
fn no_offer_reason(offers: &[Offer], demand: &Demand) -> String {
    let r = &demand.requirements;
    let mut left: Vec<&Offer> = offers.iter().filter(|o| o.arch == r.arch).collect();
    if left.is_empty() {
        return format!("no cloud offers {}", r.arch);
    }
    left.retain(|o| o.cores >= r.min_cores);
    if left.is_empty() {
        return format!("no cloud offers {} with {} cores", r.arch, r.min_cores);
    }
    left.retain(|o| o.memory_mib >= r.min_memory_gib * 1024);
    if left.is_empty() {
        return format!("no cloud offers {} with {} GiB of memory", r.arch, r.min_memory_gib);
    }
    left.retain(|o| o.disk_gib >= r.min_disk_gib);
    if left.is_empty() {
        return format!("no cloud offers {} with {} GiB of disk", r.arch, r.min_disk_gib);
    }
    format!("no cloud offers {} with the labels asked for", r.arch)
}

/// Whether a request waiting for the labs should go to a cloud now: `placement: cloud`
/// always; `placement: any` once it has waited its tolerance, or at once when the labs cannot
/// be expected to place it within it (`lab_estimate`: when the queue expects a lab machine for
/// it; `None`: not foreseeable).
pub fn wants_cloud(
    placement: Placement,
    max_lab_wait: Duration,
    queued_at: DateTime<Utc>,
    lab_estimate: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> bool {
    match placement {
        Placement::Lab => false,
        Placement::Cloud => true,
        Placement::Any => {
            let tolerance = queued_at + max_lab_wait;
            now >= tolerance || lab_estimate.is_none_or(|at| at > tolerance)
        }
    }
}

/// What running an instance priced `hourly_micros` for `length` costs, billed per second
/// with a minimum of one minute (as EC2 bills Linux instances).
pub fn cost_micros(hourly_micros: i64, length: Duration) -> i64 {
    let secs = length.num_seconds().max(60);
    (i128::from(hourly_micros) * i128::from(secs) / 3600) as i64
}

/// One instance, as a budget sees it.
#[derive(Debug, Clone)]
pub struct Spend {
    pub hourly_micros: i64,
    /// When billing started (or the instance was asked for, if the cloud has not answered).
    pub since: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    /// For an instance still running: the length of the lease it serves, which bounds it.
    pub lease: Option<Duration>,
}

/// An amount in the configuration's currency, to the millionth (a minute of a small
/// instance costs less than a cent).
pub fn amount(micros: i64) -> f64 {
    micros as f64 / 1_000_000.0
}

/// The first instant of the month `now` is in (UTC): budgets are monthly.
pub fn month_start(now: DateTime<Utc>) -> DateTime<Utc> {
    use chrono::{Datelike, TimeZone};
    Utc.with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0).single().unwrap_or(now)
}

/// What an instance priced `hourly_micros`, billed from `since` to `ended_at` (or `to`, if it
/// still runs), cost between `from` and `to`.
pub fn cost_within(
    hourly_micros: i64,
    since: DateTime<Utc>,
    ended_at: Option<DateTime<Utc>>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> i64 {
    let start = since.max(from);
    let end = ended_at.unwrap_or(to);
    if end > start { cost_micros(hourly_micros, end - start) } else { 0 }
}

/// What instances cost within the month starting `month_start`, plus what those still
/// running may yet cost (each bounded by its lease and the boot timeout): the part of a
/// budget that is spent or promised.
pub fn month_spend(items: &[Spend], month_start: DateTime<Utc>, now: DateTime<Utc>, boot_timeout: Duration) -> i64 {
    items
        .iter()
        .map(|i| {
            let spent = cost_within(i.hourly_micros, i.since, i.ended_at, month_start, now);
            let promised = match (i.ended_at, i.lease) {
                (None, Some(lease)) => {
                    let bound = cost_micros(i.hourly_micros, lease + boot_timeout);
                    (bound - cost_micros(i.hourly_micros, now - i.since)).max(0)
                }
                _ => 0,
            };
            spent + promised
        })
        .sum()
}

/// Millionths as a decimal amount with two places: `1234567` → `"1.23"`.
pub fn money(micros: i64) -> String {
    let cents = (micros + 5_000).div_euclid(10_000);
    format!("{}.{:02}", cents.div_euclid(100), cents.rem_euclid(100))
}

/// Parses a price such as `0.0416` into millionths.
pub fn micros_of(amount: f64) -> i64 {
    (amount * 1_000_000.0).round() as i64
}

/// A token bucket's settings: at most `burst` tokens, refilled at `per_sec`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    pub burst: f64,
    pub per_sec: f64,
}

impl Bucket {
    /// The tokens a bucket that held `tokens` at `then` holds at `now`.
    pub fn refill(&self, tokens: f64, then: DateTime<Utc>, now: DateTime<Utc>) -> f64 {
        let elapsed = (now - then).num_milliseconds().max(0) as f64 / 1000.0;
        (tokens + elapsed * self.per_sec).min(self.burst)
    }

    /// How long until `want` tokens are there, given `tokens` now; zero if they are. A wish
    /// larger than the burst waits for a full bucket.
    pub fn wait_for(&self, tokens: f64, want: f64) -> Duration {
        let want = want.min(self.burst);
        if tokens >= want || self.per_sec <= 0.0 {
            return Duration::zero();
        }
        Duration::milliseconds((((want - tokens) / self.per_sec) * 1000.0).ceil() as i64)
    }
}

/// What an agent on a fresh cloud instance needs to join: where the server is, where to get
/// the agent for its architecture (and the digest it must have), the launch's secret, and the
/// account lease holders log in as. (No `Debug`: it holds the launch's secret.)
#[derive(Clone)]
pub struct Bootstrap<'a> {
    pub server_url: &'a str,
    pub agent_url: &'a str,
    pub agent_sha256: Option<&'a str>,
    pub launch_secret: &'a str,
    pub lease_user: &'a str,
}

/// Where cloud-init leaves the bootstrap facts on the instance, until the agent has enrolled.
pub const BOOTSTRAP_PATH: &str = "/etc/fleetyard-agent/bootstrap.json";

/// The user data of every instance of a launch: a cloud-init document that does what
/// `deploy/agent/README.md` asks of a person: installs `fleetyard-agent` (checking its
/// digest), lets lease holders in through it, enrolls it with the launch's secret and this
/// instance's id, and starts it. It is written as JSON, which is YAML and so a valid
/// `#cloud-config`; tests read it back without a YAML parser.
pub fn cloud_init(b: &Bootstrap<'_>) -> String {
    let bootstrap = serde_json::json!({ "server": b.server_url, "launch_secret": b.launch_secret });
    let agent_toml = format!(
        "server = {}\nlease_user = {}\njob_user = \"fleetyard-job\"\n",
        toml_string(b.server_url),
        toml_string(b.lease_user)
    );
    // sshd asks the agent for every user's keys, and for the lease account reads nothing else:
    // a key the holder appends to its authorized_keys is never used. `Match all` closes the
    // block, whatever follows the drop-in.
    let sshd = format!(
        "AuthorizedKeysCommand /usr/local/bin/fleetyard-agent authorized-keys %u\n\
         AuthorizedKeysCommandUser fleetyard-agent\n\
         Match User {user}\n    AuthorizedKeysFile none\nMatch all\n",
        user = b.lease_user
    );
    // The unit may write only the lease account's home, to reset it after the lease.
    let home = if b.lease_user == "root" { "/root".to_owned() } else { format!("/home/{}", b.lease_user) };
    let unit_home = format!("[Service]\nReadWritePaths=-{home}\n");
    let check = match b.agent_sha256 {
        Some(sha) => format!("echo '{sha}  /usr/local/bin/fleetyard-agent.new' | sha256sum -c - && "),
        None => String::new(),
    };
    let install = format!(
        "id -u fleetyard-agent >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin \
         fleetyard-agent; id -u fleetyard-job >/dev/null 2>&1 || useradd --system --no-create-home --shell \
         /usr/sbin/nologin fleetyard-job; curl -fsS --retry 10 --retry-connrefused -o /usr/local/bin/fleetyard-agent.new '{url}' && \
         {check}chmod 0755 /usr/local/bin/fleetyard-agent.new && \
         mv /usr/local/bin/fleetyard-agent.new /usr/local/bin/fleetyard-agent",
        url = b.agent_url
    );
    let enroll = format!(
        "install -d -o fleetyard-agent -g fleetyard-agent -m 0700 /var/lib/fleetyard-agent && \
         chown fleetyard-agent {BOOTSTRAP_PATH} && \
         runuser -u fleetyard-agent -- /usr/local/bin/fleetyard-agent --config /etc/fleetyard-agent/agent.toml \
         enroll --bootstrap {BOOTSTRAP_PATH} --instance-id \"$(cloud-init query v1.instance_id)\" && \
         rm -f {BOOTSTRAP_PATH}"
    );
    let document = serde_json::json!({
        "write_files": [
            { "path": BOOTSTRAP_PATH, "permissions": "0600", "content": bootstrap.to_string() },
            { "path": "/etc/fleetyard-agent/agent.toml", "permissions": "0644", "content": agent_toml },
            { "path": "/etc/ssh/sshd_config.d/50-fleetyard.conf", "permissions": "0644", "content": sshd },
            { "path": "/etc/systemd/system/fleetyard-agent.service", "permissions": "0644", "content": AGENT_UNIT },
            {
                "path": "/etc/systemd/system/fleetyard-agent.service.d/lease-home.conf",
                "permissions": "0644",
                "content": unit_home,
            },
        ],
        "runcmd": [
            ["sh", "-c", install],
            ["sh", "-c", enroll],
            ["systemctl", "daemon-reload"],
            ["systemctl", "enable", "--now", "fleetyard-agent.service"],
            ["sh", "-c", "systemctl reload ssh || systemctl reload sshd"],
        ],
    });
    format!("#cloud-config\n{document:#}\n")
}

/// A TOML basic string (JSON's escapes are TOML's).
fn toml_string(value: &str) -> String {
    serde_json::Value::from(value).to_string()
}

/// The agent's systemd unit, as `deploy/agent` installs it on any machine.
const AGENT_UNIT: &str = include_str!("../../../deploy/agent/fleetyard-agent.service");

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::domain::placement::Requirements;
    use crate::domain::usage_policy::Purpose;

    fn offer(account: &str, region: &str, flavour: &str, market: Market, arch: Arch, price: f64) -> Offer {
        Offer {
            account: account.into(),
            provider: CloudProvider::Aws,
            region: region.into(),
            flavour: flavour.into(),
            market,
            arch,
            cores: 4,
            memory_mib: 16 * 1024,
            disk_gib: 40,
            labels: Labels::new(),
            hourly_micros: micros_of(price),
        }
    }

    fn demand(arch: Arch, cores: i32) -> Demand {
        Demand {
            requirements: Requirements {
                arch,
                min_cores: cores,
                min_memory_gib: 4,
                min_disk_gib: 0,
                labels: Labels::new(),
            },
            purpose: Purpose::Ci,
            duration: Duration::hours(2),
            trusted_only: false,
            placement: Placement::Any,
        }
    }

    fn room(accounts: &[&str]) -> Limits {
        Limits {
            room: accounts.iter().map(|a| (a.to_string(), 10)).collect(),
            budget_left: None,
            boot_timeout: Duration::minutes(10),
            currency: "USD".into(),
        }
    }

    #[test]
    fn the_cheapest_fitting_offer_wins_and_failures_fall_through_to_the_next() {
        let offers = vec![
            offer("aws", "us-east-1", "c6i.xlarge", Market::OnDemand, Arch::X86_64, 0.17),
            offer("hw", "cn-north-4", "c7.xlarge.2", Market::OnDemand, Arch::X86_64, 0.12),
            offer("hw", "cn-north-4", "c7.xlarge.2", Market::Spot, Arch::X86_64, 0.05),
            offer("hw", "cn-east-3", "c7.xlarge.2", Market::OnDemand, Arch::X86_64, 0.13),
        ];
        let limits = room(&["aws", "hw"]);
        let d = demand(Arch::X86_64, 4);
        let now = Utc::now();
        assert_eq!(choose(&offers, &d, &[], &limits).unwrap().market, Market::Spot);

        let backoff =
            Backoff { capacity: Duration::minutes(3), quota: Duration::minutes(30), throttled: Duration::seconds(30) };
        // No spot capacity: the same flavour on demand is next.
        let spot_gone = unavailable_after(CloudErrorKind::Capacity, &offers[2].key(), "no spot", backoff, now);
        let next = choose(&offers, &d, std::slice::from_ref(&spot_gone), &limits).unwrap();
        assert_eq!((next.region.as_str(), next.market), ("cn-north-4", Market::OnDemand));
        // A quota in the region: the next region of the same provider.
        let quota = unavailable_after(CloudErrorKind::Quota, &offers[1].key(), "quota", backoff, now);
        assert_eq!(choose(&offers, &d, &[spot_gone.clone(), quota.clone()], &limits).unwrap().region, "cn-east-3");
        // Refused credentials: the whole account is out, so another provider.
        let auth = unavailable_after(CloudErrorKind::Auth, &offers[1].key(), "auth", backoff, now);
        assert_eq!(choose(&offers, &d, &[auth], &limits).unwrap().account, "aws");
        // An account at its cap is passed over.
        let mut full = limits.clone();
        full.room.insert("hw".into(), 0);
        assert_eq!(choose(&offers, &d, &[], &full).unwrap().account, "aws");
    }

    #[test]
    fn no_cloud_says_why_and_whether_waiting_helps() {
        let offers = vec![offer("aws", "us-east-1", "c6i.xlarge", Market::OnDemand, Arch::X86_64, 0.17)];
        let limits = room(&["aws"]);
        assert_eq!(
            choose(&offers, &demand(Arch::Riscv64, 1), &[], &limits),
            Err(NoCloud::Never("no cloud offers riscv64".into()))
        );
        assert_eq!(
            choose(&offers, &demand(Arch::X86_64, 64), &[], &limits),
            Err(NoCloud::Never("no cloud offers x86_64 with 64 cores".into()))
        );
        let mut trusted = demand(Arch::X86_64, 1);
        trusted.trusted_only = true;
        assert!(matches!(choose(&offers, &trusted, &[], &limits), Err(NoCloud::Never(_))));

        let mut poor = limits.clone();
        poor.budget_left = Some(micros_of(0.30));
        let Err(NoCloud::Budget(reason)) = choose(&offers, &demand(Arch::X86_64, 1), &[], &poor) else { panic!() };
        assert!(reason.contains("budget has 0.30 USD left") && reason.contains("up to 0.37 USD"), "{reason}");
        poor.budget_left = Some(micros_of(0.40));
        assert!(choose(&offers, &demand(Arch::X86_64, 1), &[], &poor).is_ok());
    }

    #[test]
    fn a_request_bursts_when_the_labs_cannot_place_it_within_its_tolerance() {
        let queued = Utc.with_ymd_and_hms(2026, 12, 1, 10, 0, 0).unwrap();
        let wait = Duration::minutes(10);
        let soon = Some(queued + Duration::minutes(5));
        let late = Some(queued + Duration::minutes(50));
        assert!(!wants_cloud(Placement::Any, wait, queued, soon, queued));
        assert!(wants_cloud(Placement::Any, wait, queued, late, queued), "the labs will not make it in time");
        assert!(wants_cloud(Placement::Any, wait, queued, None, queued), "nothing in the labs will end");
        assert!(wants_cloud(Placement::Any, wait, queued, soon, queued + wait), "waited its tolerance");
        assert!(!wants_cloud(Placement::Lab, wait, queued, None, queued + Duration::days(1)));
        assert!(wants_cloud(Placement::Cloud, wait, queued, soon, queued));
    }

    #[test]
    fn costs_are_billed_per_second_with_a_minute_minimum() {
        let hourly = micros_of(0.36);
        assert_eq!(cost_micros(hourly, Duration::hours(2)), micros_of(0.72));
        assert_eq!(cost_micros(hourly, Duration::seconds(5)), micros_of(0.006));
        assert_eq!(money(micros_of(0.72)), "0.72");
        assert_eq!(money(1_234_567), "1.23");
        assert_eq!(money(0), "0.00");
    }

    #[test]
    fn a_bucket_refills_at_its_rate_up_to_its_burst() {
        let launches = Bucket { burst: 5.0, per_sec: 2.0 };
        let t = Utc.with_ymd_and_hms(2026, 12, 1, 10, 0, 0).unwrap();
        assert_eq!(launches.refill(0.0, t, t + Duration::milliseconds(1500)), 3.0);
        assert_eq!(launches.refill(4.0, t, t + Duration::seconds(10)), 5.0);
        assert_eq!(launches.wait_for(0.5, 1.0), Duration::milliseconds(250));
        assert_eq!(launches.wait_for(3.0, 1.0), Duration::zero());
        assert_eq!(launches.wait_for(5.0, 40.0), Duration::zero(), "a wish beyond the burst takes a full bucket");
    }

    #[test]
    fn the_user_data_is_a_cloud_config_that_yaml_and_json_both_read() {
        let text = cloud_init(&Bootstrap {
            server_url: "https://fleetyard.example.org",
            agent_url: "https://fleetyard.example.org/api/v1/agent/binaries/x86_64",
            agent_sha256: Some("ab".repeat(32).as_str()),
            launch_secret: "fylaunch_secret",
            lease_user: "root",
        });
        let (first, rest) = text.split_once('\n').unwrap();
        assert_eq!(first, "#cloud-config");
        let doc: serde_json::Value = serde_json::from_str(rest).unwrap();
        let bootstrap: serde_json::Value =
            serde_json::from_str(doc["write_files"][0]["content"].as_str().unwrap()).unwrap();
        assert_eq!(bootstrap["launch_secret"], "fylaunch_secret");
        assert!(doc["runcmd"][0][2].as_str().unwrap().contains("sha256sum -c"));
        // Jobs run as their own user; the lease account takes keys from the agent only.
        let file = |path: &str| {
            doc["write_files"].as_array().unwrap().iter().find(|f| f["path"] == path).unwrap()["content"]
                .as_str()
                .unwrap()
                .to_owned()
        };
        assert!(file("/etc/fleetyard-agent/agent.toml").contains("job_user = \"fleetyard-job\""));
        assert!(
            doc["runcmd"][0][2]
                .as_str()
                .unwrap()
                .contains("useradd --system --no-create-home --shell /usr/sbin/nologin fleetyard-job")
        );
        assert!(
            file("/etc/ssh/sshd_config.d/50-fleetyard.conf")
                .contains("Match User root\n    AuthorizedKeysFile none\nMatch all\n")
        );
        assert_eq!(
            file("/etc/systemd/system/fleetyard-agent.service.d/lease-home.conf"),
            "[Service]\nReadWritePaths=-/root\n"
        );
    }
}
