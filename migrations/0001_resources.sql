-- Add-on resources provisioned through the Partner API, the audit trail of
-- changes made to them, and process heartbeats.

CREATE TABLE resources (
    -- The platform's uuid for the add-on resource; also the id we return
    -- (SPEC §1). Unique by construction, which makes provisioning idempotent.
    id               uuid PRIMARY KEY,
    partner_id       text NOT NULL,
    name             text,
    plan             text NOT NULL,
    region           text,
    callback_url     text,
    state            text NOT NULL DEFAULT 'provisioned'
                     CHECK (state IN ('provisioning', 'provisioned', 'failed', 'deprovisioned')),
    -- Stored verbatim: Heroku sends d.<uuid>, kensa bare hex.
    log_drain_token  text UNIQUE,
    -- sha256 of FORGEDRAIN_TOKEN; the token itself is never stored.
    api_token_hash   bytea UNIQUE,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    deprovisioned_at timestamptz
);

CREATE INDEX resources_partner_idx ON resources (partner_id);

CREATE TABLE audit_log (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    resource_id uuid NOT NULL REFERENCES resources (id) ON DELETE CASCADE,
    actor       text NOT NULL,
    action      text NOT NULL,
    detail      jsonb NOT NULL DEFAULT '{}'::jsonb,
    at          timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX audit_log_resource_at_idx ON audit_log (resource_id, at DESC);

-- Last time each periodic process proved it was alive (the clock's tick as
-- seen by a worker, for one). Times come from the database's clock.
CREATE TABLE heartbeats (
    name    text PRIMARY KEY,
    beat_at timestamptz NOT NULL
);
