//! The clouds' configuration: accounts, their regions, and per region the catalogue (flavours
//! with their architecture, size and price; images per architecture) and the rate limits.
//! It lives in the TOML file (`[clouds]`, `[[clouds.accounts]]`); credentials come from the
//! environment or from files and are held as [`Secret`]s, which never print.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use super::Secret;
use crate::domain::cloud::{Backoff, Bucket, Market, Offer, micros_of};
use crate::domain::{Arch, CloudProvider, Labels};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CloudsConfig {
    /// Off: this replica's cloud worker makes no cloud calls and changes no instance (another
    /// replica's does; the reconcile, a schedule, runs where schedules run).
    pub worker: bool,
    /// The value of the `fleetyard-platform` tag on every instance this deployment launches.
    /// Two deployments sharing an account must use different names: each reconciles only its
    /// own instances.
    pub platform: String,
    /// The URL agents on cloud instances reach this server at. Their cloud-init downloads
    /// the agent from it and enrolls with it. Required once an account is configured.
    pub agent_server_url: String,
    /// Where the agent binaries are that the server hands out at
    /// `GET /api/v1/agent/binaries/{arch}`: files named `fleetyard-agent-<arch>`.
    pub agent_binaries_dir: Option<PathBuf>,
    /// An instance whose agent has not enrolled and beaten by then is terminated and its
    /// request placed again; its launch's secret stops working.
    pub boot_timeout_secs: u64,
    /// The hard time limit of one cloud call (a launch includes polling its job or order).
    pub attempt_timeout_secs: u64,
    /// How long intents gather before the cloud worker launches them, so that requests of
    /// one burst become one call per flavour.
    pub batch_window_millis: u64,
    /// How long a flavour stays out of placement after a capacity failure...
    pub capacity_backoff_secs: u64,
    /// ...a region (or an account, for refused credentials) after a quota failure...
    pub quota_backoff_secs: u64,
    /// ...and a region after throttling.
    pub throttle_backoff_secs: u64,
    /// The reconcile's patience, because clouds list new instances, and forget deleted ones,
    /// a little late: an untracked instance younger than this is no orphan yet, and a row's
    /// instance must be missing from two listings this far apart to count as lost.
    pub reconcile_grace_secs: u64,
    /// The tolerance of a `placement: any` request that names none: how long it may wait for
    /// the labs before a cloud instance is launched for it.
    pub default_max_lab_wait_minutes: i64,
    /// The currency of every price and budget here (one, for all providers).
    pub currency: String,
    /// Monthly cloud budgets by tenant, in `currency`.
    pub tenant_budgets: BTreeMap<String, f64>,
    /// The budget of a tenant not named in `tenant_budgets`; 0: no cloud for it.
    pub default_tenant_budget: f64,
    pub accounts: Vec<AccountConfig>,
}

impl Default for CloudsConfig {
    fn default() -> Self {
        Self {
            worker: true,
            platform: "fleetyard".into(),
            agent_server_url: String::new(),
            agent_binaries_dir: None,
            boot_timeout_secs: 600,
            attempt_timeout_secs: 90,
            batch_window_millis: 300,
            capacity_backoff_secs: 180,
            quota_backoff_secs: 1800,
            throttle_backoff_secs: 30,
            reconcile_grace_secs: 60,
            default_max_lab_wait_minutes: 10,
            currency: "USD".into(),
            tenant_budgets: BTreeMap::new(),
            default_tenant_budget: 0.0,
            accounts: Vec::new(),
        }
    }
}

/// One account with one provider.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountConfig {
    /// A name for this account, unique in the configuration: `aws-main`.
    pub name: String,
    pub provider: CloudProvider,
    /// The access key id (AWS), AK (Huawei Cloud, CTyun): from this environment variable...
    #[serde(default)]
    pub access_key_env: Option<String>,
    /// ...or from this file.
    #[serde(default)]
    pub access_key_file: Option<PathBuf>,
    /// The secret key (SK), from an environment variable or a file.
    #[serde(default)]
    pub secret_key_env: Option<String>,
    #[serde(default)]
    pub secret_key_file: Option<PathBuf>,
    /// Instances this account may run at once (Fleetyard's, over all its regions).
    pub max_instances: i64,
    pub regions: Vec<RegionConfig>,
    /// Resolved at load; never in the file.
    #[serde(skip)]
    pub credentials: Option<Credentials>,
}

