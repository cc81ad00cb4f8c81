//! The cloud worker: turns placement's intents into cloud calls, and cloud instances into
//! machines of the pool and back. One task per replica; every step claims its rows first
//! (`FOR UPDATE SKIP LOCKED`, or a `claimed_until`), so replicas share the work and never do
//! the same call twice at once. Each pass:
//!
//! 1. **launch**: requested instances, grouped by offer, become launches: one call each, with
//!    rate-limit tokens taken from the shared buckets and the launch (its idempotency token, its
//!    instances) committed *before* the call. What the call returns is recorded after; a
//!    replica that dies in between leaves a launch any replica resumes with the same token;
//! 2. **resume** launches left mid-call past their claim;
//! 3. **boot**: booting instances whose agent beats become ready (their machine joins the pool
//!    and the placement round grants their lease); those past the boot timeout are terminated
//!    and their lease placed again;
//! 4. **settle**: instances no lease needs any more are terminated (or kept warm);
//! 5. **warm pool**: tops each flavour's never-used instances up to its `min_idle`;
//! 6. **terminate**: the calls for instances marked to terminate; their machines retire;
//! 7. **import**: existing servers ops asked for join the pool.
//!
//! It runs after each round that wrote intents (after a short batch window, so that a burst
//! of requests becomes one call per flavour), and every second otherwise.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration as StdDuration;

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{Duration, Utc};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::cloud::{self, CloudError, CloudInstance as Listed, LaunchSpec, Launched, Selector};
use crate::config::clouds::CloudsConfig;
use crate::db::audit::Actor;
use crate::db::clouds::{CallOutcome, CloudInstance, CloudLaunch, NewCloudInstance, NewCloudLaunch};
use crate::db::{self};
use crate::domain::cloud::{self as rules, Bootstrap, CloudErrorKind, InstanceState, LaunchState, OfferKey};
use crate::domain::{Accelerator, Arch, LifecycleState, MachineId, Requester, TokenId, lifecycle};
use crate::operations::machines::record_lifecycle_changes;
use crate::state::AppState;

/// How much longer than one call's time limit a claim on a launch, an instance being
/// terminated or an import lasts: past it, another replica may take the work over.
const CLAIM_MARGIN_SECS: i64 = 10;

/// The prefix of launch secrets, so a leaked one is recognisable.
const SECRET_PREFIX: &str = "fylaunch_";

/// The secret in a launch's user data. Derived from the signing key and the launch's id, so
/// any replica can send the very same user data again when it resumes the launch (a changed
/// request with the same token would be refused); only its hash is stored.
pub fn launch_secret(signing_key: &str, launch: Uuid) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(signing_key.as_bytes()).expect("HMAC takes any key");
    mac.update(b"fleetyard launch secret ");
    mac.update(launch.as_bytes());
    format!("{SECRET_PREFIX}{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
}

pub fn secret_hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.trim().as_bytes()).to_vec()
}

/// Test hook: `FLEETYARD_TEST_CRASH_AT=<point>` aborts the process there, as a power cut would.
fn crash_point(point: &str) {
    if std::env::var("FLEETYARD_TEST_CRASH_AT").is_ok_and(|at| at == point) {
        eprintln!("fleetyard: FLEETYARD_TEST_CRASH_AT={point}: aborting");
        std::process::abort();
    }
}

/// Runs the worker until the process ends. Does nothing when no cloud is configured.
pub async fn run(state: AppState) {
    if state.clouds.is_empty() || !state.config.clouds.worker {
        return;
    }
    let window = StdDuration::from_millis(state.config.clouds.batch_window_millis);
    let mut worker = Worker { state, digests: HashMap::new() };
    loop {
        tokio::select! {
            () = worker.state.cloud_bell.notified() => tokio::time::sleep(window).await,
            () = tokio::time::sleep(StdDuration::from_secs(1)) => {}
        }
        if let Err(e) = worker.pass().await {
            tracing::warn!("cloud worker: {e:#}");
        }
    }
}

struct Worker {
    state: AppState,
    /// The agent binaries' SHA-256 (and when each file last changed), by architecture, for
    /// the user data to check.
    digests: HashMap<Arch, (std::time::SystemTime, String)>,
}

/// What one pass did, for tests and the schedule report.
#[derive(Debug, Default, serde::Serialize)]
pub struct PassReport {
    pub launched: usize,
    pub resumed: usize,
    pub ready: usize,
    pub boot_timeouts: usize,
    pub terminated: usize,
    pub imported: usize,
}

impl Worker {
    async fn pass(&mut self) -> anyhow::Result<PassReport> {
        let launched = self.launch_requested().await?;
        let resumed = self.resume_stale().await?;
        let (ready, boot_timeouts) = self.settle_boots().await?;
        self.settle_unneeded().await?;
        let terminated = self.terminate().await?;
        let imported = self.import().await?;
        if ready > 0 || boot_timeouts > 0 {
            self.state.scheduler.wake();
        }
        Ok(PassReport { launched, resumed, ready, boot_timeouts, terminated, imported })
    }

