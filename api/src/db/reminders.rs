//! Reminders before loans fall due and usage-right terms end.

use chrono::NaiveDate;
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::donations::Donation;
use super::schema::{donations, reminders_sent};
use crate::domain::{DonationModel, DonationStatus};

/// Donations in force whose end falls between `from` and `until`.
pub async fn ending_between(
    conn: &mut AsyncPgConnection,
    from: NaiveDate,
    until: NaiveDate,
) -> QueryResult<Vec<Donation>> {
    donations::table
        .filter(donations::status.eq_any([DonationStatus::Approved, DonationStatus::Paused]))
        .filter(donations::model.eq_any([DonationModel::Loan, DonationModel::UsageRight]))
        .filter(donations::ends_on.between(from, until))
        .select(Donation::as_select())
        .order(donations::id)
        .load(conn)
        .await
}

/// Records the reminder `days_before` the donation's end; false when it was already sent.
pub async fn mark_sent(
    conn: &mut AsyncPgConnection,
    donation: &Donation,
    ends_on: NaiveDate,
    days_before: i32,
) -> QueryResult<bool> {
    let inserted = diesel::insert_into(reminders_sent::table)
        .values((
            reminders_sent::donation_id.eq(donation.id),
            reminders_sent::ends_on.eq(ends_on),
            reminders_sent::days_before.eq(days_before),
        ))
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    Ok(inserted == 1)
}
