-- Campaigns: each one's state (scheduled, running, paused, completed, cancelled) as its
-- operators and its driver left it. A campaign without a row is scheduled.
CREATE TABLE campaigns (
    id          TEXT PRIMARY KEY,
    state       TEXT NOT NULL,
    enrolled_at BIGINT,
    updated_at  BIGINT NOT NULL
);

-- One row per recipient and occurrence (a broadcast's send, a drip's enrolment): the primary
-- key is what enrols a contact once, whoever inserts it first; the recipient's run is created
-- in the same transaction.
CREATE TABLE campaign_enrolments (
    campaign_id TEXT NOT NULL,
    contact_id  TEXT NOT NULL,
    occurrence  TEXT NOT NULL,
    run_id      TEXT NOT NULL,
    enrolled_at BIGINT NOT NULL,
    PRIMARY KEY (campaign_id, contact_id, occurrence)
);
CREATE INDEX campaign_enrolments_by_run ON campaign_enrolments (run_id);
