//! Sites as callers see and change them (the API's handlers and the web pages alike): the
//! foundation's labs, donors' premises and cloud regions. A donor registers and changes only its
//! own premises and sees the shared sites besides.

use chrono::{DateTime, Utc};
use diesel_async::AsyncConnection;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::paging::{page, page_type, paginate};
use crate::auth::{DonorScope, Principal};
use crate::db::audit::{self, Change};
use crate::db::sites::{NewSite, Site, SiteChanges, Visibility};
use crate::db::{self, is_unique_violation};
use crate::domain::validation::{check_optional_text, check_text, check_time_zone, double_option};
use crate::domain::{CloudProvider, DonorId, FieldErrors, Problem, SiteId, SiteKind};
use crate::error::ApiError;
use crate::error_code::ErrorCode;
use crate::state::AppState;

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SiteView {
    pub id: SiteId,
    pub name: String,
    pub kind: SiteKind,
    /// The donor whose premises this is (`donor_site` only).
    pub donor_id: Option<DonorId>,
    /// `cloud_region` only.
    pub cloud_provider: Option<CloudProvider>,
    /// The provider's region code, e.g. `cn-north-4` (`cloud_region` only).
    pub cloud_region: Option<String>,
    pub address: Option<String>,
    /// ISO 3166-1 alpha-2 code.
    pub country: Option<String>,
    pub time_zone: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<Site> for SiteView {
    fn from(s: Site) -> Self {
        Self {
            id: s.id,
            name: s.name,
            kind: s.kind,
            donor_id: s.donor_id,
            cloud_provider: s.cloud_provider,
            cloud_region: s.cloud_region,
            address: s.address,
            country: s.country,
            time_zone: s.time_zone,
            created_at: s.created_at,
            updated_at: s.updated_at,
        }
    }
}

page_type!(SitePage, SiteView);

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSiteRequest {
    #[schema(
        pattern = r"^[^\x00-\x08\x0b-\x1f\x7f-\x9f]*[^\s\x00-\x08\x0b-\x1f\x7f-\x9f][^\x00-\x08\x0b-\x1f\x7f-\x9f]*$",
        max_length = 200
    )]
    pub name: String,
    /// A donor may only register `donor_site`s, for itself.
    pub kind: SiteKind,
    /// Required for a `donor_site` registered by ops.
    #[serde(default)]
    pub donor_id: Option<DonorId>,
    /// Required for a `cloud_region`.
    #[serde(default)]
    pub cloud_provider: Option<CloudProvider>,
    /// Required for a `cloud_region`.
    #[serde(default)]
    #[schema(
        pattern = r"^[^\x00-\x08\x0b-\x1f\x7f-\x9f]*[^\s\x00-\x08\x0b-\x1f\x7f-\x9f][^\x00-\x08\x0b-\x1f\x7f-\x9f]*$",
        max_length = 64
    )]
    pub cloud_region: Option<String>,
    #[serde(default)]
    #[schema(
        pattern = r"^[^\x00-\x08\x0b-\x1f\x7f-\x9f]*[^\s\x00-\x08\x0b-\x1f\x7f-\x9f][^\x00-\x08\x0b-\x1f\x7f-\x9f]*$",
        max_length = 1000
    )]
    pub address: Option<String>,
    #[serde(default)]
    pub country: Option<String>,
    #[schema(example = "Asia/Shanghai")]
    pub time_zone: String,
}

/// Changes to a site; absent fields stay, `null` clears an optional one.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SitePatch {
    #[schema(
        pattern = r"^[^\x00-\x08\x0b-\x1f\x7f-\x9f]*[^\s\x00-\x08\x0b-\x1f\x7f-\x9f][^\x00-\x08\x0b-\x1f\x7f-\x9f]*$",
        max_length = 200
    )]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, pattern = r"^[^\x00-\x08\x0b-\x1f\x7f-\x9f]*[^\s\x00-\x08\x0b-\x1f\x7f-\x9f][^\x00-\x08\x0b-\x1f\x7f-\x9f]*$", max_length = 1000)]
    pub address: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub country: Option<Option<String>>,
    pub time_zone: Option<String>,
}

fn check_country(errors: &mut FieldErrors, country: Option<&str>) {
    if let Some(country) = country
        && !(country.len() == 2 && country.chars().all(|c| c.is_ascii_uppercase()))
    {
        errors.add("country", Problem::NotACountry);
    }
}

fn check_zone(errors: &mut FieldErrors, zone: &str) {
    if let Err(problem) = check_time_zone(zone) {
        errors.add("time_zone", problem);
    }
}

fn name_taken(error: diesel::result::Error) -> ApiError {
    if is_unique_violation(&error, db::sites::NAME_KEY) {
        ApiError::conflict(ErrorCode::SiteNameTaken, "name: a site with this name already exists")
    } else {
        error.into()
    }
}

fn visibility(scope: DonorScope) -> Visibility {
    match scope {
        DonorScope::All => Visibility::All,
        DonorScope::Own(donor) => Visibility::SharedAndDonor(donor),
    }
}

