//! Contacts: looking them up, upserting them as runs and inbound messages learn about people,
//! and an operator's edits.

use super::{Backend, Dialect, Exec, Stmt, params, read_all, read_one};
use crate::store::admin::{ContactFilter, ContactPatch};
use crate::store::campaigns::{Membership, MembershipKind};
use crate::store::rows::{self, RowView, contact_columns, to_text};
use crate::store::{Contact, ContactUpsert, Millis, Result, StoreError};

/// A contact's columns, with its channel addresses.
fn columns<D: Dialect>() -> String {
    format!(
        "{}, {} AS addresses",
        contact_columns!(),
        D::CONTACT_ADDRESSES
    )
}

/// The contact whose `column` (`id`, `email` or `phone`) is `value`, locked for a write that
/// follows when `lock` (see [`Dialect::FOR_UPDATE`]).
fn by<D: Dialect>(column: &str, value: &str, lock: bool) -> Stmt {
    let sql = format!(
        "SELECT {} FROM contacts WHERE {column} = $1{}",
        columns::<D>(),
        if lock { D::FOR_UPDATE } else { "" }
    );
    Stmt::new(sql, params![value])
}

/// The id of the contact that holds `address` on `channel`.
fn holder(channel: &str, address: &str) -> Stmt {
    Stmt::new(
        "SELECT contact_id FROM contact_addresses WHERE channel = $1 AND address = $2",
        params![channel, address],
    )
}

/// A contact's fields as [`insert`] and [`update`] bind them, `$1` to `$9`.
fn fields(c: &Contact) -> Vec<super::Param> {
    params![
        &c.id,
        &c.email,
        &c.phone,
        &c.first_name,
        &c.last_name,
        &c.status,
        &c.timezone,
        to_text(&serde_json::Value::Object(c.attributes.clone())),
        c.updated_at,
    ]
}

fn insert(c: &Contact) -> Stmt {
    let sql = "INSERT INTO contacts (id, email, phone, first_name, last_name, status, timezone, attributes, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $10, $9)";
    let mut p = fields(c);
    p.push(c.created_at.into());
    Stmt::new(sql, p)
}

fn update(c: &Contact) -> Stmt {
    let sql = "UPDATE contacts SET email = $2, phone = $3, first_name = $4, last_name = $5, status = $6, timezone = $7,
             attributes = $8, updated_at = $9 WHERE id = $1";
    Stmt::new(sql, fields(c))
}

pub(in crate::store) async fn get<B: Backend>(b: &B, id: &str) -> Result<Option<Contact>> {
    read_one(b, by::<B::Db>("id", id, false), rows::contact).await
}

/// The contacts with these ids (those that exist), in one read.
pub(in crate::store) async fn get_many<B: Backend>(b: &B, ids: &[String]) -> Result<Vec<Contact>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT {} FROM contacts WHERE {}",
        columns::<B::Db>(),
        B::Db::in_list("id", "$1")
    );
    read_all(b, Stmt::new(sql, params![ids]), rows::contact).await
}

/// The contacts with any of these e-mails or phones, in one read; each index is used on its
/// own (an `OR` of the two would scan the table).
pub(in crate::store) async fn find_many<B: Backend>(
    b: &B,
    emails: &[String],
    phones: &[String],
) -> Result<Vec<Contact>> {
    if emails.is_empty() && phones.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT {c} FROM contacts WHERE {e} UNION SELECT {c} FROM contacts WHERE {p}",
        c = columns::<B::Db>(),
        e = B::Db::in_list("email", "$1"),
        p = B::Db::in_list("phone", "$2"),
    );
    read_all(b, Stmt::new(sql, params![emails, phones]), rows::contact).await
}

/// In one read: why `address` is suppressed on `channel`, if it is, and the contact with this
/// e-mail, else the one with this phone (as [`find`]).
pub(in crate::store) async fn recipient<B: Backend>(
    b: &B,
    channel: &str,
    address: &str,
    email: Option<&str>,
    phone: Option<&str>,
) -> Result<(Option<String>, Option<Contact>)> {
    let sql = format!(
        "SELECT (SELECT reason FROM suppressions WHERE channel = $1 AND address = $2) AS suppressed, {}
         FROM (SELECT 1 AS one) AS q LEFT JOIN contacts ON contacts.id = COALESCE(
             (SELECT c.id FROM contacts c WHERE c.email = $3),
             (SELECT c.id FROM contacts c WHERE c.phone = $4))",
        columns::<B::Db>()
    );
    let row = read_one(
        b,
        Stmt::new(sql, params![channel, address, email, phone]),
        |r| {
            let contact = match r.opt_text("id")? {
                Some(_) => Some(rows::contact(r)?),
                None => None,
            };
            Ok((r.opt_text("suppressed")?, contact))
        },
    )
    .await?;
    Ok(row.unwrap_or_default())
}