    fn clouds(&self) -> &CloudsConfig {
        &self.state.config.clouds
    }

    async fn conn(&self) -> anyhow::Result<db::DbConn> {
        self.state.pool.get().await.context("connecting to the database")
    }

    // ---- 1. launch -------------------------------------------------------------------------

    async fn launch_requested(&mut self) -> anyhow::Result<usize> {
        let clouds = self.clouds().clone();
        let secret = self.state.config.jwt_secret.0.clone();
        let mut conn = self.conn().await?;
        let launches = conn
            .transaction::<_, anyhow::Error, _>(async |conn| {
                let requested = db::clouds::claim_requested(conn, 2_000).await?;
                let mut groups: BTreeMap<(String, String, String, String), Vec<CloudInstance>> = BTreeMap::new();
                for row in requested {
                    let key = (row.account.clone(), row.region.clone(), row.flavour.clone(), row.market.to_string());
                    groups.entry(key).or_default().push(row);
                }
                let mut launches = Vec::new();
                let now = Utc::now();
                for ((account, region, _, _), rows) in groups {
                    let (Some(provider), Some((_, region_config)), Some(image)) = (
                        self.state.clouds.get(&account, &region),
                        clouds.region(&account, &region),
                        clouds.image(&account, &region, rows[0].arch),
                    ) else {
                        let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
                        db::clouds::end(
                            conn,
                            &ids,
                            InstanceState::Failed,
                            "its cloud account or region is no longer configured",
                        )
                        .await?;
                        continue;
                    };
                    let per_call = provider.max_per_call().max(1) as usize;
                    for chunk in rows.chunks(per_call) {
                        let limits = &region_config.rate_limits;
                        let buckets = (limits.launch_calls, limits.launch_instances);
                        let wait =
                            db::clouds::take_launch_tokens(conn, &account, &region, buckets, chunk.len() as f64, now)
                                .await?;
                        if !wait.is_zero() {
                            // The buckets say not yet: these stay requested for a later pass.
                            tracing::debug!(%account, %region, ?wait, "launch paced by the rate limit");
                            break;
                        }
                        let id = Uuid::now_v7();
                        let launch = db::clouds::insert_launch(
                            conn,
                            &NewCloudLaunch {
                                id,
                                account: account.clone(),
                                provider: provider.kind(),
                                region: region.clone(),
                                flavour: chunk[0].flavour.clone(),
                                market: chunk[0].market,
                                image: image.id.clone(),
                                count: chunk.len() as i32,
                                client_token: id.simple().to_string(),
                                state: LaunchState::Calling,
                                secret_hash: secret_hash(&launch_secret(&secret, id)),
                                secret_expires_at: now
                                    + Duration::seconds(
                                        (clouds.boot_timeout_secs + clouds.attempt_timeout_secs) as i64,
                                    ),
                                claimed_until: None,
                                calls: 1,
                            },
                            clouds.attempt_timeout_secs as i64 + CLAIM_MARGIN_SECS,
                        )
                        .await?;
                        let ids: Vec<Uuid> = chunk.iter().map(|r| r.id).collect();
                        db::clouds::set_launching(conn, &ids, launch.id).await?;
                        launches.push((launch, chunk.to_vec()));
                    }
                }
                Ok(launches)
            })
            .await?;
        drop(conn);
        let count = launches.len();
        let specs: Vec<(CloudLaunch, anyhow::Result<LaunchSpec>)> = launches
            .into_iter()
            .map(|(launch, rows)| {
                let spec = self.spec(&launch, &rows);
                (launch, spec)
            })
            .collect();
        let this = &*self;
        let calls = specs.into_iter().map(|(launch, spec)| async move {
            let result = match spec {
                Ok(spec) => this.call_launch(&launch, &spec).await,
                Err(e) => Err(CloudError::new(CloudErrorKind::Invalid, "configuration", format!("{e:#}"))),
            };
            (launch, result)
        });
        let results = futures_util::future::join_all(calls).await;
        for (launch, result) in results {
            self.record_launch(&launch, result).await?;
        }
        Ok(count)
    }

