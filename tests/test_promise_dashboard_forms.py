"""README promises (Dashboard): the owner deletes a source from the dashboard, and a form left open
on a source or drain that is gone by the time it is sent changes nothing.

- Deleting a source: the button's POST removes it with its fingerprints and gaps, audited under
  the signed-in user's email, frees its place in the plan, keeps the records already stored for
  the drains, and a poll of it already in flight (held at the Forge fake) stores nothing.
- Gone while open: every form and button of a source or drain deleted meanwhile (from another tab,
  or the resource API) answers 404 and changes nothing: no row, no audit entry, no call out.

Through Flask's test client with the Forge fake and real PostgreSQL/Redis, as the owner's browser
would send the forms.
"""

from __future__ import annotations

import json
import re
import threading
import time

import pytest

from broker import config, polling
from broker.vault import Vault
from tests.fakes.forge import ForgeFake
from tests.fakes.receivers import logplex_receiver
from tests.fakes.server import LocalServer
from tests.support.partner import heroku_headers, provision_body, user_scoped_token
from tests.support.polling import make_poller
from web import create_app

APP = "3c5e7a9b-1d2f-4a6c-8e0b-2d4f6a8c0e1a"
OTHER_APP = "4d6f8b0c-2e3a-4b7d-9f1c-3e5a7b9d1f2b"
ENV = "1a2b3c4d-5e6f-4a8b-9c0d-1e2f3a4b5c6d"
EMAIL = "bot@acme.test"
TOKEN = "ATATT3xFfGF0-dashboard-promise-token"
OWNER = "owner@acme.test"


@pytest.fixture
def forge():
    fake = ForgeFake(seed=41, rate_limit=10_000)
    for app_id in (APP, OTHER_APP):
        fake.add_app(app_id, [ENV], EMAIL, TOKEN, records_per_minute=30)
    with LocalServer(fake.wsgi()) as server:
        fake.url = server.url
        yield fake


@pytest.fixture
def settings(env, forge):
    return config.load({**env, "FORGE_API_URL": forge.url}, testing=True)


@pytest.fixture
def app(settings):
    application = create_app(settings)
    yield application
    application.extensions["forgedrain"].db.close()


@pytest.fixture
def browser(app):
    return app.test_client()


def provision(client, plan: str) -> tuple[str, dict]:
    body = provision_body(plan=plan)
    answer = client.post("/heroku/resources", data=json.dumps(body), headers=heroku_headers())
    assert answer.status_code == 200, answer.data
    return body["uuid"], {"Authorization": f"Bearer {answer.get_json(force=True)['config']['FORGEDRAIN_TOKEN']}"}


def sign_in(client, rid: str) -> str:
    """SSO as Heroku does it for a user; the CSRF token of the dashboard page."""
    stamp, token = user_scoped_token(rid, "u-1", OWNER)
    answer = client.post("/sso/login", data={"resource_id": rid, "user_scoped_resource_token": token,
                                              "timestamp": stamp, "app": "acme", "email": OWNER, "user_id": "u-1"})
    assert answer.status_code == 302
    page = client.get(f"/dashboard/{rid}")
    assert page.status_code == 200
    return re.search(r'name="csrf_token" value="([^"]+)"', page.get_data(as_text=True)).group(1)


def source_form(app_id: str = APP, **overrides) -> dict:
    return {"app_id": app_id, "environment_id": ENV, "email": EMAIL, "api_token": TOKEN, "levels": ["INFO"],
            "service_name": "acme-app", **overrides}


def count(conn, sql: str, *params) -> int:
    return conn.execute(f"SELECT count(*) AS n FROM {sql}", params).fetchone()["n"]


def wait_for(condition, what: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.02)


# --- deleting a source ---------------------------------------------------------------------------

def test_deleting_a_source_from_the_dashboard_removes_it_and_its_poll_in_flight_stores_nothing(
        browser, conn, forge, settings, database_url, redis_url):
    rid, _ = provision(browser, "test")  # one source allowed
    csrf = sign_in(browser, rid)
    assert browser.post(f"/dashboard/{rid}/sources", data={**source_form(), "csrf_token": csrf}).status_code == 303
    [source_id] = [r["id"] for r in conn.execute("SELECT id FROM sources WHERE resource_id = %s", (rid,))]
    # What a source gathers: fingerprints and a batch from a first poll, a gap shown to the owner.
    conn.execute("UPDATE sources SET next_poll_at = now() - interval '1 second'")
    poller = make_poller(database_url, redis_url, forge.url, Vault(settings.fernet_keys))
    [claimed] = polling.claim(conn, 10, 180)
    first = poller.poll(claimed)
    assert first.stored > 0 and not first.errors
    conn.execute("INSERT INTO source_gaps (source_id, gap_from, gap_until, reason) "
                 "VALUES (%s, now() - interval '20 days', now() - interval '15 days', 'older than 14 days')",
                 (source_id,))
    stored = count(conn, "outbox WHERE resource_id = %s", rid)
    page = browser.get(f"/dashboard/{rid}").get_data(as_text=True)
    assert f'action="/dashboard/{rid}/sources/{source_id}/delete"' in page
    refused = browser.post(f"/dashboard/{rid}/sources", data={**source_form(OTHER_APP), "csrf_token": csrf})
    assert refused.status_code == 422 and "plan test allows 1 source" in refused.get_data(as_text=True)

    # A poll of the source is out at Atlassian (held at the fake) when the owner presses Delete.
    conn.execute("UPDATE sources SET next_poll_at = now() - interval '1 second', "
                 "checkpoint = checkpoint - interval '10 minutes'")
    [claimed] = polling.claim(conn, 10, 180)
    forge.hold()
    outcome = []
    in_flight = threading.Thread(target=lambda: outcome.append(poller.poll(claimed)), daemon=True)
    in_flight.start()
    try:
        wait_for(lambda: forge.held == 1, "the poll's call to reach Atlassian")
        deleted = browser.post(f"/dashboard/{rid}/sources/{source_id}/delete", data={"csrf_token": csrf})
    finally:
        forge.release()
    in_flight.join(60)
    assert not in_flight.is_alive()

    assert deleted.status_code == 303 and deleted.headers["Location"].endswith(f"/dashboard/{rid}#sources")
    page = browser.get(f"/dashboard/{rid}").get_data(as_text=True)
    assert f"Source {APP} deleted." in page
    assert str(source_id) not in page
    assert count(conn, "sources WHERE id = %s", source_id) == 0
    assert count(conn, "forge_seen WHERE source_id = %s", source_id) == 0
    assert count(conn, "source_gaps WHERE source_id = %s", source_id) == 0
    # The poll that was out stored nothing; what was stored before stays for the drains.
    assert count(conn, "outbox WHERE resource_id = %s", rid) == stored
    assert [o.stored for o in outcome] == [0]
    entry = conn.execute("SELECT actor, action, detail FROM audit_log WHERE resource_id = %s ORDER BY id DESC "
                         "LIMIT 1", (rid,)).fetchone()
    assert (entry["actor"], entry["action"]) == (OWNER, "source.deleted")
    assert entry["detail"]["app_id"] == APP
    # Its place in the plan is free again.
    assert browser.post(f"/dashboard/{rid}/sources",
                        data={**source_form(OTHER_APP), "csrf_token": csrf}).status_code == 303


