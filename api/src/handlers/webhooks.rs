//! Webhook subscriptions: where events go, and how their deliveries went. Ops only.

use actix_web::{HttpResponse, delete, get, patch, post, web};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use diesel_async::AsyncConnection;
use serde::{Deserialize, Serialize};

use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{PageQuery, page, page_type, paginate};
use crate::auth::Principal;
use crate::db::audit::{self, Change};
use crate::db::events::{self as db_events, Delivery, NewSubscription, Subscription, SubscriptionChanges};
use crate::domain::validation::{check_host, check_optional_text, double_option};
use crate::domain::{EventType, FieldErrors, Problem};
use crate::error::{ApiError, ErrorBody};
use crate::error_code::ErrorCode;
use crate::extract::{Json, Query};
use crate::state::AppState;

/// A subscription as the API shows it; the secret only at creation.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WebhookView {
    pub id: Uuid,
    pub url: String,
    /// Event types delivered; empty means all.
    pub event_types: Vec<String>,
    pub description: Option<String>,
    pub active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<Subscription> for WebhookView {
    fn from(s: Subscription) -> Self {
        Self {
            id: s.id,
            url: s.url,
            event_types: s.event_types,
            description: s.description,
            active: s.active,
            created_at: s.created_at,
            updated_at: s.updated_at,
        }
    }
}

/// A new subscription with its signing secret: store it now, it is not shown again.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedWebhook {
    #[serde(flatten)]
    pub webhook: WebhookView,
    /// The Standard Webhooks signing secret (`whsec_...`).
    pub secret: String,
}

page_type!(WebhookPage, WebhookView);

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DeliveryView {
    pub id: i64,
    pub event_id: Uuid,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub abandoned_at: Option<DateTime<Utc>>,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl From<Delivery> for DeliveryView {
    fn from(d: Delivery) -> Self {
        Self {
            id: d.id,
            event_id: d.event_id,
            attempts: d.attempts,
            next_attempt_at: d.next_attempt_at,
            delivered_at: d.delivered_at,
            abandoned_at: d.abandoned_at,
            last_status: d.last_status,
            last_error: d.last_error,
            created_at: d.created_at,
        }
    }
}

page_type!(DeliveryPage, DeliveryView);

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewWebhookRequest {
    /// Where to POST events (`http` or `https`).
    pub url: String,
    /// Event types to deliver, e.g. `machine.unreachable`; leave empty for all.
    #[serde(default)]
    pub event_types: Vec<EventType>,
    #[serde(default)]
    #[schema(
        pattern = r"^[^\x00-\x08\x0b-\x1f\x7f-\x9f]*[^\s\x00-\x08\x0b-\x1f\x7f-\x9f][^\x00-\x08\x0b-\x1f\x7f-\x9f]*$",
        max_length = 500
    )]
    pub description: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookPatch {
    pub url: Option<String>,
    pub event_types: Option<Vec<EventType>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, pattern = r"^[^\x00-\x08\x0b-\x1f\x7f-\x9f]*[^\s\x00-\x08\x0b-\x1f\x7f-\x9f][^\x00-\x08\x0b-\x1f\x7f-\x9f]*$", max_length = 500)]
    pub description: Option<Option<String>>,
    pub active: Option<bool>,
}

fn check_url(errors: &mut FieldErrors, url: &str) {
    let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"));
    let authority = rest.map(|r| r.split(['/', '?', '#']).next().unwrap_or_default());
    let host =
        authority.map(|a| a.rsplit_once(':').filter(|(_, port)| port.parse::<u16>().is_ok()).map_or(a, |(h, _)| h));
    let host = host.map(|h| h.trim_start_matches('[').trim_end_matches(']'));
    if url.len() > 2000 || host.is_none_or(|h| check_host(h).is_err()) {
        errors.add("url", Problem::NotAUrl { example: "https://hooks.example.org/fleetyard".into() });
    }
}

fn type_names(types: Vec<EventType>) -> Vec<String> {
    let mut names: Vec<String> = types.into_iter().map(|t| t.as_str().to_owned()).collect();
    names.sort();
    names.dedup();
    names
}