    /// The call's request: the same for the first call and every resumption. No agent binary
    /// for the architecture, no launch: its instances could never enroll.
    fn spec(&mut self, launch: &CloudLaunch, rows: &[CloudInstance]) -> anyhow::Result<LaunchSpec> {
        let clouds = self.clouds().clone();
        let arch = rows.first().map(|r| r.arch).context("a launch without instances")?;
        let image = clouds.image(&launch.account, &launch.region, arch).context("no image for the architecture")?;
        let agent_url = format!("{}/api/v1/agent/binaries/{arch}", clouds.agent_server_url.trim_end_matches('/'));
        let digest = self.agent_digest(arch).with_context(|| {
            format!("there is no agent binary for {arch} (fleetyard-agent-{arch} in clouds.agent_binaries_dir)")
        })?;
        let digest = Some(digest);
        let secret = launch_secret(&self.state.config.jwt_secret.0, launch.id);
        let user_data = rules::cloud_init(&Bootstrap {
            server_url: clouds.agent_server_url.trim_end_matches('/'),
            agent_url: &agent_url,
            agent_sha256: digest.as_deref(),
            launch_secret: &secret,
            lease_user: &image.ssh_user,
        });
        let mut tags = BTreeMap::from([
            (cloud::TAG_PLATFORM.to_owned(), clouds.platform.clone()),
            (cloud::TAG_LAUNCH.to_owned(), launch.id.simple().to_string()),
        ]);
        if let [only] = rows {
            tags.insert(cloud::TAG_INSTANCE.to_owned(), only.id.simple().to_string());
            if let Some(lease) = only.lease_id {
                tags.insert(cloud::TAG_LEASE.to_owned(), lease.0.simple().to_string());
            }
        }
        Ok(LaunchSpec {
            client_token: launch.client_token.clone(),
            name: cloud::instance_name(&clouds.platform, launch.id),
            count: launch.count as u32,
            flavour: launch.flavour.clone(),
            image: launch.image.clone(),
            market: launch.market,
            tags,
            user_data,
        })
    }

    /// The SHA-256 of the agent binary for `arch`, read again whenever the file changes.
    fn agent_digest(&mut self, arch: Arch) -> Option<String> {
        let path = self.state.config.clouds.agent_binaries_dir.clone()?.join(format!("fleetyard-agent-{arch}"));
        let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok()?;
        match self.digests.get(&arch) {
            Some((at, digest)) if *at == modified => Some(digest.clone()),
            _ => {
                let digest = hex::encode(Sha256::digest(std::fs::read(&path).ok()?));
                self.digests.insert(arch, (modified, digest.clone()));
                Some(digest)
            }
        }
    }

    async fn call_launch(&self, launch: &CloudLaunch, spec: &LaunchSpec) -> Result<Launched, CloudError> {
        let Some(provider) = self.state.clouds.get(&launch.account, &launch.region) else {
            return Err(CloudError::new(
                CloudErrorKind::Invalid,
                "configuration",
                "the account is no longer configured",
            ));
        };
        let limit = StdDuration::from_secs(self.clouds().attempt_timeout_secs);
        crash_point("before-launch-call");
        let result = match tokio::time::timeout(limit, provider.launch(spec)).await {
            Ok(result) => result,
            Err(_) => Err(CloudError::timed_out("the launch", limit)),
        };
        crash_point("after-launch-call");
        result
    }

