"""Drains that follow the service (issue 17 item 1): Heroku lists the broker's drain after a provision, and
``python -m broker log-drains sync`` moves every add-on's drain to the current log_drain_url.

Heroku is the local fake (tests/fakes/heroku.py): it makes an add-on's drain from the provision answer, as
Heroku does, and implements the Platform API's log-drain listing and update with per-add-on bearer tokens.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from broker import config, db, provisioning
from broker.vault import Vault
from tests.fakes import heroku as fake_heroku
from tests.fakes.server import LocalServer
from tests.support.partner import heroku_headers, provision_body
from web import create_app
from worker import context

ROOT = Path(__file__).resolve().parent.parent
CLIENT_SECRET = "heroku-oauth-client-secret-for-tests"
OLD_URL = "http://127.0.0.1:5000/ingest/logplex"
NEW_PUBLIC_URL = "https://drains.forgedrain.example"
NEW_URL = f"{NEW_PUBLIC_URL}/ingest/logplex"


@pytest.fixture
def heroku():
    app, state = fake_heroku.create_fake(CLIENT_SECRET)
    with LocalServer(app) as server:
        server.state = state
        yield server
    assert state.violations == [], state.violations


@pytest.fixture
def heroku_env(env, heroku):
    env.update(HEROKU_API_URL=heroku.url, HEROKU_ID_URL=heroku.url, HEROKU_CLIENT_SECRET=CLIENT_SECRET)
    return env


@pytest.fixture
def heroku_settings(heroku_env):
    settings = config.load(heroku_env, testing=True)
    context.install(settings)
    yield settings
    context.install(None)


@pytest.fixture
def partner_api(heroku_settings):
    app = create_app(heroku_settings)
    yield app.test_client()
    app.extensions["forgedrain"].db.close()


def provision(partner_api, heroku, settings, *, grant: bool = True) -> str:
    """Provision as Heroku does and let the fake react to the answer; complete an asynchronous one."""
    body = provision_body()
    if grant:
        code = fake_heroku.add_grant(heroku.state, body["uuid"])
        expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=5)
        body["oauth_grant"] = {"code": code, "expires_at": expires.isoformat(), "type": "authorization_code"}
    answer = partner_api.post("/heroku/resources", data=json.dumps(body), headers=heroku_headers())
    assert answer.status_code == (202 if grant else 200), answer.get_data(as_text=True)
    fake_heroku.answer_provision(heroku.state, body, answer.status_code, answer.get_json(force=True))
    if grant:
        with requests.Session() as session:
            outcome = provisioning.complete(lambda: db.connect(settings.database_url), settings,
                                            Vault(settings.fernet_keys), session, body["uuid"])
        assert outcome == "provisioned"
    return body["uuid"]


def listed(heroku, addon_id: str) -> list[str]:
    """What `heroku drains --json` would show as the add-on's drain URLs."""
    return [d["url"] for d in heroku.state.drains.get(addon_id, [])]


def sync(env, *args: str, public_url: str = NEW_PUBLIC_URL):
    return subprocess.run([sys.executable, "-m", "broker", "log-drains", "sync", *args], cwd=ROOT,
                          env=dict(env, PATH="/usr/bin:/bin", PUBLIC_URL=public_url), capture_output=True,
                          text=True, timeout=120)


def calls(heroku, method: str, fragment: str) -> int:
    return sum(1 for m, path in heroku.state.requests if m == method and fragment in path)


def test_heroku_lists_the_brokers_drain_after_a_synchronous_and_an_asynchronous_provision(
        partner_api, heroku, heroku_settings):
    body = provision_body()
    answer = partner_api.post("/heroku/resources", data=json.dumps(body), headers=heroku_headers())
    assert answer.status_code == 200
    fake_heroku.answer_provision(heroku.state, body, 200, answer.get_json(force=True))
    assert listed(heroku, body["uuid"]) == [OLD_URL]
    assert heroku.state.drains[body["uuid"]][0]["token"] == body["log_drain_token"]

    later = provision_body()
    later["oauth_grant"] = {"code": fake_heroku.add_grant(heroku.state, later["uuid"]),
                            "expires_at": "2099-01-01T00:00:00Z", "type": "authorization_code"}
    answer = partner_api.post("/heroku/resources", data=json.dumps(later), headers=heroku_headers())
    assert answer.status_code == 202
    fake_heroku.answer_provision(heroku.state, later, 202, answer.get_json(force=True))
    assert listed(heroku, later["uuid"]) == []  # Heroku makes it when the add-on is provisioned
    with requests.Session() as session:
        assert provisioning.complete(lambda: db.connect(heroku_settings.database_url), heroku_settings,
                                     Vault(heroku_settings.fernet_keys), session, later["uuid"]) == "provisioned"
    assert listed(heroku, later["uuid"]) == [OLD_URL]


