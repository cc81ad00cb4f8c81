//! Donor organisations.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::schema::donors;
use super::{Json, Page};
use crate::domain::{Contact, DonorId, DonorKind};

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = donors, check_for_backend(diesel::pg::Pg))]
pub struct Donor {
    pub id: DonorId,
    pub name: String,
    pub kind: DonorKind,
    pub website: Option<String>,
    pub time_zone: String,
    pub contacts: Json<Vec<Contact>>,
    pub notes: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = donors)]
pub struct NewDonor<'a> {
    pub id: DonorId,
    pub name: &'a str,
    pub kind: DonorKind,
    pub website: Option<&'a str>,
    pub time_zone: &'a str,
    pub contacts: Json<&'a [Contact]>,
    pub notes: Option<&'a str>,
}

/// A partial update: `None` leaves a column alone, `Some(None)` clears it.
#[derive(Debug, Default, AsChangeset)]
#[diesel(table_name = donors)]
pub struct DonorChanges {
    pub name: Option<String>,
    pub kind: Option<DonorKind>,
    pub website: Option<Option<String>>,
    pub time_zone: Option<String>,
    pub contacts: Option<Json<Vec<Contact>>>,
    pub notes: Option<Option<String>>,
}

pub const NAME_KEY: &str = "donors_name_key";

pub async fn insert(conn: &mut AsyncPgConnection, donor: &NewDonor<'_>) -> QueryResult<Donor> {
    diesel::insert_into(donors::table).values(donor).returning(Donor::as_returning()).get_result(conn).await
}

pub async fn find(conn: &mut AsyncPgConnection, id: DonorId) -> QueryResult<Option<Donor>> {
    donors::table.find(id).select(Donor::as_select()).first(conn).await.optional()
}

/// The names of these donors.
pub async fn names(conn: &mut AsyncPgConnection, ids: &[DonorId]) -> QueryResult<HashMap<DonorId, String>> {
    let rows: Vec<(DonorId, String)> =
        donors::table.filter(donors::id.eq_any(ids)).select((donors::id, donors::name)).load(conn).await?;
    Ok(rows.into_iter().collect())
}

/// Donors in creation order; `only` restricts the list to one donor.
pub async fn list(conn: &mut AsyncPgConnection, only: Option<DonorId>, page: Page<DonorId>) -> QueryResult<Vec<Donor>> {
    let mut query = donors::table.select(Donor::as_select()).into_boxed();
    if let Some(only) = only {
        query = query.filter(donors::id.eq(only));
    }
    if let Some(after) = page.after {
        query = query.filter(donors::id.gt(after));
    }
    query.order(donors::id).limit(page.fetch_limit()).load(conn).await
}

pub async fn update(conn: &mut AsyncPgConnection, id: DonorId, changes: &DonorChanges) -> QueryResult<Donor> {
    diesel::update(donors::table.find(id))
        .set((changes, donors::updated_at.eq(diesel::dsl::now)))
        .returning(Donor::as_returning())
        .get_result(conn)
        .await
}