fn visible(site: &Site, scope: DonorScope) -> bool {
    site.kind != SiteKind::DonorSite || site.donor_id.is_some_and(|donor| scope.covers(Some(donor)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SiteListQuery {
    pub kind: Option<SiteKind>,
    pub cursor: Option<String>,
    /// 1 to 200, default 50.
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
}

/// Register a site. Ops register any kind; a donor registers its own premises.
pub async fn create_site(
    state: &AppState,
    caller: &Principal,
    mut request: NewSiteRequest,
) -> Result<SiteView, ApiError> {
    let scope = caller.admin_or_donor()?;
    let mut errors = FieldErrors::new();
    check_text(&mut errors, "name", &request.name, 200);
    check_optional_text(&mut errors, "address", request.address.as_deref(), 1000);
    check_country(&mut errors, request.country.as_deref());
    check_zone(&mut errors, &request.time_zone);
    if let DonorScope::Own(own) = scope {
        if request.kind != SiteKind::DonorSite {
            errors.add("kind", Problem::DonorSiteOnly);
        }
        match request.donor_id {
            Some(asked) if asked != own => errors.add("donor_id", Problem::OwnDonorOnly),
            _ => request.donor_id = Some(own),
        }
    }
    match request.kind {
        SiteKind::DonorSite if request.donor_id.is_none() => {
            errors.add("donor_id", Problem::RequiredForKind { kind: "donor_site".into() })
        }
        SiteKind::DonorSite | SiteKind::FoundationLab => {
            if request.kind == SiteKind::FoundationLab && request.donor_id.is_some() {
                errors.add("donor_id", Problem::DonorSiteHasDonor);
            }
            if request.cloud_provider.is_some() {
                errors.add("cloud_provider", Problem::CloudRegionOnly);
            }
            if request.cloud_region.is_some() {
                errors.add("cloud_region", Problem::CloudRegionOnly);
            }
        }
        SiteKind::CloudRegion => {
            if request.donor_id.is_some() {
                errors.add("donor_id", Problem::DonorSiteHasDonor);
            }
            if request.cloud_provider.is_none() {
                errors.add("cloud_provider", Problem::RequiredForKind { kind: "cloud_region".into() });
            }
            match &request.cloud_region {
                None => errors.add("cloud_region", Problem::RequiredForKind { kind: "cloud_region".into() }),
                Some(region) => check_text(&mut errors, "cloud_region", region, 64),
            }
        }
    }
    errors.into_result()?;

    let actor = caller.actor();
    let mut conn = state.db().await?;
    let view = conn
        .transaction::<_, ApiError, _>(async move |conn| {
            if let Some(donor_id) = request.donor_id
                && db::donors::find(conn, donor_id).await?.is_none()
            {
                return Err(ApiError::invalid_field("donor_id", Problem::NoSuchDonor));
            }
            let new = NewSite {
                id: SiteId::generate(),
                name: request.name.trim(),
                kind: request.kind,
                donor_id: request.donor_id,
                cloud_provider: request.cloud_provider,
                cloud_region: request.cloud_region.as_deref(),
                address: request.address.as_deref(),
                country: request.country.as_deref(),
                time_zone: &request.time_zone,
            };
            let site = SiteView::from(db::sites::insert(conn, &new).await.map_err(name_taken)?);
            audit::record(
                conn,
                &actor,
                &[Change::new("site.created", "site", site.id).donor(site.donor_id).after(&site)],
            )
            .await?;
            Ok(site)
        })
        .await?;
    Ok(view)
}

/// The sites the caller may see: a donor sees the foundation's labs, cloud regions and its
/// own premises.
pub async fn list_sites(state: &AppState, caller: &Principal, query: SiteListQuery) -> Result<SitePage, ApiError> {
    let scope = caller.inventory_reader()?;
    let page = page(query.cursor.as_deref(), query.limit)?;
    let mut conn = state.db().await?;
    let rows = db::sites::list(&mut conn, visibility(scope), query.kind, page).await?;
    let (rows, next_cursor) = paginate(rows, &page, |s| s.id);
    Ok(SitePage { items: rows.into_iter().map(SiteView::from).collect(), next_cursor })
}

/// One site, if the caller may see it.
pub async fn get_site(state: &AppState, caller: &Principal, id: SiteId) -> Result<SiteView, ApiError> {
    let scope = caller.inventory_reader()?;
    let mut conn = state.db().await?;
    let site = db::sites::find(&mut conn, id)
        .await?
        .filter(|s| visible(s, scope))
        .ok_or_else(|| ApiError::not_found(ErrorCode::SiteNotFound))?;
    Ok(site.into())
}

/// Change a site's name, address or time zone. Ops, or the donor whose premises it is.
pub async fn update_site(
    state: &AppState,
    caller: &Principal,
    id: SiteId,
    patch: SitePatch,
) -> Result<SiteView, ApiError> {
    let scope = caller.admin_or_donor()?;
    let mut errors = FieldErrors::new();
    if let Some(name) = &patch.name {
        check_text(&mut errors, "name", name, 200);
    }
    if let Some(address) = &patch.address {
        check_optional_text(&mut errors, "address", address.as_deref(), 1000);
    }
    if let Some(country) = &patch.country {
        check_country(&mut errors, country.as_deref());
    }
    if let Some(zone) = &patch.time_zone {
        check_zone(&mut errors, zone);
    }
    errors.into_result()?;

    let actor = caller.actor();
    let mut conn = state.db().await?;
    let view = conn
        .transaction::<_, ApiError, _>(async move |conn| {
            let before = db::sites::find(conn, id)
                .await?
                .filter(|s| visible(s, scope))
                .ok_or_else(|| ApiError::not_found(ErrorCode::SiteNotFound))?;
            if scope != DonorScope::All && before.kind != SiteKind::DonorSite {
                return Err(ApiError::forbidden("only ops change the foundation's labs and cloud regions"));
            }
            let changes = SiteChanges {
                name: patch.name.map(|n| n.trim().to_owned()),
                address: patch.address,
                country: patch.country,
                time_zone: patch.time_zone,
            };
            let after = SiteView::from(db::sites::update(conn, before.id, &changes).await.map_err(name_taken)?);
            audit::record(
                conn,
                &actor,
                &[Change::new("site.updated", "site", after.id)
                    .donor(after.donor_id)
                    .before(&SiteView::from(before))
                    .after(&after)],
            )
            .await?;
            Ok(after)
        })
        .await?;
    Ok(view)
}
