//! Huawei Cloud ECS over its REST API, signed with `SDK-HMAC-SHA256` ([`sign`]). A launch is
//! one `POST /v1/{project_id}/cloudservers` with `count` (up to 100) and the launch's
//! `X-Client-Token`; the answer is an asynchronous job, polled to its end, whose `sub_jobs`
//! say which servers exist and why the others failed.

pub mod sign;

use std::collections::BTreeMap;
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

/// An error as Huawei Cloud's gateway or ECS reports it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("HTTP {status} {code}: {message}")]
pub struct HuaweiError {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl HuaweiError {
    /// The gateway's and ECS's codes, by what they mean for Fleetyard.
    pub fn kind(&self) -> CloudErrorKind {
        let code = self.code.as_str();
        if self.status == 429 || code == "APIGW.0308" || code == "Ecs.0069" {
            return CloudErrorKind::Throttled;
        }
        if matches!(self.status, 401 | 403) || code.starts_with("APIGW.03") || code.starts_with("APIGW.01") {
            return CloudErrorKind::Auth;
        }
        // ECS's error-code table (ecs_07_0002).
        match code {
            // "Insufficient flavor capacity", and the spot and resource-pool variants.
            "Ecs.0319" | "Ecs.0013" | "Ecs.0064" | "Ecs.0132" | "Ecs.0248" => CloudErrorKind::Capacity,
            // "Insufficient quota" (instances, cores, memory), or the account's balance.
            "Ecs.0001" | "Ecs.0605" | "Ecs.0606" | "Ecs.0607" | "Ecs.0608" | "Common.0024" => CloudErrorKind::Quota,
            _ if self.status >= 500 || self.status == 0 => CloudErrorKind::Transient,
            _ => CloudErrorKind::Invalid,
        }
    }

    /// Reads an error body the way the SDK's `DefaultExceptionHandler` does: `error_code` /
    /// `error_msg`, then `errorCode` / `errorMsg`, then `code` / `message`, looking into nested
    /// objects (`{"error": {...}}`, `{"badRequest": {...}}`).
    pub fn from_body(status: u16, body: &str) -> Self {
        let value: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        let (code, message) = find_error(&value).unwrap_or_else(|| (String::new(), body.chars().take(300).collect()));
        Self { status, code: if code.is_empty() { format!("HTTP{status}") } else { code }, message }
    }
}

fn find_error(value: &Value) -> Option<(String, String)> {
    let Value::Object(map) = value else { return None };
    for (code, message) in [("error_code", "error_msg"), ("errorCode", "errorMsg"), ("code", "message")] {
        if let Some(c) = map.get(code) {
            let text = |v: &Value| v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string());
            return Some((text(c), map.get(message).map(text).unwrap_or_default()));
        }
    }
    map.values().find_map(find_error)
}

impl From<HuaweiError> for CloudError {
    fn from(e: HuaweiError) -> Self {
        CloudError::new(e.kind(), e.code, e.message)
    }
}

/// "The ECS does not exist."
const NOT_FOUND: &str = "Ecs.0114";

pub struct Huawei {
    http: reqwest::Client,
    base: Url,
    project_id: String,
    access_key: Secret,
    secret_key: Secret,
    region: RegionConfig,
    timeout: Duration,
}

impl Huawei {
    pub fn new(account: &AccountConfig, region: &RegionConfig, timeout: Duration) -> anyhow::Result<Self> {
        let credentials = account
            .credentials
            .clone()
            .ok_or_else(|| anyhow::anyhow!("account `{}` has no credentials", account.name))?;
        let base = region.endpoint.clone().unwrap_or_else(|| format!("https://ecs.{}.myhuaweicloud.com", region.name));
        Ok(Self {
            http: reqwest::Client::builder().timeout(timeout).build()?,
            base: Url::parse(&base)?,
            project_id: region.project_id.clone().unwrap_or_default(),
            access_key: credentials.access_key,
            secret_key: credentials.secret_key,
            region: region.clone(),
            timeout,
        })
    }