    /// Records what a launch call achieved, unless another replica already did.
    async fn record_launch(&self, launch: &CloudLaunch, result: Result<Launched, CloudError>) -> anyhow::Result<()> {
        let clouds = self.clouds().clone();
        let mut conn = self.conn().await?;
        // A launch refused before its call (its configuration) made no call to count.
        if result.as_ref().err().is_none_or(|e| e.code != "configuration") {
            db::clouds::count_call(&mut conn, &launch.account, &launch.region, "launch", outcome(&result)).await?;
        }
        let offer = OfferKey {
            account: launch.account.clone(),
            region: launch.region.clone(),
            flavour: launch.flavour.clone(),
            market: launch.market,
        };
        let (to_tag, extras) = conn
            .transaction::<_, anyhow::Error, _>(async |conn| {
                let Some(current) = db::clouds::lock_launch(conn, launch.id).await? else {
                    return Ok((Vec::new(), Vec::new()));
                };
                if current.state != LaunchState::Calling {
                    return Ok((Vec::new(), Vec::new()));
                }
                let rows: Vec<CloudInstance> = db::clouds::of_launch(conn, launch.id)
                    .await?
                    .into_iter()
                    .filter(|r| r.state == InstanceState::Launching)
                    .collect();
                match result {
                    Ok(launched) => {
                        let taken = adopt(conn, &clouds, &rows, &launched.instance_ids).await?;
                        let to_tag: Vec<(String, Uuid, Option<Uuid>)> = if rows.len() > 1 {
                            rows.iter()
                                .zip(&launched.instance_ids)
                                .take(taken)
                                .map(|(row, id)| (id.clone(), row.id, row.lease_id.map(|l| l.0)))
                                .collect()
                        } else {
                            Vec::new()
                        };
                        if let Some(shortfall) = &launched.shortfall {
                            let unavailable = rules::unavailable_after(
                                shortfall.kind,
                                &offer,
                                &shortfall.to_string(),
                                clouds.backoff(),
                                Utc::now(),
                            );
                            db::clouds::add_unavailable(conn, &unavailable).await?;
                        }
                        db::clouds::finish_launch(conn, launch.id, LaunchState::Done, None).await?;
                        // More than asked for (it should not happen): no row wants them.
                        let extras = launched.instance_ids.get(taken..).unwrap_or_default().to_vec();
                        Ok((to_tag, extras))
                    }
                    Err(e) => {
                        let timed_out = e.kind == CloudErrorKind::Transient;
                        let state = if timed_out { LaunchState::Unknown } else { LaunchState::Failed };
                        let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
                        let reason = format!("the launch failed: {e}");
                        db::clouds::end(conn, &ids, InstanceState::Failed, &reason).await?;
                        let unavailable =
                            rules::unavailable_after(e.kind, &offer, &e.to_string(), clouds.backoff(), Utc::now());
                        db::clouds::add_unavailable(conn, &unavailable).await?;
                        db::clouds::finish_launch(conn, launch.id, state, Some((e.kind, &e.code, &e.message))).await?;
                        Ok((Vec::new(), Vec::new()))
                    }
                }
            })
            .await?;
        drop(conn);
        self.state.scheduler.wake();
        if let (false, Some(provider)) = (extras.is_empty(), self.state.clouds.get(&launch.account, &launch.region)) {
            tracing::warn!(launch = %launch.id, ?extras, "a launch returned more instances than asked for; terminating them");
            let _ = paced(&self.state, &launch.account, &launch.region, "terminate", provider.terminate(&extras)).await;
        }
        // A batch shares its tags; each instance gets its row and lease now (best effort: the
        // launch tag is what the reconcile relies on).
        for (provider_id, row, lease) in to_tag {
            let mut tags = BTreeMap::from([(cloud::TAG_INSTANCE.to_owned(), row.simple().to_string())]);
            if let Some(lease) = lease {
                tags.insert(cloud::TAG_LEASE.to_owned(), lease.simple().to_string());
            }
            if let Some(provider) = self.state.clouds.get(&launch.account, &launch.region) {
                let tagged =
                    paced(&self.state, &launch.account, &launch.region, "tag", provider.tag(&provider_id, &tags));
                if let Err(e) = tagged.await {
                    tracing::debug!(instance = %provider_id, "tagging failed: {e}");
                }
            }
        }
        Ok(())
    }

    // ---- 2. resume -------------------------------------------------------------------------

    async fn resume_stale(&mut self) -> anyhow::Result<usize> {
        let secs = self.clouds().attempt_timeout_secs as i64 + CLAIM_MARGIN_SECS;
        let stale = {
            let mut conn = self.conn().await?;
            db::clouds::claim_stale_launches(&mut conn, secs).await?
        };
        let count = stale.len();
        // All at once, as they were claimed together: no claim runs out while others are called.
        let mut specs = Vec::with_capacity(count);
        for launch in stale {
            let rows = {
                let mut conn = self.conn().await?;
                db::clouds::of_launch_unlocked(&mut conn, launch.id).await?
            };
            tracing::info!(launch = %launch.id, calls = launch.calls, "resuming a launch left mid-call, with the same token");
            let spec = self.spec(&launch, &rows);
            specs.push((launch, spec));
        }
        let this = &*self;
        let calls = specs.into_iter().map(|(launch, spec)| async move {
            let result = match spec {
                Ok(spec) => this.call_launch(&launch, &spec).await,
                Err(e) => Err(CloudError::new(CloudErrorKind::Invalid, "configuration", format!("{e:#}"))),
            };
            (launch, result)
        });
        for (launch, result) in futures_util::future::join_all(calls).await {
            self.record_launch(&launch, result).await?;
        }
        Ok(count)
    }

    // ---- 3. boot ---------------------------------------------------------------------------

