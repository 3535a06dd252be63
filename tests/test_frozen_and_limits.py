"""A deprovisioned resource is frozen (issue 14, item 3), and calls out started from web threads are
bounded per resource (issue 14, item 6).

Frozen: every change in :mod:`broker.operations` locks the resource's row and refuses once it is
deprovisioned (410) or failed (409), whichever face calls it — a dashboard tab left open included —
and deprovision cannot interleave with a change. Calls out (send a test record, verify with
Atlassian) hold no lock while they run and store nothing if the resource was removed meanwhile.

Bounded: one call out at a time per resource and ten a minute (:class:`broker.ratelimit.OwnerCalls`);
over the bound a 429 with ``Retry-After`` at once, nothing sent; without Redis a 503, nothing sent.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis as redis_lib
import requests

from broker import config, db, operations, ratelimit, resources
from tests.fakes.forge import ForgeFake
from tests.fakes.hostile import HostileHTTP
from tests.fakes.server import LocalServer
from tests.support.held import HeldHTTP
from tests.support.partner import heroku_headers, provision_body, sso_token
from web import create_app

APP = "5f0f8a4e-1f5a-4c3e-9d7b-1a2b3c4d5e6f"
ENV = "0d1e2f30-4152-6374-8596-a7b8c9d0e1f2"
EMAIL = "bot@acme.test"
TOKEN = "ATATT3xFfGF0-secret-token-0123456789"
OWNER = "owner@acme.test"
ACTOR = "api-token"
# A send cut by its deadline: long enough for the test's own steps to happen meanwhile.
SEND_SECONDS = 5.0
# The deadline of a send held in flight until the test releases its receiver (HeldHTTP): only a
# broken test ever reaches it.
HELD_SEND_SECONDS = 60.0


def wait_for(condition, seconds: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def forge_fake():
    fake = ForgeFake(seed=7)
    fake.add_app(APP, [ENV], EMAIL, TOKEN)
    with LocalServer(fake.wsgi()) as server:
        fake.url = server.url
        yield fake


@pytest.fixture
def app(env, forge_fake):
    application = create_app(config.load({**env, "FORGE_API_URL": forge_fake.url}, testing=True))
    yield application
    application.extensions["forgedrain"].db.close()


@pytest.fixture
def svc(app):
    return app.extensions["forgedrain"]


@pytest.fixture
def client(app):
    return app.test_client()


def provision(client, plan: str = "basic") -> tuple[str, dict]:
    body = provision_body(plan=plan)
    response = client.post("/heroku/resources", data=json.dumps(body), headers=heroku_headers())
    assert response.status_code == 200
    token = response.get_json(force=True)["config"]["FORGEDRAIN_TOKEN"]
    return body["uuid"], {"Authorization": f"Bearer {token}"}


def deprovision(client, rid: str) -> None:
    assert client.delete(f"/heroku/resources/{rid}", headers=heroku_headers()).status_code == 204


def add_source(client, rid, auth) -> str:
    response = client.post(f"/v1/resources/{rid}/sources", headers=auth, data=json.dumps(
        {"app_id": APP, "environment_id": ENV, "email": EMAIL, "api_token": TOKEN}))
    assert response.status_code == 201, response.get_data(as_text=True)
    return response.get_json()["id"]


def add_drain(client, rid, auth, url: str) -> str:
    response = client.post(f"/v1/resources/{rid}/drains", headers=auth,
                           data=json.dumps({"kind": "logplex", "url": url, "name": "receiver"}))
    assert response.status_code == 201, response.get_data(as_text=True)
    return response.get_json()["id"]


@pytest.fixture
def world(client):
    """A resource with one source and one drain (to a receiver on a closed port)."""
    rid, auth = provision(client)
    return rid, auth, add_source(client, rid, auth), add_drain(client, rid, auth, "http://127.0.0.1:9/drain")


def snapshot(conn, rid) -> dict:
    """Everything a change could touch, for "nothing changed"."""
    return {
        "sources": [dict(r) for r in conn.execute(
            "SELECT * FROM sources WHERE resource_id = %s ORDER BY id", (rid,))],
        "drains": [dict(r) for r in conn.execute(
            "SELECT * FROM drains WHERE resource_id = %s ORDER BY id", (rid,))],
        "audit": conn.execute("SELECT count(*) AS n FROM audit_log WHERE resource_id = %s",
                              (rid,)).fetchone()["n"],
        "resource": dict(resources.get(conn, rid)),
    }


def sign_in(client, rid: str) -> str:
    """Sign in by SSO as Heroku does; the CSRF token of the dashboard page."""
    stamp, token = sso_token(rid)
    response = client.post("/sso/login", data={"resource_id": rid, "resource_token": token, "timestamp": stamp,
                                                "app": "acme", "email": OWNER, "user_id": "u-1"})
    assert response.status_code == 302
    page = client.get(f"/dashboard/{rid}")
    assert page.status_code == 200
    return re.search(r'name="csrf_token" value="([^"]+)"', page.get_data(as_text=True)).group(1)


# --- item 3: deprovisioned means frozen -------------------------------------------------------

def test_dashboard_tabs_left_open_change_nothing_once_deprovisioned(app, client, conn, world):
    """Three tabs signed in before deprovision; each form is refused, and so is the API's token."""
    rid, auth, _, drain_id = world
    edit_tab, enable_tab, source_tab = (app.test_client() for _ in range(3))
    tokens = [sign_in(tab, rid) for tab in (edit_tab, enable_tab, source_tab)]
    deprovision(client, rid)
    before = snapshot(conn, rid)
    edit = edit_tab.post(f"/dashboard/{rid}/drains/{drain_id}", data={
        "csrf_token": tokens[0], "name": "receiver", "url": "http://127.0.0.1:9/restored", "gzip": "true"})
    enable = enable_tab.post(f"/dashboard/{rid}/drains/{drain_id}/enabled",
                             data={"csrf_token": tokens[1], "enabled": "true"})
    source = source_tab.post(f"/dashboard/{rid}/sources", data={
        "csrf_token": tokens[2], "app_id": APP, "environment_id": ENV, "email": EMAIL, "api_token": TOKEN,
        "levels": ["ERROR"], "environment_label": "other"})
    api = client.patch(f"/v1/resources/{rid}/drains/{drain_id}", headers=auth,
                       data=json.dumps({"url": "http://127.0.0.1:9/restored", "enabled": True}))
    for response in (edit, enable, source, api):
        assert 400 <= response.status_code < 500, (response.status_code, response.get_data(as_text=True)[:300])
    for response in (edit, enable):
        assert response.status_code == 410 and "nothing was changed" in response.get_data(as_text=True)
    assert api.status_code == 401  # deprovision erased the token: the API cannot even ask
    assert snapshot(conn, rid) == before
    drain = conn.execute("SELECT enabled, url_enc FROM drains WHERE id = %s", (drain_id,)).fetchone()
    assert drain == {"enabled": False, "url_enc": None}


