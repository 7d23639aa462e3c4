-- The schema of nightshift's PostgreSQL store.
--
-- Column for column the same as the SQLite store's (migrations/*.sql), so that one set of
-- statements and row types serves both: times are BIGINT unix milliseconds, JSON is TEXT kept
-- verbatim (JSONB would reorder keys and lose the exact text that the event log promises).

CREATE TABLE tasks (
    id                  TEXT    NOT NULL PRIMARY KEY, -- ULID, lowercase: sorts by creation time
    state               TEXT    NOT NULL,
    spec                TEXT    NOT NULL,             -- TaskSpec as JSON, verbatim
    repo                TEXT    NOT NULL,             -- spec.repo, copied out for filtering
    created_at          BIGINT  NOT NULL,
    updated_at          BIGINT  NOT NULL,
    started_at          BIGINT,
    finished_at         BIGINT,
    base_commit         TEXT,
    branch              TEXT,
    head_commit         TEXT,
    summary             TEXT,
    error               TEXT,
    turns               BIGINT  NOT NULL DEFAULT 0,
    input_tokens        BIGINT  NOT NULL DEFAULT 0,
    cached_input_tokens BIGINT  NOT NULL DEFAULT 0,
    output_tokens       BIGINT  NOT NULL DEFAULT 0,
    cancel_requested    BOOLEAN NOT NULL DEFAULT FALSE, -- only request_cancel sets it
    worker              TEXT,                         -- who holds (or last held) the task
    lease_expires_at    BIGINT                        -- when that hold lapses
);

CREATE INDEX tasks_by_state_and_id ON tasks (state, id);
CREATE INDEX tasks_by_created_at ON tasks (created_at);
-- What claim_next walks: only the queued rows, oldest id first.
CREATE INDEX tasks_queued ON tasks (id) WHERE state = 'queued';

-- The append-only log, as in SQLite.
CREATE TABLE events (
    task_id TEXT    NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    seq     BIGINT  NOT NULL,                         -- 1-based, gapless within a task
    at      BIGINT  NOT NULL,
    type    TEXT    NOT NULL,
    body    TEXT    NOT NULL,
    schema  BIGINT  NOT NULL,                         -- nightshift_protocol::SCHEMA_VERSION
    PRIMARY KEY (task_id, seq)
);

-- The last sequence number given out per task. An appender bumps it with
-- `UPDATE ... RETURNING` and inserts its event in the same statement: the row lock orders
-- concurrent appenders, and a failed insert rolls the number back, so numbers stay gapless.
-- A table of its own so that each event rewrites a narrow row, not the task's wide one.
CREATE TABLE event_seqs (
    task_id  TEXT   NOT NULL PRIMARY KEY REFERENCES tasks (id) ON DELETE CASCADE,
    last_seq BIGINT NOT NULL
);

CREATE TABLE tokens (
    id           TEXT   NOT NULL PRIMARY KEY,
    name         TEXT   NOT NULL,
    scope        TEXT   NOT NULL,                     -- read, submit or admin
    secret_hash  TEXT   NOT NULL UNIQUE,
    created_at   BIGINT NOT NULL,
    last_used_at BIGINT,                              -- to the minute: see TOKEN_USE_PRECISION
    revoked_at   BIGINT
);
