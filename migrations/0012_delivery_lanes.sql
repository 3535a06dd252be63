-- Delivery v2 (broker.delivery, broker.senders):
-- * a drain's position can fall inside an outbox batch: every send moves it, so
--   a turn can end after any send and a crash resends at most one send;
-- * how long the drain's receiver takes to answer (a moving average of each
--   send's wall time; a send that failed slowly, at its deadline say, counts whole):
--   drains slower than a second are claimed by the slow lane only, so slow
--   receivers never hold the threads that healthy drains are delivered by;
-- * when its URL or headers could no longer be decrypted (FERNET_KEYS lost
--   the key they were written with): shown to the owner and in /metrics.

ALTER TABLE drains
    ADD COLUMN partial_batch   bigint,
    ADD COLUMN partial_records integer NOT NULL DEFAULT 0,
    ADD COLUMN send_seconds    real NOT NULL DEFAULT 0,
    ADD COLUMN secret_lost_at  timestamptz;

-- The claim counts each resource's drains under lease (its fair share of threads).
CREATE INDEX drains_leased_idx ON drains (resource_id) WHERE lease_token IS NOT NULL;
