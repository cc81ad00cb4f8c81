//! Donor organisations and their contacts.

use actix_web::{HttpResponse, get, patch, post, web};
use chrono::{DateTime, Utc};
use diesel_async::AsyncConnection;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{PageQuery, page, page_type, paginate};
use crate::auth::Principal;
use crate::db::audit::{self, Change};
use crate::db::donors::{Donor, DonorChanges, NewDonor};
use crate::db::{self, Json as DbJson, is_unique_violation};
use crate::domain::validation::{check_optional_text, check_text, check_time_zone, double_option};
use crate::domain::{Contact, DonorId, DonorKind, FieldErrors, Problem};
use crate::error::{ApiError, ErrorBody};
use crate::error_code::ErrorCode;
use crate::extract::{Json, Query};
use crate::state::AppState;

const MAX_CONTACTS: usize = 20;

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DonorView {
    pub id: DonorId,
    pub name: String,
    pub kind: DonorKind,
    pub website: Option<String>,
    /// IANA time zone; the default for its usage policies' windows.
    pub time_zone: String,
    pub contacts: Vec<Contact>,
    pub notes: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<Donor> for DonorView {
    fn from(d: Donor) -> Self {
        Self {
            id: d.id,
            name: d.name,
            kind: d.kind,
            website: d.website,
            time_zone: d.time_zone,
            contacts: d.contacts.0,
            notes: d.notes,
            created_at: d.created_at,
            updated_at: d.updated_at,
        }
    }
}

page_type!(DonorPage, DonorView);

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDonorRequest {
    #[schema(
        pattern = r"^[^\x00-\x08\x0b-\x1f\x7f-\x9f]*[^\s\x00-\x08\x0b-\x1f\x7f-\x9f][^\x00-\x08\x0b-\x1f\x7f-\x9f]*$",
        max_length = 200
    )]
    pub name: String,
    pub kind: DonorKind,
    #[serde(default)]
    pub website: Option<String>,
    #[schema(example = "Asia/Shanghai")]
    pub time_zone: String,
    #[serde(default)]
    pub contacts: Vec<Contact>,
    #[serde(default)]
    #[schema(
        pattern = r"^[^\x00-\x08\x0b-\x1f\x7f-\x9f]*[^\s\x00-\x08\x0b-\x1f\x7f-\x9f][^\x00-\x08\x0b-\x1f\x7f-\x9f]*$",
        max_length = 4000
    )]
    pub notes: Option<String>,
}

/// Changes to a donor; absent fields stay as they are, `null` clears an optional one.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DonorPatch {
    #[schema(
        pattern = r"^[^\x00-\x08\x0b-\x1f\x7f-\x9f]*[^\s\x00-\x08\x0b-\x1f\x7f-\x9f][^\x00-\x08\x0b-\x1f\x7f-\x9f]*$",
        max_length = 200
    )]
    pub name: Option<String>,
    pub kind: Option<DonorKind>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub website: Option<Option<String>>,
    pub time_zone: Option<String>,
    pub contacts: Option<Vec<Contact>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, pattern = r"^[^\x00-\x08\x0b-\x1f\x7f-\x9f]*[^\s\x00-\x08\x0b-\x1f\x7f-\x9f][^\x00-\x08\x0b-\x1f\x7f-\x9f]*$", max_length = 4000)]
    pub notes: Option<Option<String>>,
}

fn check_website(errors: &mut FieldErrors, website: Option<&str>) {
    let Some(website) = website else { return };
    let host = website.strip_prefix("https://").or_else(|| website.strip_prefix("http://"));
    match host.map(|rest| rest.split(['/', ':', '?', '#']).next().unwrap_or_default()) {
        Some(host) if crate::domain::validation::check_host(host).is_ok() && website.len() <= 500 => {}
        _ => errors.add("website", Problem::NotAUrl { example: "https://example.org".into() }),
    }
}

fn check_contacts(errors: &mut FieldErrors, contacts: &[Contact]) {
    if contacts.len() > MAX_CONTACTS {
        errors.add("contacts", Problem::TooMany { max: MAX_CONTACTS as u64 });
    }
    for (i, contact) in contacts.iter().enumerate() {
        contact.validate(&format!("contacts[{i}]"), errors);
    }
}

fn check_zone(errors: &mut FieldErrors, zone: &str) {
    if let Err(problem) = check_time_zone(zone) {
        errors.add("time_zone", problem);
    }
}

fn name_taken(error: diesel::result::Error) -> ApiError {
    if is_unique_violation(&error, db::donors::NAME_KEY) {
        ApiError::conflict(ErrorCode::DonorNameTaken, "name: a donor with this name already exists")
    } else {
        error.into()
    }
}

