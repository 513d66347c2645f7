-- A recurring campaign's occurrence in progress (or last enrolled in full, with
-- enrolled_at): each cron time it enrolls for is one occurrence.
ALTER TABLE campaigns ADD COLUMN occurrence TEXT;

-- Reads a contact attribute as a time for campaign audiences (`older_than`, `before`...): unix
-- milliseconds, or NULL for text that is not an ISO 8601 date or date and time. Never an error,
-- so one contact's odd value cannot fail a whole enrolment query, and never one of the words
-- PostgreSQL's own input reads ('now', 'today', 'epoch'). A date alone, or a date and time
-- without an offset, is in UTC, as SQLite's unixepoch() reads it.
CREATE FUNCTION herald_time_ms(t TEXT) RETURNS BIGINT
LANGUAGE plpgsql IMMUTABLE STRICT AS $$
BEGIN
    IF t !~ '^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?$' THEN
        RETURN NULL;
    END IF;
    IF t ~ '(Z|[+-]\d{2}:?\d{2})$' AND t ~ '[T ]' THEN
        RETURN floor(extract(epoch FROM t::timestamptz) * 1000)::BIGINT;
    END IF;
    RETURN floor(extract(epoch FROM (t::timestamp AT TIME ZONE 'UTC')) * 1000)::BIGINT;
EXCEPTION WHEN others THEN
    RETURN NULL;
END
$$;
