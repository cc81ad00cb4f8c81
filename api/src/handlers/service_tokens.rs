//! Service-account tokens (role `ci`): issued by ops with an expiry, revocable.

use actix_web::{HttpResponse, get, post, web};
use chrono::{DateTime, Duration, Utc};
use diesel_async::AsyncConnection;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{PageQuery, page, page_type, paginate};
use crate::auth::{Principal, TokenKind};
use crate::db;
use crate::db::api_tokens::{ApiToken, NewApiToken};
use crate::db::audit::{self, Change};
use crate::domain::validation::check_text;
use crate::domain::{FieldErrors, Role, TokenId, UserId};
use crate::error::{ApiError, ErrorBody};
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
    pub name: String,
    /// 1 to 366 days; default 90.
    #[serde(default = "default_days")]
    #[schema(default = 90, minimum = 1, maximum = 366)]
    pub expires_in_days: i64,
}

fn default_days() -> i64 {
    90
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
        errors.add("expires_in_days", "must be between 1 and 366");
    }
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
                .ok_or_else(|| ApiError::not_found("service-token"))?;
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