fn new_secret() -> String {
    let mut bytes = [0u8; 24];
    rand::fill(&mut bytes);
    format!("whsec_{}", STANDARD.encode(bytes))
}

#[utoipa::path(
    tag = "webhooks",
    request_body = NewWebhookRequest,
    responses(
        (status = 201, body = CreatedWebhook),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody),
    ),
)]
#[post("/webhooks")]
/// Subscribe a URL to events. Deliveries are CloudEvents 1.0 (structured JSON), signed with
/// the Standard Webhooks scheme (`webhook-id`, `webhook-timestamp`, `webhook-signature`).
pub async fn create_webhook(
    state: web::Data<AppState>,
    caller: Principal,
    body: Json<NewWebhookRequest>,
) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    let request = body.into_inner();
    let mut errors = FieldErrors::new();
    check_url(&mut errors, &request.url);
    check_optional_text(&mut errors, "description", request.description.as_deref(), 500);
    errors.into_result()?;
    let actor = caller.actor();
    let created_by = caller.user_id().map(|u| u.0);
    let event_types = type_names(request.event_types);
    let secret = new_secret();
    // Stored sealed: a copy of the database alone cannot forge deliveries.
    let sealed = state.data_keys.seal(&secret);
    let mut conn = state.db().await?;
    let webhook = conn
        .transaction::<_, ApiError, _>(async |conn| {
            let new = NewSubscription {
                id: Uuid::now_v7(),
                url: &request.url,
                secret: &sealed,
                event_types: &event_types,
                description: request.description.as_deref(),
                created_by,
            };
            let view = WebhookView::from(db_events::insert_subscription(conn, &new).await?);
            audit::record(conn, &actor, &[Change::new("webhook.created", "webhook", view.id).after(&view)]).await?;
            Ok(view)
        })
        .await?;
    Ok(HttpResponse::Created().json(CreatedWebhook { webhook, secret }))
}

#[utoipa::path(
    tag = "webhooks",
    params(PageQuery),
    responses((status = 200, body = WebhookPage), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
)]
#[get("/webhooks")]
/// List subscriptions (without their secrets).
pub async fn list_webhooks(
    state: web::Data<AppState>,
    caller: Principal,
    query: Query<PageQuery>,
) -> Result<web::Json<WebhookPage>, ApiError> {
    caller.require_admin()?;
    let query = query.into_inner();
    let page = page(query.cursor.as_deref(), query.limit)?;
    let mut conn = state.db().await?;
    let rows = db_events::list_subscriptions(&mut conn, page).await?;
    let (rows, next_cursor) = paginate(rows, &page, |s| s.id);
    Ok(web::Json(WebhookPage { items: rows.into_iter().map(WebhookView::from).collect(), next_cursor }))
}

#[utoipa::path(
    tag = "webhooks",
    params(("id" = Uuid, Path, description = "Subscription id")),
    request_body = WebhookPatch,
    responses(
        (status = 200, body = WebhookView),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody),
    ),
)]
#[patch("/webhooks/{id}")]
/// Change a subscription's URL, event types, description, or switch it off and on.
pub async fn update_webhook(
    state: web::Data<AppState>,
    caller: Principal,
    id: web::Path<Uuid>,
    body: Json<WebhookPatch>,
) -> Result<web::Json<WebhookView>, ApiError> {
    caller.require_admin()?;
    let patch = body.into_inner();
    let mut errors = FieldErrors::new();
    if let Some(url) = &patch.url {
        check_url(&mut errors, url);
    }
    if let Some(description) = &patch.description {
        check_optional_text(&mut errors, "description", description.as_deref(), 500);
    }
    errors.into_result()?;
    let id = id.into_inner();
    let actor = caller.actor();
    let mut conn = state.db().await?;
    let view = conn
        .transaction::<_, ApiError, _>(async |conn| {
            let before = db_events::find_subscription(conn, id)
                .await?
                .ok_or_else(|| ApiError::not_found(ErrorCode::WebhookNotFound))?;
            let changes = SubscriptionChanges {
                url: patch.url,
                event_types: patch.event_types.map(type_names),
                description: patch.description,
                active: patch.active,
            };
            let after = WebhookView::from(db_events::update_subscription(conn, id, &changes).await?);
            let entry = Change::new("webhook.updated", "webhook", id).before(&WebhookView::from(before)).after(&after);
            audit::record(conn, &actor, &[entry]).await?;
            Ok(after)
        })
        .await?;
    Ok(web::Json(view))
}

