//! The ops dashboard and the queue page: `operations::overview::fleet_overview`, the numbers
//! `GET /api/v1/overview` answers, drawn for people.

use actix_web::{HttpResponse, web};
use askama::Template;
use serde_json::json;

use super::{Chrome, Viewer, answer, json_for_script, ok};
use crate::operations::leases::{self, WaitingLease};

/// How many waiting leases the queue page lists (the oldest).
const QUEUE_ROWS: i64 = 100;
use crate::operations::overview::{self, FleetOverview, QueueByArch};
use crate::state::AppState;

#[derive(Template)]
#[template(path = "dashboard.html")]
struct DashboardPage {
    c: Chrome,
    o: FleetOverview,
    breakdowns: Vec<Breakdown>,
    /// The utilisation chart's data, for the script.
    chart: String,
}

/// Machines counted by one dimension, as the dashboard shows them.
struct Breakdown {
    /// Text key of the heading.
    title: &'static str,
    /// `(value, machines, percent of the largest)`, largest first.
    rows: Vec<(String, i64, i64)>,
    /// Prefix of the values' text keys.
    kind: &'static str,
    /// The machine list's filter for a value (none for sites, which it filters by id).
    filter: &'static str,
}

impl DashboardPage {
    /// The mean share of the last `days` days.
    fn mean_share(&self, a: &overview::ArchUtilisation, days: usize) -> f64 {
        let last: Vec<f64> = a.days.iter().rev().take(days).map(|d| d.share).collect();
        if last.is_empty() { 0.0 } else { last.iter().sum::<f64>() / last.len() as f64 }
    }
}

/// Counts as (key, count, percent of the largest) for bar-like tables.
fn bars(counts: &std::collections::BTreeMap<String, i64>) -> Vec<(String, i64, i64)> {
    let max = counts.values().copied().max().unwrap_or(0).max(1);
    let mut rows: Vec<_> = counts.iter().map(|(k, v)| (k.clone(), *v, v * 100 / max)).collect();
    rows.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    rows
}

/// `GET /ui/dashboard` (ops)
pub async fn page(state: web::Data<AppState>, viewer: Viewer) -> HttpResponse {
    let shown = async {
        let o = overview::fleet_overview(&state, &viewer.principal).await?;
        let days: Vec<String> =
            o.utilisation.first().map(|a| a.days.iter().map(|d| d.day.to_string()).collect()).unwrap_or_default();
        let series: Vec<_> = o
            .utilisation
            .iter()
            .map(|a| json!({ "arch": a.arch, "share": a.days.iter().map(|d| (d.share * 100.0).round()).collect::<Vec<_>>() }))
            .collect();
        let chart = json_for_script(&json!({ "days": days, "series": series }));
        let breakdowns = vec![
            Breakdown { title: "by-arch", rows: bars(&o.by_arch), kind: "arch", filter: "arch" },
            Breakdown { title: "by-lifecycle", rows: bars(&o.by_lifecycle), kind: "lifecycle", filter: "lifecycle" },
            Breakdown { title: "by-health", rows: bars(&o.by_health), kind: "health", filter: "health" },
            Breakdown { title: "by-model", rows: bars(&o.by_model), kind: "model", filter: "donation_model" },
            Breakdown { title: "by-site", rows: bars(&o.by_site), kind: "site", filter: "" },
        ];
        Ok(ok(&DashboardPage { c: Chrome::new(&viewer, "dashboard"), o, breakdowns, chart }))
    };
    answer(&viewer.ui, shown.await)
}

#[derive(Template)]
#[template(path = "queue.html")]
struct QueuePage {
    c: Chrome,
    queue: Vec<QueueByArch>,
    /// The oldest waiting leases, each with why it waits.
    waiting: Vec<WaitingLease>,
}

/// `GET /ui/queue` (ops): what waits, per architecture, and how long leases waited.
pub async fn queue(state: web::Data<AppState>, viewer: Viewer) -> HttpResponse {
    let shown = async {
        let queue = overview::queue_by_arch(&state, &viewer.principal).await?;
        let mut waiting = leases::waiting(&state, &viewer.principal, QUEUE_ROWS).await?;
        waiting.sort_by_key(|w| {
            (w.lease.requirements.arch.to_string(), w.lease.queue.as_ref().map_or(i64::MAX, |q| q.position))
        });
        Ok(ok(&QueuePage { c: Chrome::new(&viewer, "queue"), queue, waiting }))
    };
    answer(&viewer.ui, shown.await)
}
