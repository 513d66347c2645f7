-- Lists and tags: what a campaign's audience selects by. One row per membership, so a list of
-- a million contacts is an index range, not a scan of every contact's attributes.
CREATE TABLE contact_lists (
    list       TEXT NOT NULL,
    contact_id TEXT NOT NULL,
    added_at   BIGINT NOT NULL,
    PRIMARY KEY (list, contact_id)
);
CREATE INDEX contact_lists_by_contact ON contact_lists (contact_id);

CREATE TABLE contact_tags (
    tag        TEXT NOT NULL,
    contact_id TEXT NOT NULL,
    added_at   BIGINT NOT NULL,
    PRIMARY KEY (tag, contact_id)
);
CREATE INDEX contact_tags_by_contact ON contact_tags (contact_id);
