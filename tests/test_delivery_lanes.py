"""Delivery v2: lanes and shares, a position inside a batch, lost secrets, jobs that scale out."""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from cryptography.fernet import Fernet

from broker import config, delivery, jobs, outbox, redisconn
from broker.vault import Vault
from tests.fakes.hostile import HostileHTTP
from tests.fakes.receivers import logplex_receiver
from tests.fakes.server import LocalServer
from tests.support.partner import sso_token
from tests.support.polling import add_resource, add_source, api_token
from tests.test_delivery import add_drain, drain_row, forge_record, make_deliverer, store, vault, world  # noqa: F401


def wait_for(condition, seconds: float = 60, what: str = "condition"):
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_slow_drain_is_claimed_by_the_slow_lane_only(conn, vault, world):
    resource_id, source_id = world
    quick = add_drain(conn, vault, resource_id, "logplex", "http://127.0.0.1:9/")
    slow = add_drain(conn, vault, resource_id, "logplex", "http://127.0.0.1:9/")
    conn.execute("UPDATE drains SET send_seconds = %s WHERE id = %s", (delivery.SLOW_SEND_SECONDS * 3, slow))
    store(conn, resource_id, source_id, [forge_record(1)])
    assert [d.id for d in delivery.claim(conn, 10)] == [quick]
    assert [d.id for d in delivery.claim(conn, 10, slow=True)] == [slow]
    assert delivery.claim(conn, 10) == delivery.claim(conn, 10, slow=True) == []  # both under lease now


def test_a_resource_holds_at_most_its_share_of_a_lane(conn, vault, world):
    busy, busy_source = world
    quiet = add_resource(conn)
    quiet_source = add_source(conn, vault, quiet)
    many = [add_drain(conn, vault, busy, "logplex", "http://127.0.0.1:9/") for _ in range(6)]
    one = add_drain(conn, vault, quiet, "logplex", "http://127.0.0.1:9/")
    store(conn, busy, busy_source, [forge_record(1)])
    store(conn, quiet, quiet_source, [forge_record(2)])
    first = delivery.claim(conn, 10, per_resource=2)
    assert Counter(d.resource_id for d in first) == {busy: 2, quiet: 1}
    assert one in {d.id for d in first}
    assert delivery.claim(conn, 10, per_resource=2) == []  # the busy resource's share is taken
    conn.execute("UPDATE drains SET lease_token = NULL, lease_expires_at = NULL WHERE id = %s", (first[0].id,))
    again = delivery.claim(conn, 10, per_resource=2)
    assert len(again) == 1 and again[0].resource_id == busy and again[0].id in many


def test_a_turn_that_ends_inside_a_batch_is_resumed_at_the_next_record(conn, vault, database_url, world):
    """Every send moves the drain's position, so a turn can end after any send and nothing is sent twice."""
    resource_id, source_id = world
    app, inbox = logplex_receiver()
    records = [forge_record(i, body=f"{i:04d} " + "x" * 1500) for i in range(200)]  # ~330 KB: 4 requests
    with LocalServer(app) as server:
        drain_id = add_drain(conn, vault, resource_id, "logplex", f"http://127.0.0.1:{server.port}/")
        batch = store(conn, resource_id, source_id, records)
        deliverer = make_deliverer(database_url, vault)
        deliverer.turn_seconds = 0  # one send per turn
        positions = []
        for _ in range(10):
            (drain,) = delivery.claim(conn, 10)
            outcome = deliverer.deliver(drain)
            row = drain_row(conn, drain_id)
            positions.append((row["cursor"], row["partial_batch"], row["partial_records"], row["delivered"]))
            # the backlog counts what is left of the batch, not the records already sent
            assert outbox.backlog(conn, resource_id, drain_id).records == 200 - row["delivered"]
            if outcome.result == "caught-up" or row["cursor"] == batch:
                break
    sent = [int(e["message"][:4]) for r in inbox.requests for e in r["events"]]
    assert sorted(sent) == list(range(200)) and len(sent) == 200  # each record once
    assert len(inbox.requests) >= 3
    middle = positions[:-1]
    assert all(p[0] == batch - 1 and p[1] == batch for p in middle)
    assert [p[2] for p in middle] == sorted(p[2] for p in middle) and all(p[2] == p[3] for p in middle)
    assert positions[-1] == (batch, None, 0, 200)
    # Each request's Frame-Id names its batch and first record: stable across retries, distinct per request.
    offsets = [0]
    for r in inbox.requests[:-1]:
        offsets.append(offsets[-1] + len(r["events"]))
    assert [r["frame_id"] for r in inbox.requests] == [delivery.frame_id(drain_id, batch, o) for o in offsets]


