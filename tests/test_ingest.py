"""Drain ingest at log_drain_url: Heroku's logplex batches in, records of the broker's model out (SPEC §5)."""

from __future__ import annotations

import gzip
import json
import socket
import time
import uuid

import pytest
import requests

from broker import config, ingest, outbox
from broker.vault import Vault
from tests.fakes.receivers import logplex_receiver
from tests.fakes.server import LocalServer
from tests.support.partner import heroku_headers, provision_body
from tests.test_delivery import add_drain, deliver_all, forge_record, make_deliverer, store
from tests.support.polling import add_source
from web import create_app

ROUTER = (b"<158>1 2020-01-08T22:33:57.353034+00:00 host heroku router - at=info method=GET path=\"/\" "
          b"host=acme.herokuapp.com request_id=5e9 fwd=\"1.2.3.4\" dyno=web.1 connect=0ms service=2ms "
          b"status=200 bytes=1234 protocol=https\n")
APP_LINE = "<190>1 2020-01-08T22:33:58.1+00:00 host app web.1 - Café ready ✓ on port 5000\n".encode()
ERROR_LINE = b"<187>1 2020-01-08T23:33:58-01:00 host app worker.2 - boom\n"
# Logplex's overflow notice has no trailing newline (heroku/logplex#105).
L10 = (b"<172>1 2020-01-08T22:34:00+00:00 host heroku logplex - Error L10 (output buffer overflow): "
       b"7 messages dropped since 2020-01-08T22:33:00+00:00.")


def frame(message: bytes) -> bytes:
    return str(len(message)).encode() + b" " + message


def body_of(*messages: bytes) -> bytes:
    return b"".join(frame(m) for m in messages)


@pytest.fixture
def app(env):
    application = create_app(config.load({**env, "ALLOW_PRIVATE_DRAINS": "true"}, testing=True))
    yield application
    application.extensions["forgedrain"].db.close()


@pytest.fixture
def web(app):
    return app.test_client()


@pytest.fixture
def resource(web):
    """A provisioned resource whose log_input_url is a local logplex input (Heroku's log stream)."""
    receiver, stream = logplex_receiver()
    with LocalServer(receiver) as server:
        body = provision_body(log_input_url=f"http://token:t.{uuid.uuid4()}@127.0.0.1:{server.port}/logs")
        answer = web.post("/heroku/resources", data=json.dumps(body), headers=heroku_headers())
        assert answer.status_code in (200, 202), answer.data
        yield {"id": body["uuid"], "token": body["log_drain_token"], "stream": stream,
               "auth": {"Authorization": f"Bearer {answer.get_json(force=True)['config']['FORGEDRAIN_TOKEN']}"}}


def post(web, token: str, data: bytes, count: int | None, frame_id: str | None = None, **headers):
    sent = {"Content-Type": "application/logplex-1", "Logplex-Drain-Token": token,
            "Logplex-Frame-Id": frame_id or uuid.uuid4().hex.upper(), "User-Agent": "Logplex/v123", **headers}
    if count is not None:
        sent["Logplex-Msg-Count"] = str(count)
    return web.post("/ingest/logplex", data=data, headers=sent)


def stored(conn, resource_id) -> list[dict]:
    rows = conn.execute("SELECT origin, source_id, record_count, min_ts, payload FROM outbox "
                        "WHERE resource_id = %s AND origin = 'heroku' ORDER BY id", (resource_id,)).fetchall()
    out = [outbox.Batch(0, r["source_id"], r["origin"], r["record_count"], r["min_ts"], bytes(r["payload"])).records()
           for r in rows]
    assert all(r["source_id"] is None and r["record_count"] == len(records) for r, records in zip(rows, out))
    return [rec for records in out for rec in records]


def test_herokus_own_format_becomes_records_of_the_brokers_model(web, conn, resource):
    answer = post(web, resource["token"], body_of(ROUTER, APP_LINE, ERROR_LINE, L10), 4)
    assert answer.status_code == 204, answer.data
    router, app_line, error_line, overflow = stored(conn, resource["id"])
    assert router["heroku"] == {"pri": 158, "app": "heroku", "dyno": "router"}
    assert router["body"]["stringValue"].startswith("at=info method=GET") and not router["body"]["stringValue"].endswith("\n")
    assert router["timeUnixNano"] == "1578522837353034000"
    assert (router["severityText"], router["severityNumber"]) == ("INFO", 9)
    assert app_line["heroku"] == {"pri": 190, "app": "app", "dyno": "web.1"}
    assert app_line["body"]["stringValue"] == "Café ready ✓ on port 5000"
    assert app_line["timeUnixNano"] == "1578522838100000000"
    assert error_line["timeUnixNano"] == "1578530038000000000"  # 00:33:58Z: the -01:00 offset applied
    assert (error_line["severityText"], error_line["severityNumber"], error_line["heroku"]["dyno"]) == (
        "ERR", 17, "worker.2")
    assert overflow["body"]["stringValue"].startswith("Error L10") and overflow["severityText"] == "WARNING"


