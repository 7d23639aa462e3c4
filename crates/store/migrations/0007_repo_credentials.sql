-- The secret (by name) whose value host git uses to reach a remote repository: an HTTPS token
-- or an SSH private key. NULL: none (a path, or a remote reached without one).

ALTER TABLE repos ADD COLUMN credential TEXT;
