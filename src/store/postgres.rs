//! PostgreSQL store (placeholder until the implementation lands).

use super::*;

#[derive(Debug, Clone)]
pub struct PgStore;

impl PgStore {
    pub async fn open(_url: &str) -> Result<std::sync::Arc<dyn Store>> {
        Err(StoreError::Config("PostgreSQL support is not built yet".into()))
    }
}
