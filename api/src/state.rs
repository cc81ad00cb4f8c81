//! What every request handler can reach: the database pool, the token keys, the settings.

use std::sync::Arc;

use crate::auth::TokenKeys;
use crate::config::Config;
use crate::db::{self, DbConn};
use crate::error::ApiError;

#[derive(Clone)]
pub struct AppState {
    pub pool: db::Pool,
    pub tokens: Arc<TokenKeys>,
    pub config: Arc<Config>,
    /// The OpenAPI document, rendered once at start-up.
    pub openapi_json: Arc<str>,
}

impl AppState {
    pub fn new(pool: db::Pool, config: Config) -> Self {
        Self {
            pool,
            tokens: Arc::new(TokenKeys::new(&config)),
            openapi_json: crate::routes::openapi_json().into(),
            config: Arc::new(config),
        }
    }

    /// A pooled connection, or 503 when the database cannot be reached.
    pub async fn db(&self) -> Result<DbConn, ApiError> {
        Ok(self.pool.get().await?)
    }
}
