//! Who is looking at a page: the session cookie (the same session token the API's login
//! issues, so logging out or changing a password anywhere ends it), the CSRF token of every
//! form, the language and time zone, and signing in and out.
//!
//! The cookie is `HttpOnly`, `SameSite=Lax`, `Path=/ui`, and `Secure` when the request came
//! over TLS. Every state-changing form carries `_csrf`, an HMAC of the session token under the
//! data key: it changes with each session and is checked before anything is read from the
//! form. Requests a browser marks as cross-site (`Sec-Fetch-Site`) are refused as well.

use actix_web::cookie::{Cookie, SameSite};
use actix_web::dev::Payload;
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{FromRequest, HttpRequest, HttpResponse, web};
use futures_util::future::LocalBoxFuture;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use super::i18n::{Lang, Tr};
use super::{Chrome, SessionRefused, UiError, render, urls};
use crate::auth::{self, Principal};
use crate::domain::Role;
use crate::extract::client_address;
use crate::operations::sessions::{self, LoginRequest};
use crate::state::AppState;

pub const SESSION_COOKIE: &str = "fy_session";
pub const LANG_COOKIE: &str = "fy_lang";
pub const TZ_COOKIE: &str = "fy_tz";
/// The login form's own CSRF token, before there is a session (double-submit).
const LOGIN_COOKIE: &str = "fy_login";

/// How a page speaks to this request: language, time zone, the path it was asked for.
#[derive(Debug, Clone)]
pub struct Ui {
    pub tr: Tr,
    pub path: String,
}

impl Ui {
    pub fn of(req: &HttpRequest) -> Ui {
        let lang = req
            .cookie(LANG_COOKIE)
            .and_then(|c| Lang::from_tag(c.value()))
            .or_else(|| {
                req.headers()
                    .get(header::ACCEPT_LANGUAGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(Lang::from_accept_language)
            })
            .unwrap_or(Lang::En);
        let tz = req.cookie(TZ_COOKIE).and_then(|c| c.value().parse::<chrono_tz::Tz>().ok()).unwrap_or(chrono_tz::UTC);
        let path = req.uri().path_and_query().map_or("/ui/", |p| p.as_str()).to_owned();
        Ui { tr: Tr { lang, tz }, path }
    }
}

/// A signed-in person looking at a page.
#[derive(Debug, Clone)]
pub struct Viewer {
    pub principal: Principal,
    /// The token every form of this session carries.
    pub csrf: String,
    pub ui: Ui,
}

impl Viewer {
    pub fn is_ops(&self) -> bool {
        self.principal.role() == Role::Admin
    }

    /// The caller's name as the pages show it.
    pub fn name(&self) -> String {
        self.principal.actor().name
    }

    /// A posted form, once its `_csrf` is found to be this session's.
    pub fn form(&self, body: &[u8]) -> Result<Form, UiError> {
        let pairs = form_pairs(body)?;
        self.check_csrf(&pairs)?;
        Ok(Form(pairs))
    }

    /// Refuses a form whose `_csrf` is not this session's (before anything else is read).
    fn check_csrf(&self, form: &[(String, String)]) -> Result<(), UiError> {
        let sent = form.iter().find(|(k, _)| k == "_csrf").map(|(_, v)| v.as_bytes());
        if sent.is_some_and(|sent| constant_time_eq(sent, self.csrf.as_bytes())) { Ok(()) } else { Err(UiError::Csrf) }
    }
}

impl FromRequest for Viewer {
    type Error = SessionRefused;
    type Future = LocalBoxFuture<'static, Result<Self, SessionRefused>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let state = req.app_data::<web::Data<AppState>>().cloned();
        let token = req.cookie(SESSION_COOKIE).map(|c| c.value().to_owned());
        let ui = Ui::of(req);
        let cross_site = is_cross_site(req);
        // After signing in, back to the page: the one asked for, or for a form whose session
        // had ended, the page it was on (a form's own address answers only posts).
        let next = match *req.method() {
            actix_web::http::Method::GET => ui.path.clone(),
            _ => req
                .headers()
                .get(actix_web::http::header::REFERER)
                .and_then(|r| r.to_str().ok())
                .and_then(|r| r.parse::<actix_web::http::Uri>().ok())
                .and_then(|uri| uri.path_and_query().map(|p| p.as_str().to_owned()))
                .map(|path| safe_next(Some(&path)).to_owned())
                .unwrap_or_else(|| urls::HOME.to_owned()),
        };
        Box::pin(async move {
            let shown = ui.clone();
            Self::seat(state, token, cross_site, next, ui).await.map_err(|e| e.seen_by(&shown))
        })
    }
}

