"""Delivering the outbox to drains: cursors, retries with stable Frame-Ids, drops, other drains unaffected."""

from __future__ import annotations

import contextlib
import re
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone

import orjson
import pytest

from broker import db, delivery, outbox, polling, senders
from broker.senders import Wire
from broker.sinks import http
from broker.vault import Vault
from tests.fakes.receivers import logplex_receiver, otlp_receiver
from tests.fakes.server import LocalServer
from tests.support.polling import add_resource, add_source


@pytest.fixture
def vault(settings):
    return Vault(settings.fernet_keys)


def make_deliverer(database_url: str, vault: Vault, allow_private: bool = True) -> delivery.Deliverer:
    @contextlib.contextmanager
    def connect():
        with db.connect(database_url, "forgedrain-tests") as conn:
            yield conn

    session = http.new_session(allow_private=allow_private)
    return delivery.Deliverer(connect, Wire(lambda: session, allow_private), vault, turn_seconds=20)


def forge_record(i: int, body: str | None = None) -> dict:
    return {"timeUnixNano": str(1_763_700_000_000_000_000 + i * 1_000_000), "severityText": "INFO",
            "severityNumber": 30, "body": {"stringValue": body if body is not None else f"record {i} ✓"},
            "traceId": f"{i:032x}" if i else "", "spanId": f"{i + 1:016x}",
            "attributes": [{"key": "invocationId", "value": {"stringValue": f"inv-{i}"}},
                           {"key": "functionKey", "value": {"stringValue": "run"}}]}


def store(conn, resource_id, source_id, records: list[dict], origin: str = "forge") -> int:
    times = [polling.record_time(r, datetime.now(timezone.utc)) for r in records]
    return conn.execute(
        "INSERT INTO outbox (resource_id, source_id, origin, record_count, min_ts, max_ts, payload) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
        (resource_id, source_id, origin, len(records), min(times), max(times), outbox.forge_payload(records)),
    ).fetchone()["id"]


def add_drain(conn, vault, resource_id, kind: str, url: str, settings: dict | None = None) -> uuid.UUID:
    return conn.execute(
        "INSERT INTO drains (resource_id, kind, url_enc, token, settings) VALUES (%s, %s, %s, %s, %s) "
        "RETURNING id",
        (resource_id, kind, vault.encrypt(url), f"d.{uuid.uuid4()}", orjson.dumps(settings or {}).decode()),
    ).fetchone()["id"]


def deliver_all(deliverer, conn) -> list[delivery.Outcome]:
    """Deliver every due drain once, from both lanes as the delivery job claims them: a send that took
    over SLOW_SEND_SECONDS (a refusal on a loaded machine can) moves its drain to the slow lane."""
    return [deliverer.deliver(drain) for drain in claim_due(conn, 50)]


def claim_due(conn, limit: int) -> list[delivery.Claimed]:
    """Lease up to ``limit`` due drains from both lanes, the fast one first, as the delivery job does."""
    claimed = delivery.claim(conn, limit)
    return claimed + delivery.claim(conn, limit - len(claimed), slow=True)


def drain_row(conn, drain_id) -> dict:
    return conn.execute("SELECT * FROM drains WHERE id = %s", (drain_id,)).fetchone()


def db_now(conn) -> datetime:
    """The database's clock: the one the broker writes next_attempt_at and leases with."""
    return conn.execute("SELECT now() AS now").fetchone()["now"]


@pytest.fixture
def world(conn, vault):
    resource_id = add_resource(conn)
    source_id = add_source(conn, vault, resource_id)
    conn.execute("UPDATE sources SET service_name = 'acme-app' WHERE id = %s", (source_id,))
    return resource_id, source_id


def test_logplex_drains_get_every_record_once_in_herokus_dialect(conn, vault, database_url, world):
    resource_id, source_id = world
    app, inbox = logplex_receiver()
    with LocalServer(app) as server:
        drain_id = add_drain(conn, vault, resource_id, "logplex", f"http://user:pa%3Ass@127.0.0.1:{server.port}/logs")
        batches = [store(conn, resource_id, source_id, [forge_record(b * 100 + i) for i in range(100)])
                   for b in range(3)]
        outcomes = deliver_all(make_deliverer(database_url, vault), conn)
    assert [o.result for o in outcomes] == ["caught-up"]
    assert inbox.refused == []
    messages = [e["message"] for r in inbox.requests for e in r["events"]]
    assert Counter(messages) == Counter(f"record {i} ✓" for i in range(300))
    first = inbox.requests[0]
    assert first["auth"] == ("user", "pa:ss")
    assert first["token"] == drain_row(conn, drain_id)["token"]
    assert first["events"][0]["app"] == b"acme-app" and first["events"][0]["procid"] == b"run"
    row = drain_row(conn, drain_id)
    assert row["cursor"] == batches[-1] and row["delivered"] == 300 and row["lease_token"] is None


