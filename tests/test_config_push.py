"""Config pushes after a token rotation live in PostgreSQL: a flushed Redis loses nothing (issue 14, item 8).

Heroku is the local fake of its identity service and Platform API; the rotation goes through the
resource API, the pushes through the clock's tick and a real RQ worker, as in production.
"""

from __future__ import annotations

import pytest

from broker import db, jobs, outbound, provisioning, redisconn, resources
from broker.vault import Vault
from tests.fakes import heroku as fake_heroku
from tests.support.partner import heroku_headers, provision_body
from tests.fakes.server import LocalServer
from tests.test_provision_async import CLIENT_SECRET, async_client, async_settings, run_worker, start  # noqa: F401
from worker import tick


@pytest.fixture
def heroku():
    """The fake Heroku, with ``during_patch``: callables run while it handles a config update."""
    app, state = fake_heroku.create_fake(CLIENT_SECRET)
    during_patch = []

    @app.before_request
    def _during_patch():
        from flask import request

        if request.method == "PATCH":
            while during_patch:
                during_patch.pop(0)()

    with LocalServer(app) as server:
        server.state, server.during_patch = state, during_patch
        yield server
    assert state.violations == [], state.violations


def provisioned(async_client, heroku, redis_url) -> tuple[str, str]:
    """An add-on Heroku provisioned asynchronously, completed: (its id, its FORGEDRAIN_TOKEN)."""
    body, response = start(async_client, heroku)
    assert response.status_code == 202
    run_worker(redis_url)
    assert heroku.state.provisioned == {body["uuid"]}
    return body["uuid"], response.get_json(force=True)["config"]["FORGEDRAIN_TOKEN"]