#[utoipa::path(
    tag = "webhooks",
    params(("id" = Uuid, Path, description = "Subscription id")),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
)]
#[delete("/webhooks/{id}")]
/// Remove a subscription; its queued deliveries are dropped.
pub async fn delete_webhook(
    state: web::Data<AppState>,
    caller: Principal,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    let id = id.into_inner();
    let actor = caller.actor();
    let mut conn = state.db().await?;
    conn.transaction::<_, ApiError, _>(async |conn| {
        let before = db_events::find_subscription(conn, id)
            .await?
            .ok_or_else(|| ApiError::not_found(ErrorCode::WebhookNotFound))?;
        db_events::delete_subscription(conn, id).await?;
        audit::record(
            conn,
            &actor,
            &[Change::new("webhook.deleted", "webhook", id).before(&WebhookView::from(before))],
        )
        .await?;
        Ok(())
    })
    .await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeliveryQuery {
    pub cursor: Option<String>,
    /// 1 to 200, default 50.
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
}

#[utoipa::path(
    tag = "webhooks",
    params(("id" = Uuid, Path, description = "Subscription id"), DeliveryQuery),
    responses(
        (status = 200, body = DeliveryPage),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
    ),
)]
#[get("/webhooks/{id}/deliveries")]
/// Deliveries to a subscription, newest first: attempts, status, last error.
pub async fn list_deliveries(
    state: web::Data<AppState>,
    caller: Principal,
    id: web::Path<Uuid>,
    query: Query<DeliveryQuery>,
) -> Result<web::Json<DeliveryPage>, ApiError> {
    caller.require_admin()?;
    let query = query.into_inner();
    let page = page(query.cursor.as_deref(), query.limit)?;
    let id = id.into_inner();
    let mut conn = state.db().await?;
    db_events::find_subscription(&mut conn, id)
        .await?
        .ok_or_else(|| ApiError::not_found(ErrorCode::WebhookNotFound))?;
    let rows = db_events::list_deliveries(&mut conn, id, page).await?;
    let (rows, next_cursor) = paginate(rows, &page, |d| d.id);
    Ok(web::Json(DeliveryPage { items: rows.into_iter().map(DeliveryView::from).collect(), next_cursor }))
}

/// An event as recorded in the outbox.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EventView {
    pub id: Uuid,
    #[serde(rename = "type")]
    pub event_type: String,
    pub subject: String,
    pub time: DateTime<Utc>,
    pub data: serde_json::Value,
}

page_type!(EventPage, EventView);

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventQuery {
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub event_type: Option<EventType>,
    pub cursor: Option<String>,
    /// 1 to 200, default 50.
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
}

#[utoipa::path(
    tag = "webhooks",
    params(EventQuery),
    responses((status = 200, body = EventPage), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
)]
#[get("/events")]
/// Events announced, newest first, whether or not anyone subscribed to them.
pub async fn list_events(
    state: web::Data<AppState>,
    caller: Principal,
    query: Query<EventQuery>,
) -> Result<web::Json<EventPage>, ApiError> {
    caller.require_admin()?;
    let query = query.into_inner();
    let page = page(query.cursor.as_deref(), query.limit)?;
    let mut conn = state.db().await?;
    let rows = db_events::list(&mut conn, query.event_type.map(|t| t.as_str()), page).await?;
    let (rows, next_cursor) = paginate(rows, &page, |e| e.id);
    let items = rows
        .into_iter()
        .map(|e| EventView { id: e.id, event_type: e.event_type, subject: e.subject, time: e.time, data: e.data })
        .collect();
    Ok(web::Json(EventPage { items, next_cursor }))
}
