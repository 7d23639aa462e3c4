-- Forge webhook deliveries already acted on: as SQLite's migrations/0009_webhook_deliveries.sql.

CREATE TABLE webhook_deliveries (
    id          TEXT   NOT NULL PRIMARY KEY,
    received_at BIGINT NOT NULL
);
