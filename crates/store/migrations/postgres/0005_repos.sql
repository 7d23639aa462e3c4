-- Repositories a server serves, and the repositories each API token is limited to: as SQLite's
-- migrations/0006_repos.sql. COLLATE "C" so that listing by name follows byte order, as SQLite
-- does.

CREATE TABLE repos (
    name       TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    location   TEXT   NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);

ALTER TABLE tokens ADD COLUMN repos TEXT NOT NULL DEFAULT '[]';