# --- a source or drain gone while its form is open -------------------------------------------------

def snapshot(conn, rid) -> dict:
    return {
        "sources": [dict(r) for r in conn.execute("SELECT * FROM sources WHERE resource_id = %s ORDER BY id",
                                                  (rid,))],
        "drains": [dict(r) for r in conn.execute("SELECT * FROM drains WHERE resource_id = %s ORDER BY id",
                                                 (rid,))],
        "audit": count(conn, "audit_log WHERE resource_id = %s", rid),
    }


def test_a_source_deleted_while_its_forms_are_open_makes_each_of_them_404_and_change_nothing(
        app, browser, conn, forge):
    rid, auth = provision(browser, "basic")
    csrf = sign_in(browser, rid)
    assert browser.post(f"/dashboard/{rid}/sources", data={**source_form(), "csrf_token": csrf}).status_code == 303
    [source_id] = [r["id"] for r in conn.execute("SELECT id FROM sources WHERE resource_id = %s", (rid,))]
    base = f"/dashboard/{rid}/sources/{source_id}"
    assert browser.get(f"{base}/edit").status_code == 200  # the edit form is open in this tab...
    other_tab = app.test_client()
    other_csrf = sign_in(other_tab, rid)
    assert other_tab.post(f"{base}/delete", data={"csrf_token": other_csrf}).status_code == 303  # ...gone there
    before = snapshot(conn, rid)
    calls = len(forge.calls)

    forms = {
        "edit": {**source_form(service_name="renamed", environment_label="staging")},
        "edit with new credentials": {**source_form(OTHER_APP, api_token=TOKEN)},
        "verify": {}, "backfill": {"from": "2026-01-01T00:00"}, "delete": {},
    }
    paths = {"edit": base, "edit with new credentials": base, "verify": f"{base}/verify",
             "backfill": f"{base}/backfill", "delete": f"{base}/delete"}
    for name, form in forms.items():
        answer = browser.post(paths[name], data={**form, "csrf_token": csrf})
        assert answer.status_code == 404, (name, answer.status_code, answer.get_data(as_text=True)[:300])
    assert browser.get(f"{base}/edit").status_code == 404
    assert snapshot(conn, rid) == before
    assert len(forge.calls) == calls  # no verification was spent on a source that is not there
    assert browser.get(f"/dashboard/{rid}").status_code == 200  # the session and page carry on


def test_a_drain_deleted_while_its_forms_are_open_makes_each_of_them_404_and_change_nothing(
        browser, conn):
    rid, auth = provision(browser, "basic")
    csrf = sign_in(browser, rid)
    receiver, inbox = logplex_receiver()
    with LocalServer(receiver) as server:
        created = browser.post(f"/dashboard/{rid}/drains", data={"kind": "logplex", "url": f"{server.url}/drain",
                                                                  "name": "local", "csrf_token": csrf})
        assert created.status_code == 303
        [drain_id] = [r["id"] for r in conn.execute("SELECT id FROM drains WHERE resource_id = %s AND kind = "
                                                    "'logplex'", (rid,))]
        base = f"/dashboard/{rid}/drains/{drain_id}"
        assert browser.get(f"{base}/edit").status_code == 200  # open in this tab; deleted through the API
        assert browser.delete(f"/v1/resources/{rid}/drains/{drain_id}", headers=auth).status_code == 204
        before = snapshot(conn, rid)

        forms = {base: {"name": "renamed", "url": f"{server.url}/elsewhere"},
                 f"{base}/test": {}, f"{base}/token": {}, f"{base}/enabled": {"enabled": "false"},
                 f"{base}/delete": {}}
        for path, form in forms.items():
            answer = browser.post(path, data={**form, "csrf_token": csrf})
            assert answer.status_code == 404, (path, answer.status_code, answer.get_data(as_text=True)[:300])
        assert browser.get(f"{base}/edit").status_code == 404
    assert inbox.requests == []  # no test record went out for a drain that is not there
    assert snapshot(conn, rid) == before
    assert browser.get(f"/dashboard/{rid}").status_code == 200