def every_change(svc, rid, source_id, drain_id):
    """Each change of broker.operations, as the resource API would call it."""
    connect, vault, private = svc.db.connection, svc.vault, svc.settings.allow_private_drains
    source = {"app_id": APP, "environment_id": ENV, "email": EMAIL, "api_token": TOKEN}
    return {
        "create_source": lambda: operations.create_source(
            connect, vault, svc.verifier(), rid, {**source, "environment_label": "other"}, actor=ACTOR),
        "update_source": lambda: operations.update_source(
            connect, vault, svc.verifier(), rid, source_id, {"service_name": "renamed"}, actor=ACTOR),
        "verify_source": lambda: operations.verify_source(connect, vault, svc.verifier(), rid, source_id,
                                                          actor=ACTOR),
        "backfill_source": lambda: operations.backfill_source(connect, rid, source_id,
                                                              "2000-01-01T00:00:00Z", actor=ACTOR),
        "delete_source": lambda: operations.delete_source(connect, rid, source_id, actor=ACTOR),
        "create_drain": lambda: operations.create_drain(
            connect, vault, rid, {"kind": "logplex", "url": "http://127.0.0.1:9/new"}, actor=ACTOR,
            allow_private=private),
        "update_drain": lambda: operations.update_drain(
            connect, vault, rid, drain_id, {"url": "http://127.0.0.1:9/restored"}, actor=ACTOR,
            allow_private=private),
        "set_drain_enabled": lambda: operations.set_drain_enabled(connect, vault, rid, drain_id, True,
                                                                  actor=ACTOR, allow_private=private),
        "rotate_drain_token": lambda: operations.rotate_drain_token(connect, rid, drain_id, actor=ACTOR),
        "delete_drain": lambda: operations.delete_drain(connect, rid, drain_id, actor=ACTOR),
        "test_drain": lambda: operations.test_drain(connect, svc.wire(), vault, rid, drain_id, actor=ACTOR,
                                                    calls=ratelimit.OwnerCalls(svc.redis)),
    }


