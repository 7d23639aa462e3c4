-- The GitHub App a repository's tasks act as (its id); the repository's credential then holds
-- the App's private key, from which installation tokens are minted.

ALTER TABLE repos ADD COLUMN github_app TEXT;
