-- The alert webhook (issue 16 item 2, SPEC §10): one optional HTTPS receiver per resource that
-- gets every alert notice (migration 0020) as a signed, Slack-compatible JSON POST.
--
-- It reads the resource's notices the way a drain reads the outbox: ``cursor`` is the last
-- notice id it has (accepted by the receiver, or refused with a 4xx and counted as dropped).
-- A webhook starts at the resource's newest notice when it is created, so old notices are
-- not replayed to a new receiver. Back-off and the lease live here too, so a restart neither
-- repeats more than the notice in flight nor forgets one.

CREATE TABLE alert_webhooks (
    resource_id          uuid PRIMARY KEY REFERENCES resources (id) ON DELETE CASCADE,
    -- The receiver's URL and the HMAC signing secret, both Fernet tokens (broker.vault). The row
    -- is deleted when the resource is deprovisioned or its provisioning fails.
    url_enc              text NOT NULL,
    secret_enc           text NOT NULL,
    cursor               bigint NOT NULL DEFAULT 0,
    next_attempt_at      timestamptz NOT NULL DEFAULT now(),
    consecutive_failures integer NOT NULL DEFAULT 0,
    last_error           text,
    last_delivery_at     timestamptz,
    delivered            bigint NOT NULL DEFAULT 0,
    dropped              bigint NOT NULL DEFAULT 0,
    retried              bigint NOT NULL DEFAULT 0,
    lease_token          uuid,
    lease_expires_at     timestamptz,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX alert_webhooks_due_idx ON alert_webhooks (next_attempt_at);
