-- What providers report about a message after it was sent (delivered, bounced, complained...),
-- found by the provider's id for the message on its channel.
ALTER TABLE outbox ADD COLUMN delivery TEXT;
ALTER TABLE outbox ADD COLUMN delivery_error TEXT;
ALTER TABLE outbox ADD COLUMN delivery_at INTEGER;
CREATE INDEX outbox_by_provider_id ON outbox (channel, provider_id) WHERE provider_id IS NOT NULL;

-- Addresses a provider said not to send to any more on one channel: a bounce, a spam
-- complaint, an unsubscribe at the provider (Twilio's 21610). Checked with the contact's own
-- status before every send and delivery.
CREATE TABLE suppressions (
    channel    TEXT NOT NULL,
    address    TEXT NOT NULL,
    reason     TEXT NOT NULL CHECK (reason IN ('bounced', 'complained', 'unsubscribed')),
    detail     TEXT,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (channel, address)
);
