-- Pushes and pull requests a forge outage held up: as SQLite's migrations/0010_forge_retries.sql.

CREATE TABLE forge_retries (
    task_id  TEXT   NOT NULL PRIMARY KEY REFERENCES tasks (id) ON DELETE CASCADE,
    attempts BIGINT NOT NULL,
    next_at  BIGINT NOT NULL,
    reason   TEXT   NOT NULL
);

CREATE INDEX forge_retries_by_next_at ON forge_retries (next_at);
