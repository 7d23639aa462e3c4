-- Leases for the queue and API tokens.
--
-- A worker holds a claimed task until `lease_expires_at` (unix milliseconds) and renews the lease
-- while it works; a task whose lease lapsed is its reconciler's to settle. `worker` already
-- exists (0001). Tokens keep only a hash of their secret.

ALTER TABLE tasks ADD COLUMN lease_expires_at INTEGER;

-- The queue takes the oldest queued task: one index walk instead of a sort.
CREATE INDEX tasks_by_state_and_id ON tasks (state, id);
DROP INDEX tasks_by_state;

CREATE TABLE tokens (
    id           TEXT    NOT NULL PRIMARY KEY,
    name         TEXT    NOT NULL,
    scope        TEXT    NOT NULL,              -- read, submit or admin
    secret_hash  TEXT    NOT NULL UNIQUE,
    created_at   INTEGER NOT NULL,
    last_used_at INTEGER,                       -- to the minute: see TOKEN_USE_PRECISION
    revoked_at   INTEGER
) STRICT;
