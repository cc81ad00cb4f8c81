//! The clouds behind one interface: [`Provider`], one implementation per vendor (`aws`,
//! `huawei`, `ctyun`), each with its own error type mapped onto the shared
//! [`CloudErrorKind`]s. Nothing outside this module knows which vendor it talks to.
//!
//! A provider is one account in one region. It does what the vendor's API does and no more:
//! it never retries on its own (the cloud worker decides, with the idempotency token it
//! recorded before the call) and never touches the database.

pub mod aws;
pub mod ctyun;
pub mod huawei;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::config::clouds::{AccountConfig, CloudsConfig, RegionConfig};
use crate::domain::CloudProvider;
use crate::domain::cloud::{CloudErrorKind, Market};

/// The tag every instance Fleetyard launches carries, with the platform's name as its value:
/// instances without it are never Fleetyard's to terminate.
/// (Keys use `-`, not `:`: Huawei Cloud's tag keys allow no colon.)
pub const TAG_PLATFORM: &str = "fleetyard-platform";
/// The launch (one call, one idempotency token) an instance came from.
pub const TAG_LAUNCH: &str = "fleetyard-launch";
/// The instance's row in `cloud_instances`.
pub const TAG_INSTANCE: &str = "fleetyard-instance";
/// The lease it was launched for.
pub const TAG_LEASE: &str = "fleetyard-lease";

/// A failed cloud call, as the rest of Fleetyard sees it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {code}: {message}")]
pub struct CloudError {
    pub kind: CloudErrorKind,
    /// The vendor's own code (`InsufficientInstanceCapacity`, `Ecs.0000`, ...).
    pub code: String,
    pub message: String,
}

impl CloudError {
    pub fn new(kind: CloudErrorKind, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self { kind, code: code.into(), message: message.into() }
    }

    /// A call that did not answer in time: its outcome is unknown.
    pub fn timed_out(what: &str, after: Duration) -> Self {
        Self::new(CloudErrorKind::Transient, "timeout", format!("{what} did not answer within {after:?}"))
    }
}

/// One launch call: `count` instances of one flavour and image, all with the same tags and
/// user data, made idempotent by `client_token`. Its `Debug` leaves the user data out: it
/// holds the launch's secret.
#[derive(Clone)]
pub struct LaunchSpec {
    /// Recorded before the call; the same token never launches twice, and is never reused
    /// for another flavour, zone or market.
    pub client_token: String,
    /// A name for the instances (vendors that need unique names get a suffix each).
    pub name: String,
    pub count: u32,
    pub flavour: String,
    pub image: String,
    pub market: Market,
    pub tags: BTreeMap<String, String>,
    /// The cloud-init document, as text (providers encode it as their API wants).
    pub user_data: String,
}

impl std::fmt::Debug for LaunchSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaunchSpec")
            .field("client_token", &self.client_token)
            .field("name", &self.name)
            .field("count", &self.count)
            .field("flavour", &self.flavour)
            .field("image", &self.image)
            .field("market", &self.market)
            .field("tags", &self.tags)
            .field("user_data", &"***")
            .finish()
    }
}

/// What a launch call achieved.
#[derive(Debug, Clone, Default)]
pub struct Launched {
    /// The ids of the instances that exist, at most `count`.
    pub instance_ids: Vec<String>,
    /// Why the rest were not created (a partial batch), if fewer came back than asked.
    pub shortfall: Option<CloudError>,
}

/// An instance's state, normalized over vendors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloudState {
    Pending,
    Running,
    Stopping,
    Stopped,
    /// Being deleted, or gone (vendors that still list terminated instances).
    Terminated,
    Error,
    Unknown,
}

impl CloudState {
    /// Whether it exists and may cost money.
    pub fn is_alive(self) -> bool {
        !matches!(self, CloudState::Terminated)
    }
}

/// An instance as a provider lists it.
#[derive(Debug, Clone)]
pub struct CloudInstance {
    pub id: String,
    pub name: Option<String>,
    pub state: CloudState,
    pub flavour: Option<String>,
    pub zone: Option<String>,
    pub private_ip: Option<String>,
    pub public_ip: Option<String>,
    pub tags: BTreeMap<String, String>,
    pub launched_at: Option<DateTime<Utc>>,
}

impl CloudInstance {
    /// The address Fleetyard gives lease holders: public if it has one.
    pub fn address(&self) -> Option<&str> {
        self.public_ip.as_deref().or(self.private_ip.as_deref())
    }
}

/// Which instances to list.
#[derive(Debug, Clone)]
pub enum Selector {
    /// Those carrying this tag with this value.
    Tag(String, String),
    /// These ids.
    Ids(Vec<String>),
}

/// One account in one region of one cloud.
#[async_trait]
pub trait Provider: Send + Sync {
    fn kind(&self) -> CloudProvider;

