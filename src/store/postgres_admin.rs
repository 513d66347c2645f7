//! [`Admin`] on PostgreSQL: the same queries as on SQLite, in PostgreSQL's dialect. Bulk
//! changes and retention work in short transactions, so they never hold locks for long.

use async_trait::async_trait;
use sqlx::Row as _;

use super::admin::{
    Admin, ContactFilter, ContactPatch, MessageChange, OutboxFilter, Purged, RunSelection,
};
use super::postgres::PgStore;
use super::rows::{contact_columns, decode_contact, decode_outbox, outbox_columns, to_text};
use super::{Contact, Millis, OutboxRecord, OutboxStatus, Result, StoreError};

const UNFINISHED: &str = "('pending', 'running', 'waiting')";

fn like(q: &str) -> String {
    // PostgreSQL's LIKE escapes with a backslash by default.
    format!(
        "%{}%",
        q.to_lowercase()
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_")
    )
}

/// The WHERE clause of a bulk cancel, with its values in order.
fn selection_sql(s: &RunSelection) -> (String, Vec<Option<String>>) {
    let sql = format!(
        "status IN {UNFINISHED} AND ($1::text IS NULL OR workflow_id = $1) AND ($2::text IS NULL OR contact_id = $2)
           AND ($3::text IS NULL OR (labels::jsonb) ->> $3 = $4) AND ($5::text IS NULL OR status = $5)"
    );
    let (name, value) = match &s.label {
        Some((n, v)) => (Some(n.clone()), Some(v.clone())),
        None => (None, None),
    };
    (
        sql,
        vec![
            s.workflow_id.clone(),
            s.contact_id.clone(),
            name,
            value,
            s.status.map(|st| st.as_str().to_owned()),
        ],
    )
}