    /// Booting instances whose agent beats become ready, once the cloud has said where they
    /// are; those past their boot deadline are terminated.
    async fn settle_boots(&self) -> anyhow::Result<(usize, usize)> {
        let mut conn = self.conn().await?;
        let booted = db::clouds::booted(&mut conn, false).await?;
        drop(conn);
        // Where each is: one listing per account's region.
        let mut addresses: HashMap<Uuid, Listed> = HashMap::new();
        let mut by_region: BTreeMap<(String, String), Vec<&CloudInstance>> = BTreeMap::new();
        for row in &booted {
            by_region.entry((row.account.clone(), row.region.clone())).or_default().push(row);
        }
        for ((account, region), rows) in by_region {
            let Some(provider) = self.state.clouds.get(&account, &region) else { continue };
            let ids: Vec<String> = rows.iter().filter_map(|r| r.provider_id.clone()).collect();
            let selector = Selector::Ids(ids);
            // A failed listing leaves them booting for the next pass.
            if let Ok(listed) = paced(&self.state, &account, &region, "list", provider.list(&selector)).await {
                for instance in listed {
                    if let Some(row) = rows.iter().find(|r| r.provider_id.as_deref() == Some(instance.id.as_str())) {
                        addresses.insert(row.id, instance);
                    }
                }
            }
        }
        let clouds = self.clouds().clone();
        let actor = Actor::system("cloud worker");
        let mut conn = self.conn().await?;
        let (ready, overdue) = conn
            .transaction::<_, anyhow::Error, _>(async |conn| {
                let mut ready = 0;
                for row in db::clouds::booted(conn, true).await? {
                    let (Some(listed), Some(machine_id)) = (addresses.get(&row.id), row.machine_id) else { continue };
                    let Some(address) = listed.address() else { continue };
                    let user = clouds
                        .image(&row.account, &row.region, row.arch)
                        .map_or_else(|| "root".to_owned(), |i| i.ssh_user.clone());
                    db::machines::set_ssh_endpoint(conn, machine_id, address, 22, &user).await?;
                    let before = db::machines::lock(conn, machine_id).await?.into_iter().collect::<Vec<_>>();
                    if before
                        .iter()
                        .any(|m| lifecycle::check_rented(m.lifecycle, LifecycleState::Ready, Requester::Ops).is_err())
                    {
                        continue;
                    }
                    let change = db::machines::LifecycleChange {
                        to: LifecycleState::Ready,
                        deadline: None,
                        maintenance_reason: None,
                        location: None,
                    };
                    let after = db::machines::set_lifecycle(conn, &[machine_id], &change).await?;
                    record_lifecycle_changes(conn, &actor, &before, &after, Some("its agent reports")).await?;
                    db::clouds::set_ready(conn, &[row.id]).await?;
                    ready += 1;
                }
                let overdue = db::clouds::boot_overdue(conn).await?;
                let ids: Vec<Uuid> = overdue.iter().map(|r| r.id).collect();
                let why = "its agent did not enroll and report within the boot timeout";
                let marked = db::clouds::mark_terminating(conn, &ids, why).await?;
                // An offer whose instances do not boot (a broken image, a network that cannot
                // reach this server) is passed over for a while rather than launched again.
                let mut seen = std::collections::HashSet::new();
                for row in overdue.iter().filter(|r| seen.insert((&r.account, &r.region, &r.flavour, r.market))) {
                    let offer = row.offer_key();
                    let unavailable =
                        rules::unavailable_after(CloudErrorKind::Transient, &offer, why, clouds.backoff(), Utc::now());
                    db::clouds::add_unavailable(conn, &unavailable).await?;
                }
                Ok((ready, marked.len()))
            })
            .await?;
        Ok((ready, overdue))
    }

    // ---- 4. settle, 5. warm pool ---------------------------------------------------------

    /// Instances no lease needs: never-launched ones fail, used or broken ones terminate,
    /// unused ones join the warm pool if it wants them and terminate otherwise. Then the warm
    /// pool is topped up to each flavour's `min_idle` (within its account's cap) and trimmed
    /// back to it. One replica at a time (an advisory lock), since both weigh the same counts.
    async fn settle_unneeded(&self) -> anyhow::Result<()> {
        let clouds = self.clouds().clone();
        let mut conn = self.conn().await?;
        conn.transaction::<_, anyhow::Error, _>(async |conn| {
            db::clouds::lock_warm_pool(conn).await?;
            let mut warm = db::clouds::warm_counts(conn).await?;
            let (mut never, mut terminate, mut keep) = (Vec::new(), Vec::new(), Vec::new());
            for row in db::clouds::unneeded(conn).await? {
                match (row.state, row.used || row.broken) {
                    (InstanceState::Requested, _) => never.push(row.id),
                    (_, true) => terminate.push(row.id),
                    (_, false) => {
                        let key = (row.account.clone(), row.region.clone(), row.flavour.clone(), row.market);
                        let wanted = clouds.min_idle(&row.account, &row.region, &row.flavour, row.market);
                        let have = warm.entry(key).or_default();
                        if *have < wanted {
                            *have += 1;
                            keep.push(row.id);
                        } else {
                            terminate.push(row.id);
                        }
                    }
                }
            }
            let why = "its lease no longer needed it before it was launched";
            db::clouds::end(conn, &never, InstanceState::Failed, why).await?;
            db::clouds::mark_terminating(conn, &terminate, "no lease needs it any more").await?;
            db::clouds::unbind(conn, &keep).await?;

            // The warm pool: what each flavour wants, within its account's room.
            let open = db::clouds::open_instances(conn).await?;
            let mut room: HashMap<String, i64> = clouds
                .accounts
                .iter()
                .map(|a| {
                    let running = open.iter().filter(|i| !i.imported && i.account == a.name).count() as i64;
                    (a.name.clone(), a.max_instances - running)
                })
                .collect();
            let unavailable = db::clouds::unavailable(conn).await?;
            let warm = db::clouds::warm_counts(conn).await?;
            let mut rows = Vec::new();
            let mut excess = Vec::new();
            for offer in clouds.offers() {
                let wanted = clouds.min_idle(&offer.account, &offer.region, &offer.flavour, offer.market);
                let key = (offer.account.clone(), offer.region.clone(), offer.flavour.clone(), offer.market);
                let have = warm.get(&key).copied().unwrap_or(0);
                if have > wanted {
                    excess.extend(db::clouds::warm_ready(conn, &key, have - wanted).await?);
                    continue;
                }
                let left = room.entry(offer.account.clone()).or_default();
                if unavailable.iter().any(|u| u.covers(&offer)) {
                    continue;
                }
                for _ in have..wanted.min(have + (*left).max(0)) {
                    rows.push(db::clouds::NewCloudInstance::requested(&offer, None, None));
                    *left -= 1;
                }
            }
            db::clouds::insert_instances(conn, &rows).await?;
            db::clouds::mark_terminating(conn, &excess, "the warm pool holds more than its min_idle").await?;
            Ok(())
        })
        .await
    }

