-- OTLP ingest (issue 17 item 3, SPEC §11): POST /ingest/otlp/v1/logs takes an app's logs over
-- OTLP/HTTP (Heroku Fir telemetry drains, any OpenTelemetry SDK or Collector).
--
-- A request's records are stored as they came (the protobuf or JSON body, compressed) in one outbox
-- batch of origin 'otlp'; delivery decodes them (broker/outbox.py). 'alert' is the origin of the
-- alert notices another migration (0021) adds; the list is whole here so that either order of the
-- two gives the same constraint.
ALTER TABLE outbox DROP CONSTRAINT IF EXISTS outbox_origin_check;
ALTER TABLE outbox ADD CONSTRAINT outbox_origin_check
    CHECK (origin IN ('forge', 'heroku', 'alert', 'otlp'));

-- The ingest token is derived, never stored (broker/tokens.py): HMAC(SECRET_KEY, resource id and
-- this generation). Issuing a new one bumps the generation, which ends the old one at once.
ALTER TABLE resources ADD COLUMN ingest_token_generation integer NOT NULL DEFAULT 1;

-- One row per OTLP request received too, beside logplex's batches, told apart by origin; OTLP has no
-- batch id, so its rows carry a fresh one and a retried request is stored again (at least once).
ALTER TABLE ingest_batches ADD COLUMN origin text NOT NULL DEFAULT 'heroku'
    CHECK (origin IN ('heroku', 'otlp'));
