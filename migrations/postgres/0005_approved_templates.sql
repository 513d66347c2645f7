-- A message sent as a template the provider approved (see the SQLite migration of the same
-- name).
ALTER TABLE outbox ADD COLUMN approved_template TEXT;
