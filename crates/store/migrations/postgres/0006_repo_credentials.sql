-- The secret whose value host git uses to reach a remote repository: as SQLite's
-- migrations/0007_repo_credentials.sql.

ALTER TABLE repos ADD COLUMN credential TEXT;
