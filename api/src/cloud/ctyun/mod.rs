//! China Telecom Cloud (CTyun) ECS over its OpenAPI v4, behind the EOP gateway and signed
//! with its EOP signature ([`sign`]). Not OpenStack: its own JSON, an envelope whose
//! `statusCode` (800 success, 900 failure) says how a call went even when HTTP says 200, and
//! orders instead of jobs: a create answers with a `masterOrderID`, polled until it names its
//! instances.

pub mod sign;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::Utc;
use reqwest::{Method, Url};
use serde_json::{Value, json};

use super::{
    CloudError, CloudInstance, CloudState, LaunchSpec, Launched, Provider, Selector, poll_delay, transport_error,
};
use crate::config::Secret;
use crate::config::clouds::{AccountConfig, RegionConfig};
use crate::domain::CloudProvider;
use crate::domain::cloud::{CloudErrorKind, Market};

/// An error as CTyun's envelope (or its gateway) reports it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("HTTP {status} {code}: {message}")]
pub struct CtyunError {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl CtyunError {
    /// The gateway's refusals by HTTP status first (it publishes no codes), then the envelope's
    /// `errorCode` (`product.module.code`) by what it names.
    pub fn kind(&self) -> CloudErrorKind {
        match self.status {
            429 => return CloudErrorKind::Throttled,
            401 | 403 => return CloudErrorKind::Auth,
            0 | 500.. => return CloudErrorKind::Transient,
            _ => {}
        }
        let code = self.code.to_ascii_lowercase();
        if code.contains("throttl") || code.contains("flowcontrol") {
            CloudErrorKind::Throttled
        } else if code.contains("quota") || code.contains("balance") {
            CloudErrorKind::Quota
        } else if code.contains("soldout") || code.contains("insufficient") || code.contains("stock") {
            CloudErrorKind::Capacity
        } else if code.contains("auth") || code.contains("signature") {
            CloudErrorKind::Auth
        } else if code.contains("inprogress") || code.contains("internal") {
            CloudErrorKind::Transient
        } else {
            CloudErrorKind::Invalid
        }
    }

    fn is_not_found(&self) -> bool {
        self.code.ends_with("NotFound")
    }
}

impl From<CtyunError> for CloudError {
    fn from(e: CtyunError) -> Self {
        CloudError::new(e.kind(), e.code, e.message)
    }
}

pub struct Ctyun {
    http: reqwest::Client,
    base: Url,
    access_key: Secret,
    secret_key: Secret,
    region: RegionConfig,
    timeout: Duration,
    /// The hours `Eop-date` is ahead of UTC: 8 (Beijing), as the EOP guide says, until a
    /// gateway refuses that and takes UTC (see [`Ctyun::call`]).
    date_offset_hours: AtomicI64,
}

/// `Eop-date`'s conventions: Beijing time, which CTyun's guide documents, and UTC, which an
/// official SDK stamps on a machine whose clock is set to UTC.
const DATE_OFFSETS: [i64; 2] = [8, 0];

/// The most instances one order creates.
const PER_ORDER: u32 = 50;

impl Ctyun {
    pub fn new(account: &AccountConfig, region: &RegionConfig, timeout: Duration) -> anyhow::Result<Self> {
        let credentials = account
            .credentials
            .clone()
            .ok_or_else(|| anyhow::anyhow!("account `{}` has no credentials", account.name))?;
        let base = region.endpoint.clone().unwrap_or_else(|| "https://ctecs-global.ctapi.ctyun.cn".to_owned());
        Ok(Self {
            http: reqwest::Client::builder().timeout(timeout).build()?,
            base: Url::parse(&base)?,
            access_key: credentials.access_key,
            secret_key: credentials.secret_key,
            region: region.clone(),
            timeout,
            date_offset_hours: AtomicI64::new(DATE_OFFSETS[0]),
        })
    }