def test_a_failed_send_is_retried_later_with_the_same_frame_id(conn, vault, database_url, world):
    resource_id, source_id = world
    app, inbox = logplex_receiver()
    with LocalServer(app) as server:
        drain_id = add_drain(conn, vault, resource_id, "logplex", f"http://127.0.0.1:{server.port}/")
        batch = store(conn, resource_id, source_id, [forge_record(i) for i in range(5)])
        inbox.fail(503, retry_after="7")
        deliverer = make_deliverer(database_url, vault)
        began = db_now(conn)
        (first,) = deliver_all(deliverer, conn)
        ended = db_now(conn)
        assert first.result == "retry"
        row = drain_row(conn, drain_id)
        assert row["cursor"] == 0 and row["retried"] == 1 and row["consecutive_failures"] == 1
        # Retry-After honoured: the next attempt is 7 s after the failed one, on the database's clock
        # (the failure was written at some moment of the delivery, so between these two readings).
        assert began + timedelta(seconds=7) <= row["next_attempt_at"] <= ended + timedelta(seconds=7)
        assert delivery.claim(conn, 10) == []  # a waiting drain costs nothing
        conn.execute("UPDATE drains SET next_attempt_at = now()")
        (second,) = deliver_all(deliverer, conn)
    assert second.result == "caught-up"
    assert len(inbox.requests) == 1
    # the accepted request carries the Frame-Id the failed one had: derived, not random
    assert inbox.requests[0]["frame_id"] == delivery.frame_id(drain_id, batch, 0)
    assert drain_row(conn, drain_id)["consecutive_failures"] == 0


def test_frame_ids_are_stable_per_drain_batch_and_part():
    drain = uuid.uuid4()
    assert delivery.frame_id(drain, 7, 0) == delivery.frame_id(drain, 7, 0)
    assert len({delivery.frame_id(drain, 7, 0), delivery.frame_id(drain, 7, 1),
                delivery.frame_id(drain, 8, 0), delivery.frame_id(uuid.uuid4(), 7, 0)}) == 4
    assert re.fullmatch(r"[0-9A-F]{32}", delivery.frame_id(drain, 1, 0))


def test_a_refused_batch_is_dropped_and_counted_not_retried(conn, vault, database_url, world):
    resource_id, source_id = world
    app, inbox = logplex_receiver()
    with LocalServer(app) as server:
        drain_id = add_drain(conn, vault, resource_id, "logplex", f"http://127.0.0.1:{server.port}/")
        store(conn, resource_id, source_id, [forge_record(i) for i in range(4)])
        second = store(conn, resource_id, source_id, [forge_record(10 + i) for i in range(6)])
        inbox.fail(400)
        deliver_all(make_deliverer(database_url, vault), conn)
    row = drain_row(conn, drain_id)
    assert row["dropped"] == 4 and row["delivered"] == 6 and row["cursor"] == second
    assert "HTTP 400" in row["last_error"]


def test_a_dead_drain_does_not_hold_back_another(conn, vault, database_url, world):
    resource_id, source_id = world
    app, inbox = logplex_receiver()
    with LocalServer(app) as server:
        dead = add_drain(conn, vault, resource_id, "logplex", "http://127.0.0.1:9/")  # nothing listens
        alive = add_drain(conn, vault, resource_id, "logplex", f"http://127.0.0.1:{server.port}/")
        store(conn, resource_id, source_id, [forge_record(i) for i in range(3)])
        deliver_all(make_deliverer(database_url, vault), conn)
    assert drain_row(conn, alive)["delivered"] == 3
    dead_row = drain_row(conn, dead)
    assert dead_row["cursor"] == 0 and dead_row["consecutive_failures"] == 1
    assert "could not deliver" in dead_row["last_error"]


def test_the_apps_own_logs_never_go_back_into_its_heroku_drain(conn, vault, database_url, world):
    resource_id, source_id = world
    app, inbox = logplex_receiver()
    with LocalServer(app) as server:
        heroku = add_drain(conn, vault, resource_id, "heroku", f"http://token:t.abc@127.0.0.1:{server.port}/logs")
        store(conn, resource_id, None, [forge_record(1, "from the app itself")], origin="heroku")
        store(conn, resource_id, source_id, [forge_record(2, "from forge")])
        deliver_all(make_deliverer(database_url, vault), conn)
    messages = [e["message"] for r in inbox.requests for e in r["events"]]
    assert messages == ["from forge"]
    assert inbox.requests[0]["auth"] == ("token", "t.abc")
    assert drain_row(conn, heroku)["delivered"] == 1


