//! HTTP handlers: one file per resource, one function per action, each carrying its own
//! `#[utoipa::path]` so the OpenAPI document is generated from the code it describes.
//!
//! A handler reads its caller ([`Principal`](crate::auth::Principal)) and states its access
//! rule first, validates its input completely before opening a transaction, then does its
//! writes and their audit entries in one transaction.

pub mod agent;
pub mod audit;
pub mod auth;
pub mod clouds;
pub mod donations;
pub mod donors;
pub mod jobs;
pub mod leases;
pub mod machines;
pub mod overview;
pub mod service_tokens;
pub mod sites;
pub mod system;
pub mod users;
pub mod webhooks;

pub(crate) use crate::operations::paging::page_type;
pub use crate::operations::paging::{CursorKey, PageQuery, page, paginate};
