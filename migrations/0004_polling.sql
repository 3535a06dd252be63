-- Polling Forge: per-source schedule, lease and checkpoint; the fingerprints
-- that drop records re-read in a window's overlap; gaps; and the outbox.

ALTER TABLE sources
    -- Every record with a timestamp before the checkpoint is stored. A new
    -- source starts an hour back so its owner sees recent logs at once.
    ADD COLUMN checkpoint             timestamptz NOT NULL DEFAULT now() - interval '1 hour',
    ADD COLUMN next_poll_at           timestamptz NOT NULL DEFAULT now(),
    -- The lease: whoever holds lease_token polls the source; every write a
    -- poll makes is fenced by it, so a poller that outlived its lease changes nothing.
    ADD COLUMN lease_token            uuid,
    ADD COLUMN lease_expires_at       timestamptz,
    -- The window being read, page by page (its cursor is only good for it).
    ADD COLUMN window_start           timestamptz,
    ADD COLUMN window_end             timestamptz,
    ADD COLUMN window_cursor          text,
    ADD COLUMN consecutive_failures   integer NOT NULL DEFAULT 0,
    ADD COLUMN last_poll_at           timestamptz,
    ADD COLUMN last_success_at        timestamptz,
    -- A requested backfill: progress is (checkpoint - from) / (until - from).
    ADD COLUMN backfill_from          timestamptz,
    ADD COLUMN backfill_until         timestamptz;

-- The clock's one query: due, active sources by time.
CREATE INDEX sources_due_idx ON sources (next_poll_at) WHERE state = 'active';

-- Fingerprints of records already stored whose timestamps are recent enough
-- to be read again in a window's overlap; older ones are pruned as the
-- checkpoint moves.
CREATE TABLE forge_seen (
    source_id   uuid NOT NULL REFERENCES sources (id) ON DELETE CASCADE,
    fingerprint bytea NOT NULL,
    ts          timestamptz NOT NULL,
    PRIMARY KEY (source_id, fingerprint)
);

CREATE INDEX forge_seen_ts_idx ON forge_seen (source_id, ts);

-- Time ranges whose logs could not be fetched (older than the App logs API's
-- 14 days by the time the source got to them), shown to the owner.
CREATE TABLE source_gaps (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source_id   uuid NOT NULL REFERENCES sources (id) ON DELETE CASCADE,
    gap_from    timestamptz NOT NULL,
    gap_until   timestamptz NOT NULL,
    reason      text NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX source_gaps_source_idx ON source_gaps (source_id, recorded_at DESC);

-- The outbox: records stored durably before anything else happens, in
-- compressed batches (one per fetched page), not one row per record.
CREATE TABLE outbox (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    resource_id  uuid NOT NULL REFERENCES resources (id) ON DELETE CASCADE,
    source_id    uuid REFERENCES sources (id) ON DELETE SET NULL,
    origin       text NOT NULL CHECK (origin IN ('forge', 'heroku')),
    record_count integer NOT NULL CHECK (record_count > 0),
    min_ts       timestamptz NOT NULL,
    max_ts       timestamptz NOT NULL,
    -- zlib-compressed JSON array of the records as received.
    payload      bytea NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX outbox_resource_idx ON outbox (resource_id, id);
