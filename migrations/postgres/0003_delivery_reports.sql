-- What providers report about a message after it was sent (see the SQLite migration of the
-- same name).
ALTER TABLE outbox
    ADD COLUMN delivery TEXT,
    ADD COLUMN delivery_error TEXT,
    ADD COLUMN delivery_at BIGINT;
CREATE INDEX outbox_by_provider_id ON outbox (channel, provider_id) WHERE provider_id IS NOT NULL;