    /// One signed call; the envelope's `returnObj`, or the error it carried. A gateway that
    /// refuses the signature (401) is asked once more with the other `Eop-date` convention,
    /// which is then kept: the guide says Beijing time, the SDKs stamp their host's local time.
    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(String, String)],
        body: Option<&Value>,
    ) -> Result<Value, CtyunError> {
        let offset = self.date_offset_hours.load(Ordering::Relaxed);
        match self.call_dated(method.clone(), path, query, body, offset).await {
            Err(e) if e.status == 401 => {
                let other = if offset == DATE_OFFSETS[0] { DATE_OFFSETS[1] } else { DATE_OFFSETS[0] };
                let retried = self.call_dated(method, path, query, body, other).await;
                if retried.as_ref().err().is_none_or(|e| e.status != 401) {
                    self.date_offset_hours.store(other, Ordering::Relaxed);
                }
                retried
            }
            answer => answer,
        }
    }

    async fn call_dated(
        &self,
        method: Method,
        path: &str,
        query: &[(String, String)],
        body: Option<&Value>,
        offset_hours: i64,
    ) -> Result<Value, CtyunError> {
        let body = body.map(|b| serde_json::to_vec(b).expect("JSON serializes")).unwrap_or_default();
        let mut url = self.base.clone();
        url.set_path(path);
        let canonical_query = sign::canonical_query(query);
        url.set_query((!canonical_query.is_empty()).then_some(canonical_query.as_str()));
        let request_id = uuid::Uuid::new_v4().to_string();
        let date = sign::eop_date(Utc::now(), offset_hours);
        let signature = sign::sign(query, &body, &request_id, &date, &self.access_key.0, &self.secret_key.0);
        let response = self
            .http
            .request(method, url)
            .header("Content-Type", "application/json")
            .header("ctyun-eop-request-id", &request_id)
            .header("Eop-date", &date)
            .header("Eop-Authorization", &signature.authorization)
            .body(body)
            .send()
            .await
            .map_err(|e| {
                let e = transport_error(e);
                CtyunError { status: 0, code: e.code, message: e.message }
            })?;
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        let envelope: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let code = envelope["statusCode"].as_i64().or_else(|| envelope["statusCode"].as_str()?.parse().ok());
        if (200..300).contains(&status) && code == Some(800) {
            return Ok(envelope["returnObj"].clone());
        }
        let text_of = |v: &Value| v.as_str().map(str::to_owned).filter(|s| !s.is_empty());
        Err(CtyunError {
            status,
            code: text_of(&envelope["errorCode"])
                .or_else(|| text_of(&envelope["error"]))
                .unwrap_or_else(|| format!("HTTP{status}")),
            message: text_of(&envelope["message"])
                .or_else(|| text_of(&envelope["description"]))
                .unwrap_or_else(|| text.chars().take(300).collect()),
        })
    }

    /// Creates `count` instances with one order and polls the order until it names them;
    /// `None` when it was not done within the time limit. One instance is `create-instance`;
    /// several are `batch-create-instances` (`orderCount` up to 50), or, where that call is
    /// unknown (HTTP 404), one `create-instance` each with tokens and names derived from the
    /// batch's, so that a retry repeats exactly the same orders.
    async fn create(&self, spec: &LaunchSpec, token: &str, count: u32) -> Result<Option<Vec<String>>, CloudError> {
        if spec.market == Market::Spot {
            // CTyun has no spot market for ECS; a spot offer is configuration's mistake.
            return Err(CloudError::new(CloudErrorKind::Invalid, "NoSpotMarket", "CTyun ECS has no spot instances"));
        }
        if count == 1 {
            return self.create_with(spec, "/v4/ecs/create-instance", token, &spec.name, None).await;
        }
        match self.create_with(spec, "/v4/ecs/batch-create-instances", token, &spec.name, Some(count)).await {
            Err(e) if e.code == "HTTP404" || e.code.ends_with("ApiNotFound") => {}
            other => return other,
        }
        // What was made before a failure is returned: the caller keeps it (a partial batch).
        let mut ids = Vec::new();
        for i in 0..count {
            let name = format!("{}-{:04}", spec.name, i + 1);
            match self.create_with(spec, "/v4/ecs/create-instance", &format!("{token}-{i}"), &name, None).await {
                Ok(Some(more)) => ids.extend(more),
                Ok(None) if ids.is_empty() => return Ok(None),
                Err(e) if ids.is_empty() => return Err(e),
                Ok(None) | Err(_) => break,
            }
        }
        Ok(Some(ids))
    }

    async fn create_with(
        &self,
        spec: &LaunchSpec,
        path: &str,
        token: &str,
        name: &str,
        count: Option<u32>,
    ) -> Result<Option<Vec<String>>, CloudError> {
        let labels: Vec<Value> = spec.tags.iter().map(|(k, v)| json!({ "labelKey": k, "labelValue": v })).collect();
        let mut body = json!({
            "clientToken": token,
            "regionID": self.region.name,
            "azName": self.region.zone,
            "instanceName": name,
            "displayName": name,
            "flavorID": spec.flavour,
            "imageType": 1,
            "imageID": spec.image,
            "bootDiskType": self.region.disk_type.as_deref().unwrap_or("SATA"),
            "bootDiskSize": 40,
            "vpcID": self.region.vpc_id,
            // Pay by the hour: `false` would buy a monthly instance.
            "onDemand": true,
            "networkCardList": [{ "isMaster": true, "subnetID": self.region.subnet_id }],
            "extIP": "0",
            "userData": STANDARD.encode(&spec.user_data),
            "labelList": labels,
        });
        if let Some(count) = count {
            body["orderCount"] = json!(count);
        }
        if let Some(group) = &self.region.security_group_id {
            body["secGroupList"] = json!([group]);
        }
        let answer = self.call(Method::POST, path, &[], Some(&body)).await?;
        let order = answer["masterOrderID"]
            .as_str()
            .ok_or_else(|| CloudError::new(CloudErrorKind::Transient, "no-order", "the create answer named no order"))?
            .to_owned();
        self.wait_for_order(&order).await
    }

    /// Polls an order: `"14"` while it runs, `"3"` when done (with its instances), anything
    /// else a failure; `None` when it did not end within the time limit.
    async fn wait_for_order(&self, order: &str) -> Result<Option<Vec<String>>, CloudError> {
        let until = tokio::time::Instant::now() + self.timeout;
        let mut attempt = 0;
        loop {
            let query = [("masterOrderID".to_owned(), order.to_owned())];
            let status = self.call(Method::GET, "/v4/ecs/order/query-uuid", &query, None).await?;
            let ids: Vec<String> = status["instanceIDList"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|id| id.as_str().map(str::to_owned))
                .collect();
            match order_status(&status).as_str() {
                "3" => return Ok(Some(ids)),
                "14" | "1" | "2" | "7" | "140" => {}
                other => {
                    return Err(CloudError::new(
                        CloudErrorKind::Capacity,
                        format!("order-status-{other}"),
                        format!("order {order} ended with status {other}"),
                    ));
                }
            }
            if tokio::time::Instant::now() >= until {
                return Ok(None);
            }
            tokio::time::sleep(poll_delay(attempt)).await;
            attempt += 1;
        }
    }
}