    // ---- 6. terminate ----------------------------------------------------------------------

    async fn terminate(&self) -> anyhow::Result<usize> {
        let secs = self.clouds().attempt_timeout_secs as i64 + CLAIM_MARGIN_SECS;
        let claimed = {
            let mut conn = self.conn().await?;
            db::clouds::claim_terminating(&mut conn, secs).await?
        };
        let mut by_region: BTreeMap<(String, String), Vec<CloudInstance>> = BTreeMap::new();
        for row in claimed {
            by_region.entry((row.account.clone(), row.region.clone())).or_default().push(row);
        }
        let mut terminated = 0;
        for ((account, region), rows) in by_region {
            let ids: Vec<String> = rows.iter().filter_map(|r| r.provider_id.clone()).collect();
            let result = match self.state.clouds.get(&account, &region) {
                Some(provider) if !ids.is_empty() => {
                    paced(&self.state, &account, &region, "terminate", provider.terminate(&ids)).await
                }
                Some(_) => Ok(()),
                None => Err(CloudError::new(CloudErrorKind::Invalid, "configuration", "the account is not configured")),
            };
            match result {
                Ok(()) => {
                    let mut conn = self.conn().await?;
                    let revoked = retire(&mut conn, &rows, InstanceState::Terminated).await?;
                    self.state.agents.evict(&revoked);
                    terminated += rows.len();
                }
                // Left to be tried again once the claim lapses.
                Err(e) => tracing::warn!(%account, %region, "terminating {} instances failed: {e}", ids.len()),
            }
        }
        Ok(terminated)
    }

    // ---- 7. import -------------------------------------------------------------------------

    async fn import(&self) -> anyhow::Result<usize> {
        let secs = self.clouds().attempt_timeout_secs as i64 + CLAIM_MARGIN_SECS;
        let claimed = {
            let mut conn = self.conn().await?;
            db::clouds::claim_imports(&mut conn, secs).await?
        };
        let mut imported = 0;
        for import in claimed {
            let outcome = self.import_one(&import).await;
            let mut conn = self.conn().await?;
            match outcome {
                Ok(machines) => {
                    imported += machines.len();
                    let ids: Vec<Uuid> = machines.iter().map(|m| m.0).collect();
                    db::clouds::finish_import(&mut conn, import.id, &ids, None).await?;
                }
                Err(e) => {
                    db::clouds::finish_import(&mut conn, import.id, &[], Some(&format!("{e:#}"))).await?;
                }
            }
        }
        if imported > 0 {
            self.state.scheduler.wake();
        }
        Ok(imported)
    }