CHANGES = ["create_source", "update_source", "verify_source", "backfill_source", "delete_source",
           "create_drain", "update_drain", "set_drain_enabled", "rotate_drain_token", "delete_drain", "test_drain"]


@pytest.mark.parametrize("change", CHANGES)
def test_every_change_refuses_a_deprovisioned_resource_and_changes_nothing(client, svc, conn, world, forge_fake,
                                                                          change):
    rid, _, source_id, drain_id = world
    deprovision(client, rid)
    before = snapshot(conn, rid)
    calls_to_atlassian = len(forge_fake.calls)
    with pytest.raises(operations.Gone) as refused:
        every_change(svc, rid, source_id, drain_id)[change]()
    assert (refused.value.http_status, refused.value.code) == (410, "resource_deprovisioned")
    assert "deprovisioned" in refused.value.message
    assert snapshot(conn, rid) == before
    assert len(forge_fake.calls) == calls_to_atlassian


@pytest.mark.parametrize("change", CHANGES)
def test_every_change_refuses_a_resource_whose_provisioning_failed(client, svc, conn, world, change):
    rid, _, source_id, drain_id = world
    conn.execute("UPDATE resources SET state = 'failed', provision_error = 'grant expired' WHERE id = %s", (rid,))
    before = snapshot(conn, rid)
    with pytest.raises(operations.ProvisioningFailed) as refused:
        every_change(svc, rid, source_id, drain_id)[change]()
    assert (refused.value.http_status, refused.value.code) == (409, "resource_failed")
    assert snapshot(conn, rid) == before


def test_the_api_answers_409_for_a_failed_resource(client, conn, world):
    rid, auth, _, drain_id = world
    conn.execute("UPDATE resources SET state = 'failed' WHERE id = %s", (rid,))
    response = client.patch(f"/v1/resources/{rid}/drains/{drain_id}", headers=auth,
                            data=json.dumps({"name": "renamed"}))
    assert response.status_code == 409
    assert response.get_json()["error"] == "resource_failed"


def test_the_dashboard_answers_409_for_an_added_drain_of_a_failed_resource(app, conn, world):
    """The add forms show the refusal page, not a form error as if the input were wrong."""
    rid, _, _, _ = world
    tab = app.test_client()
    token = sign_in(tab, rid)
    conn.execute("UPDATE resources SET state = 'failed' WHERE id = %s", (rid,))
    before = snapshot(conn, rid)
    response = tab.post(f"/dashboard/{rid}/drains", data={"csrf_token": token, "kind": "logplex",
                                                          "url": "http://127.0.0.1:9/new"})
    assert response.status_code == 409, response.get_data(as_text=True)[:300]
    assert "nothing was changed" in response.get_data(as_text=True)
    assert snapshot(conn, rid) == before


