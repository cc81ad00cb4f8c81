//! AWS EC2 through `aws-sdk-ec2`. One `RunInstances` call per launch, `MinCount` and
//! `MaxCount` both the batch: all or nothing, so that a batch EC2 can only half start fails
//! over whole to the next offer instead of leaving half its leases to wait out a capacity
//! backoff (moto, the emulator the tests use, starts `MinCount` instances, which makes the
//! same choice testable). The launch's `ClientToken` and the platform's tags go in the call,
//! so an instance never exists untagged. The SDK's own retries are off: the cloud worker
//! retries with the same token, the reconcile resolves what is left unknown.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_ec2::config::retry::RetryConfig;
use aws_sdk_ec2::config::timeout::TimeoutConfig;
use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{
    Filter, InstanceMarketOptionsRequest, InstanceStateName, InstanceType, MarketType, Placement, ResourceType, Tag,
    TagSpecification,
};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::{CloudError, CloudInstance, CloudState, LaunchSpec, Launched, Provider, Selector};
use crate::config::clouds::{AccountConfig, RegionConfig};
use crate::domain::CloudProvider;
use crate::domain::cloud::{CloudErrorKind, Market};

/// An EC2 error as the API named it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct AwsError {
    pub code: String,
    pub message: String,
}

impl AwsError {
    /// EC2's codes, by what they mean for Fleetyard (the EC2 API reference's error codes,
    /// and the capacity codes Karpenter treats as "insufficient capacity").
    pub fn kind(&self) -> CloudErrorKind {
        match self.code.as_str() {
            "InsufficientInstanceCapacity"
            | "InsufficientHostCapacity"
            | "InsufficientReservedInstanceCapacity"
            | "InsufficientCapacity"
            | "UnfulfillableCapacity"
            | "Unsupported"
            | "MaxSpotInstanceCountExceeded"
            | "SpotMaxPriceTooLow"
            | "InsufficientFreeAddressesInSubnet" => CloudErrorKind::Capacity,
            "InstanceLimitExceeded" | "VcpuLimitExceeded" | "ResourceLimitExceeded" | "PendingVerification" => {
                CloudErrorKind::Quota
            }
            "RequestLimitExceeded" | "Throttling" | "ThrottlingException" => CloudErrorKind::Throttled,
            "AuthFailure"
            | "UnauthorizedOperation"
            | "InvalidClientTokenId"
            | "SignatureDoesNotMatch"
            | "OptInRequired"
            | "Blocked"
            | "AccessDenied" => CloudErrorKind::Auth,
            "InternalError" | "InternalFailure" | "ServiceUnavailable" | "Unavailable" | "timeout" | "transport" => {
                CloudErrorKind::Transient
            }
            _ => CloudErrorKind::Invalid,
        }
    }
}

impl From<AwsError> for CloudError {
    fn from(e: AwsError) -> Self {
        CloudError::new(e.kind(), e.code, e.message)
    }
}

/// Reads the code and message of any SDK failure; one that never reached EC2 (a timeout, a
/// refused connection) is transient.
fn aws_error<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(e: SdkError<E, R>) -> AwsError {
    match &e {
        SdkError::ServiceError(service) => {
            let err = service.err();
            AwsError {
                code: err.code().unwrap_or("Unknown").to_owned(),
                message: err.message().unwrap_or_default().to_owned(),
            }
        }
        SdkError::TimeoutError(_) => AwsError { code: "timeout".into(), message: "EC2 did not answer in time".into() },
        other => {
            AwsError { code: "transport".into(), message: aws_sdk_ec2::error::DisplayErrorContext(other).to_string() }
        }
    }
}

pub struct Aws {
    client: aws_sdk_ec2::Client,
    zone: Option<String>,
    subnet_id: Option<String>,
    security_group_id: Option<String>,
}

impl Aws {
    pub fn new(account: &AccountConfig, region: &RegionConfig, timeout: Duration) -> anyhow::Result<Self> {
        let credentials = account
            .credentials
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("account `{}` has no credentials", account.name))?;
        let mut config = aws_sdk_ec2::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(region.name.clone()))
            .credentials_provider(Credentials::new(
                credentials.access_key.0.clone(),
                credentials.secret_key.0.clone(),
                None,
                None,
                "fleetyard-configuration",
            ))
            .retry_config(RetryConfig::disabled())
            .timeout_config(TimeoutConfig::builder().operation_timeout(timeout).build());
        if let Some(endpoint) = &region.endpoint {
            config = config.endpoint_url(endpoint.clone());
        }
        Ok(Self {
            client: aws_sdk_ec2::Client::from_conf(config.build()),
            zone: region.zone.clone(),
            subnet_id: region.subnet_id.clone(),
            security_group_id: region.security_group_id.clone(),
        })
    }
}

fn tags(map: &BTreeMap<String, String>) -> Vec<Tag> {
    map.iter().map(|(k, v)| Tag::builder().key(k).value(v).build()).collect()
}