@pytest.mark.parametrize("encoding", ["json", "protobuf"])
def test_otlp_drains_get_valid_requests_with_headers_and_gzip(conn, vault, database_url, world, encoding):
    resource_id, source_id = world
    app, inbox = otlp_receiver()
    with LocalServer(app) as server:
        drain_id = add_drain(conn, vault, resource_id, "otlp", f"http://127.0.0.1:{server.port}",
                             {"encoding": encoding, "gzip": True})
        conn.execute("UPDATE drains SET headers_enc = %s WHERE id = %s",
                     (vault.encrypt(orjson.dumps({"X-Api-Key": "k3y"}).decode()), drain_id))
        store(conn, resource_id, source_id, [forge_record(i) for i in range(1500)])
        deliver_all(make_deliverer(database_url, vault), conn)
    assert inbox.refused == []
    assert len(inbox.requests) == 2  # ≤ 1,000 records per request
    assert all(r["headers"]["X-Api-Key"] == "k3y" and r["headers"]["Content-Encoding"] == "gzip"
               for r in inbox.requests)
    bodies = [log.body.string_value for r in inbox.requests
              for rl in r["message"].resource_logs for sl in rl.scope_logs for log in sl.log_records]
    assert Counter(bodies) == Counter(f"record {i} ✓" for i in range(1500))
    resource = {a.key: a.value.string_value for a in inbox.requests[0]["message"].resource_logs[0].resource.attributes}
    assert resource["service.name"] == "acme-app"
    assert drain_row(conn, drain_id)["delivered"] == 1500


def test_otlp_partial_success_is_counted_not_retried(conn, vault, database_url, world):
    resource_id, source_id = world
    app, inbox = otlp_receiver()
    app.config["partial"] = 2
    with LocalServer(app) as server:
        drain_id = add_drain(conn, vault, resource_id, "otlp", f"http://127.0.0.1:{server.port}/v1/logs",
                             {"encoding": "protobuf", "gzip": False})
        store(conn, resource_id, source_id, [forge_record(i) for i in range(10)])
        deliver_all(make_deliverer(database_url, vault), conn)
    row = drain_row(conn, drain_id)
    assert len(inbox.requests) == 1
    assert (row["delivered"], row["rejected"], row["retried"]) == (8, 2, 0)


def test_an_otlp_413_splits_the_batch(conn, vault, database_url, world):
    resource_id, source_id = world
    app, inbox = otlp_receiver()
    with LocalServer(app) as server:
        drain_id = add_drain(conn, vault, resource_id, "otlp", f"http://127.0.0.1:{server.port}",
                             {"encoding": "json", "gzip": False})
        store(conn, resource_id, source_id, [forge_record(i) for i in range(8)])
        inbox.fail(413)
        deliver_all(make_deliverer(database_url, vault), conn)
    assert [sum(len(sl.log_records) for rl in r["message"].resource_logs for sl in rl.scope_logs)
            for r in inbox.requests] == [4, 4]
    assert drain_row(conn, drain_id)["delivered"] == 8


UNRESOLVABLE = "logs.forgedrain-test.invalid"  # answered only by tests.support.resolver