impl Viewer {
    /// Who the session cookie names, unless the request must not go on (from another site,
    /// no live session).
    async fn seat(
        state: Option<web::Data<AppState>>,
        token: Option<String>,
        cross_site: bool,
        next: String,
        ui: Ui,
    ) -> Result<Viewer, UiError> {
        let state = state.ok_or_else(|| UiError::Api(crate::error::ApiError::internal(anyhow::anyhow!("no state"))))?;
        if cross_site {
            return Err(UiError::Csrf);
        }
        let Some(token) = token else { return Err(UiError::SignIn { next }) };
        let Ok(claims) = state.tokens.verify(&token) else { return Err(UiError::SignIn { next }) };
        let mut conn = state.db().await.map_err(UiError::Api)?;
        let principal = match auth::resolve(&mut conn, &claims).await {
            Ok(principal @ (Principal::Admin { .. } | Principal::Donor { .. })) => principal,
            _ => return Err(UiError::SignIn { next }),
        };
        let csrf = csrf_token(&state, &token);
        Ok(Viewer { principal, csrf, ui })
    }
}

/// A request that would change something and that the browser says came from another site (a
/// form posted from elsewhere). Following a link from elsewhere (a GET) is fine.
fn is_cross_site(req: &HttpRequest) -> bool {
    let reads = matches!(*req.method(), actix_web::http::Method::GET | actix_web::http::Method::HEAD);
    !reads && req.headers().get("sec-fetch-site").is_some_and(|v| v.as_bytes() == b"cross-site")
}

fn csrf_token(state: &AppState, session: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(state.config.auth.data_key.0.as_bytes()).expect("HMAC takes any key");
    mac.update(b"fleetyard ui csrf\0");
    mac.update(session.as_bytes());
    hex::encode(&mac.finalize().into_bytes()[..20])
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A posted form whose CSRF token was checked.
#[derive(Debug)]
pub struct Form(Vec<(String, String)>);

impl Form {
    /// A field's value, trimmed; `None` when absent or blank.
    pub fn field(&self, name: &str) -> Option<String> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.trim().to_owned()).filter(|v| !v.is_empty())
    }

    /// Every field but the form's own (`_csrf`, `_add`), to show again as typed.
    pub fn values(&self) -> Vec<(String, String)> {
        self.0.iter().filter(|(k, _)| !k.starts_with('_')).cloned().collect()
    }

    pub fn has(&self, name: &str, value: &str) -> bool {
        self.0.iter().any(|(k, v)| k == name && v == value)
    }
}

/// Parses a urlencoded form body into its pairs.
pub fn form_pairs(body: &[u8]) -> Result<Vec<(String, String)>, UiError> {
    serde_html_form::from_bytes(body).map_err(|_| UiError::BadForm)
}

pub fn cookie<'c>(req: &HttpRequest, name: &'c str, value: String, max_age: Option<i64>) -> Cookie<'c> {
    let mut cookie = Cookie::build(name, value)
        .path("/ui")
        .http_only(true)
        .same_site(SameSite::Lax)
        .secure(req.connection_info().scheme() == "https")
        .finish();
    if let Some(secs) = max_age {
        cookie.set_max_age(actix_web::cookie::time::Duration::seconds(secs));
    }
    cookie
}

/// Where to go after signing in: a page of ours, never another site.
fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(next) if next.starts_with("/ui/") && !next.starts_with("/ui//") && !next.contains('\\') => next,
        _ => urls::HOME,
    }
}

#[derive(Debug, Deserialize)]
pub struct NextQuery {
    next: Option<String>,
}

#[derive(askama::Template)]
#[template(path = "login.html")]
struct LoginPage {
    c: Chrome,
    csrf: String,
    next: String,
    email: String,
    error: Option<String>,
}

