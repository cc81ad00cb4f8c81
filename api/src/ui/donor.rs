//! What donors do on the pages: register a donation (the same form the API takes, written as
//! HTML fields and turned into the API's JSON, so the API's field errors land next to the
//! fields they name), and read what their machines gave each month (CSV too).

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;
use serde_json::{Map, Value};

use super::{Chrome, Refused, UiError, Viewer, answer, ok, redirect, render};
use crate::auth::Principal;
use crate::domain::{Arch, DonationModel, Problem, SiteKind};
use crate::error::ApiError;
use crate::operations::donations::{self, DonationForm};
use crate::operations::overview::{self, UsageQuery, UsageReport};
use crate::operations::sites::{SiteListQuery, SiteView, list_sites};
use crate::state::AppState;

/// Fields the form sends as text that the API takes as numbers.
const NUMBERS: &[&str] = &["cpu_cores", "memory_mib", "disk_gib", "port", "max_concurrent_leases", "max_lease_minutes"];
/// Fields sent once per ticked box that the API takes as lists.
const LISTS: &[&str] = &["purposes", "days"];
/// The most machine rows the form shows at once (the API takes up to 500 per donation).
const MAX_ROWS: usize = 50;

#[derive(Template)]
#[template(path = "register.html")]
struct RegisterPage {
    c: Chrome,
    /// What was typed, by field name, to show it again.
    values: Vec<(String, String)>,
    /// What the API refused, if it did.
    refused: Refused,
    rows: usize,
    windows: usize,
    sites: Vec<SiteView>,
    arches: &'static [Arch],
    models: &'static [DonationModel],
    ops: bool,
}

impl RegisterPage {
    fn v(&self, name: &str) -> String {
        self.values.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).unwrap_or_default()
    }
    fn is(&self, name: &str, value: &str) -> bool {
        self.values.iter().any(|(k, v)| k == name && v == value)
    }
    fn e(&self, name: &str) -> Option<String> {
        self.refused.field(name)
    }
    /// Every problem, for the summary on top: the element to jump to (empty: none), the field
    /// as the API names it, and the problem.
    fn summary(&self) -> Vec<(String, String, String)> {
        self.refused.fields.iter().map(|(field, problem)| (anchor(field), field.clone(), problem.clone())).collect()
    }
    /// A machine field's label.
    fn fl(&self, name: &str) -> String {
        self.c.t(&format!("field-{}", name.replace('.', "-")))
    }
    /// A machine row's value and error.
    fn mv(&self, i: &usize, field: &str) -> String {
        self.v(&format!("machines[{i}].{field}"))
    }
    fn me(&self, i: &usize, field: &str) -> Option<String> {
        self.e(&format!("machines[{i}].{field}"))
    }
    /// A usage window's value and error.
    fn wv(&self, i: &usize, field: &str) -> String {
        self.v(&format!("usage_policy.windows[{i}].{field}"))
    }
    fn wis(&self, i: &usize, field: &str, value: &str) -> bool {
        self.is(&format!("usage_policy.windows[{i}].{field}"), value)
    }
    fn we(&self, i: &usize, field: &str) -> Option<String> {
        self.e(&format!("usage_policy.windows[{i}].{field}"))
    }
    fn row_indices(&self) -> std::ops::Range<usize> {
        0..self.rows
    }
    fn window_indices(&self) -> std::ops::Range<usize> {
        0..self.windows
    }
    fn days(&self) -> [&'static str; 7] {
        ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    }
    fn purposes(&self) -> [&'static str; 3] {
        ["build", "ci", "test"]
    }
}

async fn sites(state: &AppState, caller: &Principal) -> Result<Vec<SiteView>, ApiError> {
    let page = list_sites(state, caller, SiteListQuery { kind: None, cursor: None, limit: Some(200) }).await?;
    Ok(page.items.into_iter().filter(|s| s.kind != SiteKind::CloudRegion).collect())
}