/// An account's keys, read from where the configuration says.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub access_key: Secret,
    pub secret_key: Secret,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionConfig {
    /// The vendor's region name: `us-east-1`, `cn-north-4`, `cn-huadong1`.
    pub name: String,
    /// The API's base URL, when not the vendor's public one (an emulator, a private link).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Huawei Cloud: the project id of this region.
    #[serde(default)]
    pub project_id: Option<String>,
    /// The zone instances go to; the vendor chooses when unset.
    #[serde(default)]
    pub zone: Option<String>,
    /// The network instances join (required by Huawei Cloud and CTyun; optional on AWS).
    #[serde(default)]
    pub vpc_id: Option<String>,
    #[serde(default)]
    pub subnet_id: Option<String>,
    #[serde(default)]
    pub security_group_id: Option<String>,
    /// The root disk type (Huawei Cloud `SSD`, CTyun `SATA`...), where the API asks for one.
    #[serde(default)]
    pub disk_type: Option<String>,
    #[serde(default)]
    pub rate_limits: RateLimits,
    pub flavours: Vec<FlavourConfig>,
    pub images: Vec<ImageConfig>,
}

/// Token buckets per account and region, as the vendors throttle. The defaults are EC2's
/// published limits for RunInstances: a burst of 5 calls then 2 a second, and of 1,000
/// instances then 2 a second.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimits {
    pub launch_calls: Bucket,
    pub launch_instances: Bucket,
    /// Every other call: list, tag, terminate.
    pub other_calls: Bucket,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            launch_calls: Bucket { burst: 5.0, per_sec: 2.0 },
            launch_instances: Bucket { burst: 1000.0, per_sec: 2.0 },
            other_calls: Bucket { burst: 100.0, per_sec: 20.0 },
        }
    }
}

/// A flavour (instance type) as the catalogue offers it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlavourConfig {
    /// The vendor's name: `c6i.xlarge`, `c7.xlarge.2`, `s7.xlarge.2`.
    pub name: String,
    pub arch: Arch,
    pub cores: i32,
    pub memory_gib: i64,
    /// The root disk instances get.
    pub disk_gib: i64,
    /// In the configuration's currency.
    pub hourly_price: f64,
    #[serde(default = "on_demand")]
    pub market: Market,
    /// Labels its instances carry, for requests that ask for them.
    #[serde(default)]
    pub labels: Labels,
    /// Fresh, never-used instances of this flavour to keep ready (a warm pool).
    #[serde(default)]
    pub min_idle: i64,
}

fn on_demand() -> Market {
    Market::OnDemand
}

/// The image instances of an architecture boot.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageConfig {
    /// The vendor's image id: `ami-...`, a Huawei image UUID, a CTyun image id.
    pub id: String,
    pub arch: Arch,
    /// What it is, for people: `openEuler 24.03 LTS`.
    pub os: String,
    /// The account lease holders log in as.
    #[serde(default = "root")]
    pub ssh_user: String,
}

fn root() -> String {
    "root".into()
}

impl CloudsConfig {
    /// Reads every account's credentials from where the configuration says, and checks the
    /// catalogue. A missing variable or file is an error here, at start-up, naming it.
    pub fn resolve(&mut self) -> anyhow::Result<()> {
        let mut names = std::collections::BTreeSet::new();
        let platform_ok = (1..=32).contains(&self.platform.len())
            && self.platform.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !self.platform.starts_with('-');
        if !platform_ok {
            bail!(
                "clouds.platform must be 1 to 32 lowercase letters, digits or '-' (it names instances and tags them)"
            );
        }
        if let Some(u) = self.accounts.iter().flat_map(|a| &a.regions).find_map(|r| r.endpoint.as_ref()) {
            reqwest::Url::parse(u).with_context(|| format!("clouds: the endpoint `{u}` is not a URL"))?;
        }
        if !self.accounts.is_empty() && self.agent_server_url.is_empty() {
            bail!("clouds.agent_server_url must be set once a cloud account is configured");
        }
        for account in &mut self.accounts {
            if !names.insert(account.name.clone()) {
                bail!("clouds: two accounts are named `{}`", account.name);
            }
            let name = account.name.clone();
            let read = |env: &Option<String>, file: &Option<PathBuf>, what: &str| -> anyhow::Result<Secret> {
                match (env, file) {
                    (Some(var), None) => std::env::var(var)
                        .map(|v| Secret(v.trim().to_owned()))
                        .with_context(|| format!("clouds account `{name}`: the environment has no {var} ({what})")),
                    (None, Some(path)) => std::fs::read_to_string(path)
                        .map(|v| Secret(v.trim().to_owned()))
                        .with_context(|| format!("clouds account `{name}`: reading {what} from {}", path.display())),
                    _ => bail!("clouds account `{name}`: give exactly one of {what}_env and {what}_file"),
                }
            };
            let access_key = read(&account.access_key_env, &account.access_key_file, "access_key")?;
            let secret_key = read(&account.secret_key_env, &account.secret_key_file, "secret_key")?;
            account.credentials = Some(Credentials { access_key, secret_key });
            if account.max_instances < 0 {
                bail!("clouds account `{name}`: max_instances must not be negative");
            }
            for region in &account.regions {
                let limits = &region.rate_limits;
                for (which, bucket) in [
                    ("launch_calls", limits.launch_calls),
                    ("launch_instances", limits.launch_instances),
                    ("other_calls", limits.other_calls),
                ] {
                    if !(bucket.burst >= 1.0
                        && bucket.per_sec > 0.0
                        && bucket.burst.is_finite()
                        && bucket.per_sec.is_finite())
                    {
                        bail!(
                            "clouds account `{name}`, region `{}`: rate_limits.{which} needs burst ≥ 1 and per_sec > 0",
                            region.name
                        );
                    }
                }
                if account.provider == CloudProvider::HuaweiCloud && region.project_id.is_none() {
                    bail!("clouds account `{name}`, region `{}`: Huawei Cloud needs a project_id", region.name);
                }
                if account.provider != CloudProvider::Aws && (region.vpc_id.is_none() || region.subnet_id.is_none()) {
                    bail!("clouds account `{name}`, region `{}`: vpc_id and subnet_id are required", region.name);
                }
                for flavour in &region.flavours {
                    if !region.images.iter().any(|i| i.arch == flavour.arch) {
                        bail!(
                            "clouds account `{name}`, region `{}`: flavour `{}` is {} but no image is",
                            region.name,
                            flavour.name,
                            flavour.arch
                        );
                    }
                    if !(flavour.hourly_price.is_finite() && flavour.hourly_price >= 0.0) || flavour.cores < 1 {
                        bail!("clouds account `{name}`: flavour `{}` needs cores ≥ 1 and a price ≥ 0", flavour.name);
                    }
                }
            }
        }
        Ok(())
    }

