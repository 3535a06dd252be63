"""README promise: deprovisioned resources are deleted with all their rows 30 days after deprovision
(the clock's tick purges them; until then the rows stay for the audit trail).

A resource is provisioned through the Partner API with a first source (verified against the Forge
fake), polled once by the real poller, given a drain and a batch of the Heroku app's own logs through
drain ingest, then deprovisioned through the Partner API. The time that passed is simulated by
moving ``deprovisioned_at`` back in PostgreSQL, never by waiting.
"""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest

from broker import config, polling
from broker.vault import Vault
from tests.fakes.forge import ForgeFake
from tests.fakes.server import LocalServer
from tests.support.partner import heroku_headers, provision_body
from tests.support.polling import make_poller
from web import create_app
from worker import context, tick

APP = "7a1c3e5f-0b2d-4f6a-8c9e-1d3f5b7a9c0e"
ENV = "prod"
EMAIL = "bot@acme.test"
FORGE_TOKEN = "ATATT-purge-promise-token"
HEROKU_LINE = b"<190>1 2026-01-08T22:33:58.1+00:00 host app web.1 - ready on port 5000\n"


@pytest.fixture
def forge():
    fake = ForgeFake(seed=30, rate_limit=10_000)
    fake.add_app(APP, [ENV], EMAIL, FORGE_TOKEN, records_per_minute=30)
    with LocalServer(fake.wsgi()) as server:
        fake.url = server.url
        yield fake


@pytest.fixture
def settings(env, forge):
    return config.load({**env, "FORGE_API_URL": forge.url}, testing=True)


@pytest.fixture
def web(settings):
    app = create_app(settings)
    context.install(settings)
    yield app.test_client()
    context.install(None)
    app.extensions["forgedrain"].db.close()


def deprovisioned_resource(web, conn, database_url, redis_url, forge, settings) -> uuid.UUID:
    """A resource with a polled source, an owner drain, ingested app logs and audit entries, deprovisioned."""
    body = provision_body(options={"app_id": APP, "environment_id": ENV, "email": EMAIL,
                                   "api_token": FORGE_TOKEN})
    answer = web.post("/heroku/resources", data=json.dumps(body), headers=heroku_headers())
    assert answer.status_code == 200, answer.data
    rid = uuid.UUID(body["uuid"])
    auth = {"Authorization": f"Bearer {answer.get_json(force=True)['config']['FORGEDRAIN_TOKEN']}"}
    drain = web.post(f"/v1/resources/{rid}/drains", headers=auth,
                     json={"kind": "logplex", "url": "http://127.0.0.1:9/drain"})
    assert drain.status_code == 201, drain.data
    frame = str(len(HEROKU_LINE)).encode() + b" " + HEROKU_LINE
    ingested = web.post("/ingest/logplex", data=frame, headers={
        "Content-Type": "application/logplex-1", "Logplex-Drain-Token": body["log_drain_token"],
        "Logplex-Frame-Id": uuid.uuid4().hex.upper(), "Logplex-Msg-Count": "1"})
    assert ingested.status_code == 204, ingested.data
    [source_id] = [r["id"] for r in conn.execute("SELECT id FROM sources WHERE resource_id = %s", (rid,))]
    conn.execute("UPDATE sources SET next_poll_at = now() - interval '1 second' WHERE id = %s", (source_id,))
    [claimed] = polling.claim(conn, 10, 180)
    outcome = make_poller(database_url, redis_url, forge.url, Vault(settings.fernet_keys)).poll(claimed)
    assert outcome.stored > 0, outcome
    # A gap the owner was shown (the poller records them only past Atlassian's 14 days).
    conn.execute("INSERT INTO source_gaps (source_id, gap_from, gap_until, reason) "
                 "VALUES (%s, now() - interval '20 days', now() - interval '15 days', 'older than 14 days')",
                 (source_id,))
    assert web.delete(f"/heroku/resources/{rid}", headers=heroku_headers()).status_code == 204
    return rid


def rows_of(conn, resource_id, source_ids: list) -> dict[str, int]:
    """Rows of every table that names the resource, and of the tables keyed by its sources."""
    tables = [r["table_name"] for r in conn.execute(
        "SELECT table_name FROM information_schema.columns WHERE column_name = 'resource_id' "
        "AND table_schema = 'public' ORDER BY table_name")]
    rows = {t: conn.execute(f"SELECT count(*) AS n FROM {t} WHERE resource_id = %s", (resource_id,)).fetchone()["n"]
            for t in tables}
    rows["resources"] = conn.execute("SELECT count(*) AS n FROM resources WHERE id = %s",
                                     (resource_id,)).fetchone()["n"]
    for table in ("forge_seen", "source_gaps"):
        rows[table] = conn.execute(f"SELECT count(*) AS n FROM {table} WHERE source_id = ANY(%s)",
                                   (source_ids,)).fetchone()["n"]
    return rows


def sources_of(conn, resource_id) -> list:
    return [r["id"] for r in conn.execute("SELECT id FROM sources WHERE resource_id = %s", (resource_id,))]


def age(conn, resource_id, deprovisioned_ago: timedelta) -> None:
    conn.execute("UPDATE resources SET deprovisioned_at = now() - %s WHERE id = %s",
                 (deprovisioned_ago, resource_id))


def test_a_deprovisioned_resource_is_purged_with_every_row_30_days_after_and_kept_until_then(
        web, conn, database_url, redis_url, forge, settings):
    old = deprovisioned_resource(web, conn, database_url, redis_url, forge, settings)
    recent = deprovisioned_resource(web, conn, database_url, redis_url, forge, settings)
    live = provision_body()
    assert web.post("/heroku/resources", data=json.dumps(live), headers=heroku_headers()).status_code == 200
    old_sources, recent_sources = sources_of(conn, old), sources_of(conn, recent)
    age(conn, old, timedelta(days=tick.PURGE_AFTER_DAYS, hours=1))
    age(conn, recent, timedelta(days=tick.PURGE_AFTER_DAYS) - timedelta(hours=1))
    before = rows_of(conn, old, old_sources)
    # Every kind of row a resource gathers is there, so the purge has something to prove.
    for table in ("resources", "sources", "drains", "outbox", "activity", "audit_log", "ingest_batches",
                  "forge_seen", "source_gaps"):
        assert before[table] > 0, (table, before)
    kept = rows_of(conn, recent, recent_sources)
    live_rows = rows_of(conn, live["uuid"], [])

    tick.run(1)  # any slot: the purge runs every tick

    assert set(rows_of(conn, old, old_sources).values()) == {0}
    assert rows_of(conn, recent, recent_sources) == kept  # inside its 30 days: the audit trail stays
    assert rows_of(conn, live["uuid"], []) == live_rows
    # ...and goes once its 30 days are over.
    age(conn, recent, timedelta(days=tick.PURGE_AFTER_DAYS, seconds=1))
    tick.run(2)
    assert set(rows_of(conn, recent, recent_sources).values()) == {0}
    assert rows_of(conn, live["uuid"], []) == live_rows
