//! The audit log with its filters, on `operations::audit` (ops read all of it, a donor the
//! entries about its own data).

use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;

use super::machines::non_empty;
use super::{Chrome, UiError, Viewer, answer, ok};
use crate::operations::audit::{self, AuditPage, AuditQuery};
use crate::state::AppState;

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditListPage {
    c: Chrome,
    page: AuditPage,
    entity_type: String,
    action: String,
    entity_id: String,
    since: String,
    until: String,
    next: Option<String>,
    error: Option<String>,
}

/// `GET /ui/audit`
pub async fn list(state: web::Data<AppState>, viewer: Viewer, req: HttpRequest) -> HttpResponse {
    let shown = async {
        let pairs: Vec<(String, String)> =
            serde_html_form::from_str(req.query_string()).map_err(|_| UiError::BadForm)?;
        let kept = non_empty(pairs.iter().map(|(k, v)| (k.clone(), day_to_instant(k, v, &viewer))).collect());
        let field =
            |name: &str| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.trim().to_owned()).unwrap_or_default();
        let (page, error) = match crate::extract::parse_query::<AuditQuery>(&kept) {
            Ok(query) => match audit::list_audit(&state, &viewer.principal, query).await {
                Ok(page) => (page, None),
                Err(e) if e.status().is_client_error() => {
                    (AuditPage { items: Vec::new(), next_cursor: None }, Some(viewer.ui.tr.error(&e)))
                }
                Err(e) => return Err(e.into()),
            },
            Err(e) => (AuditPage { items: Vec::new(), next_cursor: None }, Some(viewer.ui.tr.error(&e))),
        };
        let next = page.next_cursor.as_ref().map(|cursor| {
            let mut next: Vec<(String, String)> =
                serde_html_form::from_str(&non_empty(pairs.clone())).unwrap_or_default();
            next.retain(|(k, _)| k != "cursor");
            next.push(("cursor".into(), cursor.clone()));
            serde_html_form::to_string(&next).unwrap_or_default()
        });
        Ok(ok(&AuditListPage {
            c: Chrome::new(&viewer, "audit"),
            page,
            entity_type: field("entity_type"),
            action: field("action"),
            entity_id: field("entity_id"),
            since: field("since"),
            until: field("until"),
            next,
            error,
        }))
    };
    answer(&viewer.ui, shown.await)
}

/// The date fields (`since`, `until`: `YYYY-MM-DD` from a date input) as the start of that
/// day in the viewer's zone, in RFC 3339 as the API takes them; other values as they are.
fn day_to_instant(key: &str, value: &str, viewer: &Viewer) -> String {
    if !matches!(key, "since" | "until") {
        return value.to_owned();
    }
    let Ok(day) = chrono::NaiveDate::parse_from_str(value.trim(), "%Y-%m-%d") else { return value.to_owned() };
    let midnight = day.and_hms_opt(0, 0, 0).unwrap_or_default();
    match midnight.and_local_timezone(viewer.ui.tr.tz).earliest() {
        Some(at) => at.with_timezone(&chrono::Utc).to_rfc3339(),
        None => value.to_owned(),
    }
}
