-- Records per minute, kept two days, for the dashboard's chart and the metrics:
-- 'stored' per source (by the records' own minute), 'delivered' and 'dropped'
-- per drain (by the minute it happened). Outbox batches leave once delivered,
-- so they cannot answer "how many per minute" afterwards; these rows can.
CREATE TABLE activity (
    resource_id uuid NOT NULL REFERENCES resources (id) ON DELETE CASCADE,
    subject     uuid NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('stored', 'delivered', 'dropped')),
    minute      timestamptz NOT NULL,
    records     bigint NOT NULL,
    PRIMARY KEY (subject, kind, minute)
);

CREATE INDEX activity_resource_idx ON activity (resource_id, minute);
CREATE INDEX activity_minute_idx ON activity (minute);
