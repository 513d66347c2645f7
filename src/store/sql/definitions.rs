//! Definition versions, by content hash; and the store's liveness check.

use super::{Backend, Exec as _, Stmt, params, read_one, write};
use crate::store::rows::{self, to_text};
use crate::store::{DefinitionVersion, Result};

pub(in crate::store) async fn ping<B: Backend>(b: &B) -> Result<()> {
    let mut conn = b.read().await?;
    B::Db::execute(&mut *conn, Stmt::new("SELECT 1", params![])).await?;
    Ok(())
}

pub(in crate::store) async fn save<B: Backend>(b: &B, v: &DefinitionVersion) -> Result<()> {
    let sql = "INSERT INTO definitions (hash, id, kind, source, document, first_seen_at) VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (hash) DO NOTHING";
    let p = params![
        &v.hash,
        &v.id,
        &v.kind,
        &v.source,
        to_text(&v.document),
        v.first_seen_at,
    ];
    write(b, Stmt::new(sql, p)).await?;
    Ok(())
}

pub(in crate::store) async fn get<B: Backend>(
    b: &B,
    hash: &str,
) -> Result<Option<DefinitionVersion>> {
    let sql =
        "SELECT hash, id, kind, source, document, first_seen_at FROM definitions WHERE hash = $1";
    read_one(b, Stmt::new(sql, params![hash]), rows::definition).await
}