def test_a_drain_whose_secrets_cannot_be_decrypted_says_so_and_waits(client_factory, conn, vault, database_url,
                                                                       world):
    resource_id, source_id = world
    app, inbox = logplex_receiver()
    stranger = Vault([Fernet.generate_key().decode()])
    with LocalServer(app) as server:
        url = f"http://127.0.0.1:{server.port}/"
        drain_id = add_drain(conn, vault, resource_id, "logplex", url)
        conn.execute("UPDATE drains SET url_enc = %s WHERE id = %s", (stranger.encrypt(url), drain_id))
        store(conn, resource_id, source_id, [forge_record(i) for i in range(3)])
        deliverer = make_deliverer(database_url, vault)
        (drain,) = delivery.claim(conn, 10)
        outcome = deliverer.deliver(drain)
        assert outcome.result == "secret-lost"
        row = drain_row(conn, drain_id)
        assert row["secret_lost_at"] is not None and row["lease_token"] is None
        assert "re-enter the drain's URL" in row["last_error"] and url not in row["last_error"]
        assert (row["next_attempt_at"] - row["secret_lost_at"]).total_seconds() > 3000
        assert delivery.claim(conn, 10) == []  # it waits, it does not spin

        client, token = client_factory(resource_id)
        shown = client.get(f"/v1/resources/{resource_id}/drains/{drain_id}", headers=token).json
        assert shown["url"] is None and shown["delivery"]["secret_lost_at"] is not None
        from tests.test_metrics import scrape, value

        samples, _ = scrape(client)
        assert value(samples, "forgedrain_drains_secret_lost", kind="logplex") == 1
        stamp, sso = sso_token(str(resource_id))
        assert client.post("/sso/login", data={"resource_id": str(resource_id), "resource_token": sso,
                                               "timestamp": stamp, "app": "acme", "email": "owner@example.com",
                                               "user_id": "u-1"}).status_code == 302
        page = client.get(f"/dashboard/{resource_id}").get_data(as_text=True)
        card = page[page.index(f'id="drain-{drain_id}"'):]
        assert "can no longer be read" in card[:4000] and "enter its URL" in card[:4000]
        assert "waiting for its URL" in card[:1500]

        assert client.patch(f"/v1/resources/{resource_id}/drains/{drain_id}", headers=token,
                            json={"url": url}).status_code == 200
        row = drain_row(conn, drain_id)
        assert row["secret_lost_at"] is None
        (drain,) = delivery.claim(conn, 10)
        assert deliverer.deliver(drain).result == "caught-up"
    assert sum(len(r["events"]) for r in inbox.requests) == 3


@pytest.fixture
def client_factory(env, conn):
    from tests.test_metrics import METRICS_TOKEN
    from web import create_app

    apps = []

    def make(resource_id):
        app = create_app(config.load({**env, "METRICS_TOKEN": METRICS_TOKEN, "ALLOW_PRIVATE_DRAINS": "true"},
                                     testing=True))
        apps.append(app)
        # tests.support.polling.add_resource stores the digest of the resource's id as its API token
        return app.test_client(), {"Authorization": f"Bearer {api_token(resource_id)}"}

    yield make
    for app in apps:
        app.extensions["forgedrain"].db.close()


def test_the_tick_queues_a_delivery_job_per_threads_worth_of_due_drains(env, conn, vault, world, redis_url):
    from worker import context, tick

    resource_id, source_id = world
    for _ in range(5):
        add_drain(conn, vault, resource_id, "logplex", "http://127.0.0.1:9/")
    store(conn, resource_id, source_id, [forge_record(1)])
    context.install(config.load({**env, "DELIVERY_THREADS": "2", "DELIVERY_JOBS": "8"}, testing=True))
    try:
        result = tick.run(1)
    finally:
        context.install(None)
    assert result["due_drains"] == 5 and result["delivery_jobs"] == 3
    queued = sorted(j.id for j in jobs.queue("deliver", redisconn.connect(redis_url)).jobs)
    assert queued == ["deliver-0", "deliver-1", "deliver-2"]


def test_a_hostile_tenant_cannot_hold_back_a_healthy_one(env, conn, vault, world):
    """Twelve drains of one tenant whose receiver never answers; one healthy drain of another tenant.
    The healthy drain's records arrive while every hostile send is still waiting for its answer, and
    the hostile drains end up retried with the reason, in the slow lane."""
    from worker import context, deliver

    hostile, hostile_source = world
    healthy = add_resource(conn)
    healthy_source = add_source(conn, vault, healthy)
    app, inbox = logplex_receiver()
    with HostileHTTP("silent") as silent, LocalServer(app) as server:
        stalled = [add_drain(conn, vault, hostile, "logplex", silent.url) for _ in range(12)]
        good = add_drain(conn, vault, healthy, "logplex", f"http://127.0.0.1:{server.port}/")
        store(conn, hostile, hostile_source, [forge_record(i) for i in range(5)])
        store(conn, healthy, healthy_source, [forge_record(i) for i in range(20)])
        context.install(config.load({**env, "ALLOW_PRIVATE_DRAINS": "true"}, testing=True))
        job = threading.Thread(target=deliver.run, args=(0, 1.0))
        try:
            job.start()
            wait_for(lambda: sum(len(r["events"]) for r in inbox.requests) == 20, 60, "the healthy drain")
            tried = conn.execute("SELECT count(*) AS n FROM drains WHERE id = ANY(%s) AND retried > 0",
                                 (stalled,)).fetchone()["n"]
            assert tried == 0  # every hostile send was still waiting for its answer
            assert silent.hits >= 1
            job.join(120)
            assert not job.is_alive()
        finally:
            context.install(None)
    assert drain_row(conn, good)["delivered"] == 20
    rows = conn.execute("SELECT retried, last_error, send_seconds, delivered, lease_token FROM drains "
                        "WHERE id = ANY(%s)", (stalled,)).fetchall()
    tried = [r for r in rows if r["retried"]]
    assert tried and all(r["delivered"] == 0 and r["lease_token"] is None for r in rows)
    assert all("within" in r["last_error"] and r["send_seconds"] > delivery.SLOW_SEND_SECONDS for r in tried)


