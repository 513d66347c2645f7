//! Campaigns: their state, the contacts an audience selects, and enrolment, which records the
//! recipient and creates its run in one transaction.

use std::fmt::Write as _;

use super::{Backend, Dialect, Exec, Param, Stmt, commit, params, read_all, read_one, write};
use crate::store::campaigns::{AudienceFilter, CampaignCounts, CampaignRow, StepCounts};
use crate::store::rows::RowView;
use crate::store::{Millis, NewRun, Result};

/// Recipients per enrolment statement: a run row binds 20 parameters, and SQLite takes at
/// most 32,766 in one statement.
const ENROL_ROWS: usize = 500;

/// The ids of contacts the audience selects who are not enrolled in this occurrence, after
/// `after` in id order, at most `limit`: one chunk of an enrolment. Every value the audience
/// names is a bound parameter.
pub(in crate::store) async fn candidates<B: Backend>(
    b: &B,
    campaign: &str,
    occurrence: &str,
    audience: &AudienceFilter,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<String>> {
    // Two forms, not `($3 IS NULL OR c.id > $3)`: with the `OR` the planner cannot seek to
    // `after`, and every chunk of a large audience would walk past all the chunks before it.
    let mut sql = String::from(if after.is_some() {
        "SELECT c.id AS id FROM contacts c WHERE c.id > $3"
    } else {
        "SELECT c.id AS id FROM contacts c WHERE CAST($3 AS TEXT) IS NULL"
    });
    sql.push_str(
        " AND NOT EXISTS (SELECT 1 FROM campaign_enrolments e
                           WHERE e.campaign_id = $1 AND e.contact_id = c.id",
    );
    sql.push_str(if audience.once_ever {
        " AND CAST($2 AS TEXT) IS NOT NULL)"
    } else {
        " AND e.occurrence = $2)"
    });
    let mut p: Vec<Param> = params![campaign, occurrence, after, limit];
    let next = |p: &mut Vec<Param>, v: Param| {
        p.push(v);
        format!("${}", p.len())
    };
    if !audience.lists.is_empty() {
        let list = next(&mut p, Param::List(audience.lists.clone()));
        let _ = write!(
            sql,
            " AND EXISTS (SELECT 1 FROM contact_lists l WHERE l.contact_id = c.id AND {})",
            B::Db::in_list("l.list", &list)
        );
    }
    for tag in &audience.tags {
        let tag = next(&mut p, tag.into());
        let _ = write!(
            sql,
            " AND EXISTS (SELECT 1 FROM contact_tags t WHERE t.contact_id = c.id AND t.tag = {tag})"
        );
    }
    if !audience.without_tags.is_empty() {
        let list = next(&mut p, Param::List(audience.without_tags.clone()));
        let _ = write!(
            sql,
            " AND NOT EXISTS (SELECT 1 FROM contact_tags t WHERE t.contact_id = c.id AND {})",
            B::Db::in_list("t.tag", &list)
        );
    }
    if !audience.status.is_empty() {
        let list = next(&mut p, Param::List(audience.status.clone()));
        let _ = write!(sql, " AND {}", B::Db::in_list("c.status", &list));
    }
    super::audience::conditions::<B::Db>(audience, &mut sql, &mut p);
    sql.push_str(" ORDER BY c.id LIMIT $4");
    read_all(b, Stmt::new(sql, p), |r| r.text("id")).await
}

/// Enrolls each (contact, run) pair not yet enrolled in this occurrence, and creates its run
/// with the contact as its recipient, all in one transaction. The enrolment's primary key
/// decides: a pair already enrolled (by another process, or before a crash) creates nothing.
/// Returns how many were enrolled.
pub(in crate::store) async fn enrol<B: Backend>(
    b: &B,
    campaign: &str,
    occurrence: &str,
    recipients: &[(String, NewRun)],
    now: Millis,
) -> Result<u64> {
    let mut tx = b.begin().await?;
    let mut enrolled = 0;
    // Two statements per part, whatever its size: the enrolments (those already made are
    // skipped, and the rest say which runs to create), then those runs.
    for part in recipients.chunks(ENROL_ROWS) {
        let mut sql = String::from(
            "INSERT INTO campaign_enrolments (campaign_id, contact_id, occurrence, run_id, enrolled_at) VALUES ",
        );
        let mut p = params![campaign, occurrence, now];
        for (n, (contact, run)) in part.iter().enumerate() {
            if n > 0 {
                sql.push_str(", ");
            }
            let _ = write!(sql, "($1, ${}, $2, ${}, $3)", p.len() + 1, p.len() + 2);
            p.extend(params![contact, &run.id]);
        }
        sql.push_str(
            " ON CONFLICT (campaign_id, contact_id, occurrence) DO NOTHING RETURNING run_id",
        );
        let made = B::Db::fetch_all(&mut *tx, Stmt::new(sql, p))
            .await?
            .iter()
            .map(|r| r.text("run_id"))
            .collect::<Result<std::collections::HashSet<String>>>()?;
        // Each run is stored with its recipient: one row, not an insert and an update.
        let runs: Vec<(&NewRun, crate::store::RunState)> = part
            .iter()
            .filter(|(_, run)| made.contains(&run.id))
            .map(|(contact, run)| {
                let mut state = commit::pending_state(run);
                state.contact_id = Some(contact.clone());
                (run, state)
            })
            .collect();
        if !runs.is_empty() {
            let rows: Vec<_> = runs.iter().map(|(r, s)| (*r, s, None)).collect();
            B::Db::execute(&mut *tx, commit::insert_runs(&rows)).await?;
        }
        enrolled += runs.len() as u64;
    }
    tx.commit().await?;
    Ok(enrolled)
}

pub(in crate::store) async fn get<B: Backend>(b: &B, id: &str) -> Result<Option<CampaignRow>> {
    let sql = "SELECT id, state, enrolled_at, occurrence, updated_at FROM campaigns WHERE id = $1";
    read_one(b, Stmt::new(sql, params![id]), |r| {
        Ok(CampaignRow {
            id: r.text("id")?,
            state: r.text("state")?,
            enrolled_at: r.opt_int("enrolled_at")?,
            occurrence: r.opt_text("occurrence")?,
            updated_at: r.int("updated_at")?,
        })
    })
    .await
}

/// Sets a campaign's state; `enrolled_at`, when given, records that its audience is enrolled
/// in full (and is never cleared).
pub(in crate::store) async fn set_state<B: Backend>(
    b: &B,
    id: &str,
    state: &str,
    enrolled_at: Option<Millis>,
    now: Millis,
) -> Result<()> {
    let sql = "INSERT INTO campaigns (id, state, enrolled_at, updated_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (id) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at,
             enrolled_at = COALESCE(campaigns.enrolled_at, excluded.enrolled_at)";
    write(b, Stmt::new(sql, params![id, state, enrolled_at, now])).await?;
    Ok(())
}

/// Starts a recurring campaign's occurrence (`enrolled_at` None), or records it enrolled in
/// full. A campaign without a row starts running.
pub(in crate::store) async fn set_occurrence<B: Backend>(
    b: &B,
    id: &str,
    occurrence: &str,
    enrolled_at: Option<Millis>,
    now: Millis,
) -> Result<()> {
    let sql = "INSERT INTO campaigns (id, state, enrolled_at, occurrence, updated_at)
         VALUES ($1, 'running', $3, $2, $4)
         ON CONFLICT (id) DO UPDATE SET occurrence = excluded.occurrence,
             enrolled_at = excluded.enrolled_at, updated_at = excluded.updated_at";
    write(b, Stmt::new(sql, params![id, occurrence, enrolled_at, now])).await?;
    Ok(())
}

pub(in crate::store) async fn counts<B: Backend>(b: &B, id: &str) -> Result<CampaignCounts> {
    let runs = "SELECT COUNT(*) AS n,
             COALESCE(SUM(CASE WHEN r.status IN ('completed', 'failed', 'cancelled') THEN 1 ELSE 0 END), 0) AS done
         FROM campaign_enrolments e JOIN runs r ON r.id = e.run_id WHERE e.campaign_id = $1";
    let (enrolled, finished) = read_one(b, Stmt::new(runs, params![id]), |r| {
        Ok((r.int("n")?, r.int("done")?))
    })
    .await?
    .unwrap_or((0, 0));
    let by_step = "SELECT step_id, status, delivery, COUNT(*) AS n FROM outbox
         WHERE workflow_id = $1 GROUP BY step_id, status, delivery ORDER BY step_id";
    let rows = read_all(b, Stmt::new(by_step, params![id]), |r| {
        Ok((
            r.opt_text("step_id")?.unwrap_or_default(),
            r.text("status")?,
            r.opt_text("delivery")?,
            r.int("n")?,
        ))
    })
    .await?;
    let mut steps: Vec<StepCounts> = Vec::new();
    for (step, status, delivery, n) in rows {
        if steps.last().is_none_or(|s| s.step != step) {
            steps.push(StepCounts {
                step: step.clone(),
                ..StepCounts::default()
            });
        }
        let Some(s) = steps.last_mut() else { continue };
        match status.as_str() {
            "sent" => s.sent += n,
            "failed" => s.failed += n,
            _ => s.pending += n,
        }
        match delivery.as_deref() {
            Some("delivered") => s.delivered += n,
            Some("bounced") => s.bounced += n,
            Some("complained") => s.complained += n,
            Some("unsubscribed") => s.unsubscribed += n,
            _ => {}
        }
    }
    // An exit is logged as the step's output, `{"status":"exited","exit":"replied",...}`.
    let exits = r#"SELECT COUNT(*) AS n,
             COALESCE(SUM(CASE WHEN s.output LIKE '%"exit":"replied"%' THEN 1 ELSE 0 END), 0) AS replied,
             COALESCE(SUM(CASE WHEN s.output LIKE '%"exit":"converted"%' THEN 1 ELSE 0 END), 0) AS converted
         FROM campaign_enrolments e JOIN step_log s ON s.run_id = e.run_id
         WHERE e.campaign_id = $1 AND s.output LIKE '%"status":"exited"%'"#;
    let (exited, replied, converted) = read_one(b, Stmt::new(exits, params![id]), |r| {
        Ok((r.int("n")?, r.int("replied")?, r.int("converted")?))
    })
    .await?
    .unwrap_or((0, 0, 0));
    Ok(CampaignCounts {
        enrolled,
        finished,
        active: enrolled - finished,
        exited,
        replied,
        converted,
        steps,
    })
}
