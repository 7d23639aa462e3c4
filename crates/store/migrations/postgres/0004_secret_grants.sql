-- Which repositories may use each secret: as SQLite's migrations/0005_secret_grants.sql.

ALTER TABLE secrets ADD COLUMN repos TEXT NOT NULL DEFAULT '[]';
