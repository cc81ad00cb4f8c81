//! Machines over HTTP: each handler hands its caller and input to `operations::inventory`,
//! which the web pages call too, and turns the answer into JSON.

use actix_web::{HttpResponse, delete, get, patch, post, put, web};

use crate::auth::Principal;
use crate::domain::MachineId;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{Json, Query};
use crate::operations::inventory;
use crate::operations::inventory::IssuedEnrollmentToken;
pub use crate::operations::inventory::{
    LabelEdit, LiftQuarantineRequest, MachineDetail, MachineListQuery, MachinePage, MaintenanceRequest, MonitoringView,
    SshCheckView, TransitionRequest,
};
pub use crate::operations::machines::AgentCutOff;
use crate::state::AppState;
pub use crate::views::{Location, MachineView, SshEndpoint};

#[utoipa::path(
    tag = "machines",
    params(MachineListQuery),
    responses(
        (status = 200, body = MachinePage),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody),
    ),
)]
#[get("/machines")]
/// List machines. Ops and service accounts see every machine; a donor sees its own.
pub async fn list_machines(
    state: web::Data<AppState>,
    caller: Principal,
    query: Query<MachineListQuery>,
) -> Result<web::Json<MachinePage>, ApiError> {
    inventory::list_machines(&state, &caller, query.into_inner()).await.map(web::Json)
}

#[utoipa::path(
    tag = "machines",
    params(("id" = MachineId, Path, description = "Machine id")),
    responses(
        (status = 200, body = MachineDetail),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
    ),
)]
#[get("/machines/{id}")]
/// One machine, with the lifecycle transitions open to the caller.
pub async fn get_machine(
    state: web::Data<AppState>,
    caller: Principal,
    id: web::Path<MachineId>,
) -> Result<web::Json<MachineDetail>, ApiError> {
    inventory::get_machine(&state, &caller, id.into_inner()).await.map(web::Json)
}

#[utoipa::path(
    tag = "machines",
    params(("id" = MachineId, Path, description = "Machine id")),
    request_body = LabelEdit,
    responses(
        (status = 200, body = MachineView),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody),
    ),
)]
#[patch("/machines/{id}/labels")]
/// Add, change or remove labels. Ops, or the donor of a usage-right machine.
pub async fn edit_labels(
    state: web::Data<AppState>,
    caller: Principal,
    id: web::Path<MachineId>,
    body: Json<LabelEdit>,
) -> Result<web::Json<MachineView>, ApiError> {
    inventory::edit_labels(&state, &caller, id.into_inner(), body.into_inner()).await.map(web::Json)
}

#[utoipa::path(
    tag = "machines",
    params(("id" = MachineId, Path, description = "Machine id")),
    request_body = TransitionRequest,
    responses(
        (status = 200, body = MachineDetail),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "Not allowed from the current state; `details.allowed` lists what is", body = ErrorBody),
        (status = 422, body = ErrorBody),
    ),
)]
#[post("/machines/{id}/transitions")]
/// Move a machine through its lifecycle (ship, receive, onboard, ready, retire, return...).
/// Donors may pause, resume and withdraw their usage-right machines.
pub async fn transition_machine(
    state: web::Data<AppState>,
    caller: Principal,
    id: web::Path<MachineId>,
    body: Json<TransitionRequest>,
) -> Result<web::Json<MachineDetail>, ApiError> {
    inventory::transition_machine(&state, &caller, id.into_inner(), body.into_inner()).await.map(web::Json)
}

#[utoipa::path(
    tag = "machines",
    params(("id" = MachineId, Path, description = "Machine id")),
    request_body = MaintenanceRequest,
    responses(
        (status = 200, body = MachineDetail),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody),
    ),
)]
#[put("/machines/{id}/maintenance")]
/// Put a machine into maintenance: out of the pool, and no alarms. Ops only.
pub async fn start_maintenance(
    state: web::Data<AppState>,
    caller: Principal,
    id: web::Path<MachineId>,
    body: Json<MaintenanceRequest>,
) -> Result<web::Json<MachineDetail>, ApiError> {
    inventory::start_maintenance(&state, &caller, id.into_inner(), body.into_inner()).await.map(web::Json)
}

