-- A frequency cap counts what one recipient was sent on one channel lately.
CREATE INDEX outbox_by_recipient ON outbox (channel, recipient, created_at);
