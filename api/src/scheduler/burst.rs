//! The round's cloud phases: what no lab and no cloud could ever take (refused at once), and
//! which waiting leases get a cloud instance now. A round never calls a cloud: it writes an
//! intent (a `requested` instance bound to the lease) and the cloud worker launches it after
//! the round commits. Leases that get none are told why on their `cloud_note`.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Duration, Utc};
use diesel_async::AsyncPgConnection;

use super::Refusal;
use crate::config::Config;
use crate::db;
use crate::db::clouds::NewCloudInstance;
use crate::db::leases::{Lease, NewLease};
use crate::domain::cloud::{self as rules, InstanceState, Limits, NoCloud, Placement, Spend, money};
use crate::domain::placement::{self, Candidate, Demand};
use crate::domain::{Arch, LeaseId};
use crate::error::ApiError;
use crate::error_code::ErrorCode;

/// What the burst phase did.
pub(super) struct Burst {
    /// Instances asked of the cloud worker.
    pub intents: usize,
    /// The notes it wrote on leases, as they now stand.
    pub notes: HashMap<LeaseId, Option<String>>,
}

/// Why nothing could ever take a request, or `None` if something could: a machine in the
/// inventory (when it may use the labs, or a cloud machine already there) or a cloud offer
/// (when it may use a cloud). Waiting does not change the answer.
pub(super) fn never(config: &Config, inventory: &[Candidate], demand: &Demand) -> Option<String> {
    let machines = placement::unsatisfiable(inventory, demand)?;
    if demand.placement == Placement::Lab {
        return Some(machines);
    }
    let offers = config.clouds.offers();
    let cloud = if offers.is_empty() {
        if demand.placement == Placement::Any {
            return Some(machines);
        }
        "no cloud is configured".to_owned()
    } else {
        let limits = Limits {
            room: offers.iter().map(|o| (o.account.clone(), i64::MAX)).collect(),
            budget_left: None,
            boot_timeout: Duration::zero(),
            currency: config.clouds.currency.clone(),
        };
        match rules::choose(&offers, demand, &[], &limits) {
            Err(NoCloud::Never(reason)) => reason,
            _ => return None,
        }
    };
    Some(match demand.placement {
        Placement::Cloud => cloud,
        _ => format!("{machines}, and {cloud}"),
    })
}