def test_a_timeout_raised_in_the_job_goes_up_and_is_not_a_rows_crash():
    """RQ's job timeout is raised in the job's main thread while it waits for rows: it must end the
    job, not be tallied as one row's crash."""
    from worker import batch

    class Timeout(Exception):
        pass

    tallied = []
    release = threading.Event()

    def raise_timeout(signum, frame):
        release.set()  # the rows in flight end at once
        raise Timeout()

    previous = signal.signal(signal.SIGALRM, raise_timeout)
    signal.setitimer(signal.ITIMER_REAL, 0.3)
    try:
        with pytest.raises(Timeout):
            batch.run_leased(threads=2, budget_seconds=30, claim=lambda free: [{}] if not tallied else [],
                             work=lambda row: release.wait(5), tally=tallied.append, name="test")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        release.set()
    assert None not in tallied


@pytest.mark.parametrize("mode", ["trickle", "silent", "slow", "unread"])
def test_a_hostile_receiver_costs_one_deadline_and_loses_nothing(conn, vault, database_url, world, mode):
    """Each send gives up at its deadline, the drain is retried with the reason and counted slow,
    and once the receiver behaves every record arrives once."""
    import dataclasses

    from tests.fakes.hostile import sockets_to

    resource_id, source_id = world
    records = [forge_record(i, body=f"{i:04d} " + "y" * 4000) for i in range(300)]  # ~1.2 MB: several requests
    with HostileHTTP(mode, delay=30.0) as hostile:
        drain_id = add_drain(conn, vault, resource_id, "logplex", hostile.url)
        batch = store(conn, resource_id, source_id, records)
        deliverer = make_deliverer(database_url, vault)
        deliverer.wire = dataclasses.replace(deliverer.wire, deadline_seconds=1.5)
        (drain,) = delivery.claim(conn, 10)
        pool = ThreadPoolExecutor(1)
        try:  # liveness: it returns, cut by its deadline, or the test fails (without waiting for it)
            outcome = pool.submit(deliverer.deliver, drain).result(timeout=1.5 + 20)
        finally:
            pool.shutdown(wait=False)
        assert outcome.result == "retry"
        row = drain_row(conn, drain_id)
        assert "within 1.5 s" in row["last_error"], row["last_error"]
        assert row["cursor"] == 0 and row["partial_batch"] is None and row["delivered"] == 0
        assert row["send_seconds"] > delivery.SLOW_SEND_SECONDS and row["lease_token"] is None
        marked_slow = row["send_seconds"]
        wait_for(lambda: sockets_to(hostile.port) == 0, 10, "the connection to be closed")
        hostile.mode = "ok"  # the receiver mends its ways
        conn.execute("UPDATE drains SET next_attempt_at = now() WHERE id = %s", (drain_id,))
        for _ in range(20):
            claimed = delivery.claim(conn, 10, slow=True)
            if not claimed:
                break
            deliverer.deliver(claimed[0])
    row = drain_row(conn, drain_id)
    assert row["cursor"] == batch and row["delivered"] == 300 and row["dropped"] == 0
    # The answered sends count in the drain's moving average, bringing it back towards the fast lane:
    # judged against the estimate the failed send left, not against a number of seconds.
    assert row["send_seconds"] < marked_slow


def test_after_its_budget_a_job_still_serves_quick_rows_while_slow_ones_finish():
    """The end of a delivery job is no pause for healthy drains: while a slow send finishes, the
    free threads still take fast-lane drains; and once the slow rows are done the job ends."""
    from worker import batch

    release, quick_done = threading.Event(), threading.Event()
    order: list[str] = []
    given = {"claim": 0, "closing": 0}

    def claim(free):
        given["claim"] += 1
        return ["slow"] if given["claim"] == 1 else []

    def closing_claim(free):
        given["closing"] += 1
        return ["quick"] if given["closing"] == 1 else []

    def work(row):
        if row == "slow":
            release.wait(30)
        else:
            quick_done.set()
            release.set()  # the slow send ends only after the quick row ran
        order.append(row)
        return row

    tallied: list = []
    batch.run_leased(threads=4, budget_seconds=0.3, claim=claim, work=work, tally=tallied.append,
                     closing_claim=closing_claim, name="test")
    assert order == ["quick", "slow"] and sorted(tallied) == ["quick", "slow"]
    assert given["closing"] >= 1
