-- A person's open conversation is found by the run's `conversation` label (channel:address)
-- on every message they send: an index on that label, not a scan of the conversation's runs.
CREATE INDEX runs_by_conversation ON runs (workflow_id, ((labels::jsonb) ->> 'conversation'), created_at);
