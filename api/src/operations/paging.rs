//! Keyset pagination shared by the API's lists and the web pages: opaque cursors over a
//! sortable key, page sizes, and the page-of-items response type.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use uuid::Uuid;

use crate::db::Page;
use crate::domain::Problem;
use crate::error::ApiError;

/// The query of a list that only pages.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// `next_cursor` from the previous page.
    pub cursor: Option<String>,
    /// 1 to 200, default 50.
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
}

/// Page size when the client does not ask for one, and the largest it may ask for.
const DEFAULT_LIMIT: i64 = 50;
const MAX_LIMIT: i64 = 200;

/// Declares a page-of-items response type for the OpenAPI document.
macro_rules! page_type {
    ($name:ident, $item:ty) => {
        #[doc = concat!("One page of ", stringify!($item), "; pass `next_cursor` as `cursor` for the next.")]
        #[derive(Debug, serde::Serialize, utoipa::ToSchema)]
        pub struct $name {
            pub items: Vec<$item>,
            /// Absent on the last page.
            pub next_cursor: Option<String>,
        }
    };
}
pub(crate) use page_type;

/// An opaque cursor for keyset pagination over a sortable key.
pub trait CursorKey: Sized + Copy {
    fn encode(self) -> String;
    fn decode(text: &str) -> Option<Self>;
}

macro_rules! uuid_cursor_key {
    ($($id:ident),+) => {$(
        impl CursorKey for crate::domain::$id {
            fn encode(self) -> String {
                URL_SAFE_NO_PAD.encode(self.0.as_bytes())
            }

            fn decode(text: &str) -> Option<Self> {
                let bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
                Uuid::from_slice(&bytes).ok().map(Self)
            }
        }
    )+};
}

uuid_cursor_key!(DonorId, SiteId, UserId, DonationId, MachineId, TokenId, LeaseId, JobId);

/// Events and webhook subscriptions are keyed by plain UUIDs.
impl CursorKey for Uuid {
    fn encode(self) -> String {
        URL_SAFE_NO_PAD.encode(self.as_bytes())
    }

    fn decode(text: &str) -> Option<Self> {
        Uuid::from_slice(&URL_SAFE_NO_PAD.decode(text).ok()?).ok()
    }
}

/// Audit entries page by their numeric id.
impl CursorKey for i64 {
    fn encode(self) -> String {
        URL_SAFE_NO_PAD.encode(self.to_be_bytes())
    }

    fn decode(text: &str) -> Option<Self> {
        let bytes: [u8; 8] = URL_SAFE_NO_PAD.decode(text).ok()?.try_into().ok()?;
        Some(i64::from_be_bytes(bytes))
    }
}

/// Turns the `cursor` and `limit` query parameters into a page request.
pub fn page<K: CursorKey>(cursor: Option<&str>, limit: Option<i64>) -> Result<Page<K>, ApiError> {
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::invalid_field("limit", Problem::Between { min: 1, max: MAX_LIMIT }));
    }
    let after = cursor
        .map(|text| K::decode(text).ok_or_else(|| ApiError::invalid_field("cursor", Problem::NotACursor)))
        .transpose()?;
    Ok(Page { after, limit })
}

/// Cuts the extra row fetched by [`Page::fetch_limit`] and derives the next cursor from it.
pub fn paginate<T, K: CursorKey>(mut rows: Vec<T>, page: &Page<K>, key: impl Fn(&T) -> K) -> (Vec<T>, Option<String>) {
    let limit = usize::try_from(page.limit).unwrap_or(usize::MAX);
    let next = if rows.len() > limit {
        rows.truncate(limit);
        rows.last().map(|row| key(row).encode())
    } else {
        None
    };
    (rows, next)
}
