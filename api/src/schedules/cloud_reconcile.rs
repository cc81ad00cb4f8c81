//! The reconcile: makes the clouds and the database agree, both ways. For each configured
//! account's region it lists every instance carrying the platform's tag *before* it reads the
//! database (so an instance launched meanwhile is never mistaken for an orphan), then:
//!
//! - an instance the database does not know is adopted if its launch was left mid-call (the
//!   replica that made it died before recording it), and otherwise terminated as an orphan
//!   once it is a minute old;
//! - an instance whose row has ended (or that outlived its lease, which the cloud worker marks
//!   for termination) is terminated again;
//! - a row whose instance the cloud no longer lists, twice a minute apart, is lost: its machine
//!   retires, a lease granted on it goes back to the queue (a job's attempt fails, and the job
//!   is queued again), a lease waiting for it gets another instance in the next round.
//!
//! A listing that fails is never taken for an empty one. Imported servers carry no platform
//! tag and are never terminated; they are only checked by id.

use std::collections::HashMap;

use anyhow::Context;
use chrono::{Duration, Utc};
use diesel_async::AsyncConnection;
use serde::Serialize;
use uuid::Uuid;

use crate::cloud::{self, CloudInstance as Listed, Selector};
use crate::db::clouds::CloudInstance;
use crate::db::{self};
use crate::domain::cloud::{InstanceState, LaunchState};
use crate::provisioner::{self, paced};
use crate::state::AppState;

#[derive(Debug, Default, Serialize)]
pub struct ReconcileReport {
    /// Account regions listed.
    pub regions: usize,
    /// Instances the clouds listed with the platform's tag.
    pub listed: usize,
    /// Instances of launches left mid-call, taken into their rows.
    pub adopted: usize,
    /// Instances nobody knew, or whose row had ended, terminated.
    pub orphans_terminated: usize,
    /// Rows whose instance the cloud no longer has.
    pub lost: usize,
    /// Rows being terminated whose instance is now confirmed gone.
    pub confirmed_gone: usize,
    /// Listings or calls that failed, by account and region.
    pub errors: Vec<String>,
}

pub async fn reconcile(state: &AppState) -> anyhow::Result<ReconcileReport> {
    let mut report = ReconcileReport::default();
    let clouds = state.config.clouds.clone();
    for account in &clouds.accounts {
        for region in &account.regions {
            let Some(provider) = state.clouds.get(&account.name, &region.name) else { continue };
            let (a, r) = (account.name.as_str(), region.name.as_str());
            report.regions += 1;
            let selector = Selector::Tag(cloud::TAG_PLATFORM.into(), clouds.platform.clone());
            let listed = match paced(state, a, r, "list", provider.list(&selector)).await {
                Ok(listed) => listed,
                Err(e) => {
                    report.errors.push(format!("{a}/{r}: listing failed: {e}"));
                    continue;
                }
            };
            // Whatever the listing returned, only what carries this platform's tag (or, where
            // labels bind late, its name) is ours to judge.
            let mut seen: Vec<Listed> = listed.into_iter().filter(|i| is_ours(i, &clouds.platform)).collect();
            report.listed += seen.len();
            // Imported servers are checked by id: they carry no platform tag.
            let mut conn = state.pool.get().await.context("connecting to the database")?;
            let imported: Vec<String> = db::clouds::known_in(&mut conn, a, r)
                .await?
                .into_iter()
                .filter(|row| row.imported && row.ended_at.is_none())
                .filter_map(|row| row.provider_id)
                .collect();
            drop(conn);
            if !imported.is_empty() {
                match paced(state, a, r, "list", provider.list(&Selector::Ids(imported))).await {
                    Ok(found) => seen.extend(found),
                    Err(e) => {
                        report.errors.push(format!("{a}/{r}: listing imported servers failed: {e}"));
                        continue;
                    }
                }
            }
            let orphans = settle_region(state, a, r, &seen, &mut report).await?;
            if !orphans.is_empty() {
                match paced(state, a, r, "terminate", provider.terminate(&orphans)).await {
                    Ok(()) => {
                        report.orphans_terminated += orphans.len();
                        tracing::info!(account = %a, region = %r, ?orphans, "terminated orphaned instances");
                    }
                    Err(e) => report.errors.push(format!("{a}/{r}: terminating orphans failed: {e}")),
                }
            }
        }
    }
    if report.adopted > 0 || report.lost > 0 {
        state.scheduler.wake();
    }
    Ok(report)
}

/// Whether Fleetyard's deployment `platform` launched this instance: it carries the platform's
/// tag, or (where labels bind late, on CTyun) no platform tag yet and a name Fleetyard gives.
fn is_ours(instance: &Listed, platform: &str) -> bool {
    match instance.tags.get(cloud::TAG_PLATFORM) {
        Some(value) => value == platform,
        None => instance.name.as_deref().is_some_and(|n| cloud::is_instance_name(platform, n)),
    }
}

