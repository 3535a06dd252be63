"""Owner actions that call Atlassian spend the app's shared call budget (issue 12, item 6).

Create, update and verify (resource API, dashboard, provisioning options) take
a call from the same per-app limiter as polling. With none left they answer
503 with ``Retry-After`` before any call to Atlassian, and change nothing; a
429 that still comes back blocks the app for everyone.
"""

from __future__ import annotations

import json
import re

import pytest
import redis

from broker import config, ratelimit
from broker.ratelimit import RateLimiter
from tests.fakes.forge import ForgeFake
from tests.fakes.server import LocalServer
from tests.support.partner import heroku_headers, provision_body, sso_token
from web import create_app

APP = "5f0f8a4e-1f5a-4c3e-9d7b-1a2b3c4d5e6f"
ENV = "0d1e2f30-4152-6374-8596-a7b8c9d0e1f2"
EMAIL = "bot@acme.test"
TOKEN = "ATATT3xFfGF0-secret-token-0123456789"
SOURCE = {"app_id": APP, "environment_id": ENV, "email": EMAIL, "api_token": TOKEN}


@pytest.fixture
def forge_fake():
    fake = ForgeFake(seed=6, rate_limit=10_000, retry_after=True)
    fake.add_app(APP, [ENV, "staging-env"], EMAIL, TOKEN)
    with LocalServer(fake.wsgi()) as server:
        fake.url = server.url
        yield fake


@pytest.fixture
def client(env, forge_fake):
    env["FORGE_API_URL"] = forge_fake.url
    app = create_app(config.load(env, testing=True))
    yield app.test_client()
    app.extensions["forgedrain"].db.close()


@pytest.fixture
def limiter(settings, redis_url):
    """Takes every call there is, the owner's headroom included (busy polls plus other checks)."""
    return RateLimiter(redis.Redis.from_url(redis_url), ratelimit.owner_limit(settings.forge_rate_limit),
                       settings.forge_rate_period_seconds)


@pytest.fixture
def resource(client):
    body = provision_body(plan="basic")
    response = client.post("/heroku/resources", data=json.dumps(body), headers=heroku_headers())
    assert response.status_code == 200
    token = response.get_json(force=True)["config"]["FORGEDRAIN_TOKEN"]
    return body["uuid"], {"Authorization": f"Bearer {token}"}


def spend(limiter: RateLimiter, app_id: str = APP) -> None:
    """Take every call of the app's budget, as busy polls would."""
    while limiter.take(app_id)[1] is not None:
        pass


def assert_budget_refusal(response) -> None:
    assert response.status_code == 503
    assert re.fullmatch(r"[1-9]\d*", response.headers["Retry-After"])
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    body = response.get_json(force=True)
    assert body["error"] == "forge_budget_spent"
    assert APP in body["message"] and "nothing was saved" in body["message"]


def snapshot(conn) -> list[dict]:
    return conn.execute("SELECT * FROM sources ORDER BY id").fetchall()


def audit_count(conn) -> int:
    return conn.execute("SELECT count(*) AS n FROM audit_log").fetchone()["n"]


def test_create_update_and_verify_wait_for_budget_and_change_nothing(client, resource, conn, limiter, forge_fake):
    rid, auth = resource
    created = client.post(f"/v1/resources/{rid}/sources", headers=auth, data=json.dumps(SOURCE))
    assert created.status_code == 201
    url = f"/v1/resources/{rid}/sources/{created.json['id']}"
    assert limiter.used(APP) == 1  # the check spent one call of the app's budget
    spend(limiter)
    calls, sources, audited = len(forge_fake.calls), snapshot(conn), audit_count(conn)

    assert_budget_refusal(client.post(f"/v1/resources/{rid}/sources", headers=auth,
                                      data=json.dumps({**SOURCE, "environment_id": "staging-env"})))
    assert_budget_refusal(client.patch(url, headers=auth, data=json.dumps({"environment_id": "staging-env"})))
    assert_budget_refusal(client.patch(url, headers=auth, data=json.dumps({"api_token": TOKEN + "x"})))
    assert_budget_refusal(client.post(f"{url}/verify", headers=auth))

    assert len(forge_fake.calls) == calls  # Atlassian was not asked
    assert snapshot(conn) == sources and audit_count(conn) == audited
    # What needs no call to Atlassian still works.
    assert client.patch(url, headers=auth, data=json.dumps({"service_name": "renamed"})).status_code == 200


def test_the_dashboard_says_so_in_plain_words(client, resource, conn, limiter, forge_fake):
    rid, _ = resource
    stamp, token = sso_token(rid)
    assert client.post("/sso/login", data={"resource_id": rid, "resource_token": token, "timestamp": stamp,
                                           "app": "acme", "email": "owner@acme.test"}).status_code == 302
    page = client.get(f"/dashboard/{rid}").get_data(as_text=True)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    spend(limiter)

    response = client.post(f"/dashboard/{rid}/sources", data={**SOURCE, "csrf_token": csrf})
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert "no App logs API calls left for the moment" in html and "try again in" in html
    assert TOKEN not in html
    assert forge_fake.calls == [] and snapshot(conn) == []


def test_provisioning_options_wait_for_budget_too(client, conn, limiter, forge_fake):
    spend(limiter)
    body = provision_body(plan="basic", options=SOURCE)
    response = client.post("/heroku/resources", data=json.dumps(body), headers=heroku_headers())
    assert response.status_code == 503
    assert int(response.headers["Retry-After"]) >= 1
    assert "no App logs API calls left" in response.get_json(force=True)["message"]
    assert forge_fake.calls == []
    assert conn.execute("SELECT count(*) AS n FROM resources").fetchone()["n"] == 0


