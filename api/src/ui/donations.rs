//! Donations: the list (ops review what waits; a donor sees its own), a donation's page with
//! its machines and the actions open to the viewer (approve, reject with a reason, pause,
//! resume, withdraw, return; receiving a machine into the lab with its rack and slot), on
//! `operations::donations` and `operations::inventory`.

use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;

use super::machines::non_empty;
use super::{Chrome, Refused, UiError, Viewer, answer, ok, redirect};
use crate::domain::{DonationAction, DonationId, DonationStatus, LifecycleState, MachineId, Problem};
use crate::error::ApiError;
use crate::error_code::ErrorCode;
use crate::operations::donations::{self, DonationActionRequest, DonationDetail, DonationListQuery, DonationPage};
use crate::operations::inventory::{self, TransitionRequest};
use crate::state::AppState;
use crate::views::Location;

#[derive(Template)]
#[template(path = "donations.html")]
struct ListPage {
    c: Chrome,
    page: DonationPage,
    status: Option<DonationStatus>,
    statuses: &'static [DonationStatus],
    next: Option<String>,
}

impl ListPage {
    fn status_is(&self, s: &DonationStatus) -> bool {
        self.status.as_ref() == Some(s)
    }
}

/// `GET /ui/donations`: ops see what waits for review first.
pub async fn list(state: web::Data<AppState>, viewer: Viewer, req: HttpRequest) -> HttpResponse {
    let shown = async {
        let pairs: Vec<(String, String)> =
            serde_html_form::from_str(req.query_string()).map_err(|_| UiError::BadForm)?;
        let mut query: DonationListQuery = crate::extract::parse_query(&non_empty(pairs))?;
        if viewer.is_ops() && req.query_string().is_empty() {
            query.status = Some(DonationStatus::Submitted);
        }
        let status = query.status;
        let page = donations::list_donations(&state, &viewer.principal, query).await?;
        let next = page.next_cursor.as_ref().map(|cursor| {
            let mut pairs = vec![("cursor", cursor.clone())];
            if let Some(s) = status {
                pairs.push(("status", s.to_string()));
            }
            serde_html_form::to_string(&pairs).unwrap_or_default()
        });
        Ok(ok(&ListPage { c: Chrome::new(&viewer, "donations"), page, status, statuses: DonationStatus::ALL, next }))
    };
    answer(&viewer.ui, shown.await)
}

#[derive(Template)]
#[template(path = "donation.html")]
struct DonationPageView {
    c: Chrome,
    d: DonationDetail,
    /// What the last action answered, if it was refused.
    refused: Refused,
}

impl DonationPageView {
    fn field_error(&self, field: &str) -> Option<String> {
        self.refused.field(field)
    }
    fn may(&self, action: &str) -> bool {
        self.d.allowed_actions.iter().any(|a| a.to_string() == action)
    }
    fn other_actions(&self) -> Vec<DonationAction> {
        self.d
            .allowed_actions
            .iter()
            .copied()
            .filter(|a| !matches!(a, DonationAction::Approve | DonationAction::Reject))
            .collect()
    }
    fn receivable(&self) -> Vec<&crate::views::MachineView> {
        if !self.c.ops {
            return Vec::new();
        }
        self.d
            .machines
            .iter()
            .filter(|m| m.lifecycle == LifecycleState::InTransit || m.lifecycle == LifecycleState::Approved)
            .collect()
    }
}

async fn donation_page(
    state: &AppState,
    viewer: &Viewer,
    id: DonationId,
    refused: Refused,
) -> Result<HttpResponse, UiError> {
    let d = donations::get_donation(state, &viewer.principal, id).await?;
    let status = refused.status();
    Ok(super::render(status, &DonationPageView { c: Chrome::new(viewer, "donations"), d, refused }))
}

/// `GET /ui/donations/{id}`
pub async fn detail(state: web::Data<AppState>, viewer: Viewer, id: web::Path<DonationId>) -> HttpResponse {
    answer(&viewer.ui, donation_page(&state, &viewer, id.into_inner(), Refused::none()).await)
}

/// `POST /ui/donations/{id}/act`: a donation-level action, or receiving one of its machines.
pub async fn act(
    state: web::Data<AppState>,
    viewer: Viewer,
    id: web::Path<DonationId>,
    body: web::Bytes,
) -> HttpResponse {
    let id = id.into_inner();
    let done = async {
        let form = viewer.form(&body)?;
        let field = |name: &str| form.field(name);
        let result = match (field("action"), field("machine_id")) {
            (Some(action), Some(machine)) if action == "receive" => match machine.parse::<uuid::Uuid>() {
                Ok(machine) => {
                    // The machine must be this donation's: the page offers no other.
                    let d = donations::get_donation(&state, &viewer.principal, id).await?;
                    if !d.machines.iter().any(|m| m.id.0 == machine) {
                        return Err(ApiError::not_found(ErrorCode::MachineNotFound).into());
                    }
                    let location =
                        Location { rack: field("rack").unwrap_or_default(), slot: field("slot").unwrap_or_default() };
                    let request = TransitionRequest {
                        to: LifecycleState::Received,
                        note: field("note"),
                        location: Some(location),
                    };
                    inventory::transition_machine(&state, &viewer.principal, MachineId(machine), request)
                        .await
                        .map(drop)
                }
                Err(_) => Err(ApiError::invalid_field("machine_id", Problem::NotAnId)),
            },
            (Some(action), _) => match action.parse::<DonationAction>() {
                Ok(action) => donations::act_on_donation(
                    &state,
                    &viewer.principal,
                    id,
                    DonationActionRequest { action, note: field("note") },
                )
                .await
                .map(drop),
                Err(_) => Err(ApiError::invalid_field("action", Problem::NotAnAction)),
            },
            _ => Err(ApiError::invalid_field("action", Problem::Required)),
        };
        match result {
            Ok(()) => Ok(redirect(&format!("/ui/donations/{id}"))),
            Err(e) => donation_page(&state, &viewer, id, Refused::of(e, &viewer.ui.tr)?).await,
        }
    };
    answer(&viewer.ui, done.await)
}
