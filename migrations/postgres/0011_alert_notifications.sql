-- What each route last told each group of alerts: the alerts notified as firing (with their
-- labels and annotations, for the resolved notice) and when. `seq` counts notifications; a
-- process writes the next one only where `seq` is still what it read, and the outbox row's
-- idempotency key carries it, so two processes never notify one change twice.
CREATE TABLE alert_notifications (
    route      TEXT NOT NULL,
    group_key  TEXT NOT NULL,
    seq        BIGINT NOT NULL,
    notified   TEXT NOT NULL,
    sent_at    BIGINT,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (route, group_key)
);

-- Silences: alerts whose labels fit every matcher are not notified between starts_at and
-- ends_at. Expiring one sets ends_at to the time it was expired.
CREATE TABLE silences (
    id         TEXT PRIMARY KEY,
    matchers   TEXT NOT NULL,
    starts_at  BIGINT NOT NULL,
    ends_at    BIGINT NOT NULL,
    created_by TEXT,
    comment    TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX silences_by_end ON silences (ends_at);
