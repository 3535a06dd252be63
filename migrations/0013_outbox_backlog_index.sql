-- Backlogs (broker.outbox: the API, the dashboard, /metrics) sum record_count over
-- a drain's batches after its cursor. With record_count and origin in the index,
-- those sums are index-only scans instead of one heap page per waiting batch
-- (bench/outbox.py: the fleet's backlog_by_kind took 3 to 5 s at 1.3 M waiting
-- batches, past /metrics' 2 s statement cap). It serves every (resource_id, id)
-- lookup the old index did, which therefore goes.
CREATE INDEX outbox_backlog_idx ON outbox (resource_id, id) INCLUDE (record_count, origin);
DROP INDEX outbox_resource_idx;
