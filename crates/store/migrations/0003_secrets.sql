-- Secrets for tasks, sealed: the caller encrypts each value and keeps the key away from the
-- store, which only ever holds the ciphertext.
--
-- `name` is 1 to 128 characters of [A-Za-z0-9_], starting with a letter or `_` (checked by the
-- store before any write). Listed by name in BINARY (byte) order, as PostgreSQL's `C` collation.

CREATE TABLE secrets (
    name       TEXT    NOT NULL PRIMARY KEY,
    sealed     BLOB    NOT NULL,                  -- the encrypted value, as the caller gave it
    updated_at INTEGER NOT NULL                   -- unix milliseconds of the last put
) STRICT;