def rotate(async_client, resource_id: str, token: str) -> str:
    response = async_client.post(f"/v1/resources/{resource_id}/token",
                                 headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()["token"]


def push(settings, resource_id: str) -> str:
    with outbound.session() as session:  # as worker.partner.push_config calls it
        return provisioning.push_config(lambda: db.connect(settings.database_url), settings,
                                        Vault(settings.fernet_keys), session, resource_id)


def heroku_token(heroku, resource_id: str) -> str:
    return heroku.state.config[resource_id]["FORGEDRAIN_TOKEN"]


def config_pushes(heroku, resource_id: str) -> int:
    return heroku.state.requests.count(("PATCH", f"/addons/{resource_id}/config"))


def push_state(conn, resource_id: str) -> dict:
    return conn.execute(
        "SELECT api_token_generation > config_pushed_generation AS pending, config_push_attempts AS attempts, "
        "config_push_error AS error, config_push_next_at > now() AS later FROM resources WHERE id = %s",
        (resource_id,)).fetchone()


def queued(redis_url: str) -> list[str]:
    return [job.id for job in jobs.queue("control", redisconn.connect(redis_url)).jobs]


def flush(redis_url: str) -> None:
    redisconn.connect(redis_url).flushdb()


def test_a_rotation_whose_job_redis_lost_is_pushed_by_the_tick(async_client, async_settings, heroku, conn,
                                                               redis_url):
    resource_id, token = provisioned(async_client, heroku, redis_url)
    new_token = rotate(async_client, resource_id, token)
    assert push_state(conn, resource_id)["pending"] is True
    flush(redis_url)  # the push's job is gone with Redis

    tick.run(1)
    assert queued(redis_url) == [f"config-push-{resource_id}"]
    tick.run(2)  # a second tick does not queue it twice
    assert queued(redis_url) == [f"config-push-{resource_id}"]
    run_worker(redis_url)

    assert heroku_token(heroku, resource_id) == new_token
    assert push_state(conn, resource_id) == {"pending": False, "attempts": 0, "error": None, "later": None}
    tick.run(3)  # nothing left to push
    assert queued(redis_url) == []


def test_a_5xx_is_tried_again_later_and_the_push_stays_pending(async_client, async_settings, heroku, conn,
                                                               redis_url):
    resource_id, token = provisioned(async_client, heroku, redis_url)
    new_token = rotate(async_client, resource_id, token)
    flush(redis_url)
    fake_heroku.fail(heroku.state, "/config", 503, times=1)

    assert push(async_settings, resource_id) == "retry"
    assert heroku_token(heroku, resource_id) == token
    assert push_state(conn, resource_id) == {"pending": True, "attempts": 1,
                                             "error": "config update: HTTP 503", "later": True}
    tick.run(1)  # not due yet: backing off
    assert queued(redis_url) == []
    assert push(async_settings, resource_id) == "nothing-to-do"  # an early job does nothing either
    assert config_pushes(heroku, resource_id) == 2  # provisioning's, then the failed one

    # The back-off ends (as if its time had passed): the tick queues it, the worker pushes it.
    conn.execute("UPDATE resources SET config_push_next_at = now() - interval '1 second'")
    tick.run(2)
    assert queued(redis_url) == [f"config-push-{resource_id}"]
    run_worker(redis_url)
    assert heroku_token(heroku, resource_id) == new_token
    assert push_state(conn, resource_id)["pending"] is False


def test_a_rotation_during_a_push_stays_pending(async_client, async_settings, heroku, conn, redis_url):
    resource_id, token = provisioned(async_client, heroku, redis_url)
    second = rotate(async_client, resource_id, token)
    newest = []
    # Heroku has received generation 2's config; the owner rotates again before it answers.
    heroku.during_patch.append(lambda: newest.append(rotate(async_client, resource_id, second)))

    assert push(async_settings, resource_id) == "pushed"
    assert heroku_token(heroku, resource_id) == second
    assert push_state(conn, resource_id) == {"pending": True, "attempts": 0, "error": None, "later": None}

    flush(redis_url)  # whatever the rotation queued is lost: the tick queues it again
    tick.run(1)
    assert queued(redis_url) == [f"config-push-{resource_id}"]
    run_worker(redis_url)
    assert heroku_token(heroku, resource_id) == newest[0]
    assert push_state(conn, resource_id)["pending"] is False


def test_a_refusal_stops_the_push_with_the_reason_until_the_next_rotation(
        async_client, async_settings, heroku, conn, redis_url):
    resource_id, token = provisioned(async_client, heroku, redis_url)
    second = rotate(async_client, resource_id, token)
    fake_heroku.fail(heroku.state, "/config", 404, times=1)

    assert push(async_settings, resource_id) == "refused"
    row = push_state(conn, resource_id)
    assert (row["pending"], row["error"], row["later"]) == (True, "config update: HTTP 404", True)
    audit = conn.execute("SELECT detail FROM audit_log WHERE action = 'config_push.refused'").fetchone()
    assert audit["detail"] == {"generation": 2, "reason": "config update: HTTP 404"}
    view = async_client.get(f"/v1/resources/{resource_id}",
                            headers={"Authorization": f"Bearer {second}"}).get_json()["config_push"]
    assert view == {"pending": True, "error": "config update: HTTP 404", "next_attempt_at": None}
    flush(redis_url)
    tick.run(1)
    assert queued(redis_url) == []

    # The next rotation asks for a push again (rotate_token calls request_config_push in its transaction).
    third = rotate(async_client, resource_id, second)
    with conn.transaction():
        assert resources.request_config_push(conn, resource_id) is True
        assert resources.request_config_push(conn, resource_id) is True  # idempotent
    assert push_state(conn, resource_id) == {"pending": True, "attempts": 0, "error": None, "later": None}
    assert push(async_settings, resource_id) == "pushed"
    assert heroku_token(heroku, resource_id) == third
    view = async_client.get(f"/v1/resources/{resource_id}",
                            headers={"Authorization": f"Bearer {third}"}).get_json()["config_push"]
    assert view == {"pending": False, "error": None, "next_attempt_at": None}


def test_a_push_job_that_finds_nothing_pending_does_nothing(async_client, async_settings, heroku, conn, redis_url):
    resource_id, _ = provisioned(async_client, heroku, redis_url)
    before = list(heroku.state.requests)
    assert push(async_settings, resource_id) == "nothing-to-do"
    jobs.enqueue_config_push(redisconn.connect(redis_url), resource_id)
    run_worker(redis_url)
    assert heroku.state.requests == before
    with conn.transaction():
        assert resources.request_config_push(conn, resource_id) is False


def test_resources_without_an_oauth_token_or_deprovisioned_have_no_push(
        async_client, async_settings, heroku, conn, redis_url):
    # Provisioned synchronously (no grant): the rotation's answer is the only way the token travels.
    body = provision_body()
    response = async_client.post("/heroku/resources", json=body, headers=heroku_headers())
    assert response.status_code == 200
    rotate(async_client, body["uuid"], response.get_json(force=True)["config"]["FORGEDRAIN_TOKEN"])
    with conn.transaction():
        assert resources.request_config_push(conn, body["uuid"]) is False

    resource_id, token = provisioned(async_client, heroku, redis_url)
    rotate(async_client, resource_id, token)
    assert [str(r) for r in resources.due_config_pushes(conn, 10)] == [resource_id]
    assert async_client.delete(f"/heroku/resources/{resource_id}", headers=heroku_headers()).status_code == 204
    assert resources.due_config_pushes(conn, 10) == []
    assert push(async_settings, resource_id) == "nothing-to-do"


def test_a_rotation_during_provisioning_is_pushed_once_provisioned(
        async_client, async_settings, heroku, conn, redis_url):
    body, response = start(async_client, heroku)
    newer = rotate(async_client, body["uuid"], response.get_json(force=True)["config"]["FORGEDRAIN_TOKEN"])
    with conn.transaction():
        assert resources.request_config_push(conn, body["uuid"]) is True
    assert resources.due_config_pushes(conn, 10) == []  # provisioning pushes the config itself
    run_worker(redis_url)
    assert heroku_token(heroku, body["uuid"]) == newer
    assert push_state(conn, body["uuid"])["pending"] is False
    flush(redis_url)
    tick.run(1)
    assert queued(redis_url) == []
