-- A frequency cap counts what one recipient was sent on one channel lately.
CREATE INDEX outbox_by_recipient ON outbox (channel, recipient, created_at);

-- A contact's addresses on channels whose addresses are neither e-mail nor phone (a Telegram
-- chat, a web chat visitor), by channel name. An address belongs to one contact on a channel,
-- and a contact has one address per channel: linking a chat again moves it.
CREATE TABLE contact_addresses (
    channel    TEXT NOT NULL,
    address    TEXT NOT NULL,
    contact_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (channel, address)
);
CREATE INDEX contact_addresses_by_contact ON contact_addresses (contact_id, channel);
