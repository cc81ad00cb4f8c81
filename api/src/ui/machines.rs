//! The machine list (the API's filters, search, sort, keyset pages, CSV export) and a machine's
//! page (facts and mismatches, health, audit trail, and the actions ops take), on
//! `operations::inventory` and `operations::audit`.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;

use super::{Chrome, Refused, UiError, Viewer, answer, ok, redirect};
use crate::domain::{Arch, DonationModel, Health, LifecycleState, MachineId, Problem};
use crate::error::ApiError;
use crate::operations::audit::{self, AuditPage, AuditQuery};
use crate::operations::inventory::{
    self, LiftQuarantineRequest, MachineDetail, MachineListQuery, MachinePage, MachineSort, MaintenanceRequest,
    TransitionRequest,
};
use crate::operations::leases::{self, LeaseListQuery, LeasePage};
use crate::operations::sites::{SiteListQuery, SiteView, list_sites};
use crate::state::AppState;
use crate::views::Location;

/// The pairs of a query string or form with the empty ones dropped (an unselected `<select>`
/// sends `arch=`), as `serde_html_form` reads them.
pub fn non_empty(pairs: Vec<(String, String)>) -> String {
    let kept: Vec<_> = pairs.into_iter().filter(|(_, v)| !v.trim().is_empty()).collect();
    serde_html_form::to_string(&kept).unwrap_or_default()
}

/// The list's query; labels may be typed as `key=value key=value` in one field.
fn list_query(req: &HttpRequest) -> Result<MachineListQuery, UiError> {
    let pairs: Vec<(String, String)> = serde_html_form::from_str(req.query_string()).map_err(|_| UiError::BadForm)?;
    let mut query: MachineListQuery = crate::extract::parse_query(&non_empty(pairs)).map_err(UiError::Api)?;
    query.label = query.label.iter().flat_map(|l| l.split_whitespace().map(str::to_owned)).collect();
    Ok(query)
}

#[derive(Template)]
#[template(path = "machines.html")]
struct ListPage {
    c: Chrome,
    q: MachineListQuery,
    page: MachinePage,
    error: Option<String>,
    arches: &'static [Arch],
    states: &'static [LifecycleState],
    healths: &'static [Health],
    models: &'static [DonationModel],
    sites: Vec<SiteView>,
    /// The query string of the next page and of the CSV export.
    next: Option<String>,
    export: String,
}

impl ListPage {
    fn picked<T: PartialEq>(value: &Option<T>, option: &T) -> bool {
        value.as_ref() == Some(option)
    }

    fn arch_is(&self, a: &Arch) -> bool {
        Self::picked(&self.q.arch, a)
    }
    fn state_is(&self, s: &LifecycleState) -> bool {
        Self::picked(&self.q.lifecycle, s)
    }
    fn health_is(&self, h: &Health) -> bool {
        Self::picked(&self.q.health, h)
    }
    fn model_is(&self, m: &DonationModel) -> bool {
        Self::picked(&self.q.donation_model, m)
    }
    fn site_is(&self, site: &SiteView) -> bool {
        self.q.site_id == Some(site.id)
    }
    fn overdue_is(&self, value: bool) -> bool {
        self.q.overdue == Some(value)
    }
    fn by_hostname(&self) -> bool {
        self.q.sort == Some(MachineSort::Hostname)
    }
    fn search(&self) -> &str {
        self.q.q.as_deref().unwrap_or_default()
    }
    fn labels(&self) -> String {
        self.q.label.join(" ")
    }
}

