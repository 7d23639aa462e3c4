-- The first schema of nightshift's SQLite store.
--
-- Times are INTEGER unix milliseconds and JSON is TEXT, so that the same shapes carry over to
-- PostgreSQL through sqlx's `any` driver. Tables are STRICT so that a wrongly typed write fails
-- instead of being stored as whatever SQLite can coerce it to.

CREATE TABLE tasks (
    id                  TEXT    NOT NULL PRIMARY KEY, -- ULID, lowercase: sorts by creation time
    state               TEXT    NOT NULL,
    spec                TEXT    NOT NULL,             -- TaskSpec as JSON, verbatim
    repo                TEXT    NOT NULL,             -- spec.repo, copied out for filtering
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL,
    started_at          INTEGER,
    finished_at         INTEGER,
    base_commit         TEXT,
    branch              TEXT,
    head_commit         TEXT,
    summary             TEXT,
    error               TEXT,
    turns               INTEGER NOT NULL DEFAULT 0,
    input_tokens        INTEGER NOT NULL DEFAULT 0,
    cached_input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens       INTEGER NOT NULL DEFAULT 0,
    cancel_requested    INTEGER NOT NULL DEFAULT 0,   -- only request_cancel sets it
    worker              TEXT                          -- who claimed the task
) STRICT;

CREATE INDEX tasks_by_state ON tasks (state);
CREATE INDEX tasks_by_created_at ON tasks (created_at);

-- The append-only log. `body` is the event's own tagged JSON, kept verbatim so that fields a
-- newer nightshift adds survive an older one reading the log; `type` repeats the tag for queries.
CREATE TABLE events (
    task_id TEXT    NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    seq     INTEGER NOT NULL,                         -- 1-based, gapless within a task
    at      INTEGER NOT NULL,
    type    TEXT    NOT NULL,
    body    TEXT    NOT NULL,
    schema  INTEGER NOT NULL,                         -- nightshift_protocol::SCHEMA_VERSION
    PRIMARY KEY (task_id, seq)
) STRICT;