fn order_status(status: &Value) -> String {
    status["orderStatus"].as_str().map(str::to_owned).unwrap_or_else(|| status["orderStatus"].to_string())
}

fn instance(value: &Value) -> Option<CloudInstance> {
    let tags: BTreeMap<String, String> = value["labelList"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| Some((l["labelKey"].as_str()?.to_owned(), l["labelValue"].as_str()?.to_owned())))
        .collect();
    Some(CloudInstance {
        id: value["instanceID"].as_str()?.to_owned(),
        name: value["instanceName"].as_str().map(str::to_owned),
        state: match value["instanceStatus"].as_str().unwrap_or_default() {
            "creating" | "starting" | "restarting" | "rebuilding" | "backingup" => CloudState::Pending,
            "running" => CloudState::Running,
            "stopping" => CloudState::Stopping,
            "stopped" | "expired" | "freezing" | "frozen" => CloudState::Stopped,
            "unsubscribing" | "unsubscribed" | "destroying" | "destroyed" => CloudState::Terminated,
            "error" | "create_failed" => CloudState::Error,
            _ => CloudState::Unknown,
        },
        flavour: value["flavor"]["flavorName"].as_str().or(value["flavor"]["flavorID"].as_str()).map(str::to_owned),
        zone: value["azName"].as_str().map(str::to_owned),
        private_ip: value["privateIP"].as_str().map(str::to_owned),
        public_ip: value["floatingIP"].as_str().filter(|s| !s.is_empty()).map(str::to_owned),
        tags,
        launched_at: value["createdTime"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.into()),
    })
}

#[async_trait]
impl Provider for Ctyun {
    fn kind(&self) -> CloudProvider {
        CloudProvider::Ctyun
    }

    /// `orderCount` is at most 50.
    fn max_per_call(&self) -> u32 {
        PER_ORDER
    }

