-- Compliance, retries and labels (see the SQLite migration of the same name).
ALTER TABLE outbox
    ADD COLUMN category TEXT NOT NULL DEFAULT 'marketing' CHECK (category IN ('marketing', 'transactional', 'compliance')),
    ADD COLUMN retry TEXT;
ALTER TABLE outbox DROP CONSTRAINT outbox_status_check;
ALTER TABLE outbox ADD CONSTRAINT outbox_status_check
    CHECK (status IN ('pending', 'sending', 'sent', 'failed', 'suppressed', 'cancelled'));

ALTER TABLE step_log ADD COLUMN iteration TEXT;

ALTER TABLE runs ADD COLUMN labels TEXT NOT NULL DEFAULT '{}';

CREATE INDEX runs_finished ON runs (finished_at) WHERE finished_at IS NOT NULL;
