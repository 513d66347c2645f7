-- Herald's store. Times are unix milliseconds from the engine's clock (never the database's),
-- so a virtual clock in tests governs everything. JSON is stored as text, as in SQLite, so both
-- backends share one row format.

-- Every definition version ever loaded, by content hash. Runs name the version they run on.
CREATE TABLE definitions (
    hash          TEXT PRIMARY KEY,
    id            TEXT NOT NULL,
    kind          TEXT NOT NULL,
    source        TEXT NOT NULL,
    document      TEXT NOT NULL,
    first_seen_at BIGINT NOT NULL
);
CREATE INDEX definitions_by_id ON definitions (id, first_seen_at);

-- Runs. `due_at` is when the run next needs a worker: now for a pending run, the timer for a
-- waiting one (a `wait`, a `wait_for` timeout, a retry backoff), the lease expiry for a running
-- one. One index on it finds all due work, and an expired lease makes a crashed worker's run
-- due again. NULL once the run has finished.
CREATE TABLE runs (
    id              TEXT PRIMARY KEY,
    workflow_id     TEXT NOT NULL,
    version         TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'running', 'waiting', 'completed', 'failed', 'cancelled')),
    trigger_kind    TEXT NOT NULL,
    idempotency_key TEXT,
    cursor          TEXT NOT NULL,
    context         TEXT NOT NULL,
    due_at          BIGINT,
    wait_event      TEXT,
    wait_key        TEXT,
    lease_owner     TEXT,
    attempts        BIGINT NOT NULL DEFAULT 0,
    contact_id      TEXT,
    parent_run_id   TEXT,
    response        TEXT,
    error           TEXT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    finished_at     BIGINT
);
CREATE UNIQUE INDEX runs_idempotency ON runs (workflow_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX runs_due ON runs (due_at) WHERE due_at IS NOT NULL;
CREATE INDEX runs_waiting_for ON runs (wait_event, wait_key) WHERE wait_event IS NOT NULL;
CREATE INDEX runs_by_workflow ON runs (workflow_id, created_at);
CREATE INDEX runs_by_status ON runs (status, created_at);
CREATE INDEX runs_by_parent ON runs (parent_run_id) WHERE parent_run_id IS NOT NULL;

-- What each step did, in order.
CREATE TABLE step_log (
    run_id      TEXT NOT NULL,
    seq         BIGINT NOT NULL,
    step_id     TEXT NOT NULL,
    action      TEXT NOT NULL,
    status      TEXT NOT NULL,
    attempt     BIGINT NOT NULL,
    started_at  BIGINT NOT NULL,
    finished_at BIGINT NOT NULL,
    output      TEXT,
    error       TEXT,
    PRIMARY KEY (run_id, seq)
);

-- Outbound messages. A `send` step writes its rendered message here in the same transaction as
-- the step's completion; the dispatcher delivers it. The idempotency key is derived from
-- (run, step, loop position), so a re-executed step can never enqueue a second copy.
CREATE TABLE outbox (
    id              TEXT PRIMARY KEY,
    run_id          TEXT,
    workflow_id     TEXT,
    step_id         TEXT,
    channel         TEXT NOT NULL,
    recipient       TEXT NOT NULL,
    sender          TEXT,
    subject         TEXT,
    body            TEXT NOT NULL,
    html            BOOLEAN NOT NULL DEFAULT FALSE,
    headers         TEXT NOT NULL DEFAULT '{}',
    idempotency_key TEXT NOT NULL UNIQUE,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'sending', 'sent', 'failed')),
    attempts        BIGINT NOT NULL DEFAULT 0,
    max_attempts    BIGINT NOT NULL,
    next_attempt_at BIGINT,
    lease_owner     TEXT,
    provider_id     TEXT,
    last_error      TEXT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    sent_at         BIGINT
);
CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE next_attempt_at IS NOT NULL;
CREATE INDEX outbox_by_run ON outbox (run_id);
CREATE INDEX outbox_by_status ON outbox (status);

-- People messages go to.
CREATE TABLE contacts (
    id          TEXT PRIMARY KEY,
    email       TEXT UNIQUE,
    phone       TEXT UNIQUE,
    first_name  TEXT,
    last_name   TEXT,
    status      TEXT,
    timezone    TEXT,
    attributes  TEXT NOT NULL DEFAULT '{}',
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

-- Events: emitted by workflows, or inbound messages (`message.<channel>`, keyed by sender).
-- Kept so a `wait_for` registered after its event arrived still sees it.
CREATE TABLE events (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    key           TEXT,
    data          TEXT NOT NULL,
    source_run_id TEXT,
    created_at    BIGINT NOT NULL
);
CREATE INDEX events_lookup ON events (name, key, created_at);

-- One row per cron slot: fired, skipped or missed. The primary key is what makes a slot fire
-- once across every Herald process sharing the database.
CREATE TABLE cron_fires (
    workflow_id  TEXT NOT NULL,
    trigger_key  TEXT NOT NULL,
    slot         BIGINT NOT NULL,
    outcome      TEXT NOT NULL CHECK (outcome IN ('fired', 'skipped', 'missed')),
    reason       TEXT,
    run_id       TEXT,
    recorded_at  BIGINT NOT NULL,
    PRIMARY KEY (workflow_id, trigger_key, slot)
);

-- How far each cron trigger's slots have been decided.
CREATE TABLE cron_state (
    workflow_id   TEXT NOT NULL,
    trigger_key   TEXT NOT NULL,
    checked_until BIGINT NOT NULL,
    PRIMARY KEY (workflow_id, trigger_key)
);
