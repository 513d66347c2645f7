-- Webhook responses by workflow, status and minute, for alerts on them (`webhook_responses`).
-- Each process counts in memory and adds its counts here every second or so, so the webhook's
-- answer never waits on this write; a crash loses at most that second's counts.
CREATE TABLE webhook_responses (
    workflow_id TEXT NOT NULL,
    minute      BIGINT NOT NULL,
    status      INTEGER NOT NULL,
    responses   BIGINT NOT NULL,
    PRIMARY KEY (workflow_id, minute, status)
);
CREATE INDEX webhook_responses_by_minute ON webhook_responses (minute);

-- The steps that finished in a window (`step_latency`), and the messages sent in one
-- (`delivery_rate`; failed messages are found by status, and are few).
CREATE INDEX step_log_finished ON step_log (finished_at);
CREATE INDEX outbox_sent ON outbox (sent_at) WHERE sent_at IS NOT NULL;