def test_a_429_during_a_check_blocks_the_app_for_everyone(client, resource, conn, limiter, forge_fake):
    rid, auth = resource
    created = client.post(f"/v1/resources/{rid}/sources", headers=auth, data=json.dumps(SOURCE))
    assert created.status_code == 201
    url = f"/v1/resources/{rid}/sources/{created.json['id']}"
    # Someone else (the developer console, another tool) spent Atlassian's budget for the app.
    forge_fake.rate_limit = 1
    refused = client.post(f"{url}/verify", headers=auth)
    assert refused.status_code == 503 and refused.json["error"] == "rate_limited"
    assert 50 <= int(refused.headers["Retry-After"]) <= 60  # Atlassian's Retry-After, passed on
    wait, call_id = limiter.take(APP)  # polls now wait too
    assert call_id is None and 50 <= wait <= 60
    calls = len(forge_fake.calls)
    assert client.post(f"{url}/verify", headers=auth).status_code == 503
    assert len(forge_fake.calls) == calls


def test_polling_leaves_the_owner_a_reserve_of_every_period(redis_url):
    """A source catching up spends what polling may spend; the owner's checks still find calls."""
    from broker.ratelimit import OWNER_RESERVE

    connection = redis.Redis.from_url(redis_url)
    polls = RateLimiter(connection, 6, 60, reserve=OWNER_RESERVE)
    owner = RateLimiter(connection, 6, 60)
    taken = 0
    while polls.try_take("app-reserve") == 0.0:
        taken += 1
        assert taken <= 6
    assert taken == 6 - OWNER_RESERVE and polls.free("app-reserve") == 0
    assert owner.free("app-reserve") == OWNER_RESERVE
    assert [owner.try_take("app-reserve") for _ in range(OWNER_RESERVE)] == [0.0] * OWNER_RESERVE
    assert owner.try_take("app-reserve") > 0  # the budget itself is never exceeded
    # With the default FORGE_RATE_LIMIT, owner checks may also use a little of the room below
    # Atlassian's 30, never past it.
    assert ratelimit.owner_limit(25) == 28 and ratelimit.owner_limit(29) == 30 and ratelimit.owner_limit(30) == 30


def test_after_redis_lost_an_apps_call_log_a_period_counts_as_spent_if_the_app_was_called(conn, redis_url, settings):
    """Found by the chaos bench: after a FLUSHALL the call log restarted empty and an app that had
    just spent its budget got a second one in the same minute (29 calls in 60 s, limit 25). Now an
    app with a page stored, a verification or a failed poll within the last period waits one
    period; an idle app, one whose only poll was claimed after the loss, and every app on a Redis
    that never held a log, go on at once."""
    from broker import sources
    from broker.vault import Vault
    from tests.support.polling import add_resource, add_source

    vault = Vault(settings.fernet_keys)
    connection = redis.Redis.from_url(redis_url)
    resource = add_resource(conn)
    polled = add_source(conn, vault, resource, app_id="app-polled")
    verified = add_source(conn, vault, resource, app_id="app-verified")
    failed = add_source(conn, vault, resource, app_id="app-failed")
    idle = add_source(conn, vault, resource, app_id="app-idle")
    conn.execute("UPDATE sources SET last_poll_at = now() - interval '35 seconds', "
                 "last_success_at = now() - interval '30 seconds' WHERE id = %s", (polled,))
    conn.execute("UPDATE sources SET verified_at = now() - interval '10 seconds' WHERE id = %s", (verified,))
    # A poll that failed 100 s after its claim, released: its calls may still count.
    conn.execute("UPDATE sources SET last_poll_at = now() - interval '100 seconds', consecutive_failures = 1, "
                 "last_success_at = now() - interval '1 hour' WHERE id = %s", (failed,))
    # Claimed a moment ago (after the loss) and not yet past its first call: no call to count.
    conn.execute("UPDATE sources SET lease_token = gen_random_uuid(), lease_expires_at = now() + interval '1 minute', "
                 "last_poll_at = now(), last_success_at = now() - interval '5 minutes' WHERE id = %s", (idle,))

    def limiter():
        return RateLimiter(connection, 5, 60, called_recently=lambda app, seconds: sources.called_recently(
            conn, app, seconds))

    # A Redis that never held a log (a first start): nothing to fear for an idle app.
    assert limiter().try_take("app-idle") == 0.0
    for app in ("app-polled", "app-verified", "app-failed"):
        assert 55 < limiter().try_take(app) <= 60, app  # the period counts as spent
        assert limiter().free(app) == 0
    connection.flushdb()
    # Lost again: the same answers; an app never seen before is not held back.
    assert limiter().try_take("app-idle") == 0.0
    assert limiter().try_take("app-never-polled") == 0.0
    assert 55 < limiter().try_take("app-polled") <= 60
    # Once the log is held again, a block ending is the end of it: no second block.
    connection.delete(ratelimit.BLOCK_KEY.format(app="app-polled"))
    assert limiter().try_take("app-polled") == 0.0
    # Without a PostgreSQL to ask (the limiter alone), an empty log is trusted, as before.
    connection.flushdb()
    assert RateLimiter(connection, 5, 60).try_take("app-polled") == 0.0
