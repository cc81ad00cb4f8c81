//! Building the application and the HTTP server, once for `fleetyard serve` and for tests.

use std::net::TcpListener;
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::{App, HttpServer, web};
use anyhow::Context;
use tracing_actix_web::TracingLogger;
use utoipa_actix_web::AppExt;

use crate::error::ApiError;
use crate::state::AppState;
use crate::telemetry::RequestSpan;
use crate::{handlers::system, routes};

/// The whole application: routes, extractor settings and middleware around `state`.
pub fn build_app(
    state: AppState,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let body_limit = state.config.max_body_bytes;
    let (app, _) = App::new()
        .into_utoipa_app()
        .app_data(web::Data::new(state))
        .app_data(web::PayloadConfig::new(body_limit))
        .app_data(web::PathConfig::default().error_handler(|error, _| {
            let _ = error;
            ApiError::invalid_field("id", crate::domain::Problem::NotAPathValue).into()
        }))
        .configure(routes::configure)
        .split_for_parts();
    app.route("/api/openapi.json", web::get().to(system::openapi_json))
        .route("/api/docs", web::get().to(system::docs))
        .route("/api/docs/{file}", web::get().to(system::docs))
        .configure(crate::ui::configure)
        .default_service(web::to(routes::route_not_found))
        .wrap(TracingLogger::<RequestSpan>::new())
}

/// A bound, not yet running server.
pub struct Server {
    pub server: actix_web::dev::Server,
    pub address: std::net::SocketAddr,
}

/// Binds `listener` and builds the server around `state`. `handle_signals` lets SIGINT and
/// SIGTERM stop it gracefully (tests switch that off and stop it through its handle).
pub fn build_server(state: AppState, listener: TcpListener, handle_signals: bool) -> anyhow::Result<Server> {
    let address = listener.local_addr().context("reading the bound address")?;
    let config = state.config.clone();
    let workers =
        if config.workers == 0 { std::thread::available_parallelism().map_or(2, |n| n.get()) } else { config.workers };
    let mut server = HttpServer::new(move || build_app(state.clone()))
        // Agents beat every 10 s: keeping their connection open saves a TLS handshake each time.
        .keep_alive(Duration::from_secs(75))
        .workers(workers)
        .shutdown_timeout(config.shutdown_timeout_secs)
        .listen(listener)
        .with_context(|| format!("listening on {address}"))?;
    if !handle_signals {
        server = server.disable_signals();
    }
    Ok(Server { server: server.run(), address })
}
