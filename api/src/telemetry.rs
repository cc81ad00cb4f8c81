//! Structured logs with `tracing`: human-readable text, or one JSON object per line.

use std::io::IsTerminal;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use tracing::{Level, Span};
use tracing_actix_web::{DefaultRootSpanBuilder, RootSpanBuilder, root_span};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

use crate::config::LogFormat;

/// Installs the global subscriber. `RUST_LOG`, when set, overrides `filter`.
pub fn init(format: LogFormat, filter: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        // One line per request when its span closes: method, route, status, request id, time.
        .with_span_events(FmtSpan::CLOSE);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    // A second init (tests) keeps the first subscriber.
    drop(result);
}

/// The span of each request (logged when it closes): tracing-actix-web's, built only when it
/// will be logged. Building it formats the client address and matches the route again, which
/// costs a tenth of a heartbeat's time, spent for nothing at a `warn` filter.
///
/// Agents' routine calls (heartbeats, work polls) are logged at `debug`: at the default `info`,
/// a fleet of 10,000 healthy agents writes no line per heartbeat. What goes wrong on them is
/// still logged (a 5xx with its cause, health changes, refusals worth an audit entry).
pub struct RequestSpan;

/// Paths agents call every few seconds.
fn is_routine(path: &str) -> bool {
    matches!(path, "/api/v1/agent/heartbeat" | "/api/v1/agent/work")
}

impl RootSpanBuilder for RequestSpan {
    fn on_request_start(request: &ServiceRequest) -> Span {
        if is_routine(request.path()) {
            if tracing::enabled!(Level::DEBUG) { root_span!(level = Level::DEBUG, request) } else { Span::none() }
        } else if tracing::enabled!(Level::INFO) {
            root_span!(level = Level::INFO, request)
        } else {
            Span::none()
        }
    }

    fn on_request_end<B: MessageBody>(span: Span, outcome: &Result<ServiceResponse<B>, actix_web::Error>) {
        DefaultRootSpanBuilder::on_request_end(span, outcome);
    }
}
