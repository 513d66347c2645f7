-- What providers report about a message after it was sent (see the SQLite migration of the
-- same name).
ALTER TABLE outbox
    ADD COLUMN delivery TEXT,
    ADD COLUMN delivery_error TEXT,
    ADD COLUMN delivery_at BIGINT;
CREATE INDEX outbox_by_provider_id ON outbox (channel, provider_id) WHERE provider_id IS NOT NULL;

-- Addresses a provider said not to send to any more on one channel (see the SQLite migration).
CREATE TABLE suppressions (
    channel    TEXT NOT NULL,
    address    TEXT NOT NULL,
    reason     TEXT NOT NULL CHECK (reason IN ('bounced', 'complained', 'unsubscribed')),
    detail     TEXT,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (channel, address)
);
