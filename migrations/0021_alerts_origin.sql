-- Alerts into the app's own log stream (issue 16 item 2, broker.alerts): each evaluation that
-- raises or recovers an alert writes its notices into the outbox, in the same transaction, as a
-- batch of origin 'alert' that only the heroku drain receives (broker.outbox.RECEIVES). The
-- delivery path's no-loss, retry and cursor rules then apply to them unchanged.
--
-- NOT VALID: every existing row already satisfies the wider check, and validating it would
-- scan the whole outbox under this migration's lock.
ALTER TABLE outbox DROP CONSTRAINT outbox_origin_check;
ALTER TABLE outbox ADD CONSTRAINT outbox_origin_check CHECK (origin IN ('forge', 'heroku', 'alert')) NOT VALID;

-- The evaluation finds what is wrong now without reading every source, drain or minute:
-- paused and over-capacity sources, failing drains, and the minutes that dropped records
-- are few, and each has a small partial index of its own.
CREATE INDEX sources_paused_idx ON sources (resource_id) WHERE state = 'paused';
CREATE INDEX sources_over_capacity_idx ON sources (resource_id) WHERE over_capacity_since IS NOT NULL;
CREATE INDEX drains_failing_idx ON drains (resource_id)
    WHERE consecutive_failures > 0 OR secret_lost_at IS NOT NULL;
CREATE INDEX activity_dropped_idx ON activity (minute) WHERE kind = 'dropped';

-- Recovered alerts are forgotten after broker.alerts.KEEP_DAYS (the audit log keeps their notices
-- longer), found by this index in bounded chunks.
CREATE INDEX alerts_recovered_idx ON alerts (recovered_at) WHERE recovered_at IS NOT NULL;
