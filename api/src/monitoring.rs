//! What machines report and what it means: storing facts (and flagging contradictions),
//! changing health, quarantining. Shared by the agent endpoints and the background jobs; every
//! change here is audited and announced in the caller's transaction.

use diesel_async::AsyncPgConnection;
use serde_json::json;

use crate::db::audit::{self, Actor, Change};
use crate::db::events::{self, NewEvent};
use crate::db::machines::Machine;
use crate::db::{self, machine_status};
use crate::domain::facts::{self, Declared, Facts, Mismatch};
use crate::domain::health::raises_alarms;
use crate::domain::{EventType, Health, LifecycleState, MachineId};

/// Where facts came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FactsSource {
    Agent,
    Ssh,
}

impl FactsSource {
    fn as_str(self) -> &'static str {
        match self {
            FactsSource::Agent => "agent",
            FactsSource::Ssh => "ssh",
        }
    }
}

/// Stores a machine's facts and compares them with its declaration. A new contradiction is
/// audited and announced; the inventory itself is never overwritten.
pub async fn store_facts(
    conn: &mut AsyncPgConnection,
    machine: &Machine,
    facts: &Facts,
    source: FactsSource,
    hash: i64,
    actor: &Actor,
) -> diesel::QueryResult<Vec<Mismatch>> {
    let declared = Declared {
        arch: machine.arch,
        cpu_cores: machine.cpu_cores,
        memory_mib: machine.memory_mib,
        disk_gib: machine.disk_gib,
    };
    let mismatches = facts::compare(&declared, facts);
    let before = machine_status::lock(conn, machine.id).await?.map(|s| s.mismatches.0).unwrap_or_default();
    machine_status::record_facts(conn, machine.id, facts, source.as_str(), hash, &mismatches).await?;
    if mismatches != before {
        let change = Change::new("machine.facts_mismatch", "machine", machine.id)
            .donor(machine.donor_id)
            .note(Some(&format!("facts reported by {}", source.as_str())))
            .before(&json!({ "mismatches": before }))
            .after(&json!({ "mismatches": mismatches, "facts": facts }));
        audit::record(conn, actor, &[change]).await?;
        if !mismatches.is_empty() {
            let event = machine_event(
                EventType::MachineFactsMismatch,
                machine,
                json!({ "mismatches": mismatches, "facts": facts }),
            );
            events::emit(conn, &[event]).await?;
        }
    }
    Ok(mismatches)
}

/// Moves a machine's health from `from` to `to` (if nobody changed it meanwhile), audits it,
/// and raises an alarm event unless the machine is away on purpose. Returns whether it changed.
pub async fn change_health(
    conn: &mut AsyncPgConnection,
    id: MachineId,
    from: Health,
    to: Health,
    reason: &str,
    actor: &Actor,
) -> diesel::QueryResult<bool> {
    let Some(machine) = machine_status::set_health(conn, id, from, to, reason).await? else {
        return Ok(false);
    };
    let change = Change::new("machine.health_changed", "machine", id)
        .donor(machine.donor_id)
        .note(Some(reason))
        .before(&json!({ "health": from }))
        .after(&json!({ "health": to, "health_reason": reason }));
    audit::record(conn, actor, &[change]).await?;
    if to == Health::Unreachable && from != Health::Unreachable {
        // Placement trusts machines that seldom go silent.
        machine_status::count_unreachable_episode(conn, id).await?;
    }
    let event = match (from, to) {
        (Health::Unreachable, Health::Unreachable) => None,
        (_, Health::Unreachable) => Some(EventType::MachineUnreachable),
        (Health::Unreachable, Health::Healthy | Health::Degraded) => Some(EventType::MachineBackOnline),
        _ => None,
    };
    if let Some(event) = event.filter(|_| raises_alarms(machine.lifecycle)) {
        let data = json!({ "health": to, "previous_health": from, "reason": reason });
        events::emit(conn, &[machine_event(event, &machine, data)]).await?;
    }
    Ok(true)
}

/// Takes a machine out of use until ops look at it; audited and announced. Does nothing if
/// it is already quarantined.
pub async fn quarantine(
    conn: &mut AsyncPgConnection,
    id: MachineId,
    reason: &str,
    actor: &Actor,
) -> diesel::QueryResult<Option<Machine>> {
    let Some(current) = db::machines::lock(conn, id).await? else { return Ok(None) };
    if current.quarantined_at.is_some() {
        return Ok(None);
    }
    let machine = machine_status::set_quarantine(conn, id, Some(reason)).await?;
    let change = Change::new("machine.quarantined", "machine", id)
        .donor(machine.donor_id)
        .note(Some(reason))
        .before(&json!({ "quarantine": null }))
        .after(&json!({ "quarantine": { "since": machine.quarantined_at, "reason": reason } }));
    audit::record(conn, actor, &[change]).await?;
    events::emit(conn, &[machine_event(EventType::MachineQuarantined, &machine, json!({ "reason": reason }))]).await?;
    Ok(Some(machine))
}

/// An event about a machine; `extra` is merged into the common fields.
pub fn machine_event(event_type: EventType, machine: &Machine, extra: serde_json::Value) -> NewEvent {
    let mut data = json!({
        "machine_id": machine.id,
        "donor_id": machine.donor_id,
        "site_id": machine.site_id,
        "asset_tag": machine.asset_tag,
        "hostname": machine.hostname,
        "arch": machine.arch,
        "lifecycle": machine.lifecycle,
        "health": machine.health,
    });
    if let (Some(data), Some(extra)) = (data.as_object_mut(), extra.as_object()) {
        data.extend(extra.clone());
    }
    NewEvent { event_type, subject: format!("machines/{}", machine.id), donor_id: machine.donor_id, data }
}

/// Whether machines in this state are announced as ready when they get there.
pub fn announces_ready(to: LifecycleState) -> bool {
    to == LifecycleState::Ready
}
