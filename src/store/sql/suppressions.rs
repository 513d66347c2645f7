//! Addresses a provider said not to send to any more, per channel.

use super::{Backend, Stmt, params, read_one, write};
use crate::store::{Millis, Result};

/// Records that `address` must get nothing more on `channel`; a later reason replaces an
/// earlier one (a complaint after a bounce), keeping when it was first suppressed.
pub(in crate::store) async fn suppress<B: Backend>(
    b: &B,
    channel: &str,
    address: &str,
    reason: &str,
    detail: Option<&str>,
    now: Millis,
) -> Result<()> {
    let sql = "INSERT INTO suppressions (channel, address, reason, detail, created_at)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (channel, address) DO UPDATE SET reason = excluded.reason, detail = excluded.detail";
    write(
        b,
        Stmt::new(sql, params![channel, address, reason, detail, now]),
    )
    .await?;
    Ok(())
}

/// Why `address` is suppressed on `channel`, if it is.
pub(in crate::store) async fn reason<B: Backend>(
    b: &B,
    channel: &str,
    address: &str,
) -> Result<Option<String>> {
    let sql = "SELECT reason FROM suppressions WHERE channel = $1 AND address = $2";
    read_one(b, Stmt::new(sql, params![channel, address]), |r| {
        r.text("reason")
    })
    .await
}
