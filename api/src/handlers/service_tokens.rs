//! Service-account tokens (role `ci`): issued by ops with an expiry, bound to the tenants they
//! act for, a priority ceiling and caps on what they queue; revocable.

use actix_web::{HttpResponse, get, patch, post, web};
use chrono::{DateTime, Duration, Utc};
use diesel_async::AsyncConnection;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{PageQuery, page, page_type, paginate};
use crate::auth::{Principal, TokenKind};
use crate::db;
use crate::db::api_tokens::{ApiToken, GrantChange, NewApiToken};
use crate::db::audit::{self, Change};
use crate::domain::grant::check_tenant_patterns;
use crate::domain::validation::check_text;
use crate::domain::{FieldErrors, Problem, Role, TokenId, UserId};
use crate::error::{ApiError, ErrorBody};
use crate::error_code::ErrorCode;
use crate::extract::{Json, Query};
use crate::state::AppState;

/// A service token's record; the secret itself is shown once, at issue.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ServiceTokenView {
    pub id: TokenId,
    /// What the token is for, e.g. `ci-gate` or `build-system`.
    pub name: String,
    pub role: Role,
    pub created_by: Option<UserId>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub revoked_by: Option<UserId>,
    /// Tenants it acts for: names, or beginnings of names followed by `*`.
    pub tenants: Vec<String>,
    /// The highest priority it may ask for.
    pub max_priority: i32,
    /// Leases it may have queued at once; `null`: the server's default.
    pub max_queued_leases: Option<i32>,
    /// Jobs it may have queued or running at once; `null`: the server's default.
    pub max_queued_jobs: Option<i32>,
}

impl From<ApiToken> for ServiceTokenView {
    fn from(t: ApiToken) -> Self {
        Self {
            id: t.id,
            name: t.name,
            role: t.role,
            created_by: t.created_by,
            created_at: t.created_at,
            expires_at: t.expires_at,
            revoked_at: t.revoked_at,
            revoked_by: t.revoked_by,
            tenants: t.tenants,
            max_priority: t.max_priority,
            max_queued_leases: t.max_queued_leases,
            max_queued_jobs: t.max_queued_jobs,
        }
    }
}

/// A newly issued token, with its secret. Store it now: it is not shown again.
#[derive(Debug, Serialize, ToSchema)]
pub struct IssuedServiceToken {
    #[serde(flatten)]
    pub record: ServiceTokenView,
    /// The bearer token.
    pub token: String,
}

page_type!(ServiceTokenPage, ServiceTokenView);

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewServiceTokenRequest {
    #[schema(
        pattern = r"^[^\x00-\x08\x0b-\x1f\x7f-\x9f]*[^\s\x00-\x08\x0b-\x1f\x7f-\x9f][^\x00-\x08\x0b-\x1f\x7f-\x9f]*$",
        max_length = 100
    )]
    pub name: String,
    /// 1 to 366 days; default 90.
    #[serde(default = "default_days")]
    #[schema(default = 90, minimum = 1, maximum = 366)]
    pub expires_in_days: i64,
    /// Tenants it may act for: names (`sig-riscv`), beginnings followed by `*` (`sig-*`), or
    /// `*` for any. At least one.
    // Absent is refused like empty, naming the field, with the other problems.
    #[serde(default)]
    #[schema(required, min_items = 1, max_items = 100, example = json!(["sig-riscv", "ci-*"]),
             inline, value_type = Vec<TenantPattern>)]
    pub tenants: Vec<String>,
    /// The highest priority it may ask for (0 to 100); default 100.
    #[serde(default = "default_ceiling")]
    #[schema(default = 100, minimum = 0, maximum = 100)]
    pub max_priority: i32,
    /// Leases it may have queued at once; default: the server's `auth.max_queued_leases`.
    #[schema(minimum = 0, maximum = 100000)]
    pub max_queued_leases: Option<i32>,
    /// Jobs it may have queued or running at once; default: the server's `auth.max_queued_jobs`.
    #[schema(minimum = 0, maximum = 100000)]
    pub max_queued_jobs: Option<i32>,
}

fn default_days() -> i64 {
    90
}

fn default_ceiling() -> i32 {
    100
}

