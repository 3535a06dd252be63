-- Alerts (issue 16 item 2, SPEC §10): what went wrong for an owner, raised once when a
-- condition starts and recovered once when it ends, kept here so that a restart neither
-- repeats nor forgets one.
--
-- An *alert* is one condition on one subject (a source or a drain) over its life: raised,
-- then recovered. Each raise and each recovery is a *notice*: the words announced to the
-- owner (into the app's own log stream through the heroku drain, to the resource's webhook,
-- on the dashboard, in the audit log). Notices are numbered in one sequence, so a channel
-- that announces them keeps a cursor, as a drain does over the outbox.

CREATE TABLE alerts (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    resource_id  uuid NOT NULL REFERENCES resources (id) ON DELETE CASCADE,
    condition    text NOT NULL CHECK (condition IN ('source_paused', 'source_over_capacity', 'drain_failing',
                                                    'drain_backlog', 'records_dropped', 'gap_recorded')),
    -- The source or drain the condition is about; no foreign key, so the alert outlives a
    -- deleted subject and can still be recovered ("the drain was deleted").
    subject_id   uuid NOT NULL,
    -- How the owner knows the subject (drain name or URL host, source app and environment),
    -- as it was when the alert was raised.
    subject_name text NOT NULL,
    -- The condition's particulars when raised: a pause reason, a count, a backlog size.
    detail       text,
    raised_at    timestamptz NOT NULL DEFAULT now(),
    recovered_at timestamptz,
    -- Hysteresis: when the condition was last seen false while the alert is open; it is
    -- recovered only once it has stayed false long enough.
    clear_since  timestamptz
);

-- At most one open alert per condition and subject.
CREATE UNIQUE INDEX alerts_open_idx ON alerts (resource_id, condition, subject_id) WHERE recovered_at IS NULL;
CREATE INDEX alerts_resource_idx ON alerts (resource_id, raised_at DESC);

CREATE TABLE alert_notices (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    resource_id uuid NOT NULL REFERENCES resources (id) ON DELETE CASCADE,
    alert_id    bigint NOT NULL REFERENCES alerts (id) ON DELETE CASCADE,
    change      text NOT NULL CHECK (change IN ('raised', 'recovered')),
    condition   text NOT NULL,
    -- One line in plain words with what to do, as announced on every channel.
    message     text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX alert_notices_resource_idx ON alert_notices (resource_id, id);
