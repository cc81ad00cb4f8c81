//! Machines changing lifecycle, and agents being cut off: what follows each, wherever the
//! change comes from (ops, a donation action, the cloud worker).

use diesel::QueryResult;
use diesel_async::AsyncPgConnection;
use serde::Serialize;
use utoipa::ToSchema;

use crate::db::audit::{self, Actor, Change};
use crate::db::machines::Machine;
use crate::db::{self};
use crate::domain::{EventType, LifecycleState, MachineId, TokenId, lifecycle};
use crate::monitoring;
use crate::views::MachineView;

/// Everything that follows machines changing lifecycle, `before[i]` becoming `after[i]`: the
/// audit entries, a `machine.ready` event for each that entered the pool, an SSH probe request
/// for each that started onboarding (so its facts are checked against its declaration), and
/// for each that left for good, its agent cut off. Returns the agent credentials revoked, for
/// the caller to forget once the transaction has committed.
pub async fn record_lifecycle_changes(
    conn: &mut AsyncPgConnection,
    actor: &Actor,
    before: &[Machine],
    after: &[Machine],
    note: Option<&str>,
) -> QueryResult<Vec<TokenId>> {
    let changes: Vec<Change> = before
        .iter()
        .zip(after)
        .map(|(old, new)| {
            Change::new("machine.lifecycle_changed", "machine", new.id)
                .donor(new.donor_id)
                .note(note)
                .before(&MachineView::from(old.clone()))
                .after(&MachineView::from(new.clone()))
        })
        .collect();
    audit::record(conn, actor, &changes).await?;
    let ready: Vec<_> = after
        .iter()
        .filter(|m| monitoring::announces_ready(m.lifecycle))
        .map(|m| monitoring::machine_event(EventType::MachineReady, m, serde_json::json!({ "note": note })))
        .collect();
    db::events::emit(conn, &ready).await?;
    for machine in after.iter().filter(|m| m.lifecycle == LifecycleState::Onboarding && m.ssh_host.is_some()) {
        db::machine_status::request_probe(conn, machine.id).await?;
    }
    let mut revoked = Vec::new();
    for machine in after.iter().filter(|m| lifecycle::is_terminal(m.lifecycle)) {
        revoked.extend(cut_off_agent(conn, machine.id).await?.credentials);
    }
    Ok(revoked)
}

/// What cutting off a machine's agent revoked.
#[derive(Debug, Serialize, ToSchema)]
pub struct AgentCutOff {
    /// Machine credentials revoked (the running agent's, and any still in their renewal grace).
    #[serde(skip)]
    pub credentials: Vec<TokenId>,
    pub credentials_revoked: usize,
    /// Unused enrollment tokens revoked.
    pub enrollment_tokens_revoked: usize,
}

/// Revokes, now, the machine's agent credentials and unused enrollment tokens.
pub async fn cut_off_agent(conn: &mut AsyncPgConnection, machine: MachineId) -> QueryResult<AgentCutOff> {
    let credentials = db::enrollment::revoke_agent_credentials(conn, machine).await?;
    let enrollment_tokens_revoked = db::enrollment::revoke_open_tokens(conn, machine).await?;
    Ok(AgentCutOff { credentials_revoked: credentials.len(), credentials, enrollment_tokens_revoked })
}
