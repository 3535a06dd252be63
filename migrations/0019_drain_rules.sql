-- Per-drain rules (issue 16, SPEC §10): which records a drain receives and what
-- is redacted from them, applied at delivery (broker/rules.py). '{}' is no rules:
-- the drain receives everything, as before.
--
-- Two more delivery counters beside delivered/dropped: records the rules filtered
-- out, and values they redacted (matches replaced, attributes dropped). Like the
-- others (0009) they become Prometheus counters, so what a deleted drain had
-- counted is kept in retired_counters and the fleet's sums never go down.

ALTER TABLE drains
    ADD COLUMN rules    jsonb  NOT NULL DEFAULT '{}'::jsonb,
    ADD COLUMN filtered bigint NOT NULL DEFAULT 0,
    ADD COLUMN redacted bigint NOT NULL DEFAULT 0;

ALTER TABLE retired_counters
    ADD COLUMN filtered bigint NOT NULL DEFAULT 0,
    ADD COLUMN redacted bigint NOT NULL DEFAULT 0;

CREATE OR REPLACE FUNCTION retire_drain_counters() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO retired_counters (subject, kind, delivered, retried, dropped, rejected, filtered, redacted)
    SELECT 'drain', kind, sum(delivered), sum(retried), sum(dropped), sum(rejected), sum(filtered), sum(redacted)
    FROM gone GROUP BY kind
    ON CONFLICT (subject, kind) DO UPDATE SET
        delivered = retired_counters.delivered + excluded.delivered,
        retried = retired_counters.retried + excluded.retried,
        dropped = retired_counters.dropped + excluded.dropped,
        rejected = retired_counters.rejected + excluded.rejected,
        filtered = retired_counters.filtered + excluded.filtered,
        redacted = retired_counters.redacted + excluded.redacted;
    RETURN NULL;
END
$$;
