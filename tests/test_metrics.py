"""GET /metrics: the fleet read from PostgreSQL and Redis at scrape time, behind the operator's token."""

from __future__ import annotations

import secrets
import socket
from collections import Counter
from datetime import timedelta

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from broker import activity, config, ingest, jobs
from broker.ratelimit import RateLimiter
from broker.vault import Vault
from tests.fakes.forge import ForgeFake
from tests.fakes.receivers import logplex_receiver
from tests.fakes.server import LocalServer
from tests.support.polling import APP, EMAIL, ENV, TOKEN, add_resource, add_source, make_poller
from tests.test_delivery import add_drain, deliver_all, forge_record, make_deliverer, store
from tests.test_polling import claim_one
from web import create_app

METRICS_TOKEN = secrets.token_hex(32)
DRAIN_PASSWORD = "drain-pass-w0rd"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def vault(settings):
    return Vault(settings.fernet_keys)


@pytest.fixture
def metrics_env(env):
    return {**env, "METRICS_TOKEN": METRICS_TOKEN}


@pytest.fixture
def metrics_client(metrics_env):
    app = create_app(config.load(metrics_env, testing=True))
    yield app.test_client()
    app.extensions["forgedrain"].db.close()


def bearer(token: str = METRICS_TOKEN) -> dict:
    return {"Authorization": f"Bearer {token}"}


def scrape(client) -> tuple[dict, str]:
    """{(sample name, sorted labels): value} and the raw body."""
    response = client.get("/metrics", headers=bearer())
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.content_type.startswith("text/plain; version=")
    body = response.get_data(as_text=True)
    samples = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples, body


def value(samples: dict, name: str, **labels) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_it_is_not_there_without_a_configured_token(client):
    response = client.get("/metrics", headers=bearer())
    assert response.status_code == 404
    assert "forgedrain" not in response.get_data(as_text=True)