pub(super) async fn run(
    conn: &mut AsyncPgConnection,
    config: &Config,
    queue: &[Lease],
    placed: &HashSet<LeaseId>,
    fresh: &[NewLease],
    refused: &mut HashMap<LeaseId, Refusal>,
) -> Result<Burst, ApiError> {
    let clouds = &config.clouds;
    if clouds.accounts.is_empty() {
        return Ok(Burst { intents: 0, notes: HashMap::new() });
    }
    let waiting: Vec<&Lease> = queue
        .iter()
        .filter(|l| l.placement != Placement::Lab && !placed.contains(&l.id) && !refused.contains_key(&l.id))
        .collect();
    if waiting.is_empty() {
        return Ok(Burst { intents: 0, notes: HashMap::new() });
    }
    let open = db::clouds::open_instances(conn).await?;
    let in_flight: HashSet<LeaseId> = open
        .iter()
        .filter(|i| {
            matches!(
                i.state,
                InstanceState::Requested | InstanceState::Launching | InstanceState::Booting | InstanceState::Ready
            )
        })
        .filter_map(|i| i.lease_id)
        .collect();
    let waiting: Vec<&Lease> = waiting.into_iter().filter(|l| !in_flight.contains(&l.id)).collect();
    if waiting.is_empty() {
        return Ok(Burst { intents: 0, notes: HashMap::new() });
    }

    let now = Utc::now();
    let boot_timeout = Duration::seconds(clouds.boot_timeout_secs as i64);
    let offers = clouds.offers();
    let unavailable = db::clouds::unavailable(conn).await?;
    let mut limits = Limits {
        room: clouds
            .accounts
            .iter()
            .map(|a| {
                let running = open.iter().filter(|i| !i.imported && i.account == a.name).count() as i64;
                (a.name.clone(), a.max_instances - running)
            })
            .collect(),
        budget_left: None,
        boot_timeout,
        currency: clouds.currency.clone(),
    };
    let mut budget_left = budgets(conn, config, &waiting, now).await?;
    let lab_ends = if waiting.iter().any(|l| l.placement == Placement::Any) {
        db::leases::lab_lease_ends(conn).await?
    } else {
        HashMap::new()
    };
    let fresh_ids: HashSet<LeaseId> = fresh.iter().map(|l| l.id).collect();

    let mut position: HashMap<Arch, usize> = HashMap::new();
    let mut intents = Vec::new();
    let mut notes: Vec<(LeaseId, Option<String>)> = Vec::new();
    for lease in waiting {
        let at = position.entry(lease.arch).or_default();
        let estimate = lab_ends.get(&lease.arch).and_then(|ends| ends.get(*at)).copied();
        *at += 1;
        let tolerance = Duration::seconds(lease.max_lab_wait_secs.into());
        let note = if !rules::wants_cloud(lease.placement, tolerance, lease.queued_at, estimate, now) {
            Some(format!(
                "waiting for the labs (a machine is expected by {}); a cloud instance from {} if none is free",
                estimate.map(|t| t.to_rfc3339()).unwrap_or_default(),
                (lease.queued_at + tolerance).to_rfc3339()
            ))
        } else {
            let budget = clouds.budget_of(&lease.tenant);
            limits.budget_left = Some(budget_left.get(&lease.tenant).copied().unwrap_or(budget));
            let demand = lease.demand();
            let choice = if budget <= 0 {
                Err(NoCloud::Budget(format!(
                    "the tenant `{}` has no cloud budget (clouds.tenant_budgets)",
                    lease.tenant
                )))
            } else {
                rules::choose(&offers, &demand, &unavailable, &limits)
            };
            match choice {
                Ok(offer) => {
                    intents.push(NewCloudInstance::requested(offer, Some(&lease.tenant), Some(lease.id)));
                    *limits.room.entry(offer.account.clone()).or_default() -= 1;
                    *budget_left.entry(lease.tenant.clone()).or_insert(budget) -=
                        offer.bound(demand.duration, boot_timeout);
                    Some(format!(
                        "launching a {} instance ({}, {}) in {} {} at {} {}/h",
                        offer.flavour,
                        offer.market,
                        offer.arch,
                        offer.provider,
                        offer.region,
                        money(offer.hourly_micros),
                        clouds.currency
                    ))
                }
                Err(NoCloud::Budget(reason))
                    if lease.placement == Placement::Cloud && fresh_ids.contains(&lease.id) =>
                {
                    refused.insert(lease.id, Refusal { code: ErrorCode::CloudBudgetExhausted, reason });
                    continue;
                }
                Err(no) => Some(match lease.placement {
                    Placement::Any => format!("{}; waiting for the labs", no.reason()),
                    _ => no.reason().to_owned(),
                }),
            }
        };
        if lease.cloud_note != note {
            notes.push((lease.id, note));
        }
    }
    db::clouds::insert_instances(conn, &intents).await?;
    db::leases::set_cloud_notes(conn, &notes).await?;
    Ok(Burst { intents: intents.len(), notes: notes.into_iter().collect() })
}

/// What each waiting lease's tenant may still spend this month.
async fn budgets(
    conn: &mut AsyncPgConnection,
    config: &Config,
    waiting: &[&Lease],
    now: DateTime<Utc>,
) -> Result<HashMap<String, i64>, ApiError> {
    let mut tenants: Vec<String> = waiting.iter().map(|l| l.tenant.clone()).collect();
    tenants.sort_unstable();
    tenants.dedup();
    let start = rules::month_start(now);
    let boot_timeout = Duration::seconds(config.clouds.boot_timeout_secs as i64);
    let mut spent: HashMap<String, Vec<Spend>> = HashMap::new();
    for row in db::clouds::spending(conn, &tenants, start).await? {
        spent.entry(row.tenant).or_default().push(Spend {
            hourly_micros: row.hourly_micros,
            since: row.since,
            ended_at: row.ended_at,
            lease: row.lease_secs.map(|s| Duration::seconds(s.into())),
        });
    }
    Ok(tenants
        .into_iter()
        .map(|t| {
            let used = spent.get(&t).map_or(0, |items| rules::month_spend(items, start, now, boot_timeout));
            let left = config.clouds.budget_of(&t) - used;
            (t, left)
        })
        .collect())
}