/// The id of the element where the form shows `field` (`machines[0].cpu_cores` is
/// `m0-cpu_cores`), for the summary's links; empty for a field the form has no element for.
fn anchor(field: &str) -> String {
    let index =
        |rest: &str| rest.split_once(']').map(|(i, tail)| (i.to_owned(), tail.trim_start_matches('.').to_owned()));
    if let Some((i, name)) = field.strip_prefix("machines[").and_then(index) {
        if name.is_empty() { String::new() } else { format!("m{i}-{name}") }
    } else if let Some((i, name)) = field.strip_prefix("usage_policy.windows[").and_then(index) {
        if name.is_empty() || name == "days" { format!("w{i}-label") } else { format!("w{i}-{name}") }
    } else if field == "usage_policy.purposes" {
        "purposes-label".to_owned()
    } else if let Some(name) = field.strip_prefix("usage_policy.") {
        name.to_owned()
    } else if matches!(field, "machines" | "usage_policy" | "body") {
        String::new()
    } else {
        field.to_owned()
    }
}

async fn form_page(
    state: &AppState,
    viewer: &Viewer,
    values: Vec<(String, String)>,
    rows: usize,
    windows: usize,
    refused: Refused,
) -> Result<HttpResponse, UiError> {
    let status = refused.status();
    let page = RegisterPage {
        c: Chrome::new(viewer, "register"),
        values,
        refused,
        rows: rows.clamp(1, MAX_ROWS),
        windows: windows.clamp(1, 7),
        sites: sites(state, &viewer.principal).await?,
        arches: &[Arch::X86_64, Arch::Aarch64, Arch::Riscv64, Arch::Loongarch64],
        models: &[DonationModel::UsageRight, DonationModel::Loan, DonationModel::Ownership],
        ops: viewer.is_ops(),
    };
    Ok(render(status, &page))
}

/// `GET /ui/donations/new`
pub async fn register_form(state: web::Data<AppState>, viewer: Viewer) -> HttpResponse {
    let today = chrono::Utc::now().date_naive().to_string();
    let values = vec![("model".to_owned(), "usage_right".to_owned()), ("starts_on".to_owned(), today)];
    answer(&viewer.ui, form_page(&state, &viewer, values, 1, 1, Refused::none()).await)
}

/// `POST /ui/donations/new`: "add a machine" and "add a window" show the form again with one
/// more row (no script needed); "register" sends it to the API's operation.
pub async fn register(state: web::Data<AppState>, viewer: Viewer, body: web::Bytes) -> HttpResponse {
    let done = async {
        let form = viewer.form(&body)?;
        let count = |name: &str| form.field(name).and_then(|v| v.parse::<usize>().ok()).unwrap_or(1);
        let (rows, windows) = (count("rows"), count("windows"));
        let values = form.values();
        if form.has("_add", "machine") {
            return form_page(&state, &viewer, values, rows + 1, windows, Refused::none()).await;
        }
        if form.has("_add", "window") {
            return form_page(&state, &viewer, values, rows, windows + 1, Refused::none()).await;
        }
        let json = form_to_json(&values);
        let submitted = match serde_json::to_vec(&json)
            .map_err(ApiError::internal)
            .and_then(|bytes| crate::extract::parse_json::<DonationForm>(&bytes))
        {
            Ok(parsed) => donations::create_donation(&state, &viewer.principal, parsed).await,
            Err(e) => Err(e),
        };
        match submitted {
            Ok(detail) => Ok(redirect(&format!("/ui/donations/{}", detail.donation.id))),
            Err(e) => form_page(&state, &viewer, values, rows, windows, Refused::of_form(e, &viewer.ui.tr)?).await,
        }
    };
    answer(&viewer.ui, done.await)
}

