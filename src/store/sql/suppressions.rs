//! Addresses a provider said not to send to any more, per channel.

use super::{Backend, Dialect as _, Stmt, params, read_all, read_one, write};
use crate::store::admin::Suppression;
use crate::store::rows::RowView;
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

/// Every suppression of one of `addresses` on one of `channels`, in one read (the pairs are
/// looked up in the primary key): `(channel, address, reason)`.
pub(in crate::store) async fn of<B: Backend>(
    b: &B,
    channels: &[String],
    addresses: &[String],
) -> Result<Vec<(String, String, String)>> {
    if channels.is_empty() || addresses.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT channel, address, reason FROM suppressions WHERE {} AND {}",
        B::Db::in_list("channel", "$1"),
        B::Db::in_list("address", "$2")
    );
    read_all(b, Stmt::new(sql, params![channels, addresses]), |r| {
        Ok((r.text("channel")?, r.text("address")?, r.text("reason")?))
    })
    .await
}

pub(in crate::store) async fn list<B: Backend>(
    b: &B,
    channel: Option<&str>,
    limit: i64,
) -> Result<Vec<Suppression>> {
    let sql = "SELECT channel, address, reason, detail, created_at FROM suppressions
         WHERE (CAST($1 AS TEXT) IS NULL OR channel = $1)
         ORDER BY created_at DESC, channel, address LIMIT $2";
    read_all(b, Stmt::new(sql, params![channel, limit]), decode).await
}

pub(in crate::store) async fn lift<B: Backend>(
    b: &B,
    channel: &str,
    address: &str,
) -> Result<bool> {
    let sql = "DELETE FROM suppressions WHERE channel = $1 AND address = $2";
    Ok(write(b, Stmt::new(sql, params![channel, address])).await? == 1)
}

fn decode(row: &dyn RowView) -> Result<Suppression> {
    Ok(Suppression {
        channel: row.text("channel")?,
        address: row.text("address")?,
        reason: row.text("reason")?,
        detail: row.opt_text("detail")?,
        created_at: row.int("created_at")?,
    })
}