/// `GET /ui/machines`
pub async fn list(state: web::Data<AppState>, viewer: Viewer, req: HttpRequest) -> HttpResponse {
    let shown = async {
        let query = list_query(&req)?;
        let (page, error) = match inventory::list_machines(&state, &viewer.principal, query.clone()).await {
            Ok(page) => (page, None),
            Err(e) if e.status().is_client_error() => {
                (MachinePage { items: Vec::new(), next_cursor: None }, Some(viewer.ui.tr.error(&e)))
            }
            Err(e) => return Err(e.into()),
        };
        let next = page.next_cursor.as_ref().map(|cursor| {
            let mut next = query.clone();
            next.cursor = Some(cursor.clone());
            serde_html_form::to_string(&next).unwrap_or_default()
        });
        let mut all = query.clone();
        all.cursor = None;
        all.limit = None;
        let export = serde_html_form::to_string(&all).unwrap_or_default();
        Ok(ok(&ListPage {
            c: Chrome::new(&viewer, "machines"),
            q: query,
            page,
            error,
            arches: &[Arch::X86_64, Arch::Aarch64, Arch::Riscv64, Arch::Loongarch64],
            states: LifecycleState::ALL,
            healths: &[Health::Unknown, Health::Healthy, Health::Degraded, Health::Unreachable],
            models: &[DonationModel::UsageRight, DonationModel::Ownership, DonationModel::Loan],
            sites: list_sites(&state, &viewer.principal, SiteListQuery { kind: None, cursor: None, limit: Some(200) })
                .await?
                .items,
            next,
            export,
        }))
    };
    answer(&viewer.ui, shown.await)
}

/// The most rows one CSV export holds.
const CSV_MAX_ROWS: usize = 50_000;

/// `GET /ui/machines.csv`: every machine the filters match, page after page of the same list.
pub async fn csv(state: web::Data<AppState>, viewer: Viewer, req: HttpRequest) -> HttpResponse {
    let made = async {
        let mut query = list_query(&req)?;
        query.limit = Some(200);
        let mut out = csv::Writer::from_writer(Vec::new());
        let write = |out: &mut csv::Writer<Vec<u8>>, row: &[String]| {
            out.write_record(row).map_err(|e| UiError::Api(ApiError::internal(e)))
        };
        write(
            &mut out,
            &[
                "id",
                "hostname",
                "asset_tag",
                "arch",
                "lifecycle",
                "health",
                "cpu_model",
                "cpu_cores",
                "memory_mib",
                "disk_gib",
                "site_id",
                "donation_id",
                "donor_id",
                "labels",
            ]
            .map(str::to_owned),
        )?;
        let mut rows = 0;
        loop {
            let page = inventory::list_machines(&state, &viewer.principal, query.clone()).await?;
            for m in &page.items {
                let labels = m.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ");
                write(
                    &mut out,
                    &[
                        m.id.to_string(),
                        m.hostname.clone().unwrap_or_default(),
                        m.asset_tag.clone().unwrap_or_default(),
                        m.arch.to_string(),
                        m.lifecycle.to_string(),
                        m.health.to_string(),
                        m.cpu_model.clone(),
                        m.cpu_cores.to_string(),
                        m.memory_mib.to_string(),
                        m.disk_gib.to_string(),
                        m.site_id.to_string(),
                        m.donation_id.map(|d| d.to_string()).unwrap_or_default(),
                        m.donor_id.map(|d| d.to_string()).unwrap_or_default(),
                        labels,
                    ],
                )?;
            }
            rows += page.items.len();
            match page.next_cursor {
                Some(cursor) if rows < CSV_MAX_ROWS => query.cursor = Some(cursor),
                _ => break,
            }
        }
        let body = out.into_inner().map_err(|e| UiError::Api(ApiError::internal(anyhow::anyhow!("{e}"))))?;
        Ok(HttpResponse::Ok()
            .insert_header((header::CONTENT_TYPE, "text/csv; charset=utf-8"))
            .insert_header((header::CONTENT_DISPOSITION, "attachment; filename=\"machines.csv\""))
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .body(body))
    };
    answer(&viewer.ui, made.await)
}

#[derive(Template)]
#[template(path = "machine.html")]
struct MachinePageView {
    c: Chrome,
    m: MachineDetail,
    trail: AuditPage,
    /// Its latest leases; a job's attempts are leases too (with its `job_id`).
    leases: LeasePage,
    /// Its health changes, newest first (from the audit log).
    health: AuditPage,
    /// What the last action answered, if it was refused.
    refused: Refused,
}

