-- Drain ingest batches refused over the resource's volume limit (429), per minute, so the owner
-- sees them next to what was received (GET /v1/resources/<id> "ingest"). Refusals are counted in
-- Redis as they happen (no database work to refuse) and written here at most once a minute per
-- resource, or with the next batch stored. Nothing of the refused batches themselves is kept.
CREATE TABLE ingest_refusals (
    resource_id uuid NOT NULL REFERENCES resources (id) ON DELETE CASCADE,
    minute      timestamptz NOT NULL,
    answers     integer NOT NULL,   -- 429 answers, a batch retried by logplex counted each time
    batches     integer NOT NULL,   -- distinct Logplex-Frame-Ids refused
    frames      bigint NOT NULL,    -- their frames, each batch counted once
    bytes       bigint NOT NULL,
    PRIMARY KEY (resource_id, minute)
);

CREATE INDEX ingest_refusals_minute_idx ON ingest_refusals (minute);
