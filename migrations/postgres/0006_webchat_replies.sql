-- What one web chat visitor was sent on one channel, in sending order (see the SQLite
-- migration of the same name).
CREATE INDEX outbox_sent_to ON outbox (channel, recipient, sent_at) WHERE sent_at IS NOT NULL;