@pytest.mark.parametrize("host, reason", [
    ("127.0.0.1", "private, loopback"),  # then the operator allows private drains (ALLOW_PRIVATE_DRAINS)
    (UNRESOLVABLE, "cannot resolve"),  # then the name starts to resolve
])
def test_refused_or_unresolvable_destinations_wait_with_the_reason_and_lose_nothing(
        conn, vault, database_url, world, monkeypatch, host, reason):
    from tests.support.resolver import ScriptedResolver

    resource_id, source_id = world
    dns = ScriptedResolver(monkeypatch, UNRESOLVABLE, [None])
    app, inbox = logplex_receiver()
    with LocalServer(app) as server:
        drain_id = add_drain(conn, vault, resource_id, "logplex", f"http://{host}:{server.port}/logs")
        store(conn, resource_id, source_id, [forge_record(i) for i in range(3)])
        last = store(conn, resource_id, source_id, [forge_record(i) for i in range(3, 5)])
        (outcome,) = deliver_all(make_deliverer(database_url, vault, allow_private=host == UNRESOLVABLE), conn)
        row = drain_row(conn, drain_id)
        assert outcome.result == "retry" and row["cursor"] == 0 and row["dropped"] == 0
        assert "destination refused" in row["last_error"] and reason in row["last_error"]
        assert outbox.backlog(conn, row["resource_id"], row["id"]).records == 5
        assert inbox.requests == [] and inbox.refused == []

        # The destination comes back: every record waiting is delivered, once.
        dns.then("127.0.0.1")
        conn.execute("UPDATE drains SET next_attempt_at = now() WHERE id = %s", (drain_id,))
        (outcome,) = deliver_all(make_deliverer(database_url, vault, allow_private=True), conn)
    assert outcome.result == "caught-up"
    messages = [e["message"] for r in inbox.requests for e in r["events"]]
    assert Counter(messages) == Counter(f"record {i} ✓" for i in range(5))
    row = drain_row(conn, drain_id)
    assert (row["cursor"], row["delivered"], row["dropped"], row["consecutive_failures"]) == (last, 5, 0, 0)
    assert outbox.backlog(conn, row["resource_id"], row["id"]).records == 0


@pytest.mark.parametrize("kind", ["logplex", "otlp"])
def test_a_redirect_is_not_followed_and_not_counted_as_delivered(conn, vault, database_url, world, kind):
    from flask import Flask, redirect, request

    resource_id, source_id = world
    seen = []
    app = Flask("redirecting-receiver")

    @app.route("/<path:path>", methods=["GET", "POST"])
    def everything(path):
        seen.append((request.method, path))
        if path.startswith("moved"):
            return "", 200
        return redirect(f"http://127.0.0.1:{request.host.split(':')[1]}/moved", code=302)

    with LocalServer(app) as server:
        drain_id = add_drain(conn, vault, resource_id, kind, f"http://127.0.0.1:{server.port}/in",
                             {"encoding": "json", "gzip": False} if kind == "otlp" else None)
        store(conn, resource_id, source_id, [forge_record(1)])
        (outcome,) = deliver_all(make_deliverer(database_url, vault), conn)
    row = drain_row(conn, drain_id)
    assert outcome.result == "retry" and row["delivered"] == 0 and row["cursor"] == 0
    assert "redirects to 127.0.0.1" in row["last_error"]
    assert all(method == "POST" for method, _ in seen) and not any(p.startswith("moved") for _, p in seen)



def test_the_tick_queues_delivery_and_a_real_job_delivers(env, conn, vault, world, redis_url):
    from broker import config, jobs, redisconn
    from rq import SimpleWorker
    from worker import context, tick

    resource_id, source_id = world
    app, inbox = logplex_receiver()
    with LocalServer(app) as server:
        context.install(config.load(env, testing=True))
        try:
            add_drain(conn, vault, resource_id, "logplex", f"http://127.0.0.1:{server.port}/")
            tick.run(1)
            assert jobs.queue("deliver", redisconn.connect(redis_url)).jobs == []  # nothing to send
            store(conn, resource_id, source_id, [forge_record(i) for i in range(20)])
            tick.run(2)
            connection = redisconn.connect(redis_url, socket_timeout=None)
            assert [j.id for j in jobs.queue("deliver", connection).jobs] == ["deliver-0"]
            SimpleWorker([jobs.queue("deliver", connection)], connection=connection,
                         serializer=jobs.SERIALIZER).work(burst=True)
        finally:
            context.install(None)
    assert sum(len(r["events"]) for r in inbox.requests) == 20


