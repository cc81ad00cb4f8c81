//! The clouds as ops see them: accounts, regions and their catalogues, rate limits, instances
//! running and what they cost this month; every instance; and imports of existing servers.
//! Credentials are never shown.

use std::collections::{BTreeMap, HashMap};

use actix_web::{HttpResponse, get, post, web};
use chrono::{DateTime, Utc};
use diesel_async::AsyncConnection;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{page, page_type, paginate};
use crate::auth::Principal;
use crate::db::audit::{self, Change};
use crate::db::clouds::{CloudImport, CloudInstance};
use crate::db::{self};
pub use crate::domain::cloud::amount;
use crate::domain::cloud::{
    Bucket, InstanceState, Market, cost_micros, cost_within as domain_cost_within, month_start,
};
use crate::domain::{Arch, CloudProvider, FieldErrors, LeaseId, MachineId, Problem};
use crate::error::{ApiError, ErrorBody};
use crate::error_code::ErrorCode;
use crate::extract::{Json, Query};
pub use crate::operations::leases::lease_cost;
use crate::state::AppState;

/// What an instance cost between `from` and `to`.
fn cost_within(i: &db::clouds::Billed, from: DateTime<Utc>, to: DateTime<Utc>) -> i64 {
    domain_cost_within(i.hourly_micros, i.since, i.ended_at, from, to)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CloudsView {
    /// The value of the `fleetyard-platform` tag on every instance this deployment launches.
    pub platform: String,
    /// The currency of every price, cost and budget.
    pub currency: String,
    pub accounts: Vec<AccountView>,
    /// What each tenant's instances cost since the first of the month (imported servers are
    /// not billed to tenants).
    pub spend_by_tenant: BTreeMap<String, f64>,
    /// Monthly budgets by tenant; any other tenant has `default_tenant_budget`.
    pub tenant_budgets: BTreeMap<String, f64>,
    pub default_tenant_budget: f64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AccountView {
    pub name: String,
    pub provider: CloudProvider,
    /// Instances it may run at once.
    pub max_instances: i64,
    /// Instances requested, launching, booting, ready or terminating (imported ones apart).
    pub instances_running: i64,
    pub imported_running: i64,
    /// What its instances (imported ones included) cost since the first of the month.
    pub spend_this_month: f64,
    pub regions: Vec<RegionView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RegionView {
    pub name: String,
    pub zone: Option<String>,
    pub flavours: Vec<FlavourView>,
    pub images: Vec<ImageView>,
    pub rate_limits: Vec<RateLimitView>,
    /// Calls made, by operation.
    pub calls: Vec<CallsView>,
    /// Parts of the catalogue passed over after a failure, until `until`.
    pub unavailable: Vec<UnavailableView>,
    pub last_error: Option<LastError>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FlavourView {
    pub name: String,
    pub arch: Arch,
    pub cores: i32,
    pub memory_gib: i64,
    pub disk_gib: i64,
    pub market: Market,
    pub hourly_price: f64,
    pub min_idle: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ImageView {
    pub id: String,
    pub arch: Arch,
    pub os: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RateLimitView {
    /// `launch_calls`, `launch_instances` or `other_calls`.
    pub bucket: String,
    pub burst: f64,
    pub per_sec: f64,
    /// Tokens in the bucket now.
    pub tokens: f64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CallsView {
    pub operation: String,
    pub ok: i64,
    pub failed: i64,
    /// Of the failed, those the cloud throttled.
    pub throttled: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UnavailableView {
    /// Absent: the whole region (or, with no region, the whole account).
    pub flavour: Option<String>,
    pub market: Option<Market>,
    pub region: Option<String>,
    pub reason: String,
    pub until: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LastError {
    pub operation: String,
    pub message: String,
    pub at: DateTime<Utc>,
}

#[utoipa::path(
    tag = "clouds",
    responses((status = 200, body = CloudsView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
)]
#[get("/clouds")]
/// The configured clouds: accounts, regions, catalogue, rate-limit state, instances running,
/// spend this month and the last error. Ops.
pub async fn list_clouds(state: web::Data<AppState>, caller: Principal) -> Result<web::Json<CloudsView>, ApiError> {
    caller.require_admin()?;
    let clouds = &state.config.clouds;
    let now = Utc::now();
    let start = month_start(now);
    let mut conn = state.db().await?;
    let open = db::clouds::open_instances(&mut conn).await?;
    let billed = db::clouds::billed_since(&mut conn, start).await?;
    let buckets = db::clouds::buckets(&mut conn).await?;
    let calls = db::clouds::call_counts(&mut conn).await?;
    let unavailable = db::clouds::unavailable(&mut conn).await?;
    drop(conn);

    let mut spend_by_tenant: BTreeMap<String, f64> = BTreeMap::new();
    let mut tenant_micros: HashMap<String, i64> = HashMap::new();
    for i in billed.iter().filter(|i| i.state != InstanceState::Failed) {
        if let Some(tenant) = &i.tenant {
            *tenant_micros.entry(tenant.clone()).or_default() += cost_within(i, start, now);
        }
    }
    for (tenant, micros) in tenant_micros {
        spend_by_tenant.insert(tenant, amount(micros));
    }
    let accounts = clouds
        .accounts
        .iter()
        .map(|a| {
            let mine = |i: &&CloudInstance| i.account == a.name;
            let spend: i64 = billed.iter().filter(|i| i.account == a.name).map(|i| cost_within(i, start, now)).sum();
            let regions = a
                .regions
                .iter()
                .map(|r| {
                    let here = |account: &str, region: &str| account == a.name && region == r.name;
                    let state_of = |bucket: &str, settings: Bucket| {
                        let tokens = buckets
                            .iter()
                            .find(|b| here(&b.account, &b.region) && b.bucket == bucket)
                            .map_or(settings.burst, |b| settings.refill(b.tokens, b.updated_at, now));
                        RateLimitView {
                            bucket: bucket.to_owned(),
                            burst: settings.burst,
                            per_sec: settings.per_sec,
                            tokens: (tokens * 100.0).round() / 100.0,
                        }
                    };
                    let limits = &r.rate_limits;
                    let region_calls: Vec<&db::clouds::CallCount> =
                        calls.iter().filter(|c| here(&c.account, &c.region)).collect();
                    let last_error = region_calls
                        .iter()
                        .filter_map(|c| {
                            Some(LastError {
                                operation: c.operation.clone(),
                                message: c.last_error.clone()?,
                                at: c.last_error_at?,
                            })
                        })
                        .max_by_key(|e| e.at);
                    RegionView {
                        name: r.name.clone(),
                        zone: r.zone.clone(),
                        flavours: r
                            .flavours
                            .iter()
                            .map(|f| FlavourView {
                                name: f.name.clone(),
                                arch: f.arch,
                                cores: f.cores,
                                memory_gib: f.memory_gib,
                                disk_gib: f.disk_gib,
                                market: f.market,
                                hourly_price: f.hourly_price,
                                min_idle: f.min_idle,
                            })
                            .collect(),
                        images: r
                            .images
                            .iter()
                            .map(|i| ImageView { id: i.id.clone(), arch: i.arch, os: i.os.clone() })
                            .collect(),
                        rate_limits: vec![
                            state_of("launch_calls", limits.launch_calls),
                            state_of("launch_instances", limits.launch_instances),
                            state_of("other_calls", limits.other_calls),
                        ],
                        calls: region_calls
                            .iter()
                            .map(|c| CallsView {
                                operation: c.operation.clone(),
                                ok: c.ok,
                                failed: c.failed,
                                throttled: c.throttled,
                            })
                            .collect(),
                        unavailable: unavailable
                            .iter()
                            .filter(|u| u.account == a.name && u.region.as_ref().is_none_or(|x| *x == r.name))
                            .map(|u| UnavailableView {
                                flavour: u.flavour.clone(),
                                market: u.market,
                                region: u.region.clone(),
                                reason: u.reason.clone(),
                                until: u.until,
                            })
                            .collect(),
                        last_error,
                    }
                })
                .collect();
            AccountView {
                name: a.name.clone(),
                provider: a.provider,
                max_instances: a.max_instances,
                instances_running: open.iter().filter(mine).filter(|i| !i.imported).count() as i64,
                imported_running: open.iter().filter(mine).filter(|i| i.imported).count() as i64,
                spend_this_month: amount(spend),
                regions,
            }
        })
        .collect();
    Ok(web::Json(CloudsView {
        platform: clouds.platform.clone(),
        currency: clouds.currency.clone(),
        accounts,
        spend_by_tenant,
        tenant_budgets: clouds.tenant_budgets.clone(),
        default_tenant_budget: clouds.default_tenant_budget,
    }))
}

/// A cloud instance, launched or imported.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CloudInstanceView {
    pub id: Uuid,
    pub state: InstanceState,
    pub account: String,
    pub provider: CloudProvider,
    pub region: String,
    pub flavour: String,
    pub market: Market,
    pub arch: Arch,
    pub cores: i32,
    pub memory_mib: i64,
    pub disk_gib: i64,
    pub hourly_price: f64,
    /// Whose budget pays for it.
    pub tenant: Option<String>,
    /// The lease it was launched for, or serves.
    pub lease_id: Option<LeaseId>,
    /// The cloud's id for it.
    pub provider_id: Option<String>,
    /// The machine it is in the inventory.
    pub machine_id: Option<MachineId>,
    /// An existing server brought into the pool; never terminated by Fleetyard.
    pub imported: bool,
    pub created_at: DateTime<Utc>,
    pub launched_at: Option<DateTime<Utc>>,
    pub ready_at: Option<DateTime<Utc>>,
    /// A booting instance not reporting by then is terminated.
    pub boot_deadline: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub end_reason: Option<String>,
    /// What it has cost so far (from launch, or import, to its end or now).
    pub cost: f64,
}

impl From<CloudInstance> for CloudInstanceView {
    fn from(i: CloudInstance) -> Self {
        let cost = match i.launched_at {
            Some(from) => cost_micros(i.hourly_micros, i.ended_at.unwrap_or_else(Utc::now) - from),
            None => 0,
        };
        Self {
            id: i.id,
            state: i.state,
            account: i.account,
            provider: i.provider,
            region: i.region,
            flavour: i.flavour,
            market: i.market,
            arch: i.arch,
            cores: i.cores,
            memory_mib: i.memory_mib,
            disk_gib: i.disk_gib,
            hourly_price: amount(i.hourly_micros),
            tenant: i.tenant,
            lease_id: i.lease_id,
            provider_id: i.provider_id,
            machine_id: i.machine_id,
            imported: i.imported,
            created_at: i.created_at,
            launched_at: i.launched_at,
            ready_at: i.ready_at,
            boot_deadline: if i.state == InstanceState::Booting { i.deadline } else { None },
            ended_at: i.ended_at,
            end_reason: i.end_reason,
            cost: amount(cost),
        }
    }
}

page_type!(CloudInstancePage, CloudInstanceView);

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CloudInstanceQuery {
    /// Repeat for several.
    #[serde(default)]
    pub state: Vec<InstanceState>,
    pub account: Option<String>,
    #[param(value_type = Option<String>, format = Uuid)]
    pub lease_id: Option<LeaseId>,
    pub cursor: Option<String>,
    /// 1 to 200, default 50.
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
}

#[utoipa::path(
    tag = "clouds",
    params(CloudInstanceQuery),
    responses(
        (status = 200, body = CloudInstancePage), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 422, body = ErrorBody),
    ),
)]
#[get("/cloud-instances")]
/// Every cloud instance Fleetyard launched or imported, newest first. Ops.
pub async fn list_cloud_instances(
    state: web::Data<AppState>,
    caller: Principal,
    query: Query<CloudInstanceQuery>,
) -> Result<web::Json<CloudInstancePage>, ApiError> {
    caller.require_admin()?;
    let query = query.into_inner();
    let page = page::<Uuid>(query.cursor.as_deref(), query.limit)?;
    let filter = db::clouds::InstanceFilter { states: query.state, account: query.account, lease_id: query.lease_id };
    let mut conn = state.db().await?;
    let rows = db::clouds::list_instances(&mut conn, &filter, page).await?;
    let (rows, next_cursor) = paginate(rows, &page, |i| i.id);
    Ok(web::Json(CloudInstancePage { items: rows.into_iter().map(CloudInstanceView::from).collect(), next_cursor }))
}

/// Existing servers to bring into the pool: by id, or all that carry a tag.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportRequest {
    /// A configured account.
    pub account: String,
    /// One of its configured regions.
    pub region: String,
    /// The servers' ids, as the cloud knows them.
    #[serde(default)]
    pub instance_ids: Vec<String>,
    /// Or every server carrying this tag.
    #[serde(default)]
    pub tag: Option<TagFilter>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TagFilter {
    pub key: String,
    pub value: String,
}

/// An import and how it went.
#[derive(Debug, Serialize, ToSchema)]
pub struct CloudImportView {
    pub id: Uuid,
    pub account: String,
    pub region: String,
    pub instance_ids: Vec<String>,
    pub tag: Option<BTreeMap<String, String>>,
    /// `pending`, `done` or `failed`.
    pub state: String,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The machines the servers became.
    #[schema(value_type = Vec<String>)]
    pub machine_ids: Vec<Uuid>,
    pub error: Option<String>,
}

impl From<CloudImport> for CloudImportView {
    fn from(i: CloudImport) -> Self {
        Self {
            id: i.id,
            account: i.account,
            region: i.region,
            instance_ids: i.instance_ids,
            tag: match (i.tag_key, i.tag_value) {
                (Some(k), Some(v)) => Some(BTreeMap::from([(k, v)])),
                _ => None,
            },
            state: i.state,
            created_at: i.created_at,
            finished_at: i.finished_at,
            machine_ids: i.machine_ids,
            error: i.error,
        }
    }
}

#[utoipa::path(
    tag = "clouds",
    request_body = ImportRequest,
    responses(
        (status = 202, description = "Accepted: the cloud worker lists the servers and adds them as machines.", body = CloudImportView),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody),
    ),
)]
#[post("/cloud-imports")]
/// Bring existing servers of a configured cloud account into the pool, as machines of its
/// region's site with their flavour's size and price. They are never terminated by Fleetyard;
/// a lease on one returns it to the pool when it ends. Ops.
pub async fn create_cloud_import(
    state: web::Data<AppState>,
    caller: Principal,
    body: Json<ImportRequest>,
) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    let request = body.into_inner();
    let mut errors = FieldErrors::new();
    let clouds = &state.config.clouds;
    match clouds.account(&request.account) {
        None => errors.add("account", Problem::UnknownCloudAccount),
        Some(account) if !account.regions.iter().any(|r| r.name == request.region) => {
            errors.add("region", Problem::UnknownCloudRegion)
        }
        Some(_) => {}
    }
    let id_ok = |id: &String| (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic());
    if request.instance_ids.len() > 500 || !request.instance_ids.iter().all(id_ok) {
        errors.add("instance_ids", Problem::InstanceIds);
    }
    match (&request.tag, request.instance_ids.is_empty()) {
        (None, true) => errors.add("instance_ids", Problem::IdsOrTag),
        (Some(_), false) => errors.add("tag", Problem::IdsAndTag),
        (Some(tag), true) if !(1..=128).contains(&tag.key.len()) || tag.value.len() > 255 => {
            errors.add("tag", Problem::CloudTagSize)
        }
        _ => {}
    }
    errors.into_result()?;
    let requested_by = match &caller {
        Principal::Admin { user_id, .. } => Some(*user_id),
        _ => None,
    };
    let actor = caller.actor();
    let mut conn = state.db().await?;
    let import = conn
        .transaction::<_, ApiError, _>(async |conn| {
            let import = db::clouds::insert_import(
                conn,
                Uuid::now_v7(),
                &request.account,
                &request.region,
                &request.instance_ids,
                request.tag.as_ref().map(|t| (t.key.as_str(), t.value.as_str())),
                requested_by,
            )
            .await?;
            let entry = Change::new("cloud.import_requested", "cloud_import", import.id)
                .after(&CloudImportView::from(import.clone()));
            audit::record(conn, &actor, &[entry]).await?;
            Ok(import)
        })
        .await?;
    state.cloud_bell.notify_one();
    Ok(HttpResponse::Accepted()
        .insert_header(("location", format!("/api/v1/cloud-imports/{}", import.id)))
        .json(CloudImportView::from(import)))
}

#[utoipa::path(
    tag = "clouds",
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = CloudImportView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ),
)]
#[get("/cloud-imports/{id}")]
/// How an import went. Ops.
pub async fn get_cloud_import(
    state: web::Data<AppState>,
    caller: Principal,
    id: web::Path<Uuid>,
) -> Result<web::Json<CloudImportView>, ApiError> {
    caller.require_admin()?;
    let mut conn = state.db().await?;
    let import = db::clouds::find_import(&mut conn, id.into_inner())
        .await?
        .ok_or_else(|| ApiError::not_found(ErrorCode::ImportNotFound))?;
    Ok(web::Json(import.into()))
}
