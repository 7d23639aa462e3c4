-- The events that the totals for metrics read (`ended` for dollars, `error` for sandbox
-- failures), so that a scrape reads those rows, not the whole log. Partial: the other events,
-- the great majority, cost nothing to index.
CREATE INDEX events_ended_and_errors ON events (type) WHERE type IN ('ended', 'error');