    /// One signed call; the parsed JSON answer, or the error it carried.
    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(String, String)],
        body: Option<&Value>,
        client_token: Option<&str>,
    ) -> Result<Value, HuaweiError> {
        let body = body.map(|b| serde_json::to_vec(b).expect("JSON serializes")).unwrap_or_default();
        let mut url = self.base.clone();
        url.set_path(path);
        let canonical_query = sign::canonical_query(query);
        url.set_query((!canonical_query.is_empty()).then_some(canonical_query.as_str()));
        let host = match url.port() {
            Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_owned(),
        };
        let date = sign::sdk_date(Utc::now());
        let mut headers: Vec<(&str, &str)> =
            vec![("Content-Type", "application/json"), ("Host", &host), ("X-Sdk-Date", &date)];
        if let Some(token) = client_token {
            headers.push(("X-Client-Token", token));
        }
        let signature =
            sign::sign(method.as_str(), path, query, &headers, &body, &self.access_key.0, &self.secret_key.0);
        let mut request = self.http.request(method, url).header("Authorization", &signature.authorization);
        for (name, value) in headers.iter().filter(|(n, _)| *n != "Host") {
            request = request.header(*name, *value);
        }
        let response = request.body(body).send().await.map_err(|e| {
            let e = transport_error(e);
            HuaweiError { status: 0, code: e.code, message: e.message }
        })?;
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        if !(200..300).contains(&status) {
            return Err(HuaweiError::from_body(status, &text));
        }
        Ok(if text.trim().is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::Null) })
    }

    fn path(&self, rest: &str) -> String {
        format!("/v1/{}/{rest}", self.project_id)
    }

    /// Polls an asynchronous job until it ends; `None` when it did not within the time limit.
    async fn wait_for_job(&self, job_id: &str) -> Result<Option<Value>, HuaweiError> {
        let until = tokio::time::Instant::now() + self.timeout;
        let mut attempt = 0;
        loop {
            let job = self.call(Method::GET, &self.path(&format!("jobs/{job_id}")), &[], None, None).await?;
            match job["status"].as_str() {
                Some("SUCCESS" | "FAIL") => return Ok(Some(job)),
                _ if tokio::time::Instant::now() >= until => return Ok(None),
                _ => {}
            }
            tokio::time::sleep(poll_delay(attempt)).await;
            attempt += 1;
        }
    }
}