@pytest.mark.parametrize("data, count, reason", [
    (body_of(ROUTER, APP_LINE), 3, "Logplex-Msg-Count is 3 but the body holds 2 frames"),
    (body_of(ROUTER) + frame(APP_LINE)[:-5], 2, "frame 2: declares"),
    (body_of(ROUTER) + b"\n", 1, "frame 2: expected a decimal length"),
    (b"x" + body_of(ROUTER), 1, "frame 1: expected a decimal length"),
    (b"99999999 " + ROUTER, 1, "frame 1: expected a decimal length"),
    (b"70000 " + b"a" * 70000, 1, "length 70000 is outside"),
    (b"0 " + ROUTER, 1, "length 0 is outside"),
])
def test_malformed_batches_are_refused_whole_and_store_nothing(web, conn, resource, data, count, reason):
    answer = post(web, resource["token"], data, count)
    assert answer.status_code == 400 and answer.json["error"] == "malformed"
    assert reason in answer.json["message"]
    assert conn.execute("SELECT count(*) AS n FROM outbox").fetchone()["n"] == 0
    assert conn.execute("SELECT count(*) AS n FROM ingest_batches").fetchone()["n"] == 0


def test_headers_and_tokens_are_checked_before_anything_is_read(web, conn, resource):
    missing = web.post("/ingest/logplex", data=body_of(ROUTER), headers={"Logplex-Drain-Token": resource["token"]})
    assert missing.status_code == 400
    assert missing.json["message"] == "missing headers: Logplex-Msg-Count, Logplex-Frame-Id"
    assert post(web, resource["token"], body_of(ROUTER), None).status_code == 400
    assert post(web, resource["token"], body_of(ROUTER), 1, frame_id="é").status_code == 400
    assert post(web, resource["token"], body_of(ROUTER), 0).status_code == 400
    assert post(web, resource["token"], body_of(ROUTER), None, **{"Logplex-Msg-Count": "²"}).status_code == 400
    unknown = post(web, f"d.{uuid.uuid4()}", body_of(ROUTER), 1)
    assert unknown.status_code == 403 and unknown.json["error"] == "unknown_token"
    assert post(web, resource["token"], body_of(ROUTER), 1, **{"Content-Type": "text/plain"}).status_code == 415
    assert post(web, resource["token"], body_of(ROUTER), 1, **{"Content-Encoding": "br"}).status_code == 415
    assert conn.execute("SELECT count(*) AS n FROM outbox").fetchone()["n"] == 0


def test_a_deprovisioned_resources_token_stops_working_at_once(web, conn, resource):
    assert post(web, resource["token"], body_of(ROUTER), 1).status_code == 204
    assert web.delete(f"/heroku/resources/{resource['id']}", headers=heroku_headers()).status_code == 204
    assert post(web, resource["token"], body_of(ROUTER), 1).status_code == 403


def test_gzip_bodies_are_accepted_and_bombs_and_oversized_bodies_refused(web, conn, resource):
    zipped = gzip.compress(body_of(ROUTER, APP_LINE))
    assert post(web, resource["token"], zipped, 2, **{"Content-Encoding": "gzip"}).status_code == 204
    assert len(stored(conn, resource["id"])) == 2
    bomb = gzip.compress(b"0" * (8 * 1024 * 1024))
    assert post(web, resource["token"], bomb, 1, **{"Content-Encoding": "gzip"}).status_code == 413
    assert post(web, resource["token"], zipped[:-8], 2, **{"Content-Encoding": "gzip"}).status_code == 400
    assert post(web, resource["token"], b"not gzip", 1, **{"Content-Encoding": "gzip"}).status_code == 400
    huge = body_of(*[APP_LINE] * 20_000)  # ~1.4 MB, over the request limit
    assert post(web, resource["token"], huge, 20_000).status_code == 413
    assert len(stored(conn, resource["id"])) == 2


