//! Sites: the foundation's lab(s), donors' premises, cloud regions.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::Page;
use super::schema::sites;
use crate::domain::{CloudProvider, DonorId, SiteId, SiteKind};

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = sites, check_for_backend(diesel::pg::Pg))]
pub struct Site {
    pub id: SiteId,
    pub name: String,
    pub kind: SiteKind,
    pub donor_id: Option<DonorId>,
    pub cloud_provider: Option<CloudProvider>,
    pub cloud_region: Option<String>,
    pub address: Option<String>,
    pub country: Option<String>,
    pub time_zone: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = sites)]
pub struct NewSite<'a> {
    pub id: SiteId,
    pub name: &'a str,
    pub kind: SiteKind,
    pub donor_id: Option<DonorId>,
    pub cloud_provider: Option<CloudProvider>,
    pub cloud_region: Option<&'a str>,
    pub address: Option<&'a str>,
    pub country: Option<&'a str>,
    pub time_zone: &'a str,
}

/// A partial update: `None` leaves a column alone, `Some(None)` clears it.
#[derive(Debug, Default, AsChangeset)]
#[diesel(table_name = sites)]
pub struct SiteChanges {
    pub name: Option<String>,
    pub address: Option<Option<String>>,
    pub country: Option<Option<String>>,
    pub time_zone: Option<String>,
}

pub const NAME_KEY: &str = "sites_name_key";

/// Which sites a caller may see.
#[derive(Debug, Clone, Copy)]
pub enum Visibility {
    All,
    /// The lab and cloud regions, and this donor's own sites.
    SharedAndDonor(DonorId),
}

pub async fn insert(conn: &mut AsyncPgConnection, site: &NewSite<'_>) -> QueryResult<Site> {
    diesel::insert_into(sites::table).values(site).returning(Site::as_returning()).get_result(conn).await
}

/// The oldest site of a kind (the demo's foundation lab, say).
pub async fn first_of_kind(conn: &mut AsyncPgConnection, kind: SiteKind) -> QueryResult<Option<Site>> {
    sites::table.filter(sites::kind.eq(kind)).order(sites::id).select(Site::as_select()).first(conn).await.optional()
}

pub async fn find(conn: &mut AsyncPgConnection, id: SiteId) -> QueryResult<Option<Site>> {
    sites::table.find(id).select(Site::as_select()).first(conn).await.optional()
}

pub async fn list(
    conn: &mut AsyncPgConnection,
    visibility: Visibility,
    kind: Option<SiteKind>,
    page: Page<SiteId>,
) -> QueryResult<Vec<Site>> {
    let mut query = sites::table.select(Site::as_select()).into_boxed();
    if let Visibility::SharedAndDonor(donor) = visibility {
        query = query.filter(sites::kind.ne(SiteKind::DonorSite).or(sites::donor_id.eq(donor)));
    }
    if let Some(kind) = kind {
        query = query.filter(sites::kind.eq(kind));
    }
    if let Some(after) = page.after {
        query = query.filter(sites::id.gt(after));
    }
    query.order(sites::id).limit(page.fetch_limit()).load(conn).await
}

pub async fn update(conn: &mut AsyncPgConnection, id: SiteId, changes: &SiteChanges) -> QueryResult<Site> {
    diesel::update(sites::table.find(id))
        .set((changes, sites::updated_at.eq(diesel::dsl::now)))
        .returning(Site::as_returning())
        .get_result(conn)
        .await
}

/// The site of a cloud region, made the first time an instance lands there.
pub async fn cloud_region(conn: &mut AsyncPgConnection, provider: CloudProvider, region: &str) -> QueryResult<Site> {
    let existing = || {
        sites::table
            .filter(sites::kind.eq(SiteKind::CloudRegion))
            .filter(sites::cloud_provider.eq(provider))
            .filter(sites::cloud_region.eq(region.to_owned()))
            .order(sites::id)
            .select(Site::as_select())
    };
    if let Some(site) = existing().first(conn).await.optional()? {
        return Ok(site);
    }
    // The plain name, or (when another site took it) one that says what it is.
    for name in [format!("{provider} {region}"), format!("{provider} {region} (cloud region)")] {
        diesel::insert_into(sites::table)
            .values(&NewSite {
                id: SiteId::generate(),
                name: &name,
                kind: SiteKind::CloudRegion,
                donor_id: None,
                cloud_provider: Some(provider),
                cloud_region: Some(region),
                address: None,
                country: None,
                time_zone: "UTC",
            })
            .on_conflict_do_nothing()
            .execute(conn)
            .await?;
        if let Some(site) = existing().first(conn).await.optional()? {
            return Ok(site);
        }
    }
    existing().first(conn).await
}