def blocked_on_a_lock(conn, application_name: str) -> bool:
    return conn.execute(
        "SELECT count(*) AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND application_name = %s "
        "AND datname = current_database()", (application_name,)).fetchone()["n"] > 0


def test_a_change_waits_for_deprovision_and_then_refuses(client, svc, conn, database_url, world):
    """Deprovision has updated the resource (uncommitted) when a tab's change arrives: the change
    waits for it, then sees the resource deprovisioned, and the erased URL stays erased."""
    rid, _, _, drain_id = world
    name = f"forgedrain-deprovision-{uuid.uuid4().hex[:8]}"
    with db.connect(database_url, name) as removing, ThreadPoolExecutor(1) as pool:
        with removing.transaction():
            resources.deprovision(removing, rid)
            change = pool.submit(operations.update_drain, svc.db.connection, svc.vault, rid, drain_id,
                                 {"url": "http://127.0.0.1:9/restored", "enabled": True}, actor=ACTOR,
                                 allow_private=True)
            wait_for(lambda: blocked_on_a_lock(conn, "forgedrain-web"), what="the change to wait for deprovision")
            assert not change.done()
        with pytest.raises(operations.Gone):
            change.result(timeout=10)
    assert conn.execute("SELECT enabled, url_enc FROM drains WHERE id = %s", (drain_id,)).fetchone() == {
        "enabled": False, "url_enc": None}


def test_a_test_record_in_flight_holds_no_lock_and_stores_nothing_once_deprovisioned(client, svc, conn, world):
    rid, auth, _, _ = world
    with HostileHTTP("silent") as receiver:
        drain_id = add_drain(client, rid, auth, receiver.url)
        wire = dataclasses.replace(svc.wire(), deadline_seconds=SEND_SECONDS)
        with ThreadPoolExecutor(1) as pool:
            test = pool.submit(operations.test_drain, svc.db.connection, wire, svc.vault, rid, drain_id,
                               actor=ACTOR, calls=ratelimit.OwnerCalls(svc.redis))
            wait_for(lambda: receiver.hits == 1, what="the test record to reach the receiver")
            deprovision(client, rid)  # not held up by the send in flight
            assert not test.done()
            with pytest.raises(operations.Gone):
                test.result(timeout=SEND_SECONDS + 10)
    assert conn.execute("SELECT count(*) AS n FROM audit_log WHERE action = 'drain.tested'").fetchone()["n"] == 0


# --- item 6: calls out from web threads are bounded per resource --------------------------------

def test_concurrent_test_records_for_one_resource_send_one_and_refuse_the_rest_at_once(client, svc, world):
    """Refused at once is judged by order, not by seconds: the first send stays in flight (its receiver
    holds it) until the test releases it, and every refusal has come back before that."""
    rid, auth, _, _ = world
    other_rid, other_auth = provision(client)
    calls = ratelimit.OwnerCalls(svc.redis)

    def test(resource_id, drain):
        wire = dataclasses.replace(svc.wire(), deadline_seconds=HELD_SEND_SECONDS)  # this thread's session
        try:
            return operations.test_drain(svc.db.connection, wire, svc.vault, resource_id, drain, actor=ACTOR,
                                         calls=calls)
        except operations.OperationError as exc:
            return exc

    with HostileHTTP("ok") as other_receiver, ThreadPoolExecutor(8) as pool:
        other_drain = add_drain(client, other_rid, other_auth, other_receiver.url)
        with HeldHTTP() as receiver:  # every send stays in flight until receiver.release()
            drain_id = add_drain(client, rid, auth, receiver.url)
            first = pool.submit(test, rid, drain_id)
            wait_for(lambda: receiver.hits == 1, what="the first test record to go out")
            rest = [pool.submit(test, rid, drain_id) for _ in range(5)]
            refusals = [f.result(timeout=30) for f in rest]  # well before a held send's deadline
            other = pool.submit(test, other_rid, other_drain).result(timeout=30)
            # Every refusal, and the other resource's send, came back while the first send still waited
            # for its answer: none of them waited for it.
            assert not first.done()
            assert receiver.hits == 1
            receiver.release()
            outcome = first.result(timeout=HELD_SEND_SECONDS)
    for refused in refusals:
        assert isinstance(refused, operations.Busy), refused
        assert (refused.http_status, refused.code) == (429, "busy")
        assert 0 < refused.refusal.retry_after <= operations.BUSY_RETRY_SECONDS
    assert receiver.hits == 1
    assert other.delivered and other_receiver.hits == 1  # another resource is not held up
    assert not outcome.delivered and outcome.retryable  # the receiver's 503, once released
    assert calls.busy(rid) == 0  # the lease went with the failed send
    with HostileHTTP("ok") as receiver_again:
        client.patch(f"/v1/resources/{rid}/drains/{drain_id}", headers=auth,
                     data=json.dumps({"url": receiver_again.url}))
        again = operations.test_drain(svc.db.connection, svc.wire(), svc.vault, rid, drain_id, actor=ACTOR,
                                      calls=calls)
        assert again.delivered and receiver_again.hits == 1


