-- Where a remote repository's tasks open pull requests: as SQLite's
-- migrations/0008_repo_github.sql.

ALTER TABLE repos ADD COLUMN github_api TEXT;
