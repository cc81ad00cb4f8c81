//! The one error type handlers return, and the rule for errors everywhere.
//!
//! - Outside requests (start-up, the CLI, background jobs) errors are `anyhow::Error`.
//! - Database code returns `diesel::QueryResult`; it does not know about HTTP.
//! - Handlers return [`ApiError`], rendered as the one JSON shape
//!   `{"code": "...", "message": "...", "details": {...}}`. Codes are stable kebab-case
//!   strings clients may match on; messages are for people.
//! - An outcome a client can act on (bad input, a refused transition, a taken name) is a 4xx
//!   with its own code. The unexpected is a 500: it is logged here with its whole cause chain,
//!   and the client learns nothing of the internals. A 503 says "not now" (database
//!   unreachable, heartbeat backlog) and is expected under stress.

use std::borrow::Cow;

use actix_web::http::{StatusCode, header};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::domain::{FieldErrors, donation::InvalidAction, lifecycle::InvalidTransition};

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Stable, kebab-case error code, e.g. `validation-failed`, `machine-not-found`.
    #[schema(example = "validation-failed")]
    pub code: String,
    /// What went wrong, for people.
    pub message: String,
    /// Structured facts about the error; for `validation-failed`, `{"errors": [{"field",
    /// "problem"}]}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: Cow<'static, str>,
    message: String,
    details: Option<Value>,
    /// Seconds to send as `Retry-After` (429 and 503).
    retry_after: Option<u64>,
    cause: Option<anyhow::Error>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self { status, code: code.into(), message: message.into(), details: None, retry_after: None, cause: None }
    }

    /// The same answer for another caller, without the cause (which is logged once, here).
    pub fn to_shared(&self) -> Self {
        if let Some(cause) = &self.cause {
            tracing::error!(code = %self.code, "{}: {cause:#}", self.message);
        }
        Self {
            status: self.status,
            code: self.code.clone(),
            message: self.message.clone(),
            details: self.details.clone(),
            retry_after: self.retry_after,
            cause: None,
        }
    }

    /// 422 with its own code: the request is well-formed but cannot be met.
    pub fn unprocessable(code: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    /// 503: try again shortly.
    pub fn unavailable(code: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
    }

    /// 429: this caller has asked too much; `Retry-After` says when to try again.
    pub fn too_many(code: impl Into<Cow<'static, str>>, message: impl Into<String>, retry_after_secs: u64) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, code, message).retry_after(retry_after_secs)
    }

    /// Adds a `Retry-After` header (seconds) to the answer.
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs.max(1));
        self
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    /// 422: the request was well-formed JSON but some fields are wrong.
    pub fn validation(errors: FieldErrors) -> Self {
        let message =
            errors.as_slice().iter().map(|e| format!("{}: {}", e.field, e.problem)).collect::<Vec<_>>().join("; ");
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "validation-failed", message)
            .with_details(json!({ "errors": errors.as_slice() }))
    }

    /// 422 for a single field.
    pub fn invalid_field(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::validation(FieldErrors::one(field, problem))
    }

    /// 404, with code `<entity>-not-found`. Also what a donor gets for another donor's data:
    /// its existence is not theirs to learn.
    pub fn not_found(entity: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, format!("{entity}-not-found"), format!("{entity} not found"))
    }

    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn conflict(code: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    /// 500: something that should not happen. The cause is logged, not sent.
    pub fn internal(cause: impl Into<anyhow::Error>) -> Self {
        Self {
            cause: Some(cause.into()),
            ..Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal-error",
                "an unexpected error occurred; it has been logged",
            )
        }
    }

    pub fn code(&self) -> &str {
        &self.code
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// What went wrong, for people (the web pages show it).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The fields a validation error names, with their problems (the web pages show each
    /// next to its field).
    pub fn field_errors(&self) -> Vec<(String, String)> {
        let errors = self.details.as_ref().and_then(|d| d.get("errors")).and_then(|e| e.as_array());
        errors
            .into_iter()
            .flatten()
            .filter_map(|e| Some((e.get("field")?.as_str()?.to_owned(), e.get("problem")?.as_str()?.to_owned())))
            .collect()
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        // The request logger records every 5xx; what only this knows is the cause chain of an
        // unexpected failure. Expected 5xx (database down, backpressure) have no cause.
        if let Some(cause) = &self.cause {
            tracing::error!(code = %self.code, "request failed: {cause:#}");
        }
        let mut response = HttpResponse::build(self.status);
        if self.status == StatusCode::UNAUTHORIZED {
            response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        if let Some(secs) = self.retry_after {
            response.insert_header((header::RETRY_AFTER, secs.to_string()));
        }
        response.json(ErrorBody {
            code: self.code.to_string(),
            message: self.message.clone(),
            details: self.details.clone(),
        })
    }
}

impl From<FieldErrors> for ApiError {
    fn from(errors: FieldErrors) -> Self {
        Self::validation(errors)
    }
}

impl From<diesel::result::Error> for ApiError {
    fn from(error: diesel::result::Error) -> Self {
        Self::internal(error)
    }
}

impl From<crate::db::PoolError> for ApiError {
    fn from(error: crate::db::PoolError) -> Self {
        tracing::error!("database pool: {error}");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "database-unavailable",
            "the database is unavailable; try again shortly",
        )
    }
}

impl From<InvalidTransition> for ApiError {
    fn from(e: InvalidTransition) -> Self {
        Self::conflict("invalid-transition", e.to_string())
            .with_details(json!({ "from": e.from, "to": e.to, "allowed": e.allowed }))
    }
}

impl From<InvalidAction> for ApiError {
    fn from(e: InvalidAction) -> Self {
        Self::conflict("invalid-action", e.to_string()).with_details(json!({
            "action": e.action, "status": e.status, "model": e.model, "allowed": e.allowed,
        }))
    }
}