    /// One order per 50 instances, each with a token derived from the launch's, so that a
    /// retry of the launch repeats exactly the same orders.
    async fn launch(&self, spec: &LaunchSpec) -> Result<Launched, CloudError> {
        let mut instance_ids = Vec::new();
        let mut shortfall = None;
        let orders = spec.count.div_ceil(PER_ORDER);
        for i in 0..orders {
            let count = (spec.count - i * PER_ORDER).min(PER_ORDER);
            let token = if orders == 1 { spec.client_token.clone() } else { format!("{}-{i}", spec.client_token) };
            match self.create(spec, &token, count).await {
                Ok(Some(ids)) => {
                    if ids.len() < count as usize {
                        shortfall.get_or_insert_with(|| {
                            CloudError::new(CloudErrorKind::Capacity, "partial-order", "fewer instances than ordered")
                        });
                    }
                    instance_ids.extend(ids);
                }
                Ok(None) => return Err(CloudError::timed_out("a create order", self.timeout)),
                Err(e) if instance_ids.is_empty() => return Err(e),
                Err(e) => {
                    shortfall = Some(e);
                    break;
                }
            }
        }
        if instance_ids.is_empty() {
            return Err(
                shortfall.unwrap_or_else(|| CloudError::new(CloudErrorKind::Capacity, "empty-order", "no instance"))
            );
        }
        Ok(Launched { instance_ids, shortfall })
    }

    async fn list(&self, selector: &Selector) -> Result<Vec<CloudInstance>, CloudError> {
        const PAGE: usize = 50;
        let mut found = Vec::new();
        let batches: Vec<Option<String>> = match selector {
            // Labels may bind minutes after an instance runs: list everything, filter here.
            Selector::Tag(..) => vec![None],
            Selector::Ids(ids) => ids.chunks(PAGE).map(|chunk| Some(chunk.join(","))).collect(),
        };
        for ids in batches {
            for page in 1.. {
                let mut body = json!({ "regionID": self.region.name, "pageNo": page, "pageSize": PAGE });
                if let Some(ids) = &ids {
                    body["instanceIDList"] = json!(ids);
                }
                let answer = self.call(Method::POST, "/v4/ecs/list-instances", &[], Some(&body)).await?;
                // A listing that cannot be read is an error, never an empty cloud.
                let results = answer["results"].as_array().cloned().ok_or_else(|| {
                    CloudError::new(CloudErrorKind::Transient, "unreadable-list", "the instance list had no `results`")
                })?;
                found.extend(results.iter().filter_map(instance));
                let done = match answer["totalPage"].as_u64() {
                    Some(pages) => page as u64 >= pages,
                    None => results.len() < PAGE,
                };
                if done || results.is_empty() {
                    break;
                }
            }
        }
        if let Selector::Tag(key, value) = selector {
            // Listings carry no labels: the platform's instances are known by the names
            // Fleetyard gives them.
            found.retain(|i| {
                i.tags.get(key) == Some(value)
                    || (key == super::TAG_PLATFORM
                        && i.name.as_deref().is_some_and(|n| super::is_instance_name(value, n)))
            });
        }
        Ok(found)
    }

    /// Binds labels to one instance (`batch-operate-label`).
    async fn tag(&self, instance_id: &str, tags: &BTreeMap<String, String>) -> Result<(), CloudError> {
        let labels: Vec<Value> = tags.iter().map(|(k, v)| json!({ "labelKey": k, "labelValue": v })).collect();
        let body = json!({
            "regionID": self.region.name,
            "instanceIDList": instance_id,
            "operateType": "BIND",
            "labelList": labels,
        });
        self.call(Method::POST, "/v4/ecs/batch-operate-label", &[], Some(&body)).await?;
        Ok(())
    }

    /// `unsubscribe-instance` releases a pay-by-the-hour instance (`destroy-instance` only
    /// destroys prepaid ones already unsubscribed; it is the fallback where the first is
    /// unknown). An instance CTyun no longer knows is gone.
    async fn terminate(&self, instance_ids: &[String]) -> Result<(), CloudError> {
        for id in instance_ids {
            let body = json!({
                "clientToken": format!("release-{id}"),
                "regionID": self.region.name,
                "instanceID": id,
            });
            let mut released = self.call(Method::POST, "/v4/ecs/unsubscribe-instance", &[], Some(&body)).await;
            if released.as_ref().is_err_and(|e| e.status == 404) {
                released = self.call(Method::POST, "/v4/ecs/destroy-instance", &[], Some(&body)).await;
            }
            match released {
                Ok(answer) => {
                    if let Some(order) = answer["masterOrderID"].as_str()
                        && self.wait_for_order(order).await?.is_none()
                    {
                        return Err(CloudError::timed_out("a release order", self.timeout));
                    }
                }
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}
