-- Drain ingest: one row per logplex batch received at log_drain_url. The key
-- makes a batch retried with the same Logplex-Frame-Id count once; the
-- counts show what arrived, what was stored and what was the broker's own.
CREATE TABLE ingest_batches (
    resource_id uuid NOT NULL REFERENCES resources (id) ON DELETE CASCADE,
    frame_id    text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    frames      integer NOT NULL,
    stored      integer NOT NULL,
    own         integer NOT NULL,
    replays     integer NOT NULL DEFAULT 0,
    PRIMARY KEY (resource_id, frame_id)
);

CREATE INDEX ingest_batches_received_idx ON ingest_batches (received_at);
