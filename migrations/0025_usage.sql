-- Usage per resource and day (issue 17 item 2, SPEC §11), what a partner bills its customers by:
-- records and bytes received (Forge pages stored, logplex ingest frames stored), records delivered per
-- drain kind, records dropped per drain kind (older than the plan's backlog, or refused for good by
-- the receiver). Written in the transaction of what it counts, so it is exactly as durable. Keyed by
-- drain kind, not drain: deleting a drain loses none of its usage. Days are UTC.
CREATE TABLE usage_days (
    resource_id uuid   NOT NULL REFERENCES resources (id) ON DELETE CASCADE,
    day         date   NOT NULL,
    measure     text   NOT NULL CHECK (measure IN ('forge', 'ingest', 'delivered', 'dropped')),
    -- The drain kind for delivered and dropped; '' for what was received.
    kind        text   NOT NULL DEFAULT '',
    records     bigint NOT NULL DEFAULT 0,
    bytes       bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (resource_id, day, measure, kind)
);

-- The partner's resources a page at a time, by id (GET /partner/v1/resources).
CREATE INDEX resources_partner_id_idx ON resources (partner_id, id);