fn server(value: &Value) -> Option<CloudInstance> {
    let tags: BTreeMap<String, String> = value["tags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t.as_str()?.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect();
    let mut private_ip = None;
    let mut public_ip = None;
    for addresses in value["addresses"].as_object().into_iter().flat_map(|a| a.values()) {
        for address in addresses.as_array().into_iter().flatten() {
            let addr = address["addr"].as_str().map(str::to_owned);
            if address["OS-EXT-IPS:type"].as_str() == Some("floating") {
                public_ip = public_ip.or(addr);
            } else {
                private_ip = private_ip.or(addr);
            }
        }
    }
    Some(CloudInstance {
        id: value["id"].as_str()?.to_owned(),
        name: value["name"].as_str().map(str::to_owned),
        state: match value["status"].as_str().unwrap_or_default() {
            "BUILD" | "REBOOT" | "HARD_REBOOT" | "RESIZE" | "VERIFY_RESIZE" | "MIGRATING" => CloudState::Pending,
            "ACTIVE" => CloudState::Running,
            "SHUTOFF" => CloudState::Stopped,
            "DELETED" | "SOFT_DELETED" => CloudState::Terminated,
            "ERROR" => CloudState::Error,
            _ => CloudState::Unknown,
        },
        flavour: value["flavor"]["id"].as_str().map(str::to_owned),
        zone: value["OS-EXT-AZ:availability_zone"].as_str().map(str::to_owned),
        private_ip,
        public_ip,
        tags,
        launched_at: value["created"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.into()),
    })
}

/// What a finished job's sub-jobs say: the servers that exist, and the first failure.
fn read_job(job: &Value) -> (Vec<String>, Option<CloudError>) {
    let mut created = Vec::new();
    let mut failure = None;
    for sub in job["entities"]["sub_jobs"].as_array().into_iter().flatten() {
        match sub["status"].as_str() {
            Some("SUCCESS") => {
                if let Some(id) = sub["entities"]["server_id"].as_str() {
                    created.push(id.to_owned());
                }
            }
            _ => {
                failure.get_or_insert_with(|| {
                    HuaweiError {
                        status: 200,
                        code: sub["error_code"].as_str().unwrap_or("Ecs.Unknown").to_owned(),
                        message: sub["fail_reason"].as_str().unwrap_or("a sub-job failed").to_owned(),
                    }
                    .into()
                });
            }
        }
    }
    if created.is_empty() && failure.is_none() && job["status"] == "FAIL" {
        failure = Some(
            HuaweiError {
                status: 200,
                code: job["error_code"].as_str().unwrap_or("Ecs.Unknown").to_owned(),
                message: job["fail_reason"].as_str().unwrap_or("the job failed").to_owned(),
            }
            .into(),
        );
    }
    (created, failure)
}

#[async_trait]
impl Provider for Huawei {
    fn kind(&self) -> CloudProvider {
        CloudProvider::HuaweiCloud
    }

    /// `count` is at most 100.
    fn max_per_call(&self) -> u32 {
        100
    }

    async fn launch(&self, spec: &LaunchSpec) -> Result<Launched, CloudError> {
        let tags: Vec<Value> = spec.tags.iter().map(|(k, v)| json!({ "key": k, "value": v })).collect();
        let mut server = json!({
            "name": spec.name,
            "imageRef": spec.image,
            "flavorRef": spec.flavour,
            "vpcid": self.region.vpc_id,
            "nics": [{ "subnet_id": self.region.subnet_id }],
            "root_volume": { "volumetype": self.region.disk_type.as_deref().unwrap_or("SSD") },
            "count": spec.count,
            "user_data": STANDARD.encode(&spec.user_data),
            "server_tags": tags,
        });
        if let Some(zone) = &self.region.zone {
            server["availability_zone"] = json!(zone);
        }
        if let Some(group) = &self.region.security_group_id {
            server["security_groups"] = json!([{ "id": group }]);
        }
        if spec.market == Market::Spot {
            server["extendparam"] = json!({ "marketType": "spot" });
        }
        let answer = self
            .call(
                Method::POST,
                &self.path("cloudservers"),
                &[],
                Some(&json!({ "server": server })),
                Some(&spec.client_token),
            )
            .await?;
        let job_id = answer["job_id"]
            .as_str()
            .ok_or_else(|| CloudError::new(CloudErrorKind::Transient, "no-job", "the create answer named no job"))?;
        let Some(job) = self.wait_for_job(job_id).await? else {
            return Err(CloudError::timed_out("the create job", self.timeout));
        };
        let (instance_ids, failure) = read_job(&job);
        if instance_ids.is_empty() {
            return Err(
                failure.unwrap_or_else(|| CloudError::new(CloudErrorKind::Capacity, "Ecs.Unknown", "no server"))
            );
        }
        let shortfall = (instance_ids.len() < spec.count as usize).then(|| {
            failure.unwrap_or_else(|| {
                CloudError::new(CloudErrorKind::Capacity, "Ecs.Unknown", "fewer servers than asked for")
            })
        });
        Ok(Launched { instance_ids, shortfall })
    }

    async fn list(&self, selector: &Selector) -> Result<Vec<CloudInstance>, CloudError> {
        const LIMIT: usize = 1000;
        let mut found = Vec::new();
        let filters: Vec<Vec<(String, String)>> = match selector {
            Selector::Tag(key, value) => vec![vec![("tags".into(), format!("{key}={value}"))]],
            Selector::Ids(ids) => ids.chunks(100).map(|chunk| vec![("server_id".into(), chunk.join(","))]).collect(),
        };
        for filter in filters {
            // `offset` is a page number, from 1.
            for page in 1.. {
                let mut query = filter.clone();
                query.push(("limit".into(), LIMIT.to_string()));
                query.push(("offset".into(), page.to_string()));
                let answer = self.call(Method::GET, &self.path("cloudservers/detail"), &query, None, None).await?;
                // A listing that cannot be read is an error, never an empty cloud.
                let servers = answer["servers"].as_array().cloned().ok_or_else(|| {
                    CloudError::new(CloudErrorKind::Transient, "unreadable-list", "the server list had no `servers`")
                })?;
                let before = found.len();
                found.extend(servers.iter().filter_map(server));
                let total = answer["count"].as_u64().map(|c| c as usize);
                let done = match total {
                    Some(total) => found.len() - before == 0 || page * LIMIT >= total,
                    None => servers.len() < LIMIT,
                };
                if done {
                    break;
                }
            }
        }
        Ok(found)
    }

    async fn tag(&self, instance_id: &str, tags: &BTreeMap<String, String>) -> Result<(), CloudError> {
        let tags: Vec<Value> = tags.iter().map(|(k, v)| json!({ "key": k, "value": v })).collect();
        self.call(
            Method::POST,
            &self.path(&format!("cloudservers/{instance_id}/tags/action")),
            &[],
            Some(&json!({ "action": "create", "tags": tags })),
            None,
        )
        .await?;
        Ok(())
    }

    /// Deleting a server that is already gone succeeds or fails with `Ecs.0114` (not found):
    /// either way it is gone.
    async fn terminate(&self, instance_ids: &[String]) -> Result<(), CloudError> {
        for chunk in instance_ids.chunks(100) {
            let servers: Vec<Value> = chunk.iter().map(|id| json!({ "id": id })).collect();
            let body = json!({ "servers": servers, "delete_publicip": true, "delete_volume": true });
            let answer = match self.call(Method::POST, &self.path("cloudservers/delete"), &[], Some(&body), None).await
            {
                Ok(answer) => answer,
                Err(e) if e.status == 404 || e.code == NOT_FOUND => continue,
                Err(e) => return Err(e.into()),
            };
            if let Some(job_id) = answer["job_id"].as_str() {
                match self.wait_for_job(job_id).await? {
                    Some(job) if job["status"] == "FAIL" => {
                        let not_found = |sub: &Value| sub["error_code"] == NOT_FOUND || sub["status"] == "SUCCESS";
                        let subs = job["entities"]["sub_jobs"].as_array().cloned().unwrap_or_default();
                        if !subs.is_empty() && subs.iter().all(not_found) {
                            continue;
                        }
                        let (_, failure) = read_job(&job);
                        return Err(failure.unwrap_or_else(|| {
                            CloudError::new(CloudErrorKind::Transient, "Ecs.Unknown", "the delete job failed")
                        }));
                    }
                    Some(_) => {}
                    None => return Err(CloudError::timed_out("the delete job", self.timeout)),
                }
            }
        }
        Ok(())
    }
}
