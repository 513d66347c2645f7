-- A message sent as a template the provider approved (WhatsApp's message templates): its
-- name, language and values as JSON. `body` then only describes the message.
ALTER TABLE outbox ADD COLUMN approved_template TEXT;