fn check_grant(
    errors: &mut FieldErrors,
    tenants: Option<&[String]>,
    max_priority: Option<i32>,
    caps: [(&str, Option<i32>); 2],
) {
    if let Some(tenants) = tenants {
        check_tenant_patterns("tenants", tenants, errors);
    }
    if max_priority.is_some_and(|p| !(0..=100).contains(&p)) {
        errors.add("max_priority", Problem::Between { min: 0, max: 100 });
    }
    for (field, cap) in caps {
        if cap.is_some_and(|c| !(0..=100_000).contains(&c)) {
            errors.add(field, Problem::Between { min: 0, max: 100_000 });
        }
    }
}

#[utoipa::path(
    tag = "service-tokens",
    request_body = NewServiceTokenRequest,
    responses(
        (status = 201, body = IssuedServiceToken),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody),
    ),
)]
#[post("/service-tokens")]
/// Issue a `ci` service-account token. Ops only. The token is in this response and nowhere else.
pub async fn issue_service_token(
    state: web::Data<AppState>,
    caller: Principal,
    body: Json<NewServiceTokenRequest>,
) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    let request = body.into_inner();
    let mut errors = FieldErrors::new();
    check_text(&mut errors, "name", &request.name, 100);
    if !(1..=366).contains(&request.expires_in_days) {
        errors.add("expires_in_days", Problem::Between { min: 1, max: 366 });
    }
    check_grant(
        &mut errors,
        Some(&request.tenants),
        Some(request.max_priority),
        [("max_queued_leases", request.max_queued_leases), ("max_queued_jobs", request.max_queued_jobs)],
    );
    errors.into_result()?;

    let actor = caller.actor();
    let created_by = caller.user_id();
    let tokens = state.tokens.clone();
    let mut conn = state.db().await?;
    let issued = conn
        .transaction::<_, ApiError, _>(async move |conn| {
            let new = NewApiToken {
                id: TokenId::generate(),
                name: request.name.trim(),
                role: Role::Ci,
                machine_id: None,
                created_by,
                expires_at: Utc::now() + Duration::days(request.expires_in_days),
                tenants: &request.tenants,
                max_priority: request.max_priority,
                max_queued_leases: request.max_queued_leases,
                max_queued_jobs: request.max_queued_jobs,
            };
            let record = ServiceTokenView::from(db::api_tokens::insert(conn, &new).await?);
            let token = tokens
                .issue_api_token(record.id.0, TokenKind::Service, record.expires_at)
                .map_err(ApiError::internal)?
                .token;
            audit::record(
                conn,
                &actor,
                &[Change::new("service_token.issued", "service_token", record.id).after(&record)],
            )
            .await?;
            Ok(IssuedServiceToken { record, token })
        })
        .await?;
    Ok(HttpResponse::Created().json(issued))
}

#[utoipa::path(
    tag = "service-tokens",
    params(PageQuery),
    responses((status = 200, body = ServiceTokenPage), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
)]
#[get("/service-tokens")]
/// List service tokens (without their secrets). Ops only.
pub async fn list_service_tokens(
    state: web::Data<AppState>,
    caller: Principal,
    query: Query<PageQuery>,
) -> Result<web::Json<ServiceTokenPage>, ApiError> {
    caller.require_admin()?;
    let query = query.into_inner();
    let page = page(query.cursor.as_deref(), query.limit)?;
    let mut conn = state.db().await?;
    let rows = db::api_tokens::list(&mut conn, Role::Ci, page).await?;
    let (rows, next_cursor) = paginate(rows, &page, |t| t.id);
    Ok(web::Json(ServiceTokenPage { items: rows.into_iter().map(ServiceTokenView::from).collect(), next_cursor }))
}

