-- Compliance, retries and labels.
--
-- The outbox learns a message's category (marketing, transactional or compliance: what
-- suppression applies to it), the send step's own retry policy, and two final states:
-- `suppressed` (the recipient opted out, bounced or complained after the message was queued;
-- it is checked again at delivery) and `cancelled` (by an operator). SQLite cannot change a
-- CHECK constraint in place, so the table is rebuilt.
CREATE TABLE outbox_v2 (
    id              TEXT PRIMARY KEY,
    run_id          TEXT,
    workflow_id     TEXT,
    step_id         TEXT,
    channel         TEXT NOT NULL,
    recipient       TEXT NOT NULL,
    sender          TEXT,
    subject         TEXT,
    body            TEXT NOT NULL,
    html            INTEGER NOT NULL DEFAULT 0,
    headers         TEXT NOT NULL DEFAULT '{}',
    idempotency_key TEXT NOT NULL UNIQUE,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'sending', 'sent', 'failed', 'suppressed', 'cancelled')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    max_attempts    INTEGER NOT NULL,
    next_attempt_at INTEGER,
    lease_owner     TEXT,
    provider_id     TEXT,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    sent_at         INTEGER,
    category        TEXT NOT NULL DEFAULT 'marketing' CHECK (category IN ('marketing', 'transactional', 'compliance')),
    retry           TEXT
);
INSERT INTO outbox_v2 (id, run_id, workflow_id, step_id, channel, recipient, sender, subject, body, html, headers,
    idempotency_key, status, attempts, max_attempts, next_attempt_at, lease_owner, provider_id, last_error,
    created_at, updated_at, sent_at)
SELECT id, run_id, workflow_id, step_id, channel, recipient, sender, subject, body, html, headers,
    idempotency_key, status, attempts, max_attempts, next_attempt_at, lease_owner, provider_id, last_error,
    created_at, updated_at, sent_at
FROM outbox;
DROP TABLE outbox;
ALTER TABLE outbox_v2 RENAME TO outbox;
CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE next_attempt_at IS NOT NULL;
CREATE INDEX outbox_by_run ON outbox (run_id);
CREATE INDEX outbox_by_status ON outbox (status);

-- Which iteration of the enclosing `for_each` loops a step-log line belongs to ("2", "0.3").
ALTER TABLE step_log ADD COLUMN iteration TEXT;

-- A run's labels (`labels:` in its workflow, rendered when it starts), for finding and
-- cancelling runs by client, campaign or anything else.
ALTER TABLE runs ADD COLUMN labels TEXT NOT NULL DEFAULT '{}';

-- Retention deletes finished runs by age.
CREATE INDEX runs_finished ON runs (finished_at) WHERE finished_at IS NOT NULL;