fn instance(i: &aws_sdk_ec2::types::Instance) -> Option<CloudInstance> {
    let state = match i.state().and_then(|s| s.name()) {
        Some(InstanceStateName::Pending) => CloudState::Pending,
        Some(InstanceStateName::Running) => CloudState::Running,
        Some(InstanceStateName::Stopping) => CloudState::Stopping,
        Some(InstanceStateName::Stopped) => CloudState::Stopped,
        Some(InstanceStateName::ShuttingDown | InstanceStateName::Terminated) => CloudState::Terminated,
        _ => CloudState::Unknown,
    };
    let tags: BTreeMap<String, String> =
        i.tags().iter().filter_map(|t| Some((t.key()?.to_owned(), t.value().unwrap_or_default().to_owned()))).collect();
    Some(CloudInstance {
        id: i.instance_id()?.to_owned(),
        name: tags.get("Name").cloned(),
        state,
        flavour: i.instance_type().map(|t| t.as_str().to_owned()),
        zone: i.placement().and_then(|p| p.availability_zone()).map(str::to_owned),
        private_ip: i.private_ip_address().map(str::to_owned),
        public_ip: i.public_ip_address().map(str::to_owned),
        tags,
        launched_at: i.launch_time().and_then(|t| chrono::DateTime::from_timestamp(t.secs(), t.subsec_nanos())),
    })
}

#[async_trait]
impl Provider for Aws {
    fn kind(&self) -> CloudProvider {
        CloudProvider::Aws
    }

    /// `MaxCount` has no limit of its own; EC2's instance bucket holds 1,000.
    fn max_per_call(&self) -> u32 {
        1_000
    }

    async fn launch(&self, spec: &LaunchSpec) -> Result<Launched, CloudError> {
        let count = i32::try_from(spec.count.max(1)).unwrap_or(i32::MAX);
        let mut all_tags = spec.tags.clone();
        all_tags.entry("Name".into()).or_insert_with(|| spec.name.clone());
        let mut call = self
            .client
            .run_instances()
            .image_id(&spec.image)
            .instance_type(InstanceType::from(spec.flavour.as_str()))
            .min_count(count)
            .max_count(count)
            .client_token(&spec.client_token)
            .user_data(STANDARD.encode(&spec.user_data))
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::Instance)
                    .set_tags(Some(tags(&all_tags)))
                    .build(),
            );
        if spec.market == Market::Spot {
            call = call
                .instance_market_options(InstanceMarketOptionsRequest::builder().market_type(MarketType::Spot).build());
        }
        if let Some(zone) = &self.zone {
            call = call.placement(Placement::builder().availability_zone(zone).build());
        }
        if let Some(subnet) = &self.subnet_id {
            call = call.subnet_id(subnet);
        }
        if let Some(group) = &self.security_group_id {
            call = call.security_group_ids(group);
        }
        let output = call.send().await.map_err(|e| CloudError::from(aws_error(e)))?;
        let instance_ids: Vec<String> =
            output.instances().iter().filter_map(|i| i.instance_id().map(str::to_owned)).collect();
        let shortfall = (instance_ids.len() < spec.count as usize).then(|| {
            CloudError::new(
                CloudErrorKind::Capacity,
                "InsufficientInstanceCapacity",
                format!("EC2 started {} of {} instances", instance_ids.len(), spec.count),
            )
        });
        Ok(Launched { instance_ids, shortfall })
    }

    async fn list(&self, selector: &Selector) -> Result<Vec<CloudInstance>, CloudError> {
        let mut found = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let mut call = self.client.describe_instances().set_next_token(next.take());
            call = match selector {
                Selector::Tag(key, value) => {
                    call.filters(Filter::builder().name(format!("tag:{key}")).values(value).build()).max_results(1000)
                }
                Selector::Ids(ids) => call.set_instance_ids(Some(ids.clone())),
            };
            let output = match call.send().await {
                Ok(output) => output,
                // Asked for ids EC2 does not know (any more): they are gone.
                Err(e) => {
                    let e = aws_error(e);
                    if e.code == "InvalidInstanceID.NotFound" {
                        if let Selector::Ids(ids) = selector
                            && ids.len() > 1
                        {
                            return self.list_one_by_one(ids).await;
                        }
                        return Ok(found);
                    }
                    return Err(e.into());
                }
            };
            found.extend(output.reservations().iter().flat_map(|r| r.instances()).filter_map(instance));
            match output.next_token() {
                Some(token) if !token.is_empty() => next = Some(token.to_owned()),
                _ => return Ok(found),
            }
        }
    }

    async fn tag(&self, instance_id: &str, tags_to_add: &BTreeMap<String, String>) -> Result<(), CloudError> {
        self.client
            .create_tags()
            .resources(instance_id)
            .set_tags(Some(tags(tags_to_add)))
            .send()
            .await
            .map(drop)
            .map_err(|e| CloudError::from(aws_error(e)))
    }

    async fn terminate(&self, instance_ids: &[String]) -> Result<(), CloudError> {
        if instance_ids.is_empty() {
            return Ok(());
        }
        match self.client.terminate_instances().set_instance_ids(Some(instance_ids.to_vec())).send().await {
            Ok(_) => Ok(()),
            Err(e) => {
                let e = aws_error(e);
                if e.code != "InvalidInstanceID.NotFound" {
                    return Err(e.into());
                }
                // One unknown id fails the whole call: the others one by one.
                for id in instance_ids.iter().filter(|_| instance_ids.len() > 1) {
                    if let Err(e) = self.client.terminate_instances().instance_ids(id).send().await {
                        let e = aws_error(e);
                        if e.code != "InvalidInstanceID.NotFound" {
                            return Err(e.into());
                        }
                    }
                }
                Ok(())
            }
        }
    }
}

impl Aws {
    async fn list_one_by_one(&self, ids: &[String]) -> Result<Vec<CloudInstance>, CloudError> {
        let mut found = Vec::new();
        for id in ids {
            found.extend(self.list(&Selector::Ids(vec![id.clone()])).await?);
        }
        Ok(found)
    }
}