def test_a_process_calls_out_for_at_most_its_slots_whatever_the_resource(client, svc):
    """Many resources testing slow receivers at once cannot take every web thread: the web's own
    bounds (svc.owner_calls) let CALLS_OUT_PER_PROCESS out at once, the next is refused at once —
    while those calls are still in flight (their receiver holds them until the test releases it)."""
    from web import CALLS_OUT_PER_PROCESS

    owners = [provision(client) for _ in range(CALLS_OUT_PER_PROCESS + 1)]

    def test(resource_id, drain):
        wire = dataclasses.replace(svc.wire(), deadline_seconds=HELD_SEND_SECONDS)  # this thread's session
        try:
            return operations.test_drain(svc.db.connection, wire, svc.vault, resource_id, drain, actor=ACTOR,
                                         calls=svc.owner_calls)
        except operations.OperationError as exc:
            return exc

    with HostileHTTP("ok") as later_receiver, ThreadPoolExecutor(CALLS_OUT_PER_PROCESS + 1) as pool:
        with HeldHTTP() as receiver:  # every send stays in flight until receiver.release()
            drains_ = [add_drain(client, rid, auth, receiver.url) for rid, auth in owners]
            out = [pool.submit(test, rid, drain)
                   for (rid, _), drain in zip(owners[:CALLS_OUT_PER_PROCESS], drains_)]
            wait_for(lambda: receiver.hits == CALLS_OUT_PER_PROCESS, what="the first calls to go out")
            last_rid, last_auth = owners[-1]
            refused = pool.submit(test, last_rid, drains_[-1]).result(timeout=30)  # well before their deadline
            assert not any(f.done() for f in out)  # refused while every slot's call was still in flight
            assert receiver.hits == CALLS_OUT_PER_PROCESS
            receiver.release()
            results = [f.result(timeout=HELD_SEND_SECONDS) for f in out]
        assert isinstance(refused, operations.Busy), refused
        assert (refused.http_status, refused.code) == (429, "busy") and "at once" in refused.message
        assert 0 < refused.refusal.retry_after <= ratelimit.PROCESS_RETRY_SECONDS
        assert receiver.hits == CALLS_OUT_PER_PROCESS
        assert all(not r.delivered for r in results), results  # refused (503); their slots are free again
        client.patch(f"/v1/resources/{last_rid}/drains/{drains_[-1]}", headers=last_auth,
                     data=json.dumps({"url": later_receiver.url}))
        assert operations.test_drain(svc.db.connection, svc.wire(), svc.vault, last_rid, drains_[-1], actor=ACTOR,
                                     calls=svc.owner_calls).delivered


