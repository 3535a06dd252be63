-- Outbox retention: batches older than a plan's backlog are found by age.
CREATE INDEX outbox_created_idx ON outbox (created_at);