#[utoipa::path(
    tag = "service-tokens",
    params(("id" = TokenId, Path, description = "Token id")),
    responses(
        (status = 200, body = ServiceTokenView),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
    ),
)]
#[post("/service-tokens/{id}/revoke")]
/// Revoke a service token; it stops working at once. Revoking twice changes nothing. Ops only.
pub async fn revoke_service_token(
    state: web::Data<AppState>,
    caller: Principal,
    id: web::Path<TokenId>,
) -> Result<web::Json<ServiceTokenView>, ApiError> {
    caller.require_admin()?;
    let revoker = caller.user_id().ok_or_else(|| ApiError::internal(anyhow::anyhow!("admin without a user id")))?;
    let actor = caller.actor();
    let mut conn = state.db().await?;
    let view = conn
        .transaction::<_, ApiError, _>(async move |conn| {
            let before = db::api_tokens::find(conn, id.into_inner())
                .await?
                .filter(|t| t.role == Role::Ci)
                .ok_or_else(|| ApiError::not_found(ErrorCode::ServiceTokenNotFound))?;
            if before.revoked_at.is_some() {
                return Ok(ServiceTokenView::from(before));
            }
            let after = ServiceTokenView::from(db::api_tokens::revoke(conn, before.id, revoker).await?);
            audit::record(
                conn,
                &actor,
                &[Change::new("service_token.revoked", "service_token", after.id)
                    .before(&ServiceTokenView::from(before))
                    .after(&after)],
            )
            .await?;
            Ok(after)
        })
        .await?;
    Ok(web::Json(view))
}

/// A tenant name (`sig-riscv`), a name's beginning followed by `*` (`sig-*`), or `*`.
#[derive(ToSchema)]
#[schema(pattern = r"^(\*|[a-z0-9][a-z0-9._-]{0,63}\*?)$")]
#[allow(dead_code)]
pub struct TenantPattern(String);

/// A change to what a service token may do; fields left out stay as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceTokenChange {
    #[schema(min_items = 1, max_items = 100, value_type = Option<Vec<TenantPattern>>)]
    pub tenants: Option<Vec<String>>,
    #[schema(minimum = 0, maximum = 100)]
    pub max_priority: Option<i32>,
    /// `null` returns to the server's default.
    #[serde(default, deserialize_with = "crate::domain::validation::double_option")]
    #[schema(value_type = Option<i32>, minimum = 0, maximum = 100000)]
    pub max_queued_leases: Option<Option<i32>>,
    #[serde(default, deserialize_with = "crate::domain::validation::double_option")]
    #[schema(value_type = Option<i32>, minimum = 0, maximum = 100000)]
    pub max_queued_jobs: Option<Option<i32>>,
}

#[utoipa::path(
    tag = "service-tokens",
    params(("id" = TokenId, Path, description = "Token id")),
    request_body = ServiceTokenChange,
    responses(
        (status = 200, body = ServiceTokenView),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody),
    ),
)]
#[patch("/service-tokens/{id}")]
/// Change the tenants a service token acts for, its priority ceiling or its queue caps. What
/// it already queued stays queued. Ops only.
pub async fn change_service_token(
    state: web::Data<AppState>,
    caller: Principal,
    id: web::Path<TokenId>,
    body: Json<ServiceTokenChange>,
) -> Result<web::Json<ServiceTokenView>, ApiError> {
    caller.require_admin()?;
    let change = body.into_inner();
    let mut errors = FieldErrors::new();
    check_grant(
        &mut errors,
        change.tenants.as_deref(),
        change.max_priority,
        [
            ("max_queued_leases", change.max_queued_leases.flatten()),
            ("max_queued_jobs", change.max_queued_jobs.flatten()),
        ],
    );
    errors.into_result()?;
    let actor = caller.actor();
    let mut conn = state.db().await?;
    let view = conn
        .transaction::<_, ApiError, _>(async move |conn| {
            let before = db::api_tokens::find(conn, id.into_inner())
                .await?
                .filter(|t| t.role == Role::Ci)
                .ok_or_else(|| ApiError::not_found(ErrorCode::ServiceTokenNotFound))?;
            let grant = GrantChange {
                tenants: change.tenants,
                max_priority: change.max_priority,
                max_queued_leases: change.max_queued_leases,
                max_queued_jobs: change.max_queued_jobs,
            };
            let unchanged = grant.tenants.is_none()
                && grant.max_priority.is_none()
                && grant.max_queued_leases.is_none()
                && grant.max_queued_jobs.is_none();
            if unchanged {
                return Ok(ServiceTokenView::from(before));
            }
            let after = ServiceTokenView::from(db::api_tokens::change_grant(conn, before.id, &grant).await?);
            audit::record(
                conn,
                &actor,
                &[Change::new("service_token.changed", "service_token", after.id)
                    .before(&ServiceTokenView::from(before))
                    .after(&after)],
            )
            .await?;
            Ok(after)
        })
        .await?;
    Ok(web::Json(view))
}