fn login_page(req: &HttpRequest, status: StatusCode, next: &str, email: String, error: Option<String>) -> HttpResponse {
    let csrf = hex::encode(rand::random::<[u8; 20]>());
    let page = LoginPage { c: Chrome::anonymous(Ui::of(req)), csrf: csrf.clone(), next: next.to_owned(), email, error };
    let mut response = render(status, &page);
    let _ = response.add_cookie(&cookie(req, LOGIN_COOKIE, csrf, Some(3600)));
    response
}

/// `GET /ui/login`
pub async fn login_form(req: HttpRequest, query: web::Query<NextQuery>) -> HttpResponse {
    login_page(&req, StatusCode::OK, safe_next(query.next.as_deref()), String::new(), None)
}

/// `POST /ui/login`: the API's login (same throttle, same audit), then the cookie.
pub async fn login(state: web::Data<AppState>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let ui = Ui::of(&req);
    let Ok(form) = form_pairs(&body) else { return UiError::BadForm.page(&ui) };
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).unwrap_or_default();
    let next = safe_next(Some(&field("next"))).to_owned();
    let expected = req.cookie(LOGIN_COOKIE).map(|c| c.value().to_owned()).unwrap_or_default();
    if is_cross_site(&req) || expected.is_empty() || !constant_time_eq(expected.as_bytes(), field("_csrf").as_bytes()) {
        return UiError::Csrf.page(&ui);
    }
    let address = client_address(&req, &state.config.auth.trusted_proxies);
    let email = field("email");
    match sessions::log_in(&state, &address, LoginRequest { email: email.clone(), password: field("password") }).await {
        Ok(session) => {
            let ttl = (session.expires_at - chrono::Utc::now()).num_seconds();
            let mut response = HttpResponse::SeeOther()
                .insert_header((
                    header::LOCATION,
                    HeaderValue::from_str(&next).unwrap_or(HeaderValue::from_static("/ui/")),
                ))
                .finish();
            let _ = response.add_cookie(&cookie(&req, SESSION_COOKIE, session.token, Some(ttl)));
            let _ = response.add_removal_cookie(&cookie(&req, LOGIN_COOKIE, String::new(), None));
            response
        }
        Err(error) => login_page(&req, error.status(), &next, email, Some(ui.tr.error(&error))),
    }
}

/// `POST /ui/logout`: ends every session of the user (as the API's logout does).
pub async fn logout(state: web::Data<AppState>, viewer: Viewer, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let ended = async {
        viewer.form(&body)?;
        sessions::log_out(&state, &viewer.principal).await?;
        let mut response = HttpResponse::SeeOther().insert_header((header::LOCATION, urls::LOGIN)).finish();
        let _ = response.add_removal_cookie(&cookie(&req, SESSION_COOKIE, String::new(), None));
        Ok(response)
    };
    super::answer(&viewer.ui, ended.await)
}

/// `POST /ui/lang`: switches the language (a cookie; nothing else changes, so no CSRF token).
pub async fn switch_language(req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let form = form_pairs(&body).unwrap_or_default();
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let lang = field("lang").and_then(|l| Lang::from_tag(&l)).unwrap_or(Lang::En);
    let next = safe_next(field("next").as_deref()).to_owned();
    let mut response = HttpResponse::SeeOther()
        .insert_header((header::LOCATION, HeaderValue::from_str(&next).unwrap_or(HeaderValue::from_static("/ui/"))))
        .finish();
    let _ = response.add_cookie(&cookie(&req, LANG_COOKIE, lang.tag().to_owned(), Some(365 * 86_400)));
    response
}

#[cfg(test)]
mod tests {
    use super::safe_next;

    #[test]
    fn after_signing_in_only_our_own_pages_are_followed() {
        assert_eq!(safe_next(Some("/ui/machines?arch=riscv64")), "/ui/machines?arch=riscv64");
        assert_eq!(safe_next(Some("https://evil.example/")), "/ui/");
        assert_eq!(safe_next(Some("//evil.example/ui/")), "/ui/");
        assert_eq!(safe_next(Some("/ui//evil.example")), "/ui/");
        assert_eq!(safe_next(Some("/ui/\\evil")), "/ui/");
        assert_eq!(safe_next(None), "/ui/");
    }
}
