-- What providers report about a message after it was sent (delivered, bounced, complained...),
-- found by the provider's id for the message on its channel.
ALTER TABLE outbox ADD COLUMN delivery TEXT;
ALTER TABLE outbox ADD COLUMN delivery_error TEXT;
ALTER TABLE outbox ADD COLUMN delivery_at INTEGER;
CREATE INDEX outbox_by_provider_id ON outbox (channel, provider_id) WHERE provider_id IS NOT NULL;