#[utoipa::path(
    tag = "machines",
    params(("id" = MachineId, Path, description = "Machine id")),
    responses(
        (status = 200, body = MachineDetail),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody),
    ),
)]
#[delete("/machines/{id}/maintenance")]
/// End maintenance: the machine goes back to `ready`. Ops only.
pub async fn end_maintenance(
    state: web::Data<AppState>,
    caller: Principal,
    id: web::Path<MachineId>,
) -> Result<web::Json<MachineDetail>, ApiError> {
    inventory::end_maintenance(&state, &caller, id.into_inner()).await.map(web::Json)
}

#[utoipa::path(
    tag = "machines",
    params(("id" = MachineId, Path, description = "Machine id")),
    responses(
        (status = 200, body = AgentCutOff),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
    ),
)]
#[delete("/machines/{id}/agent")]
/// Cut off the machine's agent: its credentials and unused enrollment tokens stop working now
/// (a stolen disk, a reinstall, a credential that leaked). A new enrollment token enrolls an
/// agent again. Ops, or the machine's donor.
pub async fn cut_off_machine_agent(
    state: web::Data<AppState>,
    caller: Principal,
    id: web::Path<MachineId>,
) -> Result<web::Json<AgentCutOff>, ApiError> {
    inventory::cut_off_machine_agent(&state, &caller, id.into_inner()).await.map(web::Json)
}

#[utoipa::path(
    tag = "machines",
    params(("id" = MachineId, Path, description = "Machine id")),
    responses(
        (status = 201, body = IssuedEnrollmentToken),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "The machine is not in a monitored state", body = ErrorBody),
    ),
)]
#[post("/machines/{id}/enrollment-token")]
/// Issue a one-time token that enrolls this machine's agent (any unused earlier token is
/// revoked). Ops, or the donor of a usage-right machine. The token is shown once.
pub async fn issue_enrollment_token(
    state: web::Data<AppState>,
    caller: Principal,
    id: web::Path<MachineId>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Created().json(inventory::issue_enrollment_token(&state, &caller, id.into_inner()).await?))
}

#[utoipa::path(
    tag = "machines",
    params(("id" = MachineId, Path, description = "Machine id")),
    responses(
        (status = 202, description = "The probe will run at the next SSH round"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "The machine has no SSH endpoint", body = ErrorBody),
    ),
)]
#[post("/machines/{id}/ssh-probe")]
/// Ask for an SSH probe of the machine at the next round: its facts are collected and
/// compared with its declaration. Asking again before that round changes nothing: a machine
/// is probed at most once a round. Ops, or the donor of a usage-right machine.
pub async fn request_ssh_probe(
    state: web::Data<AppState>,
    caller: Principal,
    id: web::Path<MachineId>,
) -> Result<HttpResponse, ApiError> {
    inventory::request_ssh_probe(&state, &caller, id.into_inner()).await?;
    Ok(HttpResponse::Accepted().finish())
}

#[utoipa::path(
    tag = "machines",
    params(("id" = MachineId, Path, description = "Machine id")),
    request_body = LiftQuarantineRequest,
    responses(
        (status = 200, body = MachineView),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody),
    ),
)]
#[delete("/machines/{id}/quarantine")]
/// Lift a quarantine: the pinned SSH host key is forgotten, the next check pins the one the
/// machine presents, and a probe is requested. Ops only.
pub async fn lift_quarantine(
    state: web::Data<AppState>,
    caller: Principal,
    id: web::Path<MachineId>,
    body: Json<LiftQuarantineRequest>,
) -> Result<web::Json<MachineView>, ApiError> {
    inventory::lift_quarantine(&state, &caller, id.into_inner(), body.into_inner()).await.map(web::Json)
}
