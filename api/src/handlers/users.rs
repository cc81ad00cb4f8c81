//! User accounts for ops and donors' staff.

use actix_web::{HttpResponse, get, patch, post, web};
use diesel_async::AsyncConnection;
use serde::Deserialize;
use utoipa::ToSchema;

use super::{PageQuery, page, page_type, paginate};
use crate::auth::{MIN_PASSWORD_CHARS, Principal, hash_password};
use crate::db::audit::{self, Change};
use crate::db::users::NewUser;
use crate::db::{self, is_unique_violation};
use crate::domain::validation::{check_email, check_text};
use crate::domain::{DonorId, FieldErrors, Problem, Role, UserId};
use crate::error::{ApiError, ErrorBody};
use crate::error_code::ErrorCode;
use crate::extract::{Json, Query};
use crate::state::AppState;
use crate::views::UserView;

page_type!(UserPage, UserView);

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUserRequest {
    pub email: String,
    #[schema(
        pattern = r"^[^\x00-\x08\x0b-\x1f\x7f-\x9f]*[^\s\x00-\x08\x0b-\x1f\x7f-\x9f][^\x00-\x08\x0b-\x1f\x7f-\x9f]*$",
        max_length = 200
    )]
    pub display_name: String,
    /// At least 12 characters (and at most 1024 bytes).
    #[schema(min_length = 12, max_length = 1024)]
    pub password: String,
    /// `admin` or `donor`; service accounts are issued under `/service-tokens`.
    pub role: Role,
    /// Required for (and only for) a `donor` user.
    #[serde(default)]
    pub donor_id: Option<DonorId>,
}

/// Changes to a user: enable or disable, rename.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserPatch {
    #[schema(
        pattern = r"^[^\x00-\x08\x0b-\x1f\x7f-\x9f]*[^\s\x00-\x08\x0b-\x1f\x7f-\x9f][^\x00-\x08\x0b-\x1f\x7f-\x9f]*$",
        max_length = 200
    )]
    pub display_name: Option<String>,
    /// A disabled user's tokens stop working at once.
    pub disabled: Option<bool>,
}

#[utoipa::path(
    tag = "users",
    request_body = NewUserRequest,
    responses(
        (status = 201, body = UserView),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody),
    ),
)]
#[post("/users")]
/// Create an ops or donor account. Ops only.
pub async fn create_user(
    state: web::Data<AppState>,
    caller: Principal,
    body: Json<NewUserRequest>,
) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    let request = body.into_inner();
    let mut errors = FieldErrors::new();
    if let Err(problem) = check_email(&request.email) {
        errors.add("email", problem);
    }
    check_text(&mut errors, "display_name", &request.display_name, 200);
    if request.password.chars().count() < MIN_PASSWORD_CHARS {
        errors.add("password", Problem::TooShort { min: MIN_PASSWORD_CHARS as u64 });
    } else if request.password.len() > 1024 {
        errors.add("password", Problem::TooManyBytes { max: 1024 });
    }
    match (request.role, request.donor_id) {
        (Role::Donor, None) => errors.add("donor_id", Problem::RequiredForDonorUser),
        (Role::Admin, Some(_)) => errors.add("donor_id", Problem::AdminHasNoDonor),
        (Role::Ci | Role::Agent, _) => errors.add("role", Problem::NotAUserRole),
        _ => {}
    }
    errors.into_result()?;

    let password_hash = hash_password(request.password).await.map_err(ApiError::internal)?;
    let actor = caller.actor();
    let mut conn = state.db().await?;
    let view = conn
        .transaction::<_, ApiError, _>(async move |conn| {
            if let Some(donor_id) = request.donor_id
                && db::donors::find(conn, donor_id).await?.is_none()
            {
                return Err(ApiError::invalid_field("donor_id", Problem::NoSuchDonor));
            }
            let new = NewUser {
                id: UserId::generate(),
                email: request.email.trim(),
                display_name: request.display_name.trim(),
                password_hash: &password_hash,
                role: request.role,
                donor_id: request.donor_id,
            };
            let user = db::users::insert(conn, &new).await.map_err(|e| {
                if is_unique_violation(&e, db::users::EMAIL_KEY) {
                    ApiError::conflict(ErrorCode::EmailTaken, "email: an account with this email already exists")
                } else {
                    e.into()
                }
            })?;
            let view = UserView::from(user);
            audit::record(
                conn,
                &actor,
                &[Change::new("user.created", "user", view.id).donor(view.donor_id).after(&view)],
            )
            .await?;
            Ok(view)
        })
        .await?;
    Ok(HttpResponse::Created().json(view))
}

#[utoipa::path(
    tag = "users",
    params(PageQuery),
    responses((status = 200, body = UserPage), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
)]
#[get("/users")]
/// List accounts: all for ops, a donor's colleagues for a donor.
pub async fn list_users(
    state: web::Data<AppState>,
    caller: Principal,
    query: Query<PageQuery>,
) -> Result<web::Json<UserPage>, ApiError> {
    let scope = caller.admin_or_donor()?;
    let query = query.into_inner();
    let page = page(query.cursor.as_deref(), query.limit)?;
    let mut conn = state.db().await?;
    let rows = db::users::list(&mut conn, scope.only(), page).await?;
    let (rows, next_cursor) = paginate(rows, &page, |u| u.id);
    Ok(web::Json(UserPage { items: rows.into_iter().map(UserView::from).collect(), next_cursor }))
}

#[utoipa::path(
    tag = "users",
    params(("id" = UserId, Path, description = "User id")),
    request_body = UserPatch,
    responses(
        (status = 200, body = UserView),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody),
    ),
)]
#[patch("/users/{id}")]
/// Rename, disable or re-enable an account. Ops only.
pub async fn update_user(
    state: web::Data<AppState>,
    caller: Principal,
    id: web::Path<UserId>,
    body: Json<UserPatch>,
) -> Result<web::Json<UserView>, ApiError> {
    caller.require_admin()?;
    let id = id.into_inner();
    let patch = body.into_inner();
    let mut errors = FieldErrors::new();
    if let Some(name) = &patch.display_name {
        check_text(&mut errors, "display_name", name, 200);
    }
    errors.into_result()?;
    if patch.disabled == Some(true) && caller.user_id() == Some(id) {
        return Err(ApiError::conflict(ErrorCode::CannotDisableSelf, "you cannot disable your own account"));
    }
    let actor = caller.actor();
    let mut conn = state.db().await?;
    let view = conn
        .transaction::<_, ApiError, _>(async move |conn| {
            let before =
                db::users::find(conn, id).await?.ok_or_else(|| ApiError::not_found(ErrorCode::UserNotFound))?;
            let mut after = before.clone();
            if let Some(name) = &patch.display_name {
                after = db::users::set_display_name(conn, id, name.trim()).await?;
            }
            if let Some(disabled) = patch.disabled {
                after = db::users::set_disabled(conn, id, disabled).await?;
            }
            let (before, after) = (UserView::from(before), UserView::from(after));
            audit::record(
                conn,
                &actor,
                &[Change::new("user.updated", "user", id).donor(after.donor_id).before(&before).after(&after)],
            )
            .await?;
            Ok(after)
        })
        .await?;
    Ok(web::Json(view))
}
