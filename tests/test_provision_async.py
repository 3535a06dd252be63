"""Asynchronous provisioning against a local fake of Heroku's identity and Platform API."""

from __future__ import annotations

import datetime
import json
import random

import pytest
import requests
from rq import SimpleWorker

from broker import config, db, jobs, provisioning, redisconn
from broker.vault import Vault
from tests.fakes import heroku as fake_heroku
from tests.fakes.server import LocalServer
from tests.support.partner import heroku_headers, provision_body
from web import create_app
from worker import context

CLIENT_SECRET = "heroku-oauth-client-secret-for-tests"


@pytest.fixture
def heroku():
    app, state = fake_heroku.create_fake(CLIENT_SECRET)
    with LocalServer(app) as server:
        server.state = state
        yield server
    assert state.violations == [], state.violations


@pytest.fixture
def async_settings(env, heroku):
    env.update(HEROKU_API_URL=heroku.url, HEROKU_ID_URL=heroku.url, HEROKU_CLIENT_SECRET=CLIENT_SECRET)
    settings = config.load(env, testing=True)
    context.install(settings)
    yield settings
    context.install(None)


@pytest.fixture
def async_client(async_settings):
    app = create_app(async_settings)
    yield app.test_client()
    app.extensions["forgedrain"].db.close()


def grant_for(heroku, addon_id: str, ttl: float = 300) -> dict:
    code = fake_heroku.add_grant(heroku.state, addon_id, ttl)
    expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=ttl)
    return {"code": code, "expires_at": expires.isoformat().replace("+00:00", "Z"),
            "type": "authorization_code"}


def start(async_client, heroku, **overrides):
    body = provision_body(**overrides)
    body["oauth_grant"] = grant_for(heroku, body["uuid"])
    response = async_client.post("/heroku/resources", data=json.dumps(body), headers=heroku_headers())
    return body, response


def run_worker(redis_url: str) -> None:
    connection = redisconn.connect(redis_url, socket_timeout=None)
    queues = [jobs.queue(name, connection) for name in jobs.QUEUE_NAMES]
    SimpleWorker(queues, connection=connection, serializer=jobs.SERIALIZER).work(burst=True)


def complete(settings, resource_id: str) -> str:
    with requests.Session() as session:
        return provisioning.complete(lambda: db.connect(settings.database_url), settings,
                                     Vault(settings.fernet_keys), session, resource_id)


def state_of(conn, resource_id: str) -> dict:
    return conn.execute(
        "SELECT state, provision_error, provision_attempts, oauth_access_token_enc, "
        "oauth_grant_code_enc FROM resources WHERE id = %s", (resource_id,)
    ).fetchone()


def test_a_grant_makes_provisioning_asynchronous_and_a_job_completes_it(
        async_client, async_settings, heroku, conn, redis_url):
    body, response = start(async_client, heroku)
    assert response.status_code == 202
    data = response.get_json(force=True)
    assert data["id"] == body["uuid"]
    assert "log_drain_url" in data
    assert state_of(conn, body["uuid"])["state"] == "provisioning"
    # the job carries the resource id only, never the grant code
    queued = jobs.queue("control", redisconn.connect(redis_url)).jobs
    assert [list(j.args) for j in queued] == [[body["uuid"]]]

    run_worker(redis_url)

    row = state_of(conn, body["uuid"])
    assert row["state"] == "provisioned"
    assert row["oauth_grant_code_enc"] is None
    assert row["oauth_access_token_enc"] is not None
    token_plaintext = heroku.state.access
    assert not any(t in row["oauth_access_token_enc"] for t in token_plaintext)
    assert heroku.state.provisioned == {body["uuid"]}
    # Heroku got exactly the config the 202 answer carried
    assert heroku.state.config[body["uuid"]] == data["config"]
    assert heroku.state.requests == [
        ("POST", "/oauth/token"),
        ("PATCH", f"/addons/{body['uuid']}/config"),
        ("POST", f"/addons/{body['uuid']}/actions/provision"),
    ]
    actions = [r["action"] for r in conn.execute("SELECT action FROM audit_log ORDER BY id")]
    assert actions == ["resource.provisioned", "provision.completed"]
    # a replay now answers 200 with the same body
    again = async_client.post("/heroku/resources", data=json.dumps(body), headers=heroku_headers())
    assert again.status_code == 200
    assert again.get_json(force=True)["config"] == data["config"]


def test_without_a_client_secret_provisioning_stays_synchronous(client, conn):
    body = provision_body()
    body["oauth_grant"] = {"code": "abc", "expires_at": "2030-01-01T00:00:00Z", "type": "authorization_code"}
    response = client.post("/heroku/resources", data=json.dumps(body), headers=heroku_headers())
    assert response.status_code == 200
    assert state_of(conn, body["uuid"])["oauth_grant_code_enc"] is None


