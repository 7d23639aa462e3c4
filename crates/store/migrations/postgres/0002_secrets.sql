-- Secrets for tasks, sealed: the caller encrypts each value and keeps the key away from the
-- store, which only ever holds the ciphertext. As SQLite's migrations/0003_secrets.sql.
--
-- `name` is 1 to 128 characters of [A-Za-z0-9_], starting with a letter or `_` (checked by the
-- store before any write). COLLATE "C" so that listing by name follows byte order, as SQLite
-- does, whatever the database's own collation.

CREATE TABLE secrets (
    name       TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    sealed     BYTEA  NOT NULL,                   -- the encrypted value, as the caller gave it
    updated_at BIGINT NOT NULL                    -- unix milliseconds of the last put
);
