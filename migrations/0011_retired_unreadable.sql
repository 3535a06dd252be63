-- Records no decoder could read (sources.unreadable, 0010) become a Prometheus
-- counter, forgedrain_unreadable_records_total: like the poll counts (0009),
-- what a deleted source had counted is kept in retired_counters so the fleet's
-- sum never goes down. sources.unreadable itself is never reset, not even when
-- the source's app or environment changes.

ALTER TABLE retired_counters ADD COLUMN unreadable bigint NOT NULL DEFAULT 0;

CREATE OR REPLACE FUNCTION retire_source_counters() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO retired_counters (subject, kind, polls, unreadable)
    SELECT 'source', '', sum(polls), sum(unreadable) FROM gone HAVING count(*) > 0
    ON CONFLICT (subject, kind) DO UPDATE SET
        polls = retired_counters.polls + excluded.polls,
        unreadable = retired_counters.unreadable + excluded.unreadable;
    RETURN NULL;
END
$$;
