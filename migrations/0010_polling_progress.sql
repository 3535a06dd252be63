-- Polling that always progresses (issue 12): windows sized from each source's
-- measured density, a settled horizon for late records, over-capacity as a
-- visible state, and unreadable records counted instead of failing a page.

ALTER TABLE sources
    -- Every record with a timestamp before settled_until has been read at
    -- least FORGE_POLL_OVERLAP_SECONDS after its timestamp, so records that
    -- reach the API late have been caught. NULL means "equal to checkpoint".
    -- It never passes the checkpoint.
    ADD COLUMN settled_until          timestamptz,
    -- When the open window's first page was asked for: the API's snapshot of
    -- the window is at least this recent.
    ADD COLUMN window_opened_at       timestamptz,
    -- Pages and records read so far in the open window (a lower bound on
    -- density when the window cannot finish).
    ADD COLUMN window_pages           integer NOT NULL DEFAULT 0,
    ADD COLUMN window_records         integer NOT NULL DEFAULT 0,
    -- How long before now fresh windows end for this source, when the API has
    -- been seen to show records later than FORGE_POLL_LAG_SECONDS (NULL: that).
    ADD COLUMN lag_seconds            double precision,
    -- When lag_seconds last changed: only log read fresh after it tells
    -- whether the new lag is long enough.
    ADD COLUMN lag_changed_at         timestamptz,
    -- Records per minute of log time, a moving estimate from windows read.
    ADD COLUMN density_per_minute     double precision,
    -- The most records seen on a page that carried a cursor: the API's page
    -- size as far as this source has seen it (Atlassian documents none).
    ADD COLUMN page_records           integer,
    -- Set while the app logs more than the budget can export
    -- (calls per minute x records per page); NULL otherwise.
    ADD COLUMN over_capacity_since    timestamptz,
    ADD COLUMN capacity_per_minute    double precision,
    -- Records that could not be decoded even by the tolerant path, and one
    -- redacted sample of the latest for the owner.
    ADD COLUMN unreadable             bigint NOT NULL DEFAULT 0,
    ADD COLUMN unreadable_sample      text,
    ADD COLUMN unreadable_at          timestamptz;
