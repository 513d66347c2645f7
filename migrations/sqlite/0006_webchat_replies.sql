-- A web chat's reply stream reads what one visitor was sent on one channel, in the order it
-- was sent, from where their browser left off (and, every second or so, what another Herald
-- process sent them). Only sent messages are indexed.
CREATE INDEX outbox_sent_to ON outbox (channel, recipient, sent_at) WHERE sent_at IS NOT NULL;
