-- Drains the owner adds (logplex, syslog, otlp) beside the built-in heroku one,
-- and each drain's delivery state.

ALTER TABLE drains
    ADD COLUMN name           text,
    -- Non-secret settings: OTLP encoding and gzip, the syslog SD-ID.
    ADD COLUMN settings       jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- OTLP custom headers (API keys), Fernet-encrypted JSON.
    ADD COLUMN headers_enc    text,
    -- Delivery: the last outbox batch this drain has (everything at or below it
    -- was accepted by the receiver or dropped and counted).
    ADD COLUMN cursor         bigint NOT NULL DEFAULT 0,
    ADD COLUMN next_attempt_at timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN lease_token    uuid,
    ADD COLUMN lease_expires_at timestamptz,
    ADD COLUMN consecutive_failures integer NOT NULL DEFAULT 0,
    ADD COLUMN last_error     text,
    ADD COLUMN last_delivery_at timestamptz,
    ADD COLUMN delivered      bigint NOT NULL DEFAULT 0,
    ADD COLUMN retried        bigint NOT NULL DEFAULT 0,
    ADD COLUMN dropped        bigint NOT NULL DEFAULT 0,
    ADD COLUMN rejected       bigint NOT NULL DEFAULT 0;

-- A new drain starts at the newest batch: it receives what arrives from now on.
-- (Set by the code at insert; the default 0 suits drains made at provision.)

CREATE INDEX drains_due_idx ON drains (next_attempt_at) WHERE enabled;
