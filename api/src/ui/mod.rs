//! The web pages under `/ui/`: server-rendered HTML (askama templates in `api/templates/`,
//! compiled in), in English and Simplified Chinese, for ops (dashboard, machines, donation
//! review, queue, audit) and donors (registration, their donations and machines, usage).
//!
//! Pages never run SQL or call the HTTP API: they call the same `operations` the API's
//! handlers call, with the signed-in person as the caller, so access rules, validation and
//! audit are the API's. Every page works without JavaScript; the script only draws charts
//! and shows times in the viewer's zone.

mod assets;
mod dashboard;
mod donations;
mod donor;
mod i18n;
mod machines;
mod session;
mod trail;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use askama::Template;

pub use self::i18n::{Lang, Tr};
pub use self::session::{Ui, Viewer};
use crate::error::ApiError;
use crate::error_code::ErrorCode;

/// Where the pages are.
pub mod urls {
    pub const HOME: &str = "/ui/";
    pub const LOGIN: &str = "/ui/login";
}

/// Mounts the pages.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/ui")
            .route("", web::get().to(home))
            .route("/", web::get().to(home))
            .route("/login", web::get().to(session::login_form))
            .route("/login", web::post().to(session::login))
            .route("/logout", web::post().to(session::logout))
            .route("/lang", web::post().to(session::switch_language))
            .route("/assets/{name}", web::get().to(assets::serve))
            .route("/dashboard", web::get().to(dashboard::page))
            .route("/queue", web::get().to(dashboard::queue))
            .route("/machines", web::get().to(machines::list))
            .route("/machines.csv", web::get().to(machines::csv))
            .route("/machines/{id}", web::get().to(machines::detail))
            .route("/machines/{id}/act", web::post().to(machines::act))
            .route("/donations", web::get().to(donations::list))
            .route("/donations/new", web::get().to(donor::register_form))
            .route("/donations/new", web::post().to(donor::register))
            .route("/donations/{id}", web::get().to(donations::detail))
            .route("/donations/{id}/act", web::post().to(donations::act))
            .route("/audit", web::get().to(trail::list))
            .route("/usage", web::get().to(donor::usage))
            .route("/usage.csv", web::get().to(donor::usage_csv))
            .default_service(web::to(not_found)),
    );
}

/// `/ui/`: ops go to the dashboard, donors to their donations.
async fn home(viewer: Viewer) -> HttpResponse {
    redirect(if viewer.is_ops() { "/ui/dashboard" } else { "/ui/donations" })
}

async fn not_found(req: HttpRequest) -> HttpResponse {
    UiError::Api(ApiError::not_found(ErrorCode::PageNotFound)).page(&Ui::of(&req))
}

pub fn redirect(to: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, HeaderValue::from_str(to).unwrap_or(HeaderValue::from_static("/ui/"))))
        .finish()
}

/// What every page's frame needs: how to speak, who is signed in, the session's form token,
/// and which section of the navigation is open.
#[derive(Debug, Clone)]
pub struct Chrome {
    pub ui: Ui,
    pub signed_in: bool,
    pub ops: bool,
    pub name: String,
    pub csrf: String,
    pub section: &'static str,
}

impl Chrome {
    pub fn new(viewer: &Viewer, section: &'static str) -> Chrome {
        Chrome {
            ui: viewer.ui.clone(),
            signed_in: true,
            ops: viewer.is_ops(),
            name: viewer.name(),
            csrf: viewer.csrf.clone(),
            section,
        }
    }

    pub fn anonymous(ui: Ui) -> Chrome {
        Chrome { ui, signed_in: false, ops: false, name: String::new(), csrf: String::new(), section: "" }
    }

    pub fn t(&self, key: &str) -> String {
        self.ui.tr.t(key)
    }

    pub fn n(&self, key: &str, n: impl std::borrow::Borrow<i64>) -> String {
        self.ui.tr.n(key, *n.borrow())
    }

    pub fn word(&self, kind: &str, value: impl std::fmt::Display) -> String {
        self.ui.tr.word(kind, value)
    }

    pub fn said(&self, text: &str) -> String {
        self.ui.tr.said(text)
    }

    pub fn did(&self, action: &str) -> String {
        self.ui.tr.did(action)
    }

    pub fn time(&self, at: &chrono::DateTime<chrono::Utc>) -> String {
        self.ui.tr.time(at)
    }

    pub fn time_opt(&self, at: &Option<chrono::DateTime<chrono::Utc>>) -> String {
        self.ui.tr.time_opt(at)
    }

    pub fn since(&self, at: &Option<chrono::DateTime<chrono::Utc>>) -> String {
        self.ui.tr.since(at)
    }

    pub fn since_at(&self, at: &chrono::DateTime<chrono::Utc>) -> String {
        self.ui.tr.since(&Some(*at))
    }

    pub fn duration(&self, secs: &Option<f64>) -> String {
        secs.map_or_else(|| "—".to_owned(), |s| self.ui.tr.duration_secs(s))
    }

    pub fn lang(&self) -> &'static str {
        self.ui.tr.lang.tag()
    }

    pub fn langs(&self) -> [Lang; 2] {
        Lang::ALL
    }

    pub fn is_lang(&self, lang: &Lang) -> bool {
        *lang == self.ui.tr.lang
    }

    pub fn zone(&self) -> String {
        self.ui.tr.tz.name().to_owned()
    }
}

