-- Forge webhook deliveries already acted on, by their delivery id (GitHub's X-GitHub-Delivery):
-- a redelivery starts nothing twice.

CREATE TABLE webhook_deliveries (
    id          TEXT    NOT NULL PRIMARY KEY,
    received_at INTEGER NOT NULL
) STRICT;