    /// Every offer in the catalogue.
    pub fn offers(&self) -> Vec<Offer> {
        let mut offers = Vec::new();
        for account in &self.accounts {
            for region in &account.regions {
                for f in &region.flavours {
                    offers.push(Offer {
                        account: account.name.clone(),
                        provider: account.provider,
                        region: region.name.clone(),
                        flavour: f.name.clone(),
                        market: f.market,
                        arch: f.arch,
                        cores: f.cores,
                        memory_mib: f.memory_gib * 1024,
                        disk_gib: f.disk_gib,
                        labels: f.labels.clone(),
                        hourly_micros: micros_of(f.hourly_price),
                    });
                }
            }
        }
        offers
    }

    pub fn account(&self, name: &str) -> Option<&AccountConfig> {
        self.accounts.iter().find(|a| a.name == name)
    }

    pub fn region(&self, account: &str, region: &str) -> Option<(&AccountConfig, &RegionConfig)> {
        let account = self.account(account)?;
        Some((account, account.regions.iter().find(|r| r.name == region)?))
    }

    /// The image for `arch` in a region.
    pub fn image(&self, account: &str, region: &str, arch: Arch) -> Option<&ImageConfig> {
        self.region(account, region)?.1.images.iter().find(|i| i.arch == arch)
    }

    /// What a tenant may spend a month, in millionths.
    pub fn budget_of(&self, tenant: &str) -> i64 {
        micros_of(self.tenant_budgets.get(tenant).copied().unwrap_or(self.default_tenant_budget))
    }

    /// How many never-used instances of a flavour to keep ready.
    pub fn min_idle(&self, account: &str, region: &str, flavour: &str, market: Market) -> i64 {
        self.region(account, region)
            .and_then(|(_, r)| r.flavours.iter().find(|f| f.name == flavour && f.market == market))
            .map_or(0, |f| f.min_idle)
    }

    pub fn backoff(&self) -> Backoff {
        use chrono::Duration;
        Backoff {
            capacity: Duration::seconds(self.capacity_backoff_secs as i64),
            quota: Duration::seconds(self.quota_backoff_secs as i64),
            throttled: Duration::seconds(self.throttle_backoff_secs as i64),
        }
    }
}

#[cfg(test)]
mod tests {
    use figment::Figment;
    use figment::providers::{Format, Toml};

    use super::*;

    /// `deploy/clouds.example.toml` is a configuration Fleetyard reads: every offer has an
    /// image, every provider its required settings.
    #[test]
    fn the_example_catalogue_parses_and_is_complete() {
        let mut clouds: CloudsConfig = Figment::from(Toml::string(include_str!("../../../deploy/clouds.example.toml")))
            .extract_inner("clouds")
            .expect("the example parses");
        assert_eq!(clouds.accounts.len(), 3);
        let offers = clouds.offers();
        assert!(offers.iter().any(|o| o.market == Market::Spot) && offers.len() >= 6);
        for account in &mut clouds.accounts {
            // Credentials from files that exist, so that the rest of the checks run.
            account.access_key_env = None;
            account.secret_key_env = None;
            account.access_key_file = Some("Cargo.toml".into());
            account.secret_key_file = Some("Cargo.toml".into());
        }
        clouds.resolve().expect("the example is a valid catalogue");
        assert_eq!(clouds.min_idle("aws-main", "us-east-1", "c7g.xlarge", Market::OnDemand), 1);
    }
}