    async fn import_one(&self, import: &db::clouds::CloudImport) -> anyhow::Result<Vec<MachineId>> {
        let clouds = self.clouds().clone();
        let provider =
            self.state.clouds.get(&import.account, &import.region).with_context(|| {
                format!("account `{}` has no region `{}` configured", import.account, import.region)
            })?;
        let selector = match (&import.tag_key, &import.tag_value) {
            (Some(key), Some(value)) => Selector::Tag(key.clone(), value.clone()),
            _ => Selector::Ids(import.instance_ids.clone()),
        };
        let listed = paced(&self.state, &import.account, &import.region, "list", provider.list(&selector))
            .await
            .map_err(|e| anyhow::anyhow!("listing the servers: {e}"))?;
        let listed: Vec<Listed> = listed.into_iter().filter(|i| i.state.is_alive()).collect();
        if listed.is_empty() {
            anyhow::bail!("the cloud lists no running server that matches");
        }
        let (account, region) = clouds.region(&import.account, &import.region).context("region not configured")?;
        let mut conn = self.conn().await?;
        let actor = Actor::system("cloud import");
        conn.transaction::<_, anyhow::Error, _>(async |conn| {
            let mut machines = Vec::new();
            for server in &listed {
                if db::clouds::find_by_provider_id(conn, &account.name, &region.name, &server.id).await?.is_some() {
                    continue;
                }
                let flavour_name = server.flavour.clone().unwrap_or_default();
                let flavour = region.flavours.iter().find(|f| f.name == flavour_name).with_context(|| {
                    format!(
                        "server {} is of flavour `{flavour_name}`, which is not in the catalogue of {}/{}; \
                         add it so that its size and price are known",
                        server.id, account.name, region.name
                    )
                })?;
                let offer = clouds
                    .offers()
                    .into_iter()
                    .find(|o| o.account == account.name && o.region == region.name && o.flavour == flavour.name)
                    .context("the flavour's offer")?;
                let mut row = NewCloudInstance::requested(&offer, None, None);
                row.imported = true;
                row.state = InstanceState::Ready;
                row.provider_id = Some(server.id.clone());
                row.launched_at = Some(Utc::now());
                row.ready_at = Some(Utc::now());
                let id = row.id;
                db::clouds::insert_instances(conn, &[row]).await?;
                let stored = db::clouds::find_instance(conn, id).await?.context("the row just written")?;
                let machine = insert_machine(conn, &stored, Some(server)).await?;
                db::clouds::set_machine(conn, id, machine).await?;
                let user =
                    clouds.image(&account.name, &region.name, offer.arch).map_or("root", |i| i.ssh_user.as_str());
                if let Some(address) = server.address() {
                    db::machines::set_ssh_endpoint(conn, machine, address, 22, user).await?;
                }
                // Registered as onboarding, then into the pool the usual way (audited, announced).
                let onboarding = db::machines::lock(conn, machine).await?.context("the machine just written")?;
                let note = format!("{} server {} imported", account.provider, server.id);
                crate::db::audit::record(
                    conn,
                    &actor,
                    &[crate::db::audit::Change::new("machine.imported", "machine", machine)
                        .note(Some(&note))
                        .after(&crate::views::MachineView::from(onboarding.clone()))],
                )
                .await?;
                lifecycle::check_rented(onboarding.lifecycle, LifecycleState::Ready, Requester::Ops)?;
                let change = db::machines::LifecycleChange {
                    to: LifecycleState::Ready,
                    deadline: None,
                    maintenance_reason: None,
                    location: None,
                };
                let ready = db::machines::set_lifecycle(conn, &[machine], &change).await?;
                record_lifecycle_changes(conn, &actor, &[onboarding], &ready, Some(&note)).await?;
                machines.push(machine);
            }
            Ok(machines)
        })
        .await
    }
}

/// Gives each launching row one of the instances the cloud made, in order, each a machine of
/// the pool (onboarding until its agent beats). Rows left without one failed. Returns how many
/// instances found a row; the caller terminates the rest.
pub async fn adopt(
    conn: &mut AsyncPgConnection,
    clouds: &CloudsConfig,
    rows: &[CloudInstance],
    instance_ids: &[String],
) -> anyhow::Result<usize> {
    let deadline = Utc::now() + Duration::seconds(clouds.boot_timeout_secs as i64);
    // Resumed or adopted late, the launch's secret must last as long as its instances' boot.
    if let Some(launch) = rows.first().and_then(|r| r.launch_id) {
        db::clouds::keep_secret_until(conn, launch, deadline).await?;
    }
    for (row, provider_id) in rows.iter().zip(instance_ids) {
        let machine = insert_machine(conn, row, None).await?;
        db::clouds::set_booting(conn, row.id, provider_id, machine, deadline).await?;
    }
    if rows.len() > instance_ids.len() {
        let failed: Vec<Uuid> = rows[instance_ids.len()..].iter().map(|r| r.id).collect();
        db::clouds::end(conn, &failed, InstanceState::Failed, "the cloud started fewer instances than asked for")
            .await?;
    }
    Ok(rows.len().min(instance_ids.len()))
}