@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": "Bearer "},
    {"Authorization": f"Bearer {METRICS_TOKEN[:-1]}x"},
    {"Authorization": f"Bearer {METRICS_TOKEN}extra"},
    {"Authorization": f"Basic {METRICS_TOKEN}"},
])
def test_a_missing_or_wrong_token_gets_401_with_a_bearer_challenge(metrics_client, headers):
    response = metrics_client.get("/metrics", headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert "forgedrain_" not in response.get_data(as_text=True)


def test_an_empty_fleet_scrapes_to_zeros(metrics_client):
    samples, _ = scrape(metrics_client)
    assert value(samples, "forgedrain_drain_records_delivered_total", kind="logplex") == 0
    assert value(samples, "forgedrain_outbox_batches") == 0
    assert value(samples, "forgedrain_polls_total") == 0
    assert value(samples, "forgedrain_source_lag_seconds_count") == 0
    assert value(samples, "forgedrain_queue_jobs", queue="poll") == 0
    assert value(samples, "forgedrain_redis_up") == 1
    # no tick yet: the series is absent, so absent() can alert on it
    assert not any(name == "forgedrain_clock_last_tick_age_seconds" for name, _ in samples)


def test_it_reports_the_fleet_as_polling_delivery_ingest_and_the_queues_left_it(
        metrics_client, conn, database_url, redis_url, vault):
    # A source polled for real until its app's budget runs out (2 calls of 2), and a paused one.
    fake = ForgeFake(seed=17, rate_limit=10_000)
    fake.add_app(APP, [ENV], EMAIL, TOKEN, records_per_minute=3)
    resource_id = add_resource(conn)
    source_id = add_source(conn, vault, resource_id, checkpoint_ago=timedelta(hours=5))
    paused_id = add_source(conn, vault, resource_id, app_id="other-app", checkpoint_ago=timedelta(hours=1))
    conn.execute("UPDATE sources SET state = 'paused', pause_reason = 'auth_failed' WHERE id = %s", (paused_id,))
    with LocalServer(fake.wsgi()) as server:
        poller = make_poller(database_url, redis_url, server.url, vault, limit=2, period=60)
        polled = poller.poll(claim_one(conn, source_id))
    assert polled.result == "no-budget" and polled.stored > 0
    # Two more batches the usual way, then two logplex drains: one accepts, one answers 503.
    extra = [store(conn, resource_id, source_id, [forge_record(1000 + b * 10 + i) for i in range(10)])
             for b in range(2)]
    stored = polled.stored + 20
    batches = conn.execute("SELECT count(*) AS n FROM outbox").fetchone()["n"]
    assert batches >= len(extra) + 1
    ok_app, ok_inbox = logplex_receiver()
    bad_app, bad_inbox = logplex_receiver()
    bad_inbox.fail(503, times=1)
    with LocalServer(ok_app) as ok, LocalServer(bad_app) as bad:
        add_drain(conn, vault, resource_id, "logplex", f"http://user:{DRAIN_PASSWORD}@127.0.0.1:{ok.port}/")
        add_drain(conn, vault, resource_id, "logplex", f"http://127.0.0.1:{bad.port}/")
        outcomes = deliver_all(make_deliverer(database_url, vault), conn)
    assert sorted(o.result for o in outcomes) == ["caught-up", "retry"]
    delivered = sum(o.delivered for o in outcomes)
    assert delivered == stored and ok_inbox.refused == []
    # Heroku's own logs, one batch sent twice (a replay), on another resource without drains.
    other = add_resource(conn)
    frames = [b"<190>1 2025-11-21T10:00:00+00:00 host app web.1 - hello", b"<190>1 2025-11-21T10:00:01+00:00 "
              b"host app web.1 - again"]
    body = b"".join(b"%d %b" % (len(f), f) for f in frames)
    for _ in range(2):
        ingest.store(conn, other, "frame-1", ingest.parse(body, 2))
    # Records stored in the last complete minute, the clock's tick 30 s ago, a job queued.
    minute = conn.execute("SELECT date_trunc('minute', now()) - interval '1 minute' AS m").fetchone()["m"]
    activity.add(conn, resource_id, source_id, "stored", Counter({minute: 7}))
    conn.execute("INSERT INTO heartbeats (name, beat_at) VALUES ('tick', now() - interval '30 seconds')")
    redis_client = redis.Redis.from_url(redis_url)
    assert jobs.enqueue_poll_batch(redis_client, 0, 5) is not None

    samples, body_text = scrape(metrics_client)
    scraped_in = conn.execute("SELECT date_trunc('minute', now()) - interval '1 minute' AS m").fetchone()["m"]

    # drains, by kind
    assert value(samples, "forgedrain_drain_records_delivered_total", kind="logplex") == delivered
    assert value(samples, "forgedrain_drain_records_delivered_total", kind="otlp") == 0
    assert value(samples, "forgedrain_drain_sends_retried_total", kind="logplex") == 1
    assert value(samples, "forgedrain_drain_records_dropped_total", kind="logplex") == 0
    assert value(samples, "forgedrain_drains", kind="logplex") == 2
    assert value(samples, "forgedrain_drains_enabled", kind="logplex") == 2
    assert value(samples, "forgedrain_drains_failing", kind="logplex") == 1
    assert value(samples, "forgedrain_drain_backlog_records", kind="logplex") == stored  # the 503 one
    assert value(samples, "forgedrain_drain_backlog_batches", kind="logplex") == batches
    assert value(samples, "forgedrain_records_last_hour", flow="delivered", drain_kind="logplex") == delivered
    assert value(samples, "forgedrain_records_last_hour", flow="stored", drain_kind="") == 7  # polled: hours ago
    if scraped_in == minute:  # the minute did not turn during the test
        assert value(samples, "forgedrain_records_last_minute", flow="stored", drain_kind="") == 7
    # sources
    assert value(samples, "forgedrain_sources", state="active", reason="") == 1
    assert value(samples, "forgedrain_sources", state="paused", reason="auth_failed") == 1
    assert value(samples, "forgedrain_polls_total") == 1
    assert value(samples, "forgedrain_sources_polled_recently") == 1
    assert value(samples, "forgedrain_source_lag_seconds_count") == 1
    assert value(samples, "forgedrain_source_lag_seconds_bucket", le="1800.0") == 0
    assert value(samples, "forgedrain_source_lag_seconds_bucket", le="21600.0") == 1
    lag = conn.execute("SELECT extract(epoch FROM now() - checkpoint)::float AS s FROM sources WHERE id = %s",
                       (source_id,)).fetchone()["s"]
    assert lag - 5 < value(samples, "forgedrain_source_lag_max_seconds") <= lag
    # stores
    assert value(samples, "forgedrain_outbox_batches") == batches + 1  # + the ingest batch
    assert value(samples, "forgedrain_outbox_records") == stored + 2
    assert value(samples, "forgedrain_outbox_payload_bytes") > 0
    assert value(samples, "forgedrain_ingest_batches_last_hour") == 1
    assert value(samples, "forgedrain_ingest_frames_last_hour") == 2
    assert value(samples, "forgedrain_ingest_replays_last_hour") == 1
    assert 29 <= value(samples, "forgedrain_clock_last_tick_age_seconds") < 60
    # Redis: queues and the Forge budget (the poll's third take was refused)
    assert value(samples, "forgedrain_queue_jobs", queue="poll") == 1
    assert value(samples, "forgedrain_queue_jobs", queue="deliver") == 0
    assert value(samples, "forgedrain_queue_failed_jobs", queue="poll") == 0
    assert value(samples, "forgedrain_forge_budget_waits_total", reason="budget") == 1
    assert value(samples, "forgedrain_forge_budget_waits_total", reason="blocked") == 0

    # labels are kinds and states: no credential, URL, token or id reaches the body
    drain_tokens = [r["token"] for r in conn.execute("SELECT token FROM drains")]
    for secret in (TOKEN, EMAIL, DRAIN_PASSWORD, METRICS_TOKEN, str(resource_id), str(source_id),
                   "127.0.0.1", *drain_tokens):
        assert secret not in body_text


def test_a_refusal_after_a_429_counts_as_blocked(metrics_client, redis_url):
    limiter = RateLimiter(redis.Redis.from_url(redis_url), limit=5, period_seconds=60)
    limiter.block(APP, 30)
    assert limiter.try_take(APP) > 0
    assert limiter.try_take(APP) > 0
    samples, _ = scrape(metrics_client)
    assert value(samples, "forgedrain_forge_budget_waits_total", reason="blocked") == 2
    assert value(samples, "forgedrain_forge_budget_waits_total", reason="budget") == 0


def test_counters_never_go_down_when_drains_and_sources_are_deleted(
        metrics_client, conn, database_url, redis_url, vault):
    resource_id = add_resource(conn)
    source_id = add_source(conn, vault, resource_id)
    conn.execute("UPDATE sources SET polls = 4 WHERE id = %s", (source_id,))
    app, _ = logplex_receiver()
    with LocalServer(app) as server:
        drain_id = add_drain(conn, vault, resource_id, "logplex", f"http://127.0.0.1:{server.port}/")
        store(conn, resource_id, source_id, [forge_record(i) for i in range(12)])
        deliver_all(make_deliverer(database_url, vault), conn)
    before, _ = scrape(metrics_client)
    assert value(before, "forgedrain_drain_records_delivered_total", kind="logplex") == 12
    assert value(before, "forgedrain_polls_total") == 4

    conn.execute("DELETE FROM drains WHERE id = %s", (drain_id,))
    conn.execute("DELETE FROM sources WHERE id = %s", (source_id,))
    after, _ = scrape(metrics_client)
    assert value(after, "forgedrain_drains", kind="logplex") == 0
    assert value(after, "forgedrain_drain_records_delivered_total", kind="logplex") == 12
    assert value(after, "forgedrain_polls_total") == 4
    # and a resource purge (cascading deletes) keeps them too, added to what is there
    again = add_resource(conn)
    add_drain(conn, vault, again, "otlp", "http://127.0.0.1:9/v1/logs")
    conn.execute("UPDATE drains SET delivered = 5, dropped = 2 WHERE resource_id = %s", (again,))
    conn.execute("UPDATE sources SET polls = 1 WHERE id = %s", (add_source(conn, vault, again),))
    conn.execute("DELETE FROM resources WHERE id = %s", (again,))
    purged, _ = scrape(metrics_client)
    assert value(purged, "forgedrain_drain_records_delivered_total", kind="otlp") == 5
    assert value(purged, "forgedrain_drain_records_dropped_total", kind="otlp") == 2
    assert value(purged, "forgedrain_polls_total") == 5


def test_postgres_down_answers_503_naming_only_the_error_class(metrics_env):
    metrics_env["DATABASE_URL"] = f"postgresql://postgres:hunter2@127.0.0.1:{closed_port()}/forgedrain"
    app = create_app(config.load(metrics_env, testing=True))
    try:
        response = app.test_client().get("/metrics", headers=bearer())
        text = response.get_data(as_text=True)
        assert response.status_code == 503
        assert text.startswith("postgres unavailable")
        assert "hunter2" not in text and "127.0.0.1" not in text
    finally:
        app.extensions["forgedrain"].db.close()


def test_redis_down_still_serves_what_postgres_knows(metrics_env):
    metrics_env["REDIS_URL"] = f"redis://127.0.0.1:{closed_port()}/0"
    app = create_app(config.load(metrics_env, testing=True))
    try:
        samples, _ = scrape(app.test_client())
        assert value(samples, "forgedrain_redis_up") == 0
        assert value(samples, "forgedrain_outbox_batches") == 0
        assert not any(name == "forgedrain_queue_jobs" for name, _ in samples)
    finally:
        app.extensions["forgedrain"].db.close()


def test_a_scrape_gives_its_connection_back_without_its_timeout(metrics_client, metrics_env):
    scrape(metrics_client)
    svc = metrics_client.application.extensions["forgedrain"]
    with svc.db.connection() as conn:
        assert conn.execute("SHOW statement_timeout").fetchone()["statement_timeout"] == "0"
        assert conn.execute("SHOW transaction_read_only").fetchone()["transaction_read_only"] == "off"