/// Compares one region's listing with its rows in one transaction; returns the cloud ids of
/// the orphans to terminate.
async fn settle_region(
    state: &AppState,
    account: &str,
    region: &str,
    listed: &[Listed],
    report: &mut ReconcileReport,
) -> anyhow::Result<Vec<String>> {
    let now = Utc::now();
    let grace = Duration::seconds(state.config.clouds.reconcile_grace_secs as i64);
    let config = state.config.clone();
    let mut conn = state.pool.get().await.context("connecting to the database")?;
    let (orphans, adopted, lost, gone, revoked) = conn
        .transaction::<_, anyhow::Error, _>(async |conn| {
            let known = db::clouds::known_in(conn, account, region).await?;
            let by_id: HashMap<&str, &CloudInstance> =
                known.iter().filter_map(|r| Some((r.provider_id.as_deref()?, r))).collect();
            let launches: HashMap<String, db::clouds::CloudLaunch> =
                db::clouds::unsettled_launches(conn, account, region)
                    .await?
                    .into_iter()
                    .map(|l| (l.id.simple().to_string(), l))
                    .collect();
            let alive: Vec<&Listed> = listed.iter().filter(|i| i.state.is_alive()).collect();
            let mut orphans = Vec::new();
            let mut to_adopt: HashMap<Uuid, Vec<String>> = HashMap::new();
            for instance in &alive {
                if let Some(row) = by_id.get(instance.id.as_str()) {
                    if row.ended_at.is_some() && !row.imported {
                        orphans.push(instance.id.clone());
                    }
                    continue;
                }
                let launch = instance.tags.get(cloud::TAG_LAUNCH).and_then(|l| launches.get(l));
                match launch {
                    Some(l) if l.state == LaunchState::Calling && l.claimed_until.is_some_and(|t| t > now) => {}
                    Some(l) if l.state == LaunchState::Calling => {
                        to_adopt.entry(l.id).or_default().push(instance.id.clone())
                    }
                    _ if instance.launched_at.is_some_and(|t| t > now - grace) => {}
                    _ => orphans.push(instance.id.clone()),
                }
            }
            let mut adopted = 0;
            for (launch, ids) in to_adopt {
                let Some(current) = db::clouds::lock_launch(conn, launch).await? else { continue };
                // Another replica may have resumed it since the first look: then it is theirs.
                if current.state != LaunchState::Calling || current.claimed_until.is_some_and(|t| t > Utc::now()) {
                    continue;
                }
                let rows: Vec<CloudInstance> = db::clouds::of_launch(conn, launch)
                    .await?
                    .into_iter()
                    .filter(|r| r.state == InstanceState::Launching)
                    .collect();
                let mut ids = ids;
                ids.sort();
                let taken = provisioner::adopt(conn, &config.clouds, &rows, &ids).await?;
                adopted += taken;
                orphans.extend(ids.into_iter().skip(taken));
                db::clouds::finish_launch(conn, launch, LaunchState::Done, None).await?;
            }

            // Rows whose instance the listing lacks.
            let listed_alive: std::collections::HashSet<&str> = alive.iter().map(|i| i.id.as_str()).collect();
            let (mut gone, mut missing, mut present) = (Vec::new(), Vec::new(), Vec::new());
            for row in known.iter().filter(|r| r.ended_at.is_none()) {
                let Some(id) = row.provider_id.as_deref() else { continue };
                if listed_alive.contains(id) {
                    present.push(row.id);
                } else if row.state == InstanceState::Terminating {
                    gone.push(row.clone());
                } else if row.launched_at.is_none_or(|t| t > now - grace) {
                } else {
                    missing.push(row.clone());
                }
            }
            db::clouds::set_missing(conn, &present, false).await?;
            let mut revoked = provisioner::retire(conn, &gone, InstanceState::Terminated).await?;
            let lost: Vec<CloudInstance> =
                missing.iter().filter(|r| r.missing_since.is_some_and(|t| t <= now - grace)).cloned().collect();
            let first_miss: Vec<Uuid> = missing.iter().filter(|r| r.missing_since.is_none()).map(|r| r.id).collect();
            db::clouds::set_missing(conn, &first_miss, true).await?;
            if !lost.is_empty() {
                let machines: Vec<crate::domain::MachineId> = lost.iter().filter_map(|r| r.machine_id).collect();
                db::leases::requeue_on(conn, &machines, "its cloud instance was lost; queued again").await?;
                let ids: Vec<Uuid> = lost.iter().map(|r| r.id).collect();
                db::clouds::end(conn, &ids, InstanceState::Lost, "the cloud no longer lists it").await?;
                revoked.extend(provisioner::retire(conn, &lost, InstanceState::Lost).await?);
            }
            Ok((orphans, adopted, lost.len(), gone.len(), revoked))
        })
        .await?;
    state.agents.evict(&revoked);
    report.adopted += adopted;
    report.lost += lost;
    report.confirmed_gone += gone;
    Ok(orphans)
}