/// A page as a response: HTML, never cached, under a policy that lets only our own scripts,
/// styles and forms run.
pub fn render(status: StatusCode, page: &impl Template) -> HttpResponse {
    match page.render() {
        Ok(html) => HttpResponse::build(status)
            .insert_header((header::CONTENT_TYPE, "text/html; charset=utf-8"))
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .insert_header((
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
                 form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            ))
            .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
            .insert_header((header::REFERRER_POLICY, "same-origin"))
            .body(html),
        Err(error) => ApiError::internal(error).error_response(),
    }
}

pub fn ok(page: &impl Template) -> HttpResponse {
    render(StatusCode::OK, page)
}

/// What a query value must escape: all but RFC 3986's unreserved characters.
const QUERY_VALUE: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Why a page could not be shown.
#[derive(Debug)]
pub enum UiError {
    /// No session, or it ended: to the sign-in page, and back here after.
    SignIn { next: String },
    /// A form without this session's token, or from another site.
    Csrf,
    /// A body that is not a form.
    BadForm,
    /// What the operation answered.
    Api(ApiError),
}

impl From<ApiError> for UiError {
    fn from(error: ApiError) -> Self {
        UiError::Api(error)
    }
}

impl From<crate::domain::FieldErrors> for UiError {
    fn from(errors: crate::domain::FieldErrors) -> Self {
        UiError::Api(errors.into())
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    c: Chrome,
    status: u16,
    title: String,
    message: String,
}

impl UiError {
    pub fn page(&self, ui: &Ui) -> HttpResponse {
        let tr = &ui.tr;
        let (status, title, message) = match self {
            UiError::SignIn { next } => {
                let to = format!("{}?next={}", urls::LOGIN, percent_encoding::utf8_percent_encode(next, QUERY_VALUE));
                return redirect(&to);
            }
            UiError::Csrf => (StatusCode::FORBIDDEN, tr.t("error-csrf-title"), tr.t("error-csrf")),
            UiError::BadForm => (StatusCode::BAD_REQUEST, tr.t("error-title"), tr.t("error-bad-form")),
            UiError::Api(error) => {
                let title = match error.status() {
                    StatusCode::NOT_FOUND => tr.t("error-not-found-title"),
                    StatusCode::FORBIDDEN => tr.t("error-forbidden-title"),
                    _ => tr.t("error-title"),
                };
                let message = match error.status() {
                    StatusCode::NOT_FOUND => tr.t("error-not-found"),
                    s if s.is_server_error() => tr.t("error-internal"),
                    _ => tr.error(error),
                };
                if error.status().is_server_error() {
                    let _ = error.to_shared();
                }
                (error.status(), title, message)
            }
        };
        let page = ErrorPage { c: Chrome::anonymous(ui.clone()), status: status.as_u16(), title, message };
        render(status, &page)
    }
}

impl std::fmt::Display for UiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

/// Why the session extractor refused a request, with the request's language and zone (an
/// actix error renders without the request), so it is shown in the viewer's language too.
#[derive(Debug)]
pub struct SessionRefused {
    error: UiError,
    ui: Ui,
}

impl UiError {
    pub fn seen_by(self, ui: &Ui) -> SessionRefused {
        SessionRefused { error: self, ui: ui.clone() }
    }
}

impl std::fmt::Display for SessionRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl ResponseError for SessionRefused {
    fn status_code(&self) -> StatusCode {
        match &self.error {
            UiError::SignIn { .. } => StatusCode::SEE_OTHER,
            UiError::Csrf => StatusCode::FORBIDDEN,
            UiError::BadForm => StatusCode::BAD_REQUEST,
            UiError::Api(error) => error.status(),
        }
    }

    fn error_response(&self) -> HttpResponse {
        self.error.page(&self.ui)
    }
}

/// An action a page sent that the operation refused, as the page shows it again: the status,
/// the message, and each field's problem next to its field.
#[derive(Debug, Default)]
pub struct Refused {
    pub status: Option<StatusCode>,
    pub message: Option<String>,
    /// The fields the refusal names, each with its problem in the viewer's language.
    pub fields: Vec<(String, String)>,
}

impl Refused {
    pub fn none() -> Refused {
        Refused::default()
    }

    /// `error`, if the page should show it again (a 4xx but 404), or back as an error page.
    pub fn of(error: ApiError, tr: &Tr) -> Result<Refused, UiError> {
        if error.status() == StatusCode::NOT_FOUND { Err(error.into()) } else { Refused::of_form(error, tr) }
    }

    /// `error` shown again on a form: any 4xx (a form's 404 names something typed in it).
    pub fn of_form(error: ApiError, tr: &Tr) -> Result<Refused, UiError> {
        if !error.status().is_client_error() {
            return Err(error.into());
        }
        Ok(Refused {
            status: Some(error.status()),
            message: Some(tr.error(&error)),
            fields: error.field_errors().iter().map(|e| (e.field.clone(), tr.problem(&e.problem))).collect(),
        })
    }

    /// The problem with `field`, if the refusal names it.
    pub fn field(&self, field: &str) -> Option<String> {
        self.fields.iter().find(|(f, _)| f == field).map(|(_, p)| p.clone())
    }

    pub fn status(&self) -> StatusCode {
        self.status.unwrap_or(StatusCode::OK)
    }
}

/// A page handler's answer: the page, or the error page in the viewer's language.
pub type Page = Result<HttpResponse, UiError>;

/// Turns an error into its page in the viewer's language.
pub fn answer(ui: &Ui, result: Page) -> HttpResponse {
    result.unwrap_or_else(|error| error.page(ui))
}

/// JSON for a `<script type="application/json">` block: nothing in it can end the element.
pub fn json_for_script(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value)
        .unwrap_or_else(|_| "null".into())
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}