def test_sync_moves_every_drain_to_the_new_url_and_a_second_run_moves_nothing(
        partner_api, heroku, heroku_settings, heroku_env, conn):
    moving = [provision(partner_api, heroku, heroku_settings) for _ in range(3)]
    without_token = provision(partner_api, heroku, heroku_settings, grant=False)

    dry = sync(heroku_env, "--dry-run")
    assert dry.returncode == 1, dry.stderr  # the add-on without a token needs a look
    assert calls(heroku, "PUT", "/log-drains") == 0
    for addon_id in moving:
        assert f"{addon_id}: would move from {OLD_URL}" in dry.stderr
        assert listed(heroku, addon_id) == [OLD_URL]
    assert conn.execute("SELECT count(*) AS n FROM resources WHERE log_drain_url IS NOT NULL").fetchone()["n"] == 0

    first = sync(heroku_env)
    assert first.returncode == 1, first.stderr
    assert "4 add-ons not known to have their drain at " + NEW_URL in first.stdout
    assert "moved: 3" in first.stdout and "no OAuth token: 1" in first.stdout
    assert "no OAuth token (1): " in first.stdout and without_token in first.stdout
    for addon_id in moving:
        assert listed(heroku, addon_id) == [NEW_URL]
    assert listed(heroku, without_token) == [OLD_URL]
    audited = conn.execute("SELECT resource_id::text AS id, actor, detail FROM audit_log "
                           "WHERE action = 'log_drain.moved' ORDER BY resource_id").fetchall()
    assert [(a["id"], a["actor"], a["detail"]) for a in audited] == [
        (addon_id, "operator-cli", {"from": OLD_URL, "to": NEW_URL}) for addon_id in sorted(moving)]
    for secret in heroku.state.access:
        assert secret not in first.stdout + first.stderr

    reads, moves = calls(heroku, "GET", "/log-drains"), calls(heroku, "PUT", "/log-drains")
    second = sync(heroku_env)
    assert "1 add-on not known to have their drain at" in second.stdout
    assert calls(heroku, "GET", "/log-drains") == reads  # the moved ones are known to be there
    assert calls(heroku, "PUT", "/log-drains") == moves == 3

    # The service moves again: the same command moves them all again.
    again = sync(heroku_env, public_url="https://logs.forgedrain.example")
    assert again.returncode == 1 and "moved: 3" in again.stdout
    for addon_id in moving:
        assert listed(heroku, addon_id) == ["https://logs.forgedrain.example/ingest/logplex"]


def test_sync_refuses_a_public_url_heroku_would_not_take_before_calling_it(
        partner_api, heroku, heroku_settings, heroku_env):
    provision(partner_api, heroku, heroku_settings)
    requests_before = len(heroku.state.requests)
    refused = sync(heroku_env, public_url="http://logs.forgedrain.example")
    assert refused.returncode == 2
    assert "Heroku takes only https:// drain URLs" in refused.stderr
    assert len(heroku.state.requests) == requests_before


def test_an_interrupted_sync_continues_with_the_drains_not_yet_moved(
        partner_api, heroku, heroku_settings, heroku_env):
    moving = [provision(partner_api, heroku, heroku_settings) for _ in range(3)]
    fake_heroku.fail(heroku.state, "/log-drains/", 503, times=1)  # Heroku fails one update

    first = sync(heroku_env)
    assert first.returncode == 1
    assert "moved: 2" in first.stdout and "failed: 1" in first.stdout
    assert "log drain update: HTTP 503" in first.stdout
    assert sorted(len(listed(heroku, a)) for a in moving) == [1, 1, 1]
    assert sorted(listed(heroku, a)[0] for a in moving) == [OLD_URL, NEW_URL, NEW_URL]
    moves = calls(heroku, "PUT", "/log-drains")

    second = sync(heroku_env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "1 add-on not known" in second.stdout and "moved: 1" in second.stdout
    assert calls(heroku, "PUT", "/log-drains") == moves + 1
    assert all(listed(heroku, a) == [NEW_URL] for a in moving)


def test_sync_refreshes_a_stale_access_token_and_records_a_drain_already_at_the_url(
        partner_api, heroku, heroku_settings, heroku_env, conn):
    heroku.state.expires_in = 1  # every token Heroku issues is stale for the broker at once
    addon_id = provision(partner_api, heroku, heroku_settings)
    refreshes = calls(heroku, "POST", "/oauth/token")

    moved = sync(heroku_env)
    assert moved.returncode == 0, moved.stdout + moved.stderr
    assert "moved: 1" in moved.stdout
    assert calls(heroku, "POST", "/oauth/token") == refreshes + 1
    assert listed(heroku, addon_id) == [NEW_URL]

    # What the broker knew is lost (a restored backup): Heroku is asked, nothing is moved or audited again.
    conn.execute("UPDATE resources SET log_drain_url = NULL WHERE id = %s", (addon_id,))
    done = sync(heroku_env)
    assert done.returncode == 0 and "already there: 1" in done.stdout
    assert calls(heroku, "PUT", "/log-drains") == 1
    row = conn.execute("SELECT log_drain_url FROM resources WHERE id = %s", (addon_id,)).fetchone()
    assert row["log_drain_url"] == NEW_URL
    assert conn.execute("SELECT count(*) AS n FROM audit_log WHERE action = 'log_drain.moved'").fetchone()["n"] == 1


def test_an_addon_heroku_lists_no_drain_for_is_named_with_what_to_do(
        partner_api, heroku, heroku_settings, heroku_env):
    addon_id = provision(partner_api, heroku, heroku_settings)
    heroku.state.drains[addon_id].clear()  # the app's drain is gone

    done = sync(heroku_env)
    assert done.returncode == 1
    assert "no drain at Heroku (1): Heroku lists no drain with this add-on's drain token" in done.stdout
    assert addon_id in done.stdout
    assert calls(heroku, "PUT", "/log-drains") == 0
