-- The GitHub API (https://api.github.com, or a GitHub Enterprise Server's https://HOST/api/v3)
-- where a remote repository's tasks open pull requests; NULL: none.

ALTER TABLE repos ADD COLUMN github_api TEXT;
