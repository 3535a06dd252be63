-- Config pushes after a FORGEDRAIN_TOKEN rotation (broker.provisioning.push_config) are stored
-- here, not only as an RQ job: a flushed Redis used to lose the push, and Heroku kept a token that
-- stopped working when its grace ended.
--
-- A push is pending while the resource's api_token_generation is ahead of the generation Heroku
-- accepted last, so every rotation (whatever calls it) puts one in place in its own transaction,
-- and a newer rotation during a push leaves the newer one pending. At most one push per resource
-- is ever pending (the newest config replaces the older), hence columns, not a table.
ALTER TABLE resources
    -- The generation whose config Heroku accepted last.
    ADD COLUMN config_pushed_generation integer NOT NULL DEFAULT 1,
    -- Failed attempts at the pending push, when to try next (NULL: at once; 'infinity': Heroku
    -- refused, only a new rotation tries again) and the last failure.
    ADD COLUMN config_push_attempts     integer NOT NULL DEFAULT 0,
    ADD COLUMN config_push_next_at      timestamptz,
    ADD COLUMN config_push_error        text;

-- Heroku is taken to hold each existing resource's current config, except where a rotation is
-- still in its grace period: that push may have been an RQ job only, so it is pushed again (at
-- worst a second, identical config update).
UPDATE resources SET config_pushed_generation = api_token_generation
    - CASE WHEN api_token_previous_until > now() AND oauth_access_token_enc IS NOT NULL THEN 1 ELSE 0 END;

CREATE INDEX resources_config_push_idx ON resources (config_push_next_at)
    WHERE api_token_generation > config_pushed_generation;
