//! Liveness, readiness, the OpenAPI document and the browsable docs.

use actix_web::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use actix_web::{HttpResponse, get, post, web};
use serde::Serialize;
use utoipa::ToSchema;

use chrono::{DateTime, Utc};

use crate::auth::Principal;
use crate::db;
use crate::error::{ApiError, ErrorBody};
use crate::error_code::ErrorCode;
use crate::schedules::{self, RunOutcome, Schedule};
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
            ErrorCode::DatabaseUnavailable,
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
        _ => return crate::routes::no_such_route(),
    };
    HttpResponse::Ok()
        .insert_header((CONTENT_TYPE, content_type))
        .insert_header((CACHE_CONTROL, "public, max-age=3600"))
        .body(body)
}

/// Fleetyard's SSH public key: authorise it (in `~/.ssh/authorized_keys` of the machine's
/// SSH user) so Fleetyard can check the machine.
#[derive(Debug, Serialize, ToSchema)]
pub struct SshPublicKey {
    /// One `authorized_keys` line.
    #[schema(example = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA... fleetyard")]
    pub public_key: String,
    #[schema(example = "SHA256:...")]
    pub fingerprint: String,
}

#[utoipa::path(
    tag = "system",
    responses((status = 200, body = SshPublicKey), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
)]
#[get("/ssh-key")]
/// Fleetyard's SSH public key, for donors to authorise on their machines.
pub async fn ssh_public_key(
    state: web::Data<AppState>,
    caller: Principal,
) -> Result<web::Json<SshPublicKey>, ApiError> {
    caller.admin_or_donor()?;
    let key = state.ssh_key().await.map_err(ApiError::internal)?;
    Ok(web::Json(SshPublicKey { public_key: key.public_openssh.clone(), fingerprint: key.fingerprint.clone() }))
}

/// A background schedule, its timing and its last run (on any replica).
#[derive(Debug, Serialize, ToSchema)]
pub struct ScheduleView {
    pub name: &'static str,
    /// Cron, with seconds: `sec min hour day month weekday`.
    pub schedule: String,
    pub enabled: bool,
    pub last_started_at: Option<DateTime<Utc>>,
    pub last_finished_at: Option<DateTime<Utc>>,
    pub last_run_by: Option<String>,
    pub last_outcome: Option<String>,
    pub last_report: Option<serde_json::Value>,
    pub runs: i64,
}

#[utoipa::path(
    tag = "system",
    responses((status = 200, body = Vec<ScheduleView>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
)]
#[get("/schedules")]
/// Every background schedule with its timing and last run. Ops only.
pub async fn list_schedules(
    state: web::Data<AppState>,
    caller: Principal,
) -> Result<web::Json<Vec<ScheduleView>>, ApiError> {
    caller.require_admin()?;
    let mut conn = state.db().await?;
    let runs = db::job_runs::list(&mut conn).await?;
    let views = Schedule::ALL
        .into_iter()
        .map(|kind| {
            let setting = kind.setting(&state.config.schedules);
            let run = runs.iter().find(|r| r.job == kind.name());
            ScheduleView {
                name: kind.name(),
                schedule: setting.schedule.clone(),
                enabled: setting.enabled && state.config.schedules.enabled,
                last_started_at: run.and_then(|r| r.last_started_at),
                last_finished_at: run.and_then(|r| r.last_finished_at),
                last_run_by: run.and_then(|r| r.run_by.clone()),
                last_outcome: run.and_then(|r| r.last_outcome.clone()),
                last_report: run.and_then(|r| r.last_report.clone()),
                runs: run.map_or(0, |r| r.runs),
            }
        })
        .collect();
    Ok(web::Json(views))
}

/// The outcome of running a schedule on request.
#[derive(Debug, Serialize, ToSchema)]
pub struct ScheduleRunResult {
    /// `ran`, or `skipped` when another replica has this period's run.
    pub outcome: &'static str,
    pub report: Option<serde_json::Value>,
}

#[utoipa::path(
    tag = "system",
    params(("name" = String, Path, description = "Schedule name, e.g. `liveness-sweep`")),
    responses(
        (status = 200, body = ScheduleRunResult),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
    ),
)]
#[post("/schedules/{name}/run")]
/// Run a schedule now, on this replica, unless another replica has this period's run, and answer
/// with its report (an SSH round can take a minute). Ops only.
pub async fn run_schedule(
    state: web::Data<AppState>,
    caller: Principal,
    name: web::Path<String>,
) -> Result<web::Json<ScheduleRunResult>, ApiError> {
    caller.require_admin()?;
    let kind = Schedule::from_name(&name).ok_or_else(|| ApiError::not_found(ErrorCode::ScheduleNotFound))?;
    // The run goes on by itself: a caller giving up must not leave a claimed run half done.
    let state = state.into_inner();
    let run = tokio::spawn(async move { schedules::run(&state, kind, &schedules::replica_name()).await });
    let outcome = run.await.map_err(ApiError::internal)?.map_err(ApiError::internal)?;
    Ok(web::Json(match outcome {
        RunOutcome::Ran(report) => ScheduleRunResult { outcome: "ran", report: Some(report) },
        RunOutcome::Skipped => ScheduleRunResult { outcome: "skipped", report: None },
    }))
}