/// The machine a cloud instance is in the inventory: at its region's site, of its flavour's
/// size, onboarding until its agent reports (or ready, for an imported server).
async fn insert_machine(
    conn: &mut AsyncPgConnection,
    row: &CloudInstance,
    imported: Option<&Listed>,
) -> anyhow::Result<MachineId> {
    let site = db::sites::cloud_region(conn, row.provider, &row.region).await?;
    let cpu_model = format!("{} {}", row.provider, row.flavour);
    let hostname = imported.and_then(|i| i.name.clone());
    let labels = crate::domain::Labels::from([
        ("cloud".to_owned(), row.provider.to_string()),
        ("flavour".to_owned(), row.flavour.clone()),
    ]);
    let accelerators: Vec<Accelerator> = Vec::new();
    let deadline = match imported {
        Some(_) => None,
        None => row.deadline.or(Some(Utc::now() + Duration::hours(1))),
    };
    let machine = db::machines::NewMachine {
        id: MachineId::generate(),
        donation_id: None,
        donor_id: None,
        site_id: site.id,
        hostname: hostname.as_deref(),
        asset_tag: None,
        arch: row.arch,
        cpu_model: &cpu_model,
        cpu_cores: row.cores,
        memory_mib: row.memory_mib,
        disk_gib: row.disk_gib,
        accelerators: db::Json(&accelerators),
        labels: db::Json(&labels),
        ssh_host: None,
        ssh_port: None,
        ssh_user: None,
        warranty_until: None,
        lifecycle: LifecycleState::Onboarding,
        lifecycle_deadline: deadline,
    };
    Ok(db::machines::insert_many(conn, &[machine]).await?.remove(0).id)
}

/// Ends instances (terminated, or lost) and retires their machines, in one transaction.
/// Returns the agent credentials revoked.
pub async fn retire(
    conn: &mut AsyncPgConnection,
    rows: &[CloudInstance],
    state: InstanceState,
) -> anyhow::Result<Vec<TokenId>> {
    let actor = Actor::system("cloud worker");
    conn.transaction::<_, anyhow::Error, _>(async |conn| {
        let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
        let reason = rows.first().and_then(|r| r.end_reason.clone()).unwrap_or_else(|| state.to_string());
        db::clouds::end(conn, &ids, state, &reason).await?;
        let machines: Vec<MachineId> = rows.iter().filter_map(|r| r.machine_id).collect();
        let mut before = Vec::new();
        for id in &machines {
            if let Some(m) = db::machines::lock(conn, *id).await?
                && m.lifecycle != LifecycleState::Retired
            {
                before.push(m);
            }
        }
        let ids: Vec<MachineId> = before.iter().map(|m| m.id).collect();
        let change = db::machines::LifecycleChange {
            to: LifecycleState::Retired,
            deadline: None,
            maintenance_reason: None,
            location: None,
        };
        let after = db::machines::set_lifecycle(conn, &ids, &change).await?;
        before.sort_by_key(|m| m.id);
        let note = format!("its cloud instance is {state}");
        Ok(record_lifecycle_changes(conn, &actor, &before, &after, Some(&note)).await?)
    })
    .await
}

/// One cloud call other than a launch: paced by its region's `other_calls` bucket (shared by
/// every replica), bounded by the attempt time limit, and counted in `cloud_calls`.
pub async fn paced<T>(
    state: &AppState,
    account: &str,
    region: &str,
    operation: &str,
    call: impl std::future::Future<Output = Result<T, CloudError>>,
) -> Result<T, CloudError> {
    let clouds = &state.config.clouds;
    let unavailable = |e: &dyn std::fmt::Display| CloudError::new(CloudErrorKind::Transient, "database", e.to_string());
    if let Some((_, settings)) = clouds.region(account, region) {
        let bucket = settings.rate_limits.other_calls;
        loop {
            let mut conn = state.pool.get().await.map_err(|e| unavailable(&e))?;
            let wait = db::clouds::take_tokens(&mut conn, account, region, "other_calls", bucket, 1.0, Utc::now())
                .await
                .map_err(|e| unavailable(&e))?;
            drop(conn);
            if wait.is_zero() {
                break;
            }
            tokio::time::sleep(wait.to_std().unwrap_or_default().min(StdDuration::from_secs(5))).await;
        }
    }
    let limit = StdDuration::from_secs(clouds.attempt_timeout_secs);
    let result = match tokio::time::timeout(limit, call).await {
        Ok(result) => result,
        Err(_) => Err(CloudError::timed_out(operation, limit)),
    };
    if let Ok(mut conn) = state.pool.get().await {
        let _ = db::clouds::count_call(&mut conn, account, region, operation, outcome(&result)).await;
    }
    result
}

/// How a cloud call went, for `cloud_calls`.
pub fn outcome<T>(result: &Result<T, CloudError>) -> CallOutcome<'_> {
    match result {
        Ok(_) => CallOutcome::Ok,
        Err(e) => CallOutcome::Failed { throttled: e.kind == CloudErrorKind::Throttled, error: &e.message },
    }
}

/// For tests: one pass of the worker, now.
pub async fn pass_now(state: &AppState) -> anyhow::Result<PassReport> {
    Worker { state: state.clone(), digests: HashMap::new() }.pass().await
}