#[utoipa::path(
    tag = "donors",
    request_body = NewDonorRequest,
    responses(
        (status = 201, body = DonorView),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody),
    ),
)]
#[post("/donors")]
/// Register a donor organisation. Ops only.
pub async fn create_donor(
    state: web::Data<AppState>,
    caller: Principal,
    body: Json<NewDonorRequest>,
) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    let request = body.into_inner();
    let mut errors = FieldErrors::new();
    check_text(&mut errors, "name", &request.name, 200);
    check_website(&mut errors, request.website.as_deref());
    check_zone(&mut errors, &request.time_zone);
    check_contacts(&mut errors, &request.contacts);
    check_optional_text(&mut errors, "notes", request.notes.as_deref(), 4000);
    errors.into_result()?;

    let actor = caller.actor();
    let mut conn = state.db().await?;
    let view = conn
        .transaction::<_, ApiError, _>(async move |conn| {
            let new = NewDonor {
                id: DonorId::generate(),
                name: request.name.trim(),
                kind: request.kind,
                website: request.website.as_deref(),
                time_zone: &request.time_zone,
                contacts: DbJson(&request.contacts),
                notes: request.notes.as_deref(),
            };
            let donor = DonorView::from(db::donors::insert(conn, &new).await.map_err(name_taken)?);
            audit::record(
                conn,
                &actor,
                &[Change::new("donor.created", "donor", donor.id).donor(Some(donor.id)).after(&donor)],
            )
            .await?;
            Ok(donor)
        })
        .await?;
    Ok(HttpResponse::Created().json(view))
}

#[utoipa::path(
    tag = "donors",
    params(PageQuery),
    responses((status = 200, body = DonorPage), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
)]
#[get("/donors")]
/// List donors: all of them for ops, its own for a donor.
pub async fn list_donors(
    state: web::Data<AppState>,
    caller: Principal,
    query: Query<PageQuery>,
) -> Result<web::Json<DonorPage>, ApiError> {
    let scope = caller.admin_or_donor()?;
    let query = query.into_inner();
    let page = page(query.cursor.as_deref(), query.limit)?;
    let mut conn = state.db().await?;
    let rows = db::donors::list(&mut conn, scope.only(), page).await?;
    let (rows, next_cursor) = paginate(rows, &page, |d| d.id);
    Ok(web::Json(DonorPage { items: rows.into_iter().map(DonorView::from).collect(), next_cursor }))
}

#[utoipa::path(
    tag = "donors",
    params(("id" = DonorId, Path, description = "Donor id")),
    responses(
        (status = 200, body = DonorView),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
    ),
)]
#[get("/donors/{id}")]
/// One donor. Ops, or that donor's own staff.
pub async fn get_donor(
    state: web::Data<AppState>,
    caller: Principal,
    id: web::Path<DonorId>,
) -> Result<web::Json<DonorView>, ApiError> {
    let scope = caller.admin_or_donor()?;
    let id = id.into_inner();
    if !scope.covers(Some(id)) {
        return Err(ApiError::not_found(ErrorCode::DonorNotFound));
    }
    let mut conn = state.db().await?;
    let donor = db::donors::find(&mut conn, id).await?.ok_or_else(|| ApiError::not_found(ErrorCode::DonorNotFound))?;
    Ok(web::Json(donor.into()))
}

#[utoipa::path(
    tag = "donors",
    params(("id" = DonorId, Path, description = "Donor id")),
    request_body = DonorPatch,
    responses(
        (status = 200, body = DonorView),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody),
    ),
)]
#[patch("/donors/{id}")]
/// Change a donor's details or contacts. Ops, or that donor's own staff.
pub async fn update_donor(
    state: web::Data<AppState>,
    caller: Principal,
    id: web::Path<DonorId>,
    body: Json<DonorPatch>,
) -> Result<web::Json<DonorView>, ApiError> {
    let scope = caller.admin_or_donor()?;
    let id = id.into_inner();
    if !scope.covers(Some(id)) {
        return Err(ApiError::not_found(ErrorCode::DonorNotFound));
    }
    let patch = body.into_inner();
    let mut errors = FieldErrors::new();
    if let Some(name) = &patch.name {
        check_text(&mut errors, "name", name, 200);
    }
    if let Some(website) = &patch.website {
        check_website(&mut errors, website.as_deref());
    }
    if let Some(zone) = &patch.time_zone {
        check_zone(&mut errors, zone);
    }
    if let Some(contacts) = &patch.contacts {
        check_contacts(&mut errors, contacts);
    }
    if let Some(notes) = &patch.notes {
        check_optional_text(&mut errors, "notes", notes.as_deref(), 4000);
    }
    errors.into_result()?;

    let actor = caller.actor();
    let mut conn = state.db().await?;
    let view = conn
        .transaction::<_, ApiError, _>(async move |conn| {
            let before =
                db::donors::find(conn, id).await?.ok_or_else(|| ApiError::not_found(ErrorCode::DonorNotFound))?;
            let changes = DonorChanges {
                name: patch.name.map(|n| n.trim().to_owned()),
                kind: patch.kind,
                website: patch.website,
                time_zone: patch.time_zone,
                contacts: patch.contacts.map(DbJson),
                notes: patch.notes,
            };
            let after = DonorView::from(db::donors::update(conn, id, &changes).await.map_err(name_taken)?);
            audit::record(
                conn,
                &actor,
                &[Change::new("donor.updated", "donor", id)
                    .donor(Some(id))
                    .before(&DonorView::from(before))
                    .after(&after)],
            )
            .await?;
            Ok(after)
        })
        .await?;
    Ok(web::Json(view))
}