    /// The most instances one launch call makes; a bigger batch is split into several launches.
    fn max_per_call(&self) -> u32;

    /// Starts `spec.count` instances in one call (or as few calls as the API allows), with
    /// `spec.tags` on each, and waits for the vendor's asynchronous job or order to say which
    /// exist. Calling again with the same token answers with the same instances.
    async fn launch(&self, spec: &LaunchSpec) -> Result<Launched, CloudError>;

    /// Lists instances, following every page. Terminated instances may or may not appear.
    async fn list(&self, selector: &Selector) -> Result<Vec<CloudInstance>, CloudError>;

    /// Adds tags to one instance (after a batched launch, its row and lease).
    async fn tag(&self, instance_id: &str, tags: &BTreeMap<String, String>) -> Result<(), CloudError>;

    /// Terminates instances. Ids the cloud no longer knows count as terminated.
    async fn terminate(&self, instance_ids: &[String]) -> Result<(), CloudError>;
}

/// Builds the provider for one account's region from the configuration. Tests construct
/// providers the same way, pointed at emulators through `endpoint`.
pub fn connect(
    clouds: &CloudsConfig,
    account: &AccountConfig,
    region: &RegionConfig,
) -> anyhow::Result<Arc<dyn Provider>> {
    let timeout = Duration::from_secs(clouds.attempt_timeout_secs);
    Ok(match account.provider {
        CloudProvider::Aws => Arc::new(aws::Aws::new(account, region, timeout)?),
        CloudProvider::HuaweiCloud => Arc::new(huawei::Huawei::new(account, region, timeout)?),
        CloudProvider::Ctyun => Arc::new(ctyun::Ctyun::new(account, region, timeout)?),
    })
}

/// The providers of every configured account and region, keyed by (account, region).
#[derive(Clone, Default)]
pub struct Clouds {
    providers: BTreeMap<(String, String), Arc<dyn Provider>>,
}

impl Clouds {
    pub fn from_config(clouds: &CloudsConfig) -> anyhow::Result<Self> {
        let mut providers = BTreeMap::new();
        for account in &clouds.accounts {
            for region in &account.regions {
                providers.insert((account.name.clone(), region.name.clone()), connect(clouds, account, region)?);
            }
        }
        Ok(Self { providers })
    }

    /// Replaces (or adds) the provider for one account's region: tests inject emulated ones.
    pub fn insert(&mut self, account: &str, region: &str, provider: Arc<dyn Provider>) {
        self.providers.insert((account.to_owned(), region.to_owned()), provider);
    }

    pub fn get(&self, account: &str, region: &str) -> Option<&Arc<dyn Provider>> {
        self.providers.get(&(account.to_owned(), region.to_owned()))
    }

    pub fn is_empty(&self) -> bool {
        self.providers.is_empty()
    }
}

/// The name Fleetyard gives the instances of a launch: the platform, and the end of the
/// launch's id (with `-0001`... when a vendor numbers a batch's instances).
pub fn instance_name(platform: &str, launch: uuid::Uuid) -> String {
    let simple = launch.simple().to_string();
    format!("{platform}-{}", &simple[simple.len() - 12..])
}

/// Whether `name` is one [`instance_name`] gave for `platform` (where labels bind late, as on
/// CTyun, the name is how Fleetyard recognises its own instances).
pub fn is_instance_name(platform: &str, name: &str) -> bool {
    let Some(rest) = name.strip_prefix(platform).and_then(|r| r.strip_prefix('-')) else { return false };
    let (id, number) = match rest.split_once('-') {
        Some((id, number)) => (id, Some(number)),
        None => (rest, None),
    };
    id.len() == 12
        && id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        && number.is_none_or(|n| n.len() == 4 && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Shared by the REST providers: what a reqwest failure means.
pub(crate) fn transport_error(e: reqwest::Error) -> CloudError {
    let code = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else {
        "transport"
    };
    CloudError::new(CloudErrorKind::Transient, code, e.to_string())
}

/// How long to wait between polls of an asynchronous job or order: quick at first, then
/// every two seconds.
pub(crate) fn poll_delay(attempt: u32) -> Duration {
    Duration::from_millis((100u64 << attempt.min(4)).min(2_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_names_fleetyard_gives_are_recognised_as_its_own() {
        let launch = uuid::Uuid::now_v7();
        let name = instance_name("fleetyard", launch);
        assert!(is_instance_name("fleetyard", &name));
        assert!(is_instance_name("fleetyard", &format!("{name}-0003")), "a batch's numbered instance");
        assert!(!is_instance_name("fleetyard", "fleetyard-web"), "an ops server");
        assert!(!is_instance_name("fleetyard", &name.replace("fleetyard", "fleetyard-staging")));
        assert!(!is_instance_name("fleetyard-staging", &name), "another deployment's");
        assert!(!is_instance_name("fleetyard", &format!("{name}-extra")));
    }
}