def test_a_transient_failure_backs_off_and_a_later_run_completes(
        async_client, async_settings, heroku, conn):
    body, _ = start(async_client, heroku)
    fake_heroku.fail(heroku.state, "/actions/provision", 503, times=1)
    assert complete(async_settings, body["uuid"]) == "retry"
    row = conn.execute("SELECT state, provision_attempts, provision_error, "
                       "provision_next_at > now() AS later FROM resources").fetchone()
    assert row == {"state": "provisioning", "provision_attempts": 1,
                   "provision_error": "provision action: HTTP 503", "later": True}
    # not due yet: the tick would not pick it
    assert conn.execute("SELECT count(*) AS n FROM resources WHERE provision_next_at <= now()").fetchone()["n"] == 0
    # the tokens from the first exchange are kept; the next run does not exchange again
    assert complete(async_settings, body["uuid"]) == "provisioned"
    assert heroku.state.requests.count(("POST", "/oauth/token")) == 1
    assert state_of(conn, body["uuid"])["state"] == "provisioned"


def test_a_refused_grant_fails_the_provision_with_the_reason(async_client, async_settings, heroku, conn):
    body = provision_body()
    body["oauth_grant"] = {"code": "never-issued", "expires_at": "2099-01-01T00:00:00Z",
                           "type": "authorization_code"}
    response = async_client.post("/heroku/resources", data=json.dumps(body), headers=heroku_headers())
    assert response.status_code == 202
    assert complete(async_settings, body["uuid"]) == "failed"
    row = state_of(conn, body["uuid"])
    assert row["state"] == "failed"
    assert row["provision_error"] == "grant exchange: HTTP 400"
    assert row["oauth_grant_code_enc"] is None
    replay = async_client.post("/heroku/resources", data=json.dumps(body), headers=heroku_headers())
    assert replay.status_code == 422
    assert "provisioning failed" in replay.get_json(force=True)["message"]


def test_an_expired_grant_fails_without_calling_heroku(async_client, async_settings, heroku, conn):
    body, _ = start(async_client, heroku)
    conn.execute("UPDATE resources SET oauth_grant_expires_at = now() - interval '1 second'")
    assert complete(async_settings, body["uuid"]) == "failed"
    assert "expired" in state_of(conn, body["uuid"])["provision_error"]
    assert heroku.state.requests == []


def test_a_provision_past_herokus_12_hour_limit_fails(async_client, async_settings, heroku, conn):
    body, _ = start(async_client, heroku)
    conn.execute("UPDATE resources SET created_at = now() - interval '13 hours'")
    assert complete(async_settings, body["uuid"]) == "failed"
    assert "12 hours" in state_of(conn, body["uuid"])["provision_error"]


def test_a_stale_access_token_is_refreshed_before_use(async_client, async_settings, heroku, conn):
    body, _ = start(async_client, heroku)
    fake_heroku.fail(heroku.state, "/actions/provision", 500, times=1)
    assert complete(async_settings, body["uuid"]) == "retry"
    conn.execute("UPDATE resources SET oauth_expires_at = now() + interval '1 minute'")
    assert complete(async_settings, body["uuid"]) == "provisioned"
    token_calls = [r for r in heroku.state.requests if r[1] == "/oauth/token"]
    assert len(token_calls) == 2  # the exchange, then one refresh


def test_the_tick_re_enqueues_due_provisions(async_client, async_settings, heroku, conn, redis_url):
    from worker import tick

    body, _ = start(async_client, heroku)
    connection = redisconn.connect(redis_url)
    connection.flushdb()  # as if Redis lost the job
    tick.run(1)
    assert [list(j.args) for j in jobs.queue("control", connection).jobs] == [[body["uuid"]]]
    tick.run(2)  # a second tick does not queue it twice
    assert len(jobs.queue("control", connection).jobs) == 1
    run_worker(redis_url)
    assert state_of(conn, body["uuid"])["state"] == "provisioned"


def test_deprovisioning_during_provisioning_stops_it(async_client, async_settings, heroku, conn):
    body, _ = start(async_client, heroku)
    async_client.delete(f"/heroku/resources/{body['uuid']}", headers=heroku_headers())
    assert complete(async_settings, body["uuid"]) == "nothing-to-do"
    assert heroku.state.requests == []


def test_backoff_grows_and_is_capped():
    rng = random.Random(7)
    delays = [provisioning.backoff_seconds(n, rng) for n in range(12)]
    assert 2.5 <= delays[0] <= 5
    assert delays[3] > delays[0]
    assert all(d <= provisioning.BACKOFF_MAX_SECONDS for d in delays)
    assert delays[-1] >= provisioning.BACKOFF_MAX_SECONDS / 2


def test_a_token_rotation_pushes_the_new_config_to_heroku(async_client, async_settings, heroku, conn, redis_url):
    body, response = start(async_client, heroku)
    run_worker(redis_url)
    old = response.get_json(force=True)["config"]["FORGEDRAIN_TOKEN"]
    rotated = async_client.post(f"/v1/resources/{body['uuid']}/token",
                                headers={"Authorization": f"Bearer {old}"})
    assert rotated.status_code == 200
    run_worker(redis_url)
    assert heroku.state.config[body["uuid"]]["FORGEDRAIN_TOKEN"] == rotated.json["token"]
    assert heroku.state.requests.count(("PATCH", f"/addons/{body['uuid']}/config")) == 2
