-- The GitHub App a repository's tasks act as: as SQLite's migrations/0011_repo_github_app.sql.

ALTER TABLE repos ADD COLUMN github_app TEXT;