/// The form's fields (`machines[0].ssh.host`, `usage_policy.windows[1].days`) as the API's
/// JSON body. Empty fields are left out; numbers that do not parse are sent as text, so the
/// API names the field; a machine without an SSH host sends no `ssh`; only a usage-right
/// donation sends a usage policy.
pub fn form_to_json(values: &[(String, String)]) -> Value {
    let mut root = Value::Object(Map::new());
    let usage_right = values.iter().any(|(k, v)| k == "model" && v == "usage_right");
    for (name, value) in values {
        let value = value.trim();
        if value.is_empty() || name == "rows" || name == "windows" {
            continue;
        }
        if name.starts_with("usage_policy.") && !usage_right {
            continue;
        }
        let path = split_path(name);
        let Some(last) = path.last() else { continue };
        let leaf = match last {
            Step::Key(key) if NUMBERS.contains(&key.as_str()) => {
                value.parse::<i64>().map_or_else(|_| Value::String(value.to_owned()), Value::from)
            }
            _ => Value::String(value.to_owned()),
        };
        let list = matches!(last, Step::Key(key) if LISTS.contains(&key.as_str()));
        insert(&mut root, &path, leaf, list);
    }
    // A machine row left wholly empty is not a machine; an SSH endpoint without a host is none.
    if let Some(Value::Array(machines)) = root.get_mut("machines") {
        machines.retain(|m| m.as_object().is_some_and(|o| !o.is_empty()));
        for machine in machines.iter_mut() {
            if let Some(o) = machine.as_object_mut()
                && o.get("ssh").is_some_and(|ssh| ssh.get("host").is_none())
            {
                o.remove("ssh");
            }
        }
    }
    if let Some(Value::Object(policy)) = root.get_mut("usage_policy")
        && let Some(Value::Array(windows)) = policy.get_mut("windows")
    {
        windows.retain(|w| w.as_object().is_some_and(|o| !o.is_empty()));
    }
    root
}

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Key(String),
    Index(usize),
}

/// `machines[0].ssh.host` → `machines`, `0`, `ssh`, `host`.
fn split_path(name: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    for part in name.split('.') {
        let (key, rest) = part.split_once('[').unwrap_or((part, ""));
        if !key.is_empty() {
            steps.push(Step::Key(key.to_owned()));
        }
        for index in rest.split('[').filter(|s| !s.is_empty()) {
            match index.trim_end_matches(']').parse::<usize>() {
                Ok(i) if i < 500 => steps.push(Step::Index(i)),
                _ => steps.push(Step::Key(index.trim_end_matches(']').to_owned())),
            }
        }
    }
    steps
}

fn insert(node: &mut Value, path: &[Step], leaf: Value, list: bool) {
    let Some((step, rest)) = path.split_first() else { return };
    match step {
        Step::Key(key) => {
            if !node.is_object() {
                *node = Value::Object(Map::new());
            }
            let map = node.as_object_mut().expect("made an object");
            if rest.is_empty() {
                if list {
                    match map.entry(key.clone()).or_insert_with(|| Value::Array(Vec::new())) {
                        Value::Array(items) => items.push(leaf),
                        other => *other = leaf,
                    }
                } else {
                    map.insert(key.clone(), leaf);
                }
            } else {
                insert(map.entry(key.clone()).or_insert(Value::Null), rest, leaf, list);
            }
        }
        Step::Index(i) => {
            if !node.is_array() {
                *node = Value::Array(Vec::new());
            }
            let items = node.as_array_mut().expect("made an array");
            while items.len() <= *i {
                items.push(Value::Object(Map::new()));
            }
            insert(&mut items[*i], rest, leaf, list);
        }
    }
}

#[derive(Template)]
#[template(path = "usage.html")]
struct UsagePage {
    c: Chrome,
    report: Option<UsageReport>,
    month: String,
    error: Option<String>,
    donor_id: String,
}

fn usage_query(req: &HttpRequest) -> UsageQuery {
    let pairs: Vec<(String, String)> = serde_html_form::from_str(req.query_string()).unwrap_or_default();
    UsageQuery { month: pairs.into_iter().find(|(k, v)| k == "month" && !v.is_empty()).map(|(_, v)| v) }
}

/// The donor the report is about: the viewer's own, or for ops the `donor_id` asked for.
fn usage_donor(viewer: &Viewer, req: &HttpRequest) -> Result<crate::domain::DonorId, ApiError> {
    match &viewer.principal {
        Principal::Donor { donor_id, .. } => Ok(*donor_id),
        _ => {
            let pairs: Vec<(String, String)> = serde_html_form::from_str(req.query_string()).unwrap_or_default();
            pairs
                .into_iter()
                .find(|(k, _)| k == "donor_id")
                .and_then(|(_, v)| v.parse::<uuid::Uuid>().ok())
                .map(crate::domain::DonorId)
                .ok_or_else(|| ApiError::invalid_field("donor_id", Problem::Required))
        }
    }
}