def test_the_rate_is_ten_calls_a_minute_per_resource(client, svc):
    rid, auth = provision(client)  # no source: adding one would have spent a call verifying it
    other_rid, other_auth = provision(client)
    calls = ratelimit.OwnerCalls(svc.redis)
    with HostileHTTP("ok") as receiver:
        drain_id = add_drain(client, rid, auth, receiver.url)
        other_drain = add_drain(client, other_rid, other_auth, receiver.url)
        for _ in range(ratelimit.OWNER_CALLS_PER_PERIOD):
            assert operations.test_drain(svc.db.connection, svc.wire(), svc.vault, rid, drain_id, actor=ACTOR,
                                         calls=calls).delivered
        with pytest.raises(operations.Busy) as refused:
            operations.test_drain(svc.db.connection, svc.wire(), svc.vault, rid, drain_id, actor=ACTOR, calls=calls)
        assert (refused.value.http_status, refused.value.code) == (429, "too_many_calls")
        assert 0 < refused.value.refusal.retry_after <= ratelimit.OWNER_PERIOD_SECONDS
        assert receiver.hits == ratelimit.OWNER_CALLS_PER_PERIOD
        assert operations.test_drain(svc.db.connection, svc.wire(), svc.vault, other_rid, other_drain,
                                     actor=ACTOR, calls=calls).delivered


def test_without_redis_a_test_record_is_refused_with_503_and_not_sent(client, svc, world):
    rid, auth, _, _ = world
    unreachable = redis_lib.Redis(host="127.0.0.1", port=1, socket_connect_timeout=1, socket_timeout=1)
    with HostileHTTP("ok") as receiver:
        drain_id = add_drain(client, rid, auth, receiver.url)
        with pytest.raises(operations.Refused) as refused:
            operations.test_drain(svc.db.connection, svc.wire(), svc.vault, rid, drain_id, actor=ACTOR,
                                  calls=ratelimit.OwnerCalls(unreachable))
        assert receiver.hits == 0
    assert (refused.value.http_status, refused.value.code) == (503, "unavailable")
    assert refused.value.refusal.retry_after > 0


def test_concurrent_verifications_through_the_api_get_one_answer_and_429_with_retry_after(app, client, world,
                                                                                         forge_fake):
    """Verify is bounded by default (in the Redis of the Forge budget): a real server, real threads.
    Atlassian's answers are held until every refusal is in, so "at once" is an order, not a duration."""
    rid, auth, source_id, _ = world
    other_rid, other_auth = provision(client)
    other_source = add_source(client, other_rid, other_auth)
    url = f"/v1/resources/{rid}/sources/{source_id}/verify"
    with LocalServer(app) as server, ThreadPoolExecutor(8) as pool:
        def verify(path, headers):
            return requests.post(server.url + path, headers=headers, timeout=30)

        forge_fake.hold()
        try:
            first = pool.submit(verify, url, auth)
            wait_for(lambda: forge_fake.held == 1, what="the first verification to reach Atlassian")
            rest = [pool.submit(verify, url, auth) for _ in range(4)]
            other = pool.submit(verify, f"/v1/resources/{other_rid}/sources/{other_source}/verify", other_auth)
            refused = [f.result(timeout=30) for f in rest]
            # another resource's verification is not refused: it reaches Atlassian beside the first
            wait_for(lambda: forge_fake.held == 2, what="the other resource's verification to reach Atlassian")
            assert not first.done()  # every refusal came back while the first call was still unanswered
        finally:
            forge_fake.release()
        accepted = first.result(timeout=30)
        other_answer = other.result(timeout=30)
    assert accepted.status_code == 200 and accepted.json()["verification"]["ok"]
    assert other_answer.status_code == 200
    for response in refused:
        assert response.status_code == 429, response.text
        assert response.json()["error"] == "busy"
        assert 1 <= int(response.headers["Retry-After"]) <= operations.BUSY_RETRY_SECONDS