def test_a_worker_killed_mid_send_redelivers_the_batch_with_the_same_frame_id(env, conn, vault, world, redis_url):
    import os
    import signal
    import subprocess
    import threading

    from flask import Flask, request

    from broker import jobs, redisconn
    from tests.test_poll_jobs import start_worker

    resource_id, source_id = world
    arrived, release = threading.Event(), threading.Event()
    seen: list[tuple[str, int]] = []
    app = Flask("holding-receiver")

    @app.post("/")
    def receive():
        seen.append((request.headers["Logplex-Frame-Id"], int(request.headers["Logplex-Msg-Count"])))
        if len(seen) == 1:  # the first request is read, then held until its sender is dead
            arrived.set()
            release.wait(30)
        return "", 200

    with LocalServer(app) as server:
        drain_id = add_drain(conn, vault, resource_id, "logplex", f"http://127.0.0.1:{server.port}/")
        batches = [store(conn, resource_id, source_id, [forge_record(b * 10 + i) for i in range(10)])
                   for b in range(2)]
        jobs.queue("deliver", redisconn.connect(redis_url)).enqueue("worker.deliver.run", 0, 30.0,
                                                                    job_timeout=120)
        worker = start_worker(env, ALLOW_PRIVATE_DRAINS="true")
        assert arrived.wait(60), worker.communicate(timeout=5)[0] if worker.poll() is not None else "no request"
        horses = subprocess.run(["pgrep", "-P", str(worker.pid)], capture_output=True, text=True).stdout.split()
        for pid in horses:
            os.killpg(int(pid), signal.SIGKILL)
        os.killpg(worker.pid, signal.SIGKILL)
        worker.communicate(timeout=30)
        release.set()  # the receiver has the batch; the broker never heard it say so
        row = drain_row(conn, drain_id)
        assert row["cursor"] == 0 and row["lease_token"] is not None  # the dead delivery still holds it
        conn.execute("UPDATE drains SET lease_expires_at = now() - interval '1 second'")  # the lease runs out
        (outcome,) = deliver_all(make_deliverer(env["DATABASE_URL"], vault), conn)
    assert outcome.result == "caught-up"
    assert seen[0] == seen[1] == (delivery.frame_id(drain_id, batches[0], 0), 10)  # the same batch, same id
    assert len(seen) == 3 and seen[2][0] == delivery.frame_id(drain_id, batches[1], 0)
    row = drain_row(conn, drain_id)
    assert row["cursor"] == batches[1] and row["delivered"] == 20


def test_otlp_requests_hold_at_most_1000_records_or_about_1_mib(conn, vault, database_url, world):
    resource_id, source_id = world
    app, inbox = otlp_receiver()
    with LocalServer(app) as server:
        add_drain(conn, vault, resource_id, "otlp", f"http://127.0.0.1:{server.port}",
                  {"encoding": "protobuf", "gzip": True})
        store(conn, resource_id, source_id, [forge_record(i) for i in range(2500)])
        store(conn, resource_id, source_id, [forge_record(i, body="x" * 100_000) for i in range(25)])
        (outcome,) = deliver_all(make_deliverer(database_url, vault), conn)
    assert outcome.delivered == 2525
    sizes = [sum(len(s.log_records) for r in req["message"].resource_logs for s in r.scope_logs)
             for req in inbox.requests]
    assert sizes == [1000, 1000, 500, 10, 10, 5]
    assert all(req["message"].ByteSize() <= 1.1 * senders.OTLP_TARGET_BYTES for req in inbox.requests)


def test_a_batch_that_commits_late_is_never_passed_over(conn, vault, database_url, world):
    """Outbox ids are drawn at INSERT: appends to a resource are serialised to the commit, so a
    cursor that reached a later batch can never have skipped an earlier one still in flight."""
    import threading
    import time

    from broker import ingest

    resource_id, source_id = world
    app, inbox = logplex_receiver()
    line = b"<190>1 2026-11-21T10:00:00+00:00 host app web.1 - from the app\n"
    parsed = ingest.parse(str(len(line)).encode() + b" " + line, 1)
    with LocalServer(app) as server:
        add_drain(conn, vault, resource_id, "logplex", f"http://127.0.0.1:{server.port}/")
        deliverer = make_deliverer(database_url, vault)
        with db.connect(database_url, "forgedrain-tests") as poll:
            with poll.transaction():  # a poll's page transaction, still open
                outbox.append_forge(poll, resource_id, source_id, [forge_record(1)],
                                    [datetime.now(timezone.utc)])

                def post() -> None:  # an ingest request for the same resource meanwhile
                    with db.connect(database_url, "forgedrain-tests-ingest") as web:
                        ingest.store(web, resource_id, "F" * 32, parsed)

                posting = threading.Thread(target=post)
                posting.start()
                # It waits for the page's commit: PostgreSQL shows it blocked on the append lock.
                deadline = time.monotonic() + 30
                while not conn.execute("SELECT count(*) AS n FROM pg_stat_activity WHERE application_name = "
                                       "'forgedrain-tests-ingest' AND wait_event = 'advisory'").fetchone()["n"]:
                    assert posting.is_alive() and time.monotonic() < deadline, "the ingest did not wait"
                    time.sleep(0.02)
                assert posting.is_alive()
                assert deliver_all(deliverer, conn) == []  # nothing visible to deliver yet
        posting.join(10)
        (outcome,) = deliver_all(deliverer, conn)
    assert outcome.delivered == 2
    assert [e["message"] for r in inbox.requests for e in r["events"]] == ["record 1 ✓", "from the app"]