def test_a_batch_retried_with_the_same_frame_id_is_stored_once(web, conn, resource):
    for _ in range(3):
        assert post(web, resource["token"], body_of(ROUTER, APP_LINE), 2, frame_id="A" * 32).status_code == 204
    assert post(web, resource["token"], body_of(APP_LINE), 1, frame_id="B" * 32).status_code == 204
    assert len(stored(conn, resource["id"])) == 3
    ingest_view = web.get(f"/v1/resources/{resource['id']}", headers=resource["auth"]).json["ingest"]
    assert (ingest_view["batches"], ingest_view["frames"], ingest_view["stored"], ingest_view["replays"]) == (
        2, 3, 3, 2)


def test_no_loop_the_brokers_own_lines_coming_back_are_dropped_and_counted(app, web, conn, resource, settings):
    """Forge records go into the app's stream; Heroku sends them back through the drain; they stop there."""
    vault = Vault(settings.fernet_keys)
    source_id = add_source(conn, vault, resource["id"])
    conn.execute("UPDATE sources SET service_name = 'acme-forge' WHERE id = %s", (source_id,))
    receiver, inbox = logplex_receiver()
    with LocalServer(receiver) as server:
        add_drain(conn, vault, resource["id"], "logplex", f"http://127.0.0.1:{server.port}/")
        store(conn, resource["id"], source_id, [forge_record(i) for i in range(3)])
        deliverer = make_deliverer(settings.database_url, vault)
        deliver_all(deliverer, conn)
        written = [e for r in resource["stream"].requests for e in r["events"]]
        assert [(e["app"], e["procid"]) for e in written] == [(b"forgedrain", b"acme-forge.run")] * 3
        # Heroku's drain sends the app's stream back: our three lines, plus the app's own line.
        echoed = [frame_raw.replace(b" forgedrain forgedrain ", b" host forgedrain ")
                  for r in resource["stream"].requests for frame_raw in r["frames"]]
        answer = post(web, resource["token"], b"".join(frame(m) for m in echoed + [APP_LINE]), 4)
        assert answer.status_code == 204
        deliver_all(deliverer, conn)
    assert [r["body"]["stringValue"] for r in stored(conn, resource["id"])] == ["Café ready ✓ on port 5000"]
    to_drain = [e for r in inbox.requests for e in r["events"]]
    assert [e["message"] for e in to_drain] == [f"record {i} ✓" for i in range(3)] + ["Café ready ✓ on port 5000"]
    assert (to_drain[-1]["app"], to_drain[-1]["procid"]) == (b"app", b"web.1")  # Heroku's own names kept
    assert len(resource["stream"].requests) == 1  # the app's own line never went back into its stream
    view = web.get(f"/v1/resources/{resource['id']}", headers=resource["auth"]).json["ingest"]
    assert (view["frames"], view["stored"], view["own_dropped"]) == (4, 1, 3)
    assert outbox.prune(conn).batches >= 1


def test_ingest_records_are_forgotten_after_two_days(web, conn, resource):
    assert post(web, resource["token"], body_of(ROUTER), 1, frame_id="OLD").status_code == 204
    assert post(web, resource["token"], body_of(ROUTER), 1, frame_id="NEW").status_code == 204
    conn.execute("UPDATE ingest_batches SET received_at = now() - interval '49 hours' WHERE frame_id = 'OLD'")
    assert ingest.forget(conn) == 1
    assert [r["frame_id"] for r in conn.execute("SELECT frame_id FROM ingest_batches")] == ["NEW"]


def test_over_real_https_through_gunicorn(env, conn, tmp_path):
    from tests.support.live import live_web

    with live_web(env, tmp_path) as live:
        client = live.session()
        body = provision_body()
        created = client.post(live.url("/heroku/resources"), data=json.dumps(body), headers=heroku_headers())
        assert created.status_code in (200, 202)
        assert created.json()["log_drain_url"].endswith("/ingest/logplex")
        headers = {"Content-Type": "application/logplex-1", "Logplex-Msg-Count": "3",
                   "Logplex-Frame-Id": "0F" * 16, "Logplex-Drain-Token": body["log_drain_token"],
                   "User-Agent": "Logplex/v123", "Content-Encoding": "gzip"}
        answer = client.post(live.url("/ingest/logplex"), data=gzip.compress(body_of(ROUTER, APP_LINE, L10)),
                             headers=headers)
        assert answer.status_code == 204, answer.text
        wrong = client.post(live.url("/ingest/logplex"), data=body_of(ROUTER), headers={
            **headers, "Content-Encoding": "identity", "Logplex-Frame-Id": "1" * 32})
        assert wrong.status_code == 400 and "Logplex-Msg-Count is 3" in wrong.json()["message"]
    assert [r["heroku"]["app"] for r in stored(conn, body["uuid"])] == ["heroku", "app", "heroku"]


# --- volume limit and connections (issue 14, item 7) -------------------------------------------

