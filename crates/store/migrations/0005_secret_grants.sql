-- Which repositories may use each secret: a JSON array of repository identities (see
-- nightshift_env::secrets::repo_identity), `["*"]` for every repository. A secret stored before
-- grants existed gets none: a task that names it fails, saying how to grant it (docs/config.md).

ALTER TABLE secrets ADD COLUMN repos TEXT NOT NULL DEFAULT '[]';
