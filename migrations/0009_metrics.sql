-- Prometheus counters built at scrape time from shared state (broker/metrics.py).
--
-- A Prometheus counter must never go down: a smaller value reads as a process
-- restart, and rate() then counts the whole remaining total as new. Summing the
-- drains' delivery counters (or the sources' poll counts) would go down each
-- time a drain or source is deleted, directly or by a resource purge. So what a
-- deleted row had counted is kept here, added by kind, and the scrape adds it to
-- the live rows' sums. Deletions are rare, so these few rows are never hot.

ALTER TABLE sources
    -- Polls finished (the lease released), whatever their result.
    ADD COLUMN polls bigint NOT NULL DEFAULT 0;

CREATE TABLE retired_counters (
    -- 'drain' (kind = the drain's kind) or 'source' (kind = '').
    subject   text NOT NULL CHECK (subject IN ('drain', 'source')),
    kind      text NOT NULL,
    delivered bigint NOT NULL DEFAULT 0,
    retried   bigint NOT NULL DEFAULT 0,
    dropped   bigint NOT NULL DEFAULT 0,
    rejected  bigint NOT NULL DEFAULT 0,
    polls     bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (subject, kind)
);

CREATE FUNCTION retire_drain_counters() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO retired_counters (subject, kind, delivered, retried, dropped, rejected)
    SELECT 'drain', kind, sum(delivered), sum(retried), sum(dropped), sum(rejected)
    FROM gone GROUP BY kind
    ON CONFLICT (subject, kind) DO UPDATE SET
        delivered = retired_counters.delivered + excluded.delivered,
        retried = retired_counters.retried + excluded.retried,
        dropped = retired_counters.dropped + excluded.dropped,
        rejected = retired_counters.rejected + excluded.rejected;
    RETURN NULL;
END
$$;

CREATE TRIGGER drains_retire_counters AFTER DELETE ON drains
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION retire_drain_counters();

CREATE FUNCTION retire_source_counters() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO retired_counters (subject, kind, polls)
    SELECT 'source', '', sum(polls) FROM gone HAVING count(*) > 0
    ON CONFLICT (subject, kind) DO UPDATE SET polls = retired_counters.polls + excluded.polls;
    RETURN NULL;
END
$$;

CREATE TRIGGER sources_retire_counters AFTER DELETE ON sources
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION retire_source_counters();
