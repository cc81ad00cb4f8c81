//! Donations (agreements).

use chrono::{DateTime, NaiveDate, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::schema::donations;
use super::{Json, Page};
use crate::domain::{DonationId, DonationModel, DonationStatus, DonorId, SiteId, UsagePolicy, UserId};

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = donations, check_for_backend(diesel::pg::Pg))]
pub struct Donation {
    pub id: DonationId,
    pub donor_id: DonorId,
    pub site_id: SiteId,
    pub model: DonationModel,
    pub status: DonationStatus,
    pub agreement_ref: String,
    pub description: Option<String>,
    pub starts_on: NaiveDate,
    pub ends_on: Option<NaiveDate>,
    pub usage_policy: Option<Json<UsagePolicy>>,
    pub review_note: Option<String>,
    pub reviewed_by: Option<UserId>,
    pub reviewed_at: Option<DateTime<Utc>>,
    pub submitted_by: Option<UserId>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = donations)]
pub struct NewDonation<'a> {
    pub id: DonationId,
    pub donor_id: DonorId,
    pub site_id: SiteId,
    pub model: DonationModel,
    pub status: DonationStatus,
    pub agreement_ref: &'a str,
    pub description: Option<&'a str>,
    pub starts_on: NaiveDate,
    pub ends_on: Option<NaiveDate>,
    pub usage_policy: Option<Json<&'a UsagePolicy>>,
    pub submitted_by: Option<UserId>,
}

/// Keeps agreement references unique per donor, regardless of case.
pub const AGREEMENT_REF_KEY: &str = "donations_agreement_ref_key";

#[derive(Debug, Clone, Default)]
pub struct DonationFilter {
    pub donor_id: Option<DonorId>,
    pub status: Option<DonationStatus>,
    pub model: Option<DonationModel>,
}

pub async fn insert(conn: &mut AsyncPgConnection, donation: &NewDonation<'_>) -> QueryResult<Donation> {
    diesel::insert_into(donations::table).values(donation).returning(Donation::as_returning()).get_result(conn).await
}

pub async fn find(conn: &mut AsyncPgConnection, id: DonationId) -> QueryResult<Option<Donation>> {
    donations::table.find(id).select(Donation::as_select()).first(conn).await.optional()
}

/// Reads and locks the donation until the transaction ends.
pub async fn lock(conn: &mut AsyncPgConnection, id: DonationId) -> QueryResult<Option<Donation>> {
    donations::table.find(id).select(Donation::as_select()).for_update().first(conn).await.optional()
}

pub async fn list(
    conn: &mut AsyncPgConnection,
    filter: &DonationFilter,
    page: Page<DonationId>,
) -> QueryResult<Vec<Donation>> {
    let mut query = donations::table.select(Donation::as_select()).into_boxed();
    if let Some(donor_id) = filter.donor_id {
        query = query.filter(donations::donor_id.eq(donor_id));
    }
    if let Some(status) = filter.status {
        query = query.filter(donations::status.eq(status));
    }
    if let Some(model) = filter.model {
        query = query.filter(donations::model.eq(model));
    }
    if let Some(after) = page.after {
        query = query.filter(donations::id.gt(after));
    }
    query.order(donations::id).limit(page.fetch_limit()).load(conn).await
}

/// Sets the status; a review (approve or reject) also records who reviewed and why.
pub async fn set_status(
    conn: &mut AsyncPgConnection,
    id: DonationId,
    status: DonationStatus,
    review: Option<(UserId, Option<&str>)>,
) -> QueryResult<Donation> {
    let target = donations::table.find(id);
    let now = diesel::dsl::now;
    match review {
        Some((reviewer, note)) => {
            diesel::update(target)
                .set((
                    donations::status.eq(status),
                    donations::reviewed_by.eq(reviewer),
                    donations::reviewed_at.eq(now),
                    donations::review_note.eq(note),
                    donations::updated_at.eq(now),
                ))
                .returning(Donation::as_returning())
                .get_result(conn)
                .await
        }
        None => {
            diesel::update(target)
                .set((donations::status.eq(status), donations::updated_at.eq(now)))
                .returning(Donation::as_returning())
                .get_result(conn)
                .await
        }
    }
}

pub async fn set_usage_policy(
    conn: &mut AsyncPgConnection,
    id: DonationId,
    policy: &UsagePolicy,
) -> QueryResult<Donation> {
    diesel::update(donations::table.find(id))
        .set((donations::usage_policy.eq(Json(policy)), donations::updated_at.eq(diesel::dsl::now)))
        .returning(Donation::as_returning())
        .get_result(conn)
        .await
}
