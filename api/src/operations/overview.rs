//! The fleet at a glance (the ops dashboard and `GET /overview`), and a donor's usage per month
//! (the donor's report and `GET /donors/{id}/usage`): the same numbers on a page and in JSON.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::Principal;
use crate::db;
use crate::domain::cloud::{InstanceState, cost_within, month_start};
use crate::domain::{DonorId, FieldErrors, Problem};
use crate::error::ApiError;
use crate::error_code::ErrorCode;
use crate::state::AppState;

/// How many days of utilisation the overview shows.
pub const UTILISATION_DAYS: i32 = 30;
/// How many days ahead the overview looks for agreements ending.
pub const DUE_WITHIN_DAYS: i32 = 30;
/// How many rows each list of the overview shows (its `total` counts them all).
const LIST_ROWS: i64 = 20;

/// The whole fleet at a glance. Ops.
#[derive(Debug, Serialize, ToSchema)]
pub struct FleetOverview {
    pub generated_at: DateTime<Utc>,
    pub machines: i64,
    /// Machines per architecture, lifecycle state, health, site (by name) and donation model
    /// (`cloud` for rented machines).
    pub by_arch: BTreeMap<String, i64>,
    pub by_lifecycle: BTreeMap<String, i64>,
    pub by_health: BTreeMap<String, i64>,
    pub by_site: BTreeMap<String, i64>,
    pub by_model: BTreeMap<String, i64>,
    /// Per architecture: the share of machine-hours leased on each of the last 30 days (UTC),
    /// against the machines in the pool (`ready`) now.
    pub utilisation: Vec<ArchUtilisation>,
    pub unreachable: Listed<UnreachableMachine>,
    pub awaiting_review: Listed<DonationDue>,
    /// Approved or paused donations whose agreement (a loan's or a usage right's end) ends
    /// within 30 days, or has ended without being returned or withdrawn.
    pub ending_soon: Listed<DonationDue>,
    pub queue: Vec<QueueByArch>,
    pub clouds: CloudOverview,
}

