//! Contacts: looking them up, upserting them as runs and inbound messages learn about people,
//! and an operator's edits.

use super::{Backend, Dialect, Exec, Stmt, params, read_all, read_one};
use crate::store::admin::{ContactFilter, ContactPatch};
use crate::store::rows::{self, contact_columns, to_text};
use crate::store::{Contact, ContactUpsert, Millis, Result, StoreError};

/// The contact whose `column` (`id`, `email` or `phone`) is `value`, ended with `lock`
/// ([`Dialect::FOR_UPDATE`] when the caller goes on to write it).
fn by(column: &str, value: &str, lock: &str) -> Stmt {
    let sql = format!(
        "SELECT {} FROM contacts WHERE {column} = $1{lock}",
        contact_columns!()
    );
    Stmt::new(sql, params![value])
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
    read_one(b, by("id", id, ""), rows::contact).await
}

/// The contact with this e-mail, else the one with this phone.
pub(in crate::store) async fn find<B: Backend>(
    b: &B,
    email: Option<&str>,
    phone: Option<&str>,
) -> Result<Option<Contact>> {
    for (column, value) in [("email", email), ("phone", phone)] {
        if let Some(value) = value
            && let Some(c) = read_one(b, by(column, value, ""), rows::contact).await?
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
        Some(e) => D::fetch_optional(&mut *conn, by("email", e, D::FOR_UPDATE))
            .await?
            .map(|r| rows::contact(&r))
            .transpose()?,
        None => None,
    };
    let found_by_email = by_email.is_some();
    let existing = match (by_email, &u.phone) {
        (Some(c), _) => Some(c),
        (None, Some(p)) => D::fetch_optional(&mut *conn, by("phone", p, D::FOR_UPDATE))
            .await?
            .map(|r| rows::contact(&r))
            .transpose()?,
        (None, None) => None,
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
    Ok(Some(merged))
}

pub(in crate::store) async fn list<B: Backend>(b: &B, f: &ContactFilter) -> Result<Vec<Contact>> {
    let sql = concat!(
        "SELECT ",
        contact_columns!(),
        " FROM contacts WHERE (CAST($1 AS TEXT) IS NULL OR lower(coalesce(email, '')) LIKE $1 ESCAPE '\\'
             OR coalesce(phone, '') LIKE $1 ESCAPE '\\'
             OR lower(coalesce(first_name, '') || ' ' || coalesce(last_name, '')) LIKE $1 ESCAPE '\\')
           AND (CAST($2 AS TEXT) IS NULL OR status = $2) AND (CAST($3 AS BIGINT) IS NULL OR created_at < $3)
         ORDER BY created_at DESC, id DESC LIMIT $4"
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
    let row = B::Db::fetch_optional(&mut *tx, by("id", id, B::Db::FOR_UPDATE)).await?;
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