/// The contact that holds `address` on `channel`.
pub(in crate::store) async fn by_address<B: Backend>(
    b: &B,
    channel: &str,
    address: &str,
) -> Result<Option<Contact>> {
    let id = read_one(b, holder(channel, address), |r| r.text("contact_id")).await?;
    match id {
        Some(id) => get(b, &id).await,
        None => Ok(None),
    }
}

/// The contact with this e-mail, else the one with this phone.
pub(in crate::store) async fn find<B: Backend>(
    b: &B,
    email: Option<&str>,
    phone: Option<&str>,
) -> Result<Option<Contact>> {
    for (column, value) in [("email", email), ("phone", phone)] {
        if let Some(value) = value
            && let Some(c) = read_one(b, by::<B::Db>(column, value, false), rows::contact).await?
        {
            return Ok(Some(c));
        }
    }
    Ok(None)
}

/// One upsert attempt inside a transaction. `None` when, with `strict`, it finds it read too
/// early (see below); a backend whose writers are serialised passes `strict = false`.
///
/// The lookups take [`Dialect::FOR_UPDATE`] locks, so two upserts of the same contact merge
/// their attributes one after the other instead of the second overwriting the first with
/// what it read before. If the row changes while we wait for it (its phone moved elsewhere,
/// say), PostgreSQL re-checks the condition and we do not get it.
pub(in crate::store) async fn try_upsert<D: Exec>(
    conn: &mut D::Connection,
    u: &ContactUpsert,
    strict: bool,
) -> Result<Option<Contact>> {
    let by_email = match &u.email {
        Some(e) => D::fetch_optional(&mut *conn, by::<D>("email", e, true))
            .await?
            .map(|r| rows::contact(&r))
            .transpose()?,
        None => None,
    };
    let found_by_email = by_email.is_some();
    let existing = match (by_email, &u.phone) {
        (Some(c), _) => Some(c),
        (None, Some(p)) => D::fetch_optional(&mut *conn, by::<D>("phone", p, true))
            .await?
            .map(|r| rows::contact(&r))
            .transpose()?,
        (None, None) => None,
    };
    // By a channel address it links (a Telegram chat that wrote before) only when neither an
    // e-mail nor a phone is given: a chat that names a new phone is linked to that person,
    // not used to renumber the one it was linked to.
    let existing = match existing {
        Some(c) => Some(c),
        None if u.email.is_some() || u.phone.is_some() => None,
        None => {
            let mut found = None;
            for (channel, address) in &u.addresses {
                let Some(address) = address else { continue };
                let id = D::fetch_optional(&mut *conn, holder(channel, address))
                    .await?
                    .map(|r| r.text("contact_id"))
                    .transpose()?;
                if let Some(id) = id {
                    found = D::fetch_optional(&mut *conn, by::<D>("id", &id, true))
                        .await?
                        .map(|r| rows::contact(&r))
                        .transpose()?;
                    if found.is_some() {
                        break;
                    }
                }
            }
            found
        }
    };
    let is_new = existing.is_none();
    let mut merged = u.apply(existing.clone());
    // An e-mail or phone already belonging to someone else stays theirs: two people are not
    // merged by accident, and the unique constraint holds. A value taken by a transaction that
    // has not committed yet is invisible here; the write below then fails the constraint and
    // the caller retries.
    for (field, column) in [(&mut merged.email, "email"), (&mut merged.phone, "phone")] {
        let Some(value) = field.clone() else { continue };
        let sql = format!("SELECT id FROM contacts WHERE {column} = $1 AND id <> $2");
        let taken =
            D::fetch_optional(&mut *conn, Stmt::new(sql, params![value, &merged.id])).await?;
        if taken.is_some() {
            // A value we looked the contact up by and did not find, but that is taken now,
            // was committed by someone else in between: had we looked a moment later we
            // would have merged into that contact. Start again rather than split one person
            // in two. (A phone we never looked up, because the e-mail found the contact,
            // legitimately belongs to someone else.)
            let looked_up = column == "email" || !found_by_email;
            if strict && looked_up {
                return Ok(None);
            }
            *field = existing.as_ref().and_then(|c| {
                if column == "email" {
                    c.email.clone()
                } else {
                    c.phone.clone()
                }
            });
        }
    }
    let write = if is_new {
        insert(&merged)
    } else {
        update(&merged)
    };
    D::execute(&mut *conn, write).await?;
    link_addresses::<D>(conn, &merged.id, &u.addresses, u.now).await?;
    set_memberships::<D>(conn, &merged.id, &u.memberships, u.now).await?;
    Ok(Some(merged))
}

