//! Liveness, readiness, the OpenAPI document and the browsable docs.

use actix_web::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use actix_web::{HttpResponse, get, web};
use serde::Serialize;
use utoipa::ToSchema;

use crate::db;
use crate::error::ErrorBody;
use crate::state::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct Status {
    #[schema(example = "ok")]
    pub status: &'static str,
}

#[utoipa::path(tag = "system", security(()), responses((status = 200, body = Status)))]
#[get("/healthz")]
/// The process is up and serving HTTP.
pub async fn healthz() -> web::Json<Status> {
    web::Json(Status { status: "ok" })
}

#[utoipa::path(
    tag = "system",
    security(()),
    responses((status = 200, body = Status), (status = 503, description = "The database is unreachable", body = ErrorBody)),
)]
#[get("/readyz")]
/// Ready to serve: the database answers.
pub async fn readyz(state: web::Data<AppState>) -> Result<web::Json<Status>, crate::error::ApiError> {
    let mut conn = state.db().await?;
    db::ping(&mut conn).await.map_err(|e| {
        tracing::warn!("readiness check: {e}");
        crate::error::ApiError::new(
            actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
            "database-unavailable",
            "the database does not answer",
        )
    })?;
    Ok(web::Json(Status { status: "ready" }))
}

/// The OpenAPI 3.1 document for this server.
pub async fn openapi_json(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().insert_header((CONTENT_TYPE, "application/json")).body(state.openapi_json.to_string())
}

/// Swagger UI, served from files compiled into the binary so the docs work offline.
pub async fn docs(path: Option<web::Path<String>>) -> HttpResponse {
    let file = path.map(|p| p.into_inner()).unwrap_or_default();
    let (body, content_type): (&'static [u8], &str) = match file.as_str() {
        "" | "index.html" => (include_bytes!("../../assets/swagger-ui/index.html"), "text/html; charset=utf-8"),
        "swagger-ui.css" => (include_bytes!("../../assets/swagger-ui/swagger-ui.css"), "text/css"),
        "swagger-ui-bundle.js" => (include_bytes!("../../assets/swagger-ui/swagger-ui-bundle.js"), "text/javascript"),
        _ => return crate::routes::route_not_found().await,
    };
    HttpResponse::Ok()
        .insert_header((CONTENT_TYPE, content_type))
        .insert_header((CACHE_CONTROL, "public, max-age=3600"))
        .body(body)
}
