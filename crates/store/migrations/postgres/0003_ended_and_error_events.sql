-- The events that the totals for metrics read, as SQLite's
-- migrations/0004_ended_and_error_events.sql.
CREATE INDEX events_ended_and_errors ON events (type) WHERE type IN ('ended', 'error');