/// Adds the contact to lists and tags or takes it off them; adding twice keeps the first
/// time it was added.
async fn set_memberships<D: Exec>(
    conn: &mut D::Connection,
    contact_id: &str,
    memberships: &[Membership],
    now: Millis,
) -> Result<()> {
    for m in memberships {
        let (table, column) = match m.kind {
            MembershipKind::List => ("contact_lists", "list"),
            MembershipKind::Tag => ("contact_tags", "tag"),
        };
        let sql = if m.member {
            format!(
                "INSERT INTO {table} ({column}, contact_id, added_at) VALUES ($1, $2, $3)
                 ON CONFLICT ({column}, contact_id) DO NOTHING"
            )
        } else {
            format!("DELETE FROM {table} WHERE {column} = $1 AND contact_id = $2 AND $3 = $3")
        };
        D::execute(
            &mut *conn,
            Stmt::new(sql, params![&m.name, contact_id, now]),
        )
        .await?;
    }
    Ok(())
}

/// Links and unlinks a contact's channel addresses: one address per channel per contact, and
/// an address linked again moves from whoever held it.
async fn link_addresses<D: Exec>(
    conn: &mut D::Connection,
    contact_id: &str,
    addresses: &[(String, Option<String>)],
    now: Millis,
) -> Result<()> {
    for (channel, address) in addresses {
        let clear = Stmt::new(
            "DELETE FROM contact_addresses WHERE contact_id = $1 AND channel = $2
                 AND (CAST($3 AS TEXT) IS NULL OR address <> $3)",
            params![contact_id, channel, address],
        );
        D::execute(&mut *conn, clear).await?;
        if let Some(address) = address {
            let link = Stmt::new(
                "INSERT INTO contact_addresses (channel, address, contact_id, created_at)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (channel, address) DO UPDATE SET contact_id = excluded.contact_id,
                     created_at = excluded.created_at",
                params![channel, address, contact_id, now],
            );
            D::execute(&mut *conn, link).await?;
        }
    }
    Ok(())
}

pub(in crate::store) async fn list<B: Backend>(b: &B, f: &ContactFilter) -> Result<Vec<Contact>> {
    let sql = format!(
        "SELECT {} FROM contacts WHERE (CAST($1 AS TEXT) IS NULL OR lower(coalesce(email, '')) LIKE $1 ESCAPE '\\'
             OR coalesce(phone, '') LIKE $1 ESCAPE '\\'
             OR lower(coalesce(first_name, '') || ' ' || coalesce(last_name, '')) LIKE $1 ESCAPE '\\')
           AND (CAST($2 AS TEXT) IS NULL OR status = $2) AND (CAST($3 AS BIGINT) IS NULL OR created_at < $3)
         ORDER BY created_at DESC, id DESC LIMIT $4",
        columns::<B::Db>()
    );
    let p = params![
        f.query.as_deref().map(like),
        &f.status,
        f.created_before,
        f.limit,
    ];
    read_all(b, Stmt::new(sql, p), rows::contact).await
}

/// A `LIKE` pattern matching `q` anywhere, any case.
fn like(q: &str) -> String {
    format!(
        "%{}%",
        q.to_lowercase()
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_")
    )
}

/// Applies `patch`; `None` when there is no such contact.
pub(in crate::store) async fn patch<B: Backend>(
    b: &B,
    id: &str,
    patch: &ContactPatch,
    now: Millis,
) -> Result<Option<Contact>> {
    let mut tx = b.begin().await?;
    let row = B::Db::fetch_optional(&mut *tx, by::<B::Db>("id", id, true)).await?;
    let Some(row) = row else {
        tx.rollback().await?;
        return Ok(None);
    };
    let c = patch.apply(rows::contact(&row)?, now);
    match B::Db::execute(&mut *tx, update(&c)).await {
        Ok(_) => {
            tx.commit().await?;
            Ok(Some(c))
        }
        Err(StoreError::Database(sqlx::Error::Database(e))) if e.is_unique_violation() => {
            tx.rollback().await?;
            Err(StoreError::Conflict(
                "another contact already has this e-mail address or phone number".into(),
            ))
        }
        Err(e) => Err(e),
    }
}

/// Deletes a contact; runs that named it no longer do.
pub(in crate::store) async fn delete<B: Backend>(b: &B, id: &str) -> Result<bool> {
    let mut tx = b.begin().await?;
    let unlink = Stmt::new(
        "UPDATE runs SET contact_id = NULL WHERE contact_id = $1",
        params![id],
    );
    B::Db::execute(&mut *tx, unlink).await?;
    let addresses = Stmt::new(
        "DELETE FROM contact_addresses WHERE contact_id = $1",
        params![id],
    );
    B::Db::execute(&mut *tx, addresses).await?;
    let deleted = B::Db::execute(
        &mut *tx,
        Stmt::new("DELETE FROM contacts WHERE id = $1", params![id]),
    )
    .await?;
    tx.commit().await?;
    Ok(deleted == 1)
}

pub(in crate::store) async fn count<B: Backend>(b: &B) -> Result<Vec<(Option<String>, i64)>> {
    let sql = "SELECT status, COUNT(*) AS n FROM contacts GROUP BY status ORDER BY 1 NULLS FIRST";
    read_all(b, Stmt::new(sql, params![]), rows::count).await
}