#[async_trait]
impl Admin for PgStore {
    async fn list_contacts(&self, f: &ContactFilter) -> Result<Vec<Contact>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            contact_columns!(),
            " FROM contacts WHERE ($1::text IS NULL OR lower(coalesce(email, '')) LIKE $1
                 OR coalesce(phone, '') LIKE $1
                 OR lower(coalesce(first_name, '') || ' ' || coalesce(last_name, '')) LIKE $1)
               AND ($2::text IS NULL OR status = $2) AND ($3::bigint IS NULL OR created_at < $3)
             ORDER BY created_at DESC, id DESC LIMIT $4"
        ))
        .bind(f.query.as_deref().map(like))
        .bind(&f.status)
        .bind(f.created_before)
        .bind(f.limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok(decode_contact!(r))).collect()
    }

    async fn update_contact(
        &self,
        id: &str,
        patch: &ContactPatch,
        now: Millis,
    ) -> Result<Option<Contact>> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(concat!(
            "SELECT ",
            contact_columns!(),
            " FROM contacts WHERE id = $1 FOR UPDATE"
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Ok(None);
        };
        let c = patch.apply(decode_contact!(&row), now);
        let updated = sqlx::query(
            "UPDATE contacts SET email = $1, phone = $2, first_name = $3, last_name = $4, status = $5,
                 timezone = $6, attributes = $7, updated_at = $8 WHERE id = $9",
        )
        .bind(&c.email)
        .bind(&c.phone)
        .bind(&c.first_name)
        .bind(&c.last_name)
        .bind(&c.status)
        .bind(&c.timezone)
        .bind(to_text(&serde_json::Value::Object(c.attributes.clone())))
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await;
        match updated {
            Ok(_) => {
                tx.commit().await?;
                Ok(Some(c))
            }
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                tx.rollback().await?;
                Err(StoreError::Conflict(
                    "another contact already has this e-mail address or phone number".into(),
                ))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn delete_contact(&self, id: &str) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE runs SET contact_id = NULL WHERE contact_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let r = sqlx::query("DELETE FROM contacts WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(r.rows_affected() == 1)
    }

    async fn count_contacts(&self) -> Result<Vec<(Option<String>, i64)>> {
        Ok(sqlx::query_as(
            "SELECT status, COUNT(*) FROM contacts GROUP BY status ORDER BY 1 NULLS FIRST",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    async fn message(&self, id: &str) -> Result<Option<OutboxRecord>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            outbox_columns!(),
            " FROM outbox WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| Ok(decode_outbox!(&r))).transpose()
    }

    async fn list_messages(&self, f: &OutboxFilter) -> Result<Vec<OutboxRecord>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            outbox_columns!(),
            " FROM outbox WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR channel = $2)
               AND ($3::text IS NULL OR run_id = $3) AND ($4::bigint IS NULL OR created_at < $4)
             ORDER BY created_at DESC, id DESC LIMIT $5"
        ))
        .bind(f.status.map(OutboxStatus::as_str))
        .bind(&f.channel)
        .bind(&f.run_id)
        .bind(f.created_before)
        .bind(f.limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok(decode_outbox!(r))).collect()
    }

    async fn retry_message(&self, id: &str, now: Millis) -> Result<MessageChange> {
        let r = sqlx::query(
            "UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_at = $1, lease_owner = NULL,
                 updated_at = $1 WHERE id = $2 AND status = 'failed'",
        )
        .bind(now)
        .bind(id)
        .execute(&self.pool)
        .await?;
        change(self.message(id).await?, r.rows_affected())
    }

    async fn cancel_message(&self, id: &str, now: Millis) -> Result<MessageChange> {
        let r = sqlx::query(
            "UPDATE outbox SET status = 'cancelled', next_attempt_at = NULL, lease_owner = NULL,
                 last_error = 'cancelled by an operator', updated_at = $1 WHERE id = $2 AND status = 'pending'",
        )
        .bind(now)
        .bind(id)
        .execute(&self.pool)
        .await?;
        change(self.message(id).await?, r.rows_affected())
    }

    async fn cancel_runs(&self, s: &RunSelection, now: Millis, dry_run: bool) -> Result<u64> {
        let (filter, values) = selection_sql(s);
        if dry_run {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT COUNT(*) FROM runs WHERE {filter}"
            )));
            for v in &values {
                q = q.bind(v.clone());
            }
            let row = q.fetch_one(&self.pool).await?;
            return Ok(row.try_get::<i64, _>(0)? as u64);
        }
        let mut tx = self.pool.begin().await?;
        // The runs' ids first, so their messages and parents can be found after the update.
        let ids: Vec<String> = {
            let mut q = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT id FROM runs WHERE {filter}"
            )));
            for v in &values {
                q = q.bind(v.clone());
            }
            q.fetch_all(&mut *tx).await?
        };
        if ids.is_empty() {
            tx.rollback().await?;
            return Ok(0);
        }
        // Parents first, while the children still name them.
        sqlx::query(
            "UPDATE runs SET due_at = $1, updated_at = $1 WHERE status = 'waiting'
               AND id IN (SELECT parent_run_id FROM runs WHERE id = ANY($2))",
        )
        .bind(now)
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
        let r = sqlx::query(
            "UPDATE runs SET status = 'cancelled', due_at = NULL, lease_owner = NULL, wait_event = NULL,
                 wait_key = NULL, finished_at = $1, updated_at = $1, error = 'cancelled by an operator'
             WHERE id = ANY($2) AND status IN ('pending', 'running', 'waiting')",
        )
        .bind(now)
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE outbox SET status = 'cancelled', next_attempt_at = NULL, lease_owner = NULL,
                 last_error = 'the run was cancelled', updated_at = $1
             WHERE status = 'pending' AND run_id = ANY($2)",
        )
        .bind(now)
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(r.rows_affected())
    }

    async fn purge(
        &self,
        runs_before: Option<Millis>,
        events_before: Option<Millis>,
        batch: i64,
    ) -> Result<Purged> {
        let mut out = Purged::default();
        if let Some(before) = runs_before {
            loop {
                let mut tx = self.pool.begin().await?;
                let ids: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT r.id FROM runs r WHERE r.finished_at IS NOT NULL AND r.finished_at < $1
                       AND r.status NOT IN {UNFINISHED}
                       AND NOT EXISTS (SELECT 1 FROM runs p WHERE p.id = r.parent_run_id AND p.status IN {UNFINISHED})
                     LIMIT $2"
                )))
                .bind(before)
                .bind(batch)
                .fetch_all(&mut *tx)
                .await?;
                if ids.is_empty() {
                    tx.rollback().await?;
                    break;
                }
                for (table, column, counter) in [
                    ("step_log", "run_id", &mut out.steps),
                    ("outbox", "run_id", &mut out.messages),
                    ("runs", "id", &mut out.runs),
                ] {
                    let r = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DELETE FROM {table} WHERE {column} = ANY($1)"
                    )))
                    .bind(&ids)
                    .execute(&mut *tx)
                    .await?;
                    *counter += r.rows_affected();
                }
                tx.commit().await?;
                if (ids.len() as i64) < batch {
                    break;
                }
            }
        }
        if let Some(before) = events_before {
            loop {
                let r = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE created_at < $1
                       AND created_at < coalesce((SELECT MIN(created_at) FROM runs WHERE status IN {UNFINISHED}), $1)
                     LIMIT $2)"
                )))
                .bind(before)
                .bind(batch)
                .execute(&self.pool)
                .await?;
                out.events += r.rows_affected();
                if (r.rows_affected() as i64) < batch {
                    break;
                }
            }
        }
        Ok(out)
    }
}

/// The outcome of an UPDATE guarded by the message's status.
fn change(now: Option<OutboxRecord>, affected: u64) -> Result<MessageChange> {
    Ok(match now {
        None => MessageChange::NotFound,
        Some(m) if affected == 1 => MessageChange::Done(Box::new(m)),
        Some(m) => MessageChange::WrongState(m.status),
    })
}