/// `GET /ui/usage`: a donor's month (ops: any donor's, by `donor_id`).
pub async fn usage(state: web::Data<AppState>, viewer: Viewer, req: HttpRequest) -> HttpResponse {
    let shown = async {
        let query = usage_query(&req);
        let month = query.month.clone().unwrap_or_else(|| chrono::Utc::now().format("%Y-%m").to_string());
        let donor = usage_donor(&viewer, &req);
        let donor_id = donor.as_ref().map(|d| d.to_string()).unwrap_or_default();
        let (report, error) = match donor {
            Ok(donor) => match overview::donor_usage(&state, &viewer.principal, donor, query).await {
                Ok(report) => (Some(report), None),
                Err(e) if e.status() == StatusCode::UNPROCESSABLE_ENTITY => (None, Some(viewer.ui.tr.error(&e))),
                Err(e) => return Err(e.into()),
            },
            Err(e) => (None, Some(viewer.ui.tr.error(&e))),
        };
        Ok(ok(&UsagePage { c: Chrome::new(&viewer, "usage"), report, month, error, donor_id }))
    };
    answer(&viewer.ui, shown.await)
}

/// `GET /ui/usage.csv`
pub async fn usage_csv(state: web::Data<AppState>, viewer: Viewer, req: HttpRequest) -> HttpResponse {
    let made = async {
        let donor = usage_donor(&viewer, &req)?;
        let report = overview::donor_usage(&state, &viewer.principal, donor, usage_query(&req)).await?;
        let mut out = csv::Writer::from_writer(Vec::new());
        let fail = |e: csv::Error| UiError::Api(ApiError::internal(e));
        out.write_record(["month", "arch", "leases", "leased_hours", "jobs", "jobs_succeeded"]).map_err(fail)?;
        for a in &report.by_arch {
            out.write_record([
                report.month.clone(),
                a.arch.clone(),
                a.leases.to_string(),
                format!("{:.2}", a.leased_hours),
                a.jobs.to_string(),
                a.jobs_succeeded.to_string(),
            ])
            .map_err(fail)?;
        }
        let body = out.into_inner().map_err(|e| UiError::Api(ApiError::internal(anyhow::anyhow!("{e}"))))?;
        Ok(HttpResponse::Ok()
            .insert_header((header::CONTENT_TYPE, "text/csv; charset=utf-8"))
            .insert_header((
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"usage-{}.csv\"", report.month),
            ))
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .body(body))
    };
    answer(&viewer.ui, made.await)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::form_to_json;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn form_fields_become_the_api_s_json() {
        let json = form_to_json(&pairs(&[
            ("model", "usage_right"),
            ("agreement_ref", "A-1"),
            ("machines[0].arch", "riscv64"),
            ("machines[0].cpu_cores", "8"),
            ("machines[0].memory_mib", "lots"),
            ("machines[0].ssh.port", "22"),
            ("machines[1].hostname", ""),
            ("usage_policy.purposes", "ci"),
            ("usage_policy.purposes", "test"),
            ("usage_policy.windows[0].days", "sat"),
            ("usage_policy.windows[0].start", "20:00"),
            ("rows", "2"),
        ]));
        assert_eq!(
            json,
            json!({
                "model": "usage_right",
                "agreement_ref": "A-1",
                "machines": [{ "arch": "riscv64", "cpu_cores": 8, "memory_mib": "lots" }],
                "usage_policy": { "purposes": ["ci", "test"], "windows": [{ "days": ["sat"], "start": "20:00" }] },
            })
        );
    }

    #[test]
    fn the_summary_links_each_problem_to_its_field() {
        use super::anchor;
        assert_eq!(anchor("machines[2].cpu_cores"), "m2-cpu_cores");
        assert_eq!(anchor("machines[0].ssh.host"), "m0-ssh.host");
        assert_eq!(anchor("usage_policy.windows[1].start"), "w1-start");
        assert_eq!(anchor("usage_policy.windows[1].days"), "w1-label");
        assert_eq!(anchor("usage_policy.max_lease_minutes"), "max_lease_minutes");
        assert_eq!(anchor("agreement_ref"), "agreement_ref");
        assert_eq!(anchor("machines"), "");
    }

    #[test]
    fn a_loan_sends_no_usage_policy() {
        let json = form_to_json(&pairs(&[("model", "loan"), ("usage_policy.max_lease_minutes", "60")]));
        assert_eq!(json, json!({ "model": "loan" }));
    }
}
