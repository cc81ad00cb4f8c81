//! Reminders 30, 7 and 1 days before a loan falls due or a usage-right term ends, each sent
//! once per due date (a moved due date gets its own reminders).

use chrono::{Duration, NaiveDate};
use diesel_async::AsyncConnection;
use serde::Serialize;
use serde_json::json;

use crate::db::events::{self, NewEvent};
use crate::db::{self, reminders};
use crate::domain::events::{REMINDER_DAYS, reminder_due};
use crate::domain::{DonationModel, EventType};
use crate::state::AppState;

#[derive(Debug, Serialize)]
pub struct ReminderReport {
    pub sent: usize,
}

/// Sends the reminders due on `today`.
pub async fn send(state: &AppState, today: NaiveDate) -> anyhow::Result<ReminderReport> {
    let horizon = today + Duration::days(REMINDER_DAYS[0]);
    let mut conn = state.pool.get().await?;
    let due = db::reminders::ending_between(&mut conn, today, horizon).await?;
    let mut sent = 0;
    for donation in due {
        let Some(ends_on) = donation.ends_on else { continue };
        let days_left = (ends_on - today).num_days();
        let Some(days_before) = reminder_due(days_left) else { continue };
        let event_type = match donation.model {
            DonationModel::Loan => EventType::LoanDueSoon,
            _ => EventType::AgreementEndingSoon,
        };
        let newly_sent = conn
            .transaction::<_, diesel::result::Error, _>(async |conn| {
                if !reminders::mark_sent(conn, &donation, ends_on, days_before as i32).await? {
                    return Ok(false);
                }
                let event = NewEvent {
                    event_type,
                    subject: format!("donations/{}", donation.id),
                    donor_id: Some(donation.donor_id),
                    data: json!({
                        "donation_id": donation.id,
                        "donor_id": donation.donor_id,
                        "model": donation.model,
                        "agreement_ref": donation.agreement_ref,
                        "ends_on": ends_on,
                        "days_left": days_left,
                        "reminder": format!("{days_before} day{}", if days_before == 1 { "" } else { "s" }),
                    }),
                };
                events::emit(conn, &[event]).await?;
                Ok(true)
            })
            .await?;
        sent += usize::from(newly_sent);
    }
    Ok(ReminderReport { sent })
}
