-- A recurring campaign's occurrence in progress (or last enrolled in full, with
-- enrolled_at): each cron time it enrolls for is one occurrence. SQLite needs nothing for
-- audience attribute times: its own unixepoch() reads them.
ALTER TABLE campaigns ADD COLUMN occurrence TEXT;
