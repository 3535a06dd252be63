-- Retention: audit entries and source gaps are forgotten by age, and failed
-- resources are purged like deprovisioned ones, so no table grows without end
-- while its resource lives (issue 14, item 10).
--
-- Plain CREATE INDEX, not CONCURRENTLY: the runner applies each file in one
-- transaction, where CONCURRENTLY is refused. The builds block writes to these
-- tables for the seconds they take, during the release phase.

-- When provisioning failed: the purge clock of a failed resource, as
-- deprovisioned_at is for a deprovisioned one. updated_at is no such clock:
-- a plan change or token rotation after the failure moves it. Resources that
-- failed before this migration count from their last change, the best record.
ALTER TABLE resources ADD COLUMN failed_at timestamptz;
UPDATE resources SET failed_at = updated_at WHERE state = 'failed';

-- The tick's purge looks for both kinds of ended resources by age, every tick.
CREATE INDEX IF NOT EXISTS resources_failed_at_idx ON resources (failed_at) WHERE state = 'failed';
CREATE INDEX IF NOT EXISTS resources_deprovisioned_at_idx ON resources (deprovisioned_at)
    WHERE state = 'deprovisioned';

-- The oldest rows first, a chunk at a time: audit_log's (resource_id, at)
-- and source_gaps' (source_id, recorded_at) indexes cannot find them by age alone.
CREATE INDEX IF NOT EXISTS audit_log_at_idx ON audit_log (at);
CREATE INDEX IF NOT EXISTS source_gaps_recorded_at_idx ON source_gaps (recorded_at);
