//! Sites: the foundation's labs, donors' premises and cloud regions (the rules are in
//! `operations::sites`).

use actix_web::{HttpResponse, get, patch, post, web};

use crate::auth::Principal;
use crate::domain::SiteId;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{Json, Query};
use crate::operations::sites::{self, NewSiteRequest, SiteListQuery, SitePage, SitePatch, SiteView};
use crate::state::AppState;

#[utoipa::path(
    tag = "sites",
    request_body = NewSiteRequest,
    responses(
        (status = 201, body = SiteView),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody),
    ),
)]
#[post("/sites")]
/// Register a site. Ops register any kind; a donor registers its own premises.
pub async fn create_site(
    state: web::Data<AppState>,
    caller: Principal,
    body: Json<NewSiteRequest>,
) -> Result<HttpResponse, ApiError> {
    let view = sites::create_site(&state, &caller, body.into_inner()).await?;
    Ok(HttpResponse::Created().json(view))
}

#[utoipa::path(
    tag = "sites",
    params(SiteListQuery),
    responses(
        (status = 200, body = SitePage),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody),
    ),
)]
#[get("/sites")]
/// List sites. A donor sees the foundation's labs, cloud regions and its own premises.
pub async fn list_sites(
    state: web::Data<AppState>,
    caller: Principal,
    query: Query<SiteListQuery>,
) -> Result<web::Json<SitePage>, ApiError> {
    sites::list_sites(&state, &caller, query.into_inner()).await.map(web::Json)
}

#[utoipa::path(
    tag = "sites",
    params(("id" = SiteId, Path, description = "Site id")),
    responses(
        (status = 200, body = SiteView),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
    ),
)]
#[get("/sites/{id}")]
/// One site.
pub async fn get_site(
    state: web::Data<AppState>,
    caller: Principal,
    id: web::Path<SiteId>,
) -> Result<web::Json<SiteView>, ApiError> {
    sites::get_site(&state, &caller, id.into_inner()).await.map(web::Json)
}

#[utoipa::path(
    tag = "sites",
    params(("id" = SiteId, Path, description = "Site id")),
    request_body = SitePatch,
    responses(
        (status = 200, body = SiteView),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody),
    ),
)]
#[patch("/sites/{id}")]
/// Change a site's name, address or time zone. Ops, or the donor whose premises it is.
pub async fn update_site(
    state: web::Data<AppState>,
    caller: Principal,
    id: web::Path<SiteId>,
    body: Json<SitePatch>,
) -> Result<web::Json<SiteView>, ApiError> {
    sites::update_site(&state, &caller, id.into_inner(), body.into_inner()).await.map(web::Json)
}