def make_app(env, **overrides):
    return create_app(config.load({**env, **overrides}, testing=True))


@pytest.fixture
def limited(env):
    """An app whose basic plan admits 6 frames (and ~6 KB) a minute per resource."""
    application = make_app(env, INGEST_LIMIT_SCALE="0.0001")
    yield application
    application.extensions["forgedrain"].db.close()


def provision(web) -> dict:
    body = provision_body()
    answer = web.post("/heroku/resources", data=json.dumps(body), headers=heroku_headers())
    assert answer.status_code in (200, 202), answer.data
    return {"id": body["uuid"], "token": body["log_drain_token"],
            "auth": {"Authorization": f"Bearer {answer.get_json(force=True)['config']['FORGEDRAIN_TOKEN']}"}}


def ingest_view(web, resource) -> dict:
    answer = web.get(f"/v1/resources/{resource['id']}", headers=resource["auth"])
    assert answer.status_code == 200, answer.data
    return answer.json["ingest"]


def throttle_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("ingest throttled")]


def test_a_resource_over_its_ingest_volume_gets_429_with_retry_after_and_nothing_is_stored(limited, conn, caplog):
    web = limited.test_client()
    resource = provision(web)
    assert post(web, resource["token"], body_of(ROUTER, APP_LINE, ERROR_LINE, APP_LINE), 4).status_code == 204
    refused = post(web, resource["token"], body_of(ROUTER, APP_LINE, ERROR_LINE), 3, frame_id="C" * 32)
    assert refused.status_code == 429, refused.data
    assert refused.json["error"] == "rate_limited" and "ingest limit" in refused.json["message"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 120  # a sliding minute: at most two windows away
    # The same batch again (logplex retries), and more: refused too, and logged once.
    for frame_id in ("C" * 32, "D" * 32, "E" * 32):
        assert post(web, resource["token"], body_of(ROUTER, APP_LINE, ERROR_LINE), 3,
                    frame_id=frame_id).status_code == 429
    assert len(stored(conn, resource["id"])) == 4
    frame_ids = [r["frame_id"] for r in conn.execute("SELECT frame_id FROM ingest_batches")]
    assert len(frame_ids) == 1 and "C" * 32 not in frame_ids
    assert len(throttle_lines(caplog)) == 1
    view = ingest_view(web, resource)
    assert (view["batches"], view["frames"], view["stored"]) == (1, 4, 4)  # the existing keys, unchanged
    # The first refusal of the minute is counted at once (later ones within the minute follow it).
    assert (view["throttled"], view["refused_batches"], view["refused_frames"]) == (1, 1, 3)


def test_refused_batches_with_fresh_frame_ids_keep_a_fixed_number_of_redis_keys(limited, conn):
    """Anyone with the drain token can send tiny over-limit batches with new Frame-Ids: what Redis
    keeps for them must not grow a key per batch."""
    web = limited.test_client()
    resource = provision(web)
    redis_client = limited.extensions["forgedrain"].redis
    assert post(web, resource["token"], body_of(*[APP_LINE] * 6), 6).status_code == 204

    def keys() -> set[bytes]:
        return set(redis_client.scan_iter(match=f"*{resource['id']}*", count=1000))

    fixed = {name.format(resource=resource["id"]).encode() for name in (
        ingest.VOLUME_KEY, ingest.REFUSED_KEY, ingest.REFUSED_BATCH_KEY, ingest.THROTTLED_KEY)}
    for _ in range(201):
        assert post(web, resource["token"], body_of(APP_LINE), 1).status_code == 429
    assert keys() <= fixed
    refused = redis_client.zcard(ingest.REFUSED_BATCH_KEY.format(resource=resource["id"]))
    assert refused == 201 <= ingest.REFUSED_BATCHES_KEPT
    assert len(stored(conn, resource["id"])) == 6


def test_another_resource_is_not_throttled_by_one_over_its_limit(limited, conn):
    web = limited.test_client()
    noisy, quiet = provision(web), provision(web)
    assert post(web, noisy["token"], body_of(*[APP_LINE] * 6), 6).status_code == 204
    assert post(web, noisy["token"], body_of(APP_LINE), 1).status_code == 429
    assert post(web, quiet["token"], body_of(*[APP_LINE] * 6), 6).status_code == 204
    assert len(stored(conn, quiet["id"])) == 6
    assert ingest_view(web, quiet)["throttled"] == 0


@pytest.fixture
def per_second(env):
    """An app whose basic plan admits 1 frame (~1 KB) per one-second window."""
    application = make_app(env, INGEST_LIMIT_SCALE="0.001", INGEST_LIMIT_PERIOD_SECONDS="1")
    yield application
    application.extensions["forgedrain"].db.close()


def test_a_refused_batch_retried_with_the_same_frame_id_after_the_window_is_stored(per_second, conn):
    web = per_second.test_client()
    resource = provision(web)
    assert post(web, resource["token"], body_of(APP_LINE), 1, frame_id="A" * 32).status_code == 204
    first = post(web, resource["token"], body_of(ERROR_LINE), 1, frame_id="B" * 32)
    assert first.status_code == 429 and int(first.headers["Retry-After"]) >= 1
    deadline, refusals = time.monotonic() + 10, 1
    while (answer := post(web, resource["token"], body_of(ERROR_LINE), 1, frame_id="B" * 32)).status_code == 429:
        assert time.monotonic() < deadline, "the window never made room for the refused batch"
        refusals += 1
        time.sleep(0.05)
    assert answer.status_code == 204, answer.data
    assert [r["body"]["stringValue"] for r in stored(conn, resource["id"])] == ["Café ready ✓ on port 5000", "boom"]
    rows = conn.execute("SELECT frame_id, replays FROM ingest_batches ORDER BY frame_id").fetchall()
    assert [(r["frame_id"], r["replays"]) for r in rows] == [("A" * 32, 0), ("B" * 32, 0)]
    # Every 429 is counted (the later ones written with the batch stored), the batch itself once.
    view = ingest_view(web, resource)
    assert (view["throttled"], view["refused_batches"], view["refused_frames"]) == (refusals, 1, 1)
    assert (view["batches"], view["stored"]) == (2, 2)


@pytest.fixture
def no_redis(env):
    """An app on the same database whose Redis is down (nothing listens on port 1)."""
    application = make_app(env, REDIS_URL="redis://127.0.0.1:1/0", INGEST_LIMIT_SCALE="0.0001")
    yield application
    application.extensions["forgedrain"].db.close()


def test_ingest_works_without_redis_and_says_so_once(app, no_redis, conn, caplog):
    resource = provision(app.test_client())
    web = no_redis.test_client()
    for _ in range(3):  # over the limit, but the limit cannot be counted: durability comes first
        assert post(web, resource["token"], body_of(*[APP_LINE] * 5), 5).status_code == 204
    assert len(stored(conn, resource["id"])) == 15
    lines = [r.getMessage() for r in caplog.records if "ingest volume limit" in r.getMessage()]
    assert len(lines) == 1 and "not counted" in lines[0]


def test_a_stalled_upload_holds_no_pooled_database_connection(app, conn, resource):
    """Logplex (or anyone with the token) may send headers and then trickle the body: the pool's
    connections must stay free for everyone else meanwhile."""
    pool = app.extensions["forgedrain"].db.open()
    stalled = pool.max_size
    body = body_of(ROUTER, APP_LINE)
    with LocalServer(app) as server:
        before = pool.get_stats().get("requests_num", 0)
        sockets = []
        try:
            for n in range(stalled):
                sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
                sockets.append(sock)
                sock.sendall((f"POST /ingest/logplex HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                              f"Content-Type: application/logplex-1\r\nLogplex-Drain-Token: {resource['token']}\r\n"
                              f"Logplex-Msg-Count: 2\r\nLogplex-Frame-Id: {'%032X' % n}\r\n"
                              f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body[:10])
            # Each stalled upload has been looked up by its token (one borrow each) ...
            deadline = time.monotonic() + 10
            while pool.get_stats().get("requests_num", 0) < before + stalled:
                assert time.monotonic() < deadline, "the uploads never reached the token lookup"
                time.sleep(0.01)
            # ... and gave the connection back before reading its body.
            deadline = time.monotonic() + 3
            while (stats := pool.get_stats())["pool_size"] != stats["pool_available"]:
                assert time.monotonic() < deadline, f"stalled uploads hold connections: {stats}"
                time.sleep(0.01)
            # Another batch meanwhile is stored at once, though as many uploads stall as the pool is large.
            other = requests.post(f"{server.url}/ingest/logplex", data=body_of(ERROR_LINE), timeout=10, headers={
                "Content-Type": "application/logplex-1", "Logplex-Drain-Token": resource["token"],
                "Logplex-Msg-Count": "1", "Logplex-Frame-Id": "F" * 32})
            assert other.status_code == 204, other.text
            for sock in sockets:
                sock.sendall(body[10:])
            for sock in sockets:
                assert sock.makefile("rb").readline().split()[1] == b"204"
        finally:
            for sock in sockets:
                sock.close()
    assert len(stored(conn, resource["id"])) == 2 * stalled + 1
