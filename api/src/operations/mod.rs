//! Operations that more than one caller performs (handlers, schedules, the cloud worker and
//! the web pages), between them and `db`: each runs inside the caller's transaction and
//! returns values, which handlers turn into HTTP. Rules they apply live in `domain`.

pub mod audit;
pub mod donations;
pub mod inventory;
pub mod leases;
pub mod machines;
pub mod overview;
pub mod paging;
pub mod sessions;
pub mod sites;