/// The first rows of a list, and how many there are in all.
#[derive(Debug, Serialize, ToSchema)]
pub struct Listed<T> {
    pub total: i64,
    pub items: Vec<T>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ArchUtilisation {
    pub arch: String,
    /// Machines in the pool now.
    pub pool: i64,
    pub days: Vec<DayUtilisation>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DayUtilisation {
    pub day: NaiveDate,
    pub leased_hours: f64,
    /// `leased_hours` over the pool's machine-hours that day (today: so far); may pass 1 when
    /// the pool shrank.
    pub share: f64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UnreachableMachine {
    pub id: Uuid,
    pub hostname: Option<String>,
    pub arch: String,
    pub site: Option<String>,
    /// When it became unreachable.
    pub since: Option<DateTime<Utc>>,
    /// Its last heartbeat or successful SSH check.
    pub last_seen: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DonationDue {
    pub id: Uuid,
    pub donor: String,
    pub model: String,
    pub agreement_ref: String,
    pub submitted_at: DateTime<Utc>,
    pub ends_on: Option<NaiveDate>,
    pub machines: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct QueueByArch {
    pub arch: String,
    /// Leases waiting now.
    pub waiting: i64,
    pub longest_wait_secs: Option<f64>,
    /// Leases granted in the last 24 hours, and how long they waited.
    pub granted_last_day: i64,
    pub mean_wait_secs: Option<f64>,
    pub p95_wait_secs: Option<f64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CloudOverview {
    pub currency: String,
    /// Instances not yet ended, per provider.
    pub running: BTreeMap<String, i64>,
    /// Spend since the first of the month (UTC), per provider and per tenant (`-`: imported
    /// servers, billed to no tenant).
    pub spend_by_provider: BTreeMap<String, f64>,
    pub spend_by_tenant: BTreeMap<String, f64>,
}

impl From<db::overview::QueueLine> for QueueByArch {
    fn from(q: db::overview::QueueLine) -> Self {
        QueueByArch {
            arch: q.arch,
            waiting: q.waiting,
            longest_wait_secs: q.longest_wait_secs,
            granted_last_day: q.granted_last_day,
            mean_wait_secs: q.mean_wait_secs,
            p95_wait_secs: q.p95_wait_secs,
        }
    }
}

/// The lease queue per architecture alone (the queue page), as the overview counts it. Ops.
pub async fn queue_by_arch(state: &AppState, caller: &Principal) -> Result<Vec<QueueByArch>, ApiError> {
    caller.require_admin()?;
    let mut conn = state.db().await?;
    Ok(db::overview::queue_by_arch(&mut conn).await?.into_iter().map(QueueByArch::from).collect())
}

/// The fleet at a glance. Ops only.
pub async fn fleet_overview(state: &AppState, caller: &Principal) -> Result<FleetOverview, ApiError> {
    caller.require_admin()?;
    let now = Utc::now();
    let start = month_start(now);
    let mut conn = state.db().await?;
    let counts = db::overview::machine_counts(&mut conn).await?;
    let hours = db::overview::leased_hours_by_day(&mut conn, UTILISATION_DAYS).await?;
    let pools = db::overview::pool_sizes(&mut conn).await?;
    let unreachable = db::overview::unreachable(&mut conn, LIST_ROWS).await?;
    let review = db::overview::waiting_for_review(&mut conn, LIST_ROWS).await?;
    let ending = db::overview::ending_within(&mut conn, DUE_WITHIN_DAYS, LIST_ROWS).await?;
    let queue = db::overview::queue_by_arch(&mut conn).await?;
    let running = db::overview::cloud_running(&mut conn).await?;
    let billed = db::clouds::billed_since(&mut conn, start).await?;
    drop(conn);

    let mut by: BTreeMap<&str, BTreeMap<String, i64>> = BTreeMap::new();
    for c in counts {
        by.entry(match c.dimension.as_str() {
            "arch" => "arch",
            "lifecycle" => "lifecycle",
            "health" => "health",
            "site" => "site",
            _ => "model",
        })
        .or_default()
        .insert(c.key, c.machines);
    }
    let by_arch = by.remove("arch").unwrap_or_default();
    let machines = by_arch.values().sum();

    let today = now.date_naive();
    let first_day = today - chrono::Days::new(UTILISATION_DAYS as u64 - 1);
    let utilisation = pools_and_days(by_arch.keys(), &pools, &hours, first_day, today, now);

    let mut spend_by_provider: BTreeMap<String, i64> = BTreeMap::new();
    let mut spend_by_tenant: BTreeMap<String, i64> = BTreeMap::new();
    for i in billed.iter().filter(|i| i.state != InstanceState::Failed) {
        let cost = cost_within(i.hourly_micros, i.since, i.ended_at, start, now);
        *spend_by_provider.entry(i.provider.to_string()).or_default() += cost;
        *spend_by_tenant.entry(i.tenant.clone().unwrap_or_else(|| "-".into())).or_default() += cost;
    }
    let money = |m: BTreeMap<String, i64>| m.into_iter().map(|(k, v)| (k, v as f64 / 1_000_000.0)).collect();

    Ok(FleetOverview {
        generated_at: now,
        machines,
        by_arch,
        by_lifecycle: by.remove("lifecycle").unwrap_or_default(),
        by_health: by.remove("health").unwrap_or_default(),
        by_site: by.remove("site").unwrap_or_default(),
        by_model: by.remove("model").unwrap_or_default(),
        utilisation,
        unreachable: Listed {
            total: unreachable.first().map_or(0, |u| u.total),
            items: unreachable
                .into_iter()
                .map(|u| UnreachableMachine {
                    id: u.id,
                    hostname: u.hostname,
                    arch: u.arch,
                    site: u.site,
                    since: u.since,
                    last_seen: u.last_seen,
                })
                .collect(),
        },
        awaiting_review: listed(review),
        ending_soon: listed(ending),
        queue: queue.into_iter().map(QueueByArch::from).collect(),
        clouds: CloudOverview {
            currency: state.config.clouds.currency.clone(),
            running: running.into_iter().map(|r| (r.provider, r.instances)).collect(),
            spend_by_provider: money(spend_by_provider),
            spend_by_tenant: money(spend_by_tenant),
        },
    })
}

fn listed(rows: Vec<db::overview::DonationLine>) -> Listed<DonationDue> {
    Listed {
        total: rows.first().map_or(0, |d| d.total),
        items: rows
            .into_iter()
            .map(|d| DonationDue {
                id: d.id,
                donor: d.donor,
                model: d.model,
                agreement_ref: d.agreement_ref,
                submitted_at: d.created_at,
                ends_on: d.ends_on,
                machines: d.machines,
            })
            .collect(),
    }
}

/// Every architecture that has machines, a pool or leased hours, with a value for every day.
fn pools_and_days<'a>(
    known: impl Iterator<Item = &'a String>,
    pools: &[db::overview::PoolSize],
    hours: &[db::overview::LeasedHours],
    first_day: NaiveDate,
    today: NaiveDate,
    now: DateTime<Utc>,
) -> Vec<ArchUtilisation> {
    let mut arches: BTreeMap<&str, i64> = known.map(|arch| (arch.as_str(), 0)).collect();
    arches.extend(pools.iter().map(|p| (p.arch.as_str(), p.machines)));
    for h in hours {
        arches.entry(h.arch.as_str()).or_insert(0);
    }
    let hours_today =
        (now - Utc.from_utc_datetime(&today.and_hms_opt(0, 0, 0).unwrap_or_default())).num_seconds() as f64 / 3600.0;
    arches
        .into_iter()
        .map(|(arch, pool)| {
            let days = first_day
                .iter_days()
                .take_while(|day| *day <= today)
                .map(|day| {
                    let leased_hours = hours.iter().find(|h| h.day == day && h.arch == arch).map_or(0.0, |h| h.hours);
                    let span = if day == today { hours_today.max(1.0 / 60.0) } else { 24.0 };
                    let capacity = pool as f64 * span;
                    let share = if capacity > 0.0 { leased_hours / capacity } else { 0.0 };
                    DayUtilisation {
                        day,
                        leased_hours: (leased_hours * 10_000.0).round() / 10_000.0,
                        share: (share * 1000.0).round() / 1000.0,
                    }
                })
                .collect();
            ArchUtilisation { arch: arch.to_owned(), pool, days }
        })
        .collect()
}

/// To the hundredth; never `-0` (an empty sum of floats is `-0.0`).
fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0 + 0.0
}

/// Which month a usage report covers.
#[derive(Debug, Clone, Default, Deserialize, Serialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    /// `YYYY-MM` (UTC); the current month when left out.
    #[param(pattern = r"^[0-9]{4}-(0[1-9]|1[0-2])$")]
    pub month: Option<String>,
}

/// What a donor's machines gave in one month.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageReport {
    pub donor_id: DonorId,
    /// `YYYY-MM`.
    pub month: String,
    pub from: DateTime<Utc>,
    /// The end of the month, or now for the current month.
    pub to: DateTime<Utc>,
    pub by_arch: Vec<ArchUsage>,
    pub total_hours: f64,
    pub total_leases: i64,
    pub total_jobs: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ArchUsage {
    pub arch: String,
    /// Leases that held one of the donor's machines during the month.
    pub leases: i64,
    /// Machine-hours leased within the month.
    pub leased_hours: f64,
    /// Build and test jobs run on those leases, and how many succeeded.
    pub jobs: i64,
    pub jobs_succeeded: i64,
}

/// A donor's usage report for one month. Ops, or the donor itself.
pub async fn donor_usage(
    state: &AppState,
    caller: &Principal,
    donor: DonorId,
    query: UsageQuery,
) -> Result<UsageReport, ApiError> {
    let scope = caller.admin_or_donor()?;
    if !scope.covers(Some(donor)) {
        return Err(ApiError::not_found(ErrorCode::DonorNotFound));
    }
    let now = Utc::now();
    let first = match query.month.as_deref() {
        None => NaiveDate::from_ymd_opt(now.year(), now.month(), 1),
        Some(text) => NaiveDate::parse_from_str(&format!("{text}-01"), "%Y-%m-%d").ok().filter(|_| text.len() == 7),
    }
    .ok_or_else(|| FieldErrors::one("month", Problem::NotAMonth))?;
    let next = first + chrono::Months::new(1);
    let from = Utc.from_utc_datetime(&first.and_hms_opt(0, 0, 0).unwrap_or_default());
    let to = Utc.from_utc_datetime(&next.and_hms_opt(0, 0, 0).unwrap_or_default()).min(now);
    if from > now {
        return Err(ApiError::invalid_field("month", Problem::MonthToCome));
    }
    let mut conn = state.db().await?;
    db::donors::find(&mut conn, donor).await?.ok_or_else(|| ApiError::not_found(ErrorCode::DonorNotFound))?;
    let rows = db::overview::donor_usage(&mut conn, donor, from, to).await?;
    let by_arch: Vec<ArchUsage> = rows
        .into_iter()
        .map(|u| ArchUsage {
            arch: u.arch,
            leases: u.leases,
            leased_hours: round2(u.hours),
            jobs: u.jobs,
            jobs_succeeded: u.jobs_succeeded,
        })
        .collect();
    Ok(UsageReport {
        donor_id: donor,
        month: first.format("%Y-%m").to_string(),
        from,
        to,
        total_hours: round2(by_arch.iter().map(|a| a.leased_hours).sum()),
        total_leases: by_arch.iter().map(|a| a.leases).sum(),
        total_jobs: by_arch.iter().map(|a| a.jobs).sum(),
        by_arch,
    })
}

#[cfg(test)]
mod tests {
    use chrono::{NaiveDate, TimeZone, Utc};

    use super::{pools_and_days, round2};
    use crate::db::overview::{LeasedHours, PoolSize};

    #[test]
    fn nothing_leased_is_zero_hours_not_minus_zero() {
        assert_eq!(round2(std::iter::empty::<f64>().sum()).to_string(), "0");
        assert_eq!(round2(1.005_1), 1.01);
    }

    #[test]
    fn utilisation_is_leased_hours_over_the_pool_s_hours_every_day() {
        let day = |d| NaiveDate::from_ymd_opt(2026, 12, d).unwrap();
        let now = Utc.with_ymd_and_hms(2026, 12, 6, 12, 0, 0).unwrap();
        let pools = [PoolSize { arch: "riscv64".into(), machines: 2 }];
        let hours = [LeasedHours { day: day(5), arch: "riscv64".into(), hours: 24.0 }];
        let known = ["loongarch64".to_owned()];
        let rows = pools_and_days(known.iter(), &pools, &hours, day(4), day(6), now);
        assert_eq!(rows.len(), 2, "an architecture with machines but no pool is shown too");
        let riscv = rows.iter().find(|a| a.arch == "riscv64").unwrap();
        let shares: Vec<f64> = riscv.days.iter().map(|d| d.share).collect();
        // Two machines: 48 machine-hours a day, half of them leased on the 5th; none yet today.
        assert_eq!(shares, vec![0.0, 0.5, 0.0]);
        let loongarch = rows.iter().find(|a| a.arch == "loongarch64").unwrap();
        assert_eq!(loongarch.pool, 0);
        assert!(loongarch.days.iter().all(|d| d.share == 0.0));
    }
}
