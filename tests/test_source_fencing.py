"""Editing a source's app, environment or credentials fences a poll already in flight (issue 12, item 5).

The poll is claimed as a poll job would claim it, the owner edits the source
through the resource API while it holds its lease, and then the stale poll
runs: it must find itself fenced out (``lost-lease``), store nothing under the
source and leave the checkpoint the edit set.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from broker import config, polling
from broker.vault import Vault
from tests.fakes.forge import ForgeFake
from tests.fakes.server import LocalServer
from tests.support.partner import heroku_headers, provision_body
from tests.support.polling import make_poller
from web import create_app

APP = "5f0f8a4e-1f5a-4c3e-9d7b-1a2b3c4d5e6f"
OTHER_APP = "7a7a7a7a-1f5a-4c3e-9d7b-1a2b3c4d5e6f"
ENV = "0d1e2f30-4152-6374-8596-a7b8c9d0e1f2"
EMAIL = "bot@acme.test"
TOKEN = "ATATT3xFfGF0-secret-token-0123456789"
NEW_TOKEN = "ATATT3xFfGF0-rotated-token-9876543210"


@pytest.fixture
def forge_fake():
    fake = ForgeFake(seed=12, rate_limit=10_000)
    fake.add_app(APP, [ENV, "staging-env"], EMAIL, TOKEN, records_per_minute=30)
    # Same account: its second token opens APP too, and it sees OTHER_APP.
    fake.add_app(OTHER_APP, [ENV], EMAIL, NEW_TOKEN, records_per_minute=30)
    with LocalServer(fake.wsgi()) as server:
        fake.url = server.url
        yield fake


@pytest.fixture
def api(env, forge_fake):
    env["FORGE_API_URL"] = forge_fake.url
    app = create_app(config.load(env, testing=True))
    yield app.test_client()
    app.extensions["forgedrain"].db.close()


@pytest.fixture
def source(api):
    body = provision_body(plan="basic")
    response = api.post("/heroku/resources", data=json.dumps(body), headers=heroku_headers())
    auth = {"Authorization": f"Bearer {response.get_json(force=True)['config']['FORGEDRAIN_TOKEN']}"}
    created = api.post(f"/v1/resources/{body['uuid']}/sources", headers=auth, data=json.dumps(
        {"app_id": APP, "environment_id": ENV, "email": EMAIL, "api_token": TOKEN}))
    assert created.status_code == 201, created.json
    return f"/v1/resources/{body['uuid']}/sources/{created.json['id']}", auth, created.json["id"]


def claim(conn, source_id) -> dict:
    """Make the source due and lease it, as a poll job would."""
    conn.execute("UPDATE sources SET next_poll_at = now() - interval '1 second' WHERE id = %s", (source_id,))
    claimed = polling.claim(conn, 10, 180)
    assert [str(c["id"]) for c in claimed] == [source_id]
    return claimed[0]


def row(conn, source_id) -> dict:
    return conn.execute("SELECT * FROM sources WHERE id = %s", (source_id,)).fetchone()


@pytest.mark.parametrize("change, restarts", [
    ({"environment_id": "staging-env"}, True),
    ({"app_id": OTHER_APP, "api_token": NEW_TOKEN}, True),
    ({"api_token": NEW_TOKEN}, False),
])
def test_an_edit_during_a_poll_fences_it_out(api, source, conn, database_url, redis_url, settings, forge_fake,
                                              change, restarts):
    url, auth, source_id = source
    # Polled up to ten minutes ago, with a window half read and a measured density.
    conn.execute("UPDATE sources SET checkpoint = now() - interval '10 minutes', settled_until = now() - "
                 "interval '12 minutes', window_opened_at = now(), window_pages = 3, window_records = 150, "
                 "density_per_minute = 30, page_records = 100, capacity_per_minute = 2500 WHERE id = %s",
                 (source_id,))
    stale = claim(conn, source_id)
    before = row(conn, source_id)

    response = api.patch(url, headers=auth, data=json.dumps(change))
    assert response.status_code == 200, response.json
    edited = row(conn, source_id)
    assert edited["lease_token"] is None and edited["lease_expires_at"] is None
    if restarts:
        assert edited["checkpoint"] < before["checkpoint"] - timedelta(minutes=45)  # an hour back, fresh
        assert edited["settled_until"] is None and edited["window_opened_at"] is None
        assert (edited["window_pages"], edited["window_records"]) == (0, 0)
        assert edited["density_per_minute"] is None and edited["page_records"] is None
        assert edited["capacity_per_minute"] is None and edited["over_capacity_since"] is None
    else:
        assert edited["checkpoint"] == before["checkpoint"]

    outcome = make_poller(database_url, redis_url, forge_fake.url, Vault(settings.fernet_keys)).poll(stale)
    assert outcome.result == "lost-lease"
    after = row(conn, source_id)
    assert after["checkpoint"] == edited["checkpoint"]
    assert after["lease_token"] is None
    assert conn.execute("SELECT count(*) AS n FROM outbox WHERE source_id = %s",
                        (source_id,)).fetchone()["n"] == 0
    if restarts:
        assert conn.execute("SELECT count(*) AS n FROM forge_seen WHERE source_id = %s",
                            (source_id,)).fetchone()["n"] == 0


def test_an_edit_of_the_labels_only_leaves_a_poll_in_flight_alone(api, source, conn):
    url, auth, source_id = source
    stale = claim(conn, source_id)
    response = api.patch(url, headers=auth, data=json.dumps({"service_name": "renamed", "levels": ["ERROR"]}))
    assert response.status_code == 200
    assert row(conn, source_id)["lease_token"] == stale["lease_token"]


def test_a_backfill_restarts_the_window_and_the_settled_horizon(api, source, conn):
    url, auth, source_id = source
    conn.execute("UPDATE sources SET settled_until = checkpoint - interval '5 minutes', window_start = "
                 "checkpoint - interval '5 minutes', window_end = checkpoint + interval '5 minutes', "
                 "window_opened_at = now(), window_pages = 4, window_records = 200 WHERE id = %s", (source_id,))
    start = conn.execute("SELECT now() - interval '3 hours' AS t").fetchone()["t"]
    response = api.post(f"{url}/backfill", headers=auth, data=json.dumps({"from": start.isoformat()}))
    assert response.status_code == 202, response.json
    after = row(conn, source_id)
    # Back to the start, and swept from there: nothing before it was ever unsettled.
    assert after["checkpoint"] == start and after["settled_until"] == start
    assert after["window_start"] is None and after["window_opened_at"] is None
    assert (after["window_pages"], after["window_records"]) == (0, 0)
