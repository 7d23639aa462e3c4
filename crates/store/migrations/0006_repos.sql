-- Repositories a server serves (`nightshift repo add`), by name; and the repositories each API
-- token is limited to: a JSON array of names, `[]` for every repository the server serves.
-- `name` is checked by nightshift_protocol::check_repo_name before any write.

CREATE TABLE repos (
    name       TEXT    NOT NULL PRIMARY KEY,
    location   TEXT    NOT NULL UNIQUE,          -- the absolute path of its top level
    created_at INTEGER NOT NULL
) STRICT;

ALTER TABLE tokens ADD COLUMN repos TEXT NOT NULL DEFAULT '[]';
