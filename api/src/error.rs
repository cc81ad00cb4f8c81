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

use actix_web::http::{StatusCode, header};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::domain::{FieldError, FieldErrors, Problem, donation::InvalidAction, lifecycle::InvalidTransition};
use crate::error_code::ErrorCode;

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Stable, kebab-case error code, e.g. `validation-failed`, `machine-not-found`.
    pub code: ErrorCode,
    /// What went wrong, for people.
    pub message: String,
    /// Structured facts about the error; for `validation-failed`, `{"errors": [{"field",
    /// "code", "args", "problem"}]}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: ErrorCode,
    message: String,
    details: Option<Value>,
    /// Seconds to send as `Retry-After` (429 and 503).
    retry_after: Option<u64>,
    /// The fields a validation error names (also in `details`).
    fields: FieldErrors,
    cause: Option<anyhow::Error>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: None,
            retry_after: None,
            fields: FieldErrors::new(),
            cause: None,
        }
    }

    /// The same answer for another caller, without the cause (which is logged once, here).
    pub fn to_shared(&self) -> Self {
        if let Some(cause) = &self.cause {
            tracing::error!(code = %self.code, "{}: {cause:#}", self.message);
        }
        Self {
            status: self.status,
            code: self.code,
            message: self.message.clone(),
            details: self.details.clone(),
            retry_after: self.retry_after,
            fields: self.fields.clone(),
            cause: None,
        }
    }

    /// 422 with its own code: the request is well-formed but cannot be met.
    pub fn unprocessable(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    /// 503: try again shortly.
    pub fn unavailable(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
    }

    /// 429: this caller has asked too much; `Retry-After` says when to try again.
    pub fn too_many(code: ErrorCode, message: impl Into<String>, retry_after_secs: u64) -> Self {
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
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::ValidationFailed, message).with_field_errors(errors)
    }

    /// Names the fields at fault: `details` becomes `{"errors": [...]}`, and the pages show
    /// each problem next to its field.
    pub fn with_field_errors(mut self, errors: FieldErrors) -> Self {
        self.details = Some(json!({ "errors": errors.as_slice() }));
        self.fields = errors;
        self
    }

    /// 422 for a single field.
    pub fn invalid_field(field: impl Into<String>, problem: Problem) -> Self {
        Self::validation(FieldErrors::one(field, problem))
    }

    /// 404 with an `<entity>-not-found` code, e.g. `machine-not-found` ("machine not found").
    /// Also what a donor gets for another donor's data: its existence is not theirs to learn.
    pub fn not_found(code: ErrorCode) -> Self {
        let entity = code.as_str().strip_suffix("-not-found").unwrap_or("resource").replace('-', " ");
        Self::new(StatusCode::NOT_FOUND, code, format!("{entity} not found"))
    }

    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthenticated, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, ErrorCode::Forbidden, message)
    }

    pub fn conflict(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    /// 500: something that should not happen. The cause is logged, not sent.
    pub fn internal(cause: impl Into<anyhow::Error>) -> Self {
        Self {
            cause: Some(cause.into()),
            ..Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::InternalError,
                "an unexpected error occurred; it has been logged",
            )
        }
    }

    pub fn code(&self) -> ErrorCode {
        self.code
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// What went wrong, for people (the web pages show it).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The fields a refusal names, with their problems (the web pages show each next to its
    /// field, in the viewer's language).
    pub fn field_errors(&self) -> &[FieldError] {
        self.fields.as_slice()
    }

    /// Structured facts about the error (the `details` of the body).
    pub fn details(&self) -> Option<&Value> {
        self.details.as_ref()
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
        response.json(ErrorBody { code: self.code, message: self.message.clone(), details: self.details.clone() })
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
            ErrorCode::DatabaseUnavailable,
            "the database is unavailable; try again shortly",
        )
    }
}

impl From<InvalidTransition> for ApiError {
    fn from(e: InvalidTransition) -> Self {
        Self::conflict(ErrorCode::InvalidTransition, e.to_string())
            .with_details(json!({ "from": e.from, "to": e.to, "allowed": e.allowed }))
    }
}

impl From<InvalidAction> for ApiError {
    fn from(e: InvalidAction) -> Self {
        Self::conflict(ErrorCode::InvalidAction, e.to_string()).with_details(json!({
            "action": e.action, "status": e.status, "model": e.model, "allowed": e.allowed,
        }))
    }
}
