-- Drains that follow the service (issue 17 item 1, SPEC §11): the URL Heroku was last seen to hold
-- for the add-on's log drain, and when. `python -m broker log-drains sync` moves every add-on's drain
-- to the current log_drain_url through the Platform API and records it here, so a run that was
-- interrupted, or run again after PUBLIC_URL changed, calls Heroku only for resources not yet there.
ALTER TABLE resources
    ADD COLUMN log_drain_url        text,
    ADD COLUMN log_drain_checked_at timestamptz;
