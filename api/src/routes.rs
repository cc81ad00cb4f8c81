//! The one route table. Handlers registered here are also what the OpenAPI document
//! describes: utoipa-actix-web collects each handler's `#[utoipa::path]` as it is registered.

use actix_web::{App, HttpResponse, http::StatusCode};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_actix_web::{AppExt, scope, service_config::ServiceConfig};

use crate::error::{ApiError, ErrorBody};
use crate::error_code::ErrorCode;
use crate::handlers::{
    agent, audit, auth, clouds, donations, donors, jobs, leases, machines, overview, service_tokens, sites, system,
    users, webhooks,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Fleetyard API",
        description = "Inventory, donations and scheduling for a community's donated and rented \
                       hardware. Authenticate with `Authorization: Bearer <token>`: a session \
                       token from `POST /api/v1/auth/login`, or a service token issued by ops.",
        license(name = "MulanPSL-2.0"),
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    components(schemas(ErrorBody, crate::domain::validation::FieldErrorBody)),
    tags(
        (name = "auth", description = "Logging in and asking who you are"),
        (name = "donations", description = "The donation form, review and donation-level actions"),
        (name = "machines", description = "The inventory: list, detail, labels, maintenance, lifecycle"),
        (name = "donors", description = "Donor organisations"),
        (name = "leases", description = "Machines for CI runners: ask, wait, extend, release"),
        (name = "jobs", description = "Build and test jobs: a command placed on a matching machine, its output and status"),
        (name = "clouds", description = "Cloud accounts, their catalogues and instances; importing existing servers"),
        (name = "sites", description = "Labs, donor sites and cloud regions"),
        (name = "users", description = "Accounts for ops and donors' staff"),
        (name = "service-tokens", description = "Service-account tokens for CI and other services"),
        (name = "agents", description = "What machine agents call: enroll, heartbeat, renew"),
        (name = "webhooks", description = "Signed CloudEvents to subscribers, and the event outbox"),
        (name = "audit", description = "The append-only record of every change"),
        (name = "overview", description = "The fleet at a glance, as the ops dashboard shows it"),
        (name = "system", description = "Health, readiness, Fleetyard's SSH key, background schedules"),
    ),
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build()),
        );
    }
}

/// Registers every documented route. actix tries routes in this order, so the hottest come
/// first and none with a `{pattern}` (matched by regex) stands before them.
pub fn configure(cfg: &mut ServiceConfig) {
    cfg.service(system::healthz).service(system::readyz);
    cfg.service(
        scope("/api/v1")
            .service(agent::heartbeat)
            .service(agent::agent_work)
            .service(agent::job_output_from_agent)
            .service(agent::job_finished)
            .service(agent::enroll)
            .service(agent::renew_credential)
            .service(agent::agent_binary)
            .service(system::ssh_public_key)
            .service(system::list_schedules)
            .service(system::run_schedule)
            .service(auth::login)
            .service(auth::me)
            .service(auth::logout)
            .service(auth::change_password)
            .service(users::create_user)
            .service(users::list_users)
            .service(users::update_user)
            .service(service_tokens::issue_service_token)
            .service(service_tokens::list_service_tokens)
            .service(service_tokens::revoke_service_token)
            .service(service_tokens::change_service_token)
            .service(donors::create_donor)
            .service(donors::list_donors)
            .service(donors::get_donor)
            .service(donors::update_donor)
            .service(overview::donor_usage)
            .service(sites::create_site)
            .service(sites::list_sites)
            .service(sites::get_site)
            .service(sites::update_site)
            .service(donations::create_donation)
            .service(donations::list_donations)
            .service(donations::get_donation)
            .service(donations::act_on_donation)
            .service(donations::put_usage_policy)
            .service(machines::list_machines)
            .service(machines::get_machine)
            .service(machines::edit_labels)
            .service(machines::transition_machine)
            .service(machines::start_maintenance)
            .service(machines::end_maintenance)
            .service(machines::issue_enrollment_token)
            .service(machines::request_ssh_probe)
            .service(machines::lift_quarantine)
            .service(machines::cut_off_machine_agent)
            .service(webhooks::create_webhook)
            .service(webhooks::list_webhooks)
            .service(webhooks::update_webhook)
            .service(webhooks::delete_webhook)
            .service(webhooks::list_deliveries)
            .service(webhooks::list_events)
            .service(leases::create_lease)
            .service(leases::list_leases)
            .service(leases::get_lease)
            .service(leases::extend_lease)
            .service(leases::release_lease)
            .service(leases::lease_queue)
            .service(jobs::create_job)
            .service(jobs::list_jobs)
            .service(jobs::get_job)
            .service(jobs::job_output)
            .service(jobs::cancel_job)
            .service(clouds::list_clouds)
            .service(clouds::list_cloud_instances)
            .service(clouds::create_cloud_import)
            .service(clouds::get_cloud_import)
            .service(audit::list_audit)
            .service(overview::fleet_overview),
    );
}

/// The OpenAPI document, built from the same registrations the server uses.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, mut doc) = App::new().into_utoipa_app().openapi(ApiDoc::openapi()).configure(configure).split_for_parts();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    document_common_answers(&mut doc);
    doc
}

