-- Pushes and pull requests a forge outage held up: tried again at `next_at` (milliseconds), the
-- wait doubling with each failed attempt, until they succeed or are given up.

CREATE TABLE forge_retries (
    task_id  TEXT    NOT NULL PRIMARY KEY REFERENCES tasks (id) ON DELETE CASCADE,
    attempts INTEGER NOT NULL,
    next_at  INTEGER NOT NULL,
    reason   TEXT    NOT NULL
) STRICT;

CREATE INDEX forge_retries_by_next_at ON forge_retries (next_at);