impl MachinePageView {
    fn field_error(&self, field: &str) -> Option<String> {
        self.refused.field(field)
    }
    /// `health` in an audit entry's before or after state.
    fn health_in(&self, state: &Option<serde_json::Value>) -> String {
        let health = state.as_ref().and_then(|s| s.get("health")).and_then(|h| h.as_str()).unwrap_or("—");
        self.c.word("health", health)
    }
    fn quarantined(&self) -> bool {
        self.m.machine.quarantine.is_some()
    }
    fn in_maintenance(&self) -> bool {
        self.m.machine.lifecycle == LifecycleState::Maintenance
    }
    fn may_enter_maintenance(&self) -> bool {
        self.m.allowed_transitions.contains(&LifecycleState::Maintenance)
    }
    fn transitions(&self) -> Vec<LifecycleState> {
        self.m
            .allowed_transitions
            .iter()
            .copied()
            .filter(|s| *s != LifecycleState::Maintenance && !(self.in_maintenance() && *s == LifecycleState::Ready))
            .collect()
    }
}

async fn machine_page(
    state: &AppState,
    viewer: &Viewer,
    id: MachineId,
    refused: Refused,
) -> Result<HttpResponse, UiError> {
    let m = inventory::get_machine(state, &viewer.principal, id).await?;
    let trail = audit::list_audit(
        state,
        &viewer.principal,
        AuditQuery { entity_id: Some(id.0), limit: Some(50), ..AuditQuery::default() },
    )
    .await?;
    let health = audit::list_audit(
        state,
        &viewer.principal,
        AuditQuery {
            entity_id: Some(id.0),
            action: Some("machine.health_changed".into()),
            limit: Some(20),
            ..AuditQuery::default()
        },
    )
    .await?;
    let query = LeaseListQuery { machine_id: Some(id), limit: Some(20), ..LeaseListQuery::default() };
    let leases = leases::list_leases(state, &viewer.principal, query).await?;
    let status = refused.status();
    let page = MachinePageView { c: Chrome::new(viewer, "machines"), m, trail, leases, health, refused };
    Ok(super::render(status, &page))
}

/// `GET /ui/machines/{id}`
pub async fn detail(state: web::Data<AppState>, viewer: Viewer, id: web::Path<MachineId>) -> HttpResponse {
    answer(&viewer.ui, machine_page(&state, &viewer, id.into_inner(), Refused::none()).await)
}

/// `POST /ui/machines/{id}/act`: one of the actions on the machine's page. A refusal shows the
/// page again with the operation's message next to the form.
pub async fn act(
    state: web::Data<AppState>,
    viewer: Viewer,
    id: web::Path<MachineId>,
    body: web::Bytes,
) -> HttpResponse {
    let id = id.into_inner();
    let done = async {
        let form = viewer.form(&body)?;
        let field = |name: &str| form.field(name);
        let caller = &viewer.principal;
        let result = match field("action").as_deref() {
            Some("maintenance_on") => inventory::start_maintenance(
                &state,
                caller,
                id,
                MaintenanceRequest { reason: field("reason").unwrap_or_default() },
            )
            .await
            .map(drop),
            Some("maintenance_off") => inventory::end_maintenance(&state, caller, id).await.map(drop),
            Some("ssh_probe") => inventory::request_ssh_probe(&state, caller, id).await,
            Some("lift_quarantine") => inventory::lift_quarantine(
                &state,
                caller,
                id,
                LiftQuarantineRequest { note: field("note").unwrap_or_default() },
            )
            .await
            .map(drop),
            Some("transition") => {
                let to = match field("to").as_deref().map(str::parse::<LifecycleState>) {
                    Some(Ok(to)) => to,
                    _ => {
                        let refused = Refused::of(ApiError::invalid_field("to", Problem::StateNeeded), &viewer.ui.tr)?;
                        return machine_page(&state, &viewer, id, refused).await;
                    }
                };
                let location = match (field("rack"), field("slot")) {
                    (None, None) => None,
                    (rack, slot) => Some(Location { rack: rack.unwrap_or_default(), slot: slot.unwrap_or_default() }),
                };
                inventory::transition_machine(
                    &state,
                    caller,
                    id,
                    TransitionRequest { to, note: field("note"), location },
                )
                .await
                .map(drop)
            }
            _ => Err(ApiError::invalid_field("action", Problem::NotAnAction)),
        };
        match result {
            Ok(()) => Ok(redirect(&format!("/ui/machines/{id}"))),
            Err(e) => machine_page(&state, &viewer, id, Refused::of(e, &viewer.ui.tr)?).await,
        }
    };
    answer(&viewer.ui, done.await)
}