/// Adds to every operation the answers the server can give it whatever the handler does, so a
/// client generated from the document knows every status it may meet:
/// - 503 (`database-unavailable`) to all but `/healthz`, and 401/403 to all that need a token;
/// - 422 to those with path or query parameters or a body (field errors), 404 to those with
///   path parameters;
/// - 400 (`malformed-json`), 413 (`body-too-large`) and 415 (`unsupported-media-type`) to
///   those with a JSON body.
///
/// A handler's own description of a status is kept.
fn document_common_answers(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::path::ParameterIn;
    use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};

    let answer = |description: &str| {
        ResponseBuilder::new()
            .description(description)
            .content("application/json", ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build())
            .build()
    };
    for (path, item) in doc.paths.paths.iter_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
            &mut item.head,
            &mut item.options,
            &mut item.trace,
        ];
        for operation in operations.into_iter().flatten() {
            let parameters = operation.parameters.as_deref().unwrap_or_default();
            let located = |at: ParameterIn| {
                parameters
                    .iter()
                    .any(|p| matches!(p, RefOr::T(p) if p.parameter_in == at) || matches!(p, RefOr::Ref(_)))
            };
            let (in_path, in_query) = (located(ParameterIn::Path), located(ParameterIn::Query));
            let has_body = operation.request_body.is_some();
            let public = operation.security.as_ref().is_some_and(|s| s.iter().all(|r| r == &Default::default()));
            let mut add = |code: &str, description: &str| {
                operation.responses.responses.entry(code.to_owned()).or_insert_with(|| answer(description).into());
            };
            if has_body {
                add("400", "The body is not JSON (`malformed-json`) or cannot be read");
                add("413", "The body is larger than the server accepts (`body-too-large`)");
                add("415", "The body is not sent as `application/json` (`unsupported-media-type`)");
            }
            if has_body || in_path || in_query {
                add("422", "A field, parameter or path segment is invalid; `details.errors` names each");
            }
            if in_path {
                add("404", "Not found, or not the caller's to see");
            }
            if !public {
                add("401", "No valid token");
                add("403", "The caller's role may not do this");
            }
            if path != "/healthz" {
                add("503", "The database (or another part the request needs) is unavailable; retry shortly");
            }
            // Every response needs a description (OpenAPI requires one; generators refuse
            // documents without): a handler's own, or the status's reason phrase.
            for (code, response) in operation.responses.responses.iter_mut() {
                if let RefOr::T(response) = response
                    && response.description.is_empty()
                {
                    let reason = code.parse::<u16>().ok().and_then(|c| StatusCode::from_u16(c).ok());
                    response.description = reason.and_then(|s| s.canonical_reason()).unwrap_or("Answer").to_owned();
                }
            }
        }
    }
}

/// The OpenAPI document as pretty JSON with a trailing newline: what `openapi/openapi.json` holds.
pub fn openapi_json() -> String {
    let mut json = openapi().to_pretty_json().expect("the OpenAPI document serialises");
    json.push('\n');
    json
}

/// Every request no route took answers in the one error shape: 405 with `Allow` for a known
/// path asked with another method, 404 for an unknown path.
pub async fn route_not_found(req: actix_web::HttpRequest) -> HttpResponse {
    let allowed = allowed_methods(req.path());
    if allowed.is_empty() {
        return no_such_route();
    }
    let mut response = actix_web::ResponseError::error_response(&ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::MethodNotAllowed,
        format!("{} does not answer {}; it answers {}", req.path(), req.method(), allowed.join(", ")),
    ));
    if let Ok(value) = actix_web::http::header::HeaderValue::from_str(&allowed.join(", ")) {
        response.headers_mut().insert(actix_web::http::header::ALLOW, value);
    }
    response
}

/// 404 `route-not-found`.
pub fn no_such_route() -> HttpResponse {
    actix_web::ResponseError::error_response(&ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::RouteNotFound,
        "no such endpoint; the API is described at /api/openapi.json",
    ))
}

/// The methods the server answers on `path`, from the document's paths (and the documents'
/// own routes).
fn allowed_methods(path: &str) -> Vec<&'static str> {
    /// A path template as segments (`None` for a `{parameter}`), and its methods.
    type Route = (Vec<Option<String>>, Vec<&'static str>);
    static ROUTES: std::sync::OnceLock<Vec<Route>> = std::sync::OnceLock::new();
    let routes = ROUTES.get_or_init(|| {
        let segments = |template: &str| -> Vec<Option<String>> {
            template.trim_start_matches('/').split('/').map(|s| (!s.starts_with('{')).then(|| s.to_owned())).collect()
        };
        let mut routes: Vec<Route> = openapi()
            .paths
            .paths
            .iter()
            .map(|(template, item)| {
                let methods = [
                    ("GET", item.get.is_some()),
                    ("PUT", item.put.is_some()),
                    ("POST", item.post.is_some()),
                    ("DELETE", item.delete.is_some()),
                    ("PATCH", item.patch.is_some()),
                ];
                (segments(template), methods.iter().filter(|(_, on)| *on).map(|(m, _)| *m).collect())
            })
            .collect();
        for template in ["/api/openapi.json", "/api/docs", "/api/docs/{file}"] {
            routes.push((segments(template), vec!["GET"]));
        }
        routes
    });
    let asked: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let mut allowed: Vec<&'static str> = routes
        .iter()
        .filter(|(template, _)| {
            template.len() == asked.len()
                && template.iter().zip(&asked).all(|(t, a)| t.as_deref().is_none_or(|t| t == *a) && !a.is_empty())
        })
        .flat_map(|(_, methods)| methods.iter().copied())
        .collect();
    allowed.sort_unstable();
    allowed.dedup();
    allowed
}
