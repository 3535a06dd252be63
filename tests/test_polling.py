"""Polling Forge sources into the outbox: windows, checkpoints, fingerprints, errors, gaps."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest

from broker import polling
from broker.vault import Vault
from tests.fakes.forge import ForgeFake
from tests.fakes.server import LocalServer
from tests.support.polling import (APP, EMAIL, ENV, TOKEN, add_resource, add_source, identity,
                                   make_poller, outbox_records)


class SimClock:
    def __init__(self, start: datetime):
        self.now = start

    def __call__(self) -> float:
        return self.now.timestamp()


@pytest.fixture
def vault(settings):
    return Vault(settings.fernet_keys)


def claim_one(conn, source_id, db_now: datetime | None = None) -> dict:
    """Make the source due and lease it, as a poll job would; optionally at a simulated time."""
    conn.execute("UPDATE sources SET next_poll_at = now() - interval '1 second' WHERE id = %s", (source_id,))
    claimed = polling.claim(conn, 10, 180)
    assert [c["id"] for c in claimed] == [source_id]
    source = claimed[0]
    if db_now is not None:
        source["db_now"] = db_now
    return source


def db_clock(conn) -> datetime:
    """The database's clock, the one the poller writes next_poll_at and checkpoints with: a test
    brackets what the poller wrote between two readings of it, never against its own clock."""
    return conn.execute("SELECT clock_timestamp() AS now").fetchone()["now"]


def source_row(conn, source_id) -> dict:
    return conn.execute("SELECT * FROM sources WHERE id = %s", (source_id,)).fetchone()


def test_consecutive_windows_with_late_records_lose_nothing_and_store_nothing_twice(
        conn, database_url, redis_url, vault):
    start = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(days=3)
    clock = SimClock(start)
    fake = ForgeFake(seed=11, page_size=20, clock=clock, rate_limit=10_000)
    # Late records arrive up to 200 s after their timestamp. Each stretch of the
    # log is read once fresh and once more when it is `overlap` (300 s) old, so
    # lateness up to the overlap is caught.
    fake.add_app(APP, [ENV], EMAIL, TOKEN, records_per_minute=30, late_fraction=0.2,
                 max_delay_seconds=200)
    resource_id = add_resource(conn)
    source_id = add_source(conn, vault, resource_id)
    first_checkpoint = start - timedelta(minutes=30)
    conn.execute("UPDATE sources SET checkpoint = %s", (first_checkpoint,))
    with LocalServer(fake.wsgi()) as server:
        poller = make_poller(database_url, redis_url, server.url, vault, lag=60, overlap=300)
        for _ in range(90):  # an hour and a half of one-minute polls
            outcome = poller.poll(claim_one(conn, source_id, clock.now))
            assert outcome.result == "caught-up", outcome
            clock.now += timedelta(minutes=1)
    row = source_row(conn, source_id)
    final, settled = row["checkpoint"], row["settled_until"]
    assert final > start + timedelta(minutes=80)
    # The settled horizon trails the checkpoint by the overlap and at most one
    # poll interval; every record before it is stored, however late it came.
    assert final - timedelta(seconds=300 + 60 + 1) <= settled <= final
    stored = outbox_records(conn, source_id)
    counts = Counter(map(identity, stored))
    assert max(counts.values()) == 1, "a record was stored twice"
    expected = fake.records(APP, ENV, first_checkpoint, settled, now=clock() + 86400)
    assert len(expected) > 2000
    in_range = Counter(identity(r) for r in stored
                       if first_checkpoint <= polling.record_time(r, first_checkpoint) < settled)
    assert in_range == Counter(map(identity, expected)), "records were lost or invented"
    everything = set(map(identity, fake.records(APP, ENV, first_checkpoint - timedelta(minutes=10), final,
                                                now=clock() + 86400)))
    assert set(counts) <= everything, "stored a record the API never returned"
    # the overlap really re-read records and dropped them
    assert conn.execute("SELECT count(*) AS n FROM outbox").fetchone()["n"] > 90


def test_a_long_outage_catches_up_in_one_poll_as_far_as_the_time_box_allows(
        conn, database_url, redis_url, vault):
    fake = ForgeFake(seed=12, page_size=500, rate_limit=10_000)
    fake.add_app(APP, [ENV], EMAIL, TOKEN, records_per_minute=5, late_fraction=0)
    source_id = add_source(conn, vault, add_resource(conn), checkpoint_ago=timedelta(hours=6))
    with LocalServer(fake.wsgi()) as server:
        poller = make_poller(database_url, redis_url, server.url, vault)
        began = db_clock(conn)
        outcome = poller.poll(claim_one(conn, source_id))
        ended = db_clock(conn)
    assert outcome.result == "caught-up"
    assert outcome.windows >= 6 and outcome.calls == outcome.windows
    row = source_row(conn, source_id)
    assert began - row["checkpoint"] < timedelta(minutes=3)  # caught up to the claim's now, less the lag
    assert began + timedelta(seconds=50) < row["next_poll_at"] <= ended + timedelta(seconds=60)  # pro: 1 min
    assert row["lease_token"] is None and row["consecutive_failures"] == 0


def test_a_15_day_outage_records_a_gap_and_recovers_the_rest(conn, database_url, redis_url, vault):
    fake = ForgeFake(seed=13, page_size=1000, rate_limit=100_000)
    fake.add_app(APP, [ENV], EMAIL, TOKEN, records_per_minute=0.2, late_fraction=0)
    source_id = add_source(conn, vault, add_resource(conn), checkpoint_ago=timedelta(days=15))
    with LocalServer(fake.wsgi()) as server:
        poller = make_poller(database_url, redis_url, server.url, vault, time_box=60)
        for _ in range(20):
            began = db_clock(conn)  # before the last poll's claim
            if poller.poll(claim_one(conn, source_id)).result == "caught-up":
                break
    gaps = conn.execute("SELECT gap_from, gap_until FROM source_gaps").fetchall()
    assert len(gaps) == 1
    length = gaps[0]["gap_until"] - gaps[0]["gap_from"]
    # a day, plus the 5 minutes kept clear of the API's edge
    assert timedelta(hours=24) <= length <= timedelta(hours=24, minutes=6)
    row = source_row(conn, source_id)
    assert began - row["checkpoint"] < timedelta(minutes=3)
    stored = Counter(map(identity, outbox_records(conn, source_id)))
    expected = fake.records(APP, ENV, gaps[0]["gap_until"], row["checkpoint"])
    assert set(stored) >= set(map(identity, expected))
    assert max(stored.values()) == 1


@pytest.mark.parametrize("inject, state, reason, fragment", [
    ({"status": 401}, "paused", "auth_failed", "HTTP 401"),
    ({"status": 403}, "paused", "auth_failed", "HTTP 403"),
    ({"status": 404}, "paused", "not_found", "HTTP 404"),
    ({"status": 400}, "paused", "bad_request", "HTTP 400"),
    ({"status": 500}, "active", None, "HTTP 500"),
    ({"status": 503}, "active", None, "HTTP 503"),
    ({"malformed": True}, "active", None, "not JSON"),
])
def test_each_error_class_leads_to_its_state(conn, database_url, redis_url, vault, inject, state,
                                             reason, fragment):
    fake = ForgeFake(seed=14)
    fake.add_app(APP, [ENV], EMAIL, TOKEN)
    source_id = add_source(conn, vault, add_resource(conn))
    before = source_row(conn, source_id)["checkpoint"]
    fake.fail(**inject)
    with LocalServer(fake.wsgi()) as server:
        began = db_clock(conn)
        make_poller(database_url, redis_url, server.url, vault).poll(claim_one(conn, source_id))
        ended = db_clock(conn)
    row = source_row(conn, source_id)
    assert row["state"] == state and row["pause_reason"] == reason
    assert fragment in row["last_error"]
    assert row["checkpoint"] == before  # nothing moved
    assert row["lease_token"] is None
    if state == "active":
        assert row["consecutive_failures"] == 1
        # a first failure's backoff: 7.5 to 15 s after the failure, written between the two readings
        assert began + timedelta(seconds=5) < row["next_poll_at"] <= ended + timedelta(seconds=15)
    assert conn.execute("SELECT count(*) AS n FROM outbox").fetchone()["n"] == 0


def test_wrong_credentials_pause_the_source(conn, database_url, redis_url, vault):
    fake = ForgeFake(seed=15)
    fake.add_app(APP, [ENV], EMAIL, TOKEN)
    source_id = add_source(conn, vault, add_resource(conn), token="ATATT-revoked")
    with LocalServer(fake.wsgi()) as server:
        outcome = make_poller(database_url, redis_url, server.url, vault).poll(claim_one(conn, source_id))
    assert outcome.result == "paused"
    row = source_row(conn, source_id)
    assert (row["state"], row["pause_reason"]) == ("paused", "auth_failed")
    # a paused source is not claimed again
    conn.execute("UPDATE sources SET next_poll_at = now() - interval '1 minute'")
    assert polling.claim(conn, 10, 180) == []


def test_a_429_blocks_the_app_for_its_retry_after(conn, database_url, redis_url, vault):
    # The fake's clock stands still: its one call a period is taken by the first call, and the second
    # is told "Retry-After: 30" exactly, however long the calls took.
    fake = ForgeFake(seed=16, rate_limit=1, rate_period=30, retry_after=True,
                     clock=SimClock(datetime.now(timezone.utc)))
    fake.add_app(APP, [ENV], EMAIL, TOKEN)
    source_id = add_source(conn, vault, add_resource(conn), checkpoint_ago=timedelta(hours=3))
    with LocalServer(fake.wsgi()) as server:
        poller = make_poller(database_url, redis_url, server.url, vault)
        began = db_clock(conn)
        outcome = poller.poll(claim_one(conn, source_id))
        ended = db_clock(conn)
        assert outcome.result == "rate-limited"
        assert 0 < poller.limiter.try_take(APP) <= 30  # every worker now waits
    assert [c.status for c in fake.calls] == [200, 429]
    row = source_row(conn, source_id)
    # Due again 30 s after the 429 was taken in, on the database's clock (between the two readings).
    assert began + timedelta(seconds=30) <= row["next_poll_at"] <= ended + timedelta(seconds=30)
    assert row["consecutive_failures"] == 1 and "429" in row["last_error"]


def test_no_budget_yields_instead_of_sleeping(conn, database_url, redis_url, vault):
    fake = ForgeFake(seed=17, rate_limit=10_000)
    fake.add_app(APP, [ENV], EMAIL, TOKEN, records_per_minute=1)
    source_id = add_source(conn, vault, add_resource(conn), checkpoint_ago=timedelta(hours=5))
    with LocalServer(fake.wsgi()) as server:
        poller = make_poller(database_url, redis_url, server.url, vault, limit=2, period=60)
        began = db_clock(conn)
        outcome = poller.poll(claim_one(conn, source_id))
        ended = db_clock(conn)
    assert outcome.result == "no-budget" and outcome.calls == 2
    row = source_row(conn, source_id)
    assert row["lease_token"] is None
    # due when the first call's period ends: a minute after a moment of the poll
    assert began + timedelta(seconds=30) < row["next_poll_at"] <= ended + timedelta(seconds=60)
    assert row["checkpoint"] < began - timedelta(hours=2)  # two windows done


def test_a_poll_that_lost_its_lease_changes_nothing(conn, database_url, redis_url, vault):
    fake = ForgeFake(seed=18, rate_limit=10_000)
    fake.add_app(APP, [ENV], EMAIL, TOKEN)
    source_id = add_source(conn, vault, add_resource(conn))
    stale = claim_one(conn, source_id)
    conn.execute("UPDATE sources SET lease_expires_at = now() - interval '1 second'")
    fresh = claim_one(conn, source_id)
    assert fresh["lease_token"] != stale["lease_token"]
    with LocalServer(fake.wsgi()) as server:
        outcome = make_poller(database_url, redis_url, server.url, vault).poll(stale)
    assert outcome.result == "lost-lease"
    assert conn.execute("SELECT count(*) AS n FROM outbox").fetchone()["n"] == 0
    assert source_row(conn, source_id)["lease_token"] == fresh["lease_token"]


def test_deleted_sources_and_deprovisioned_resources_stop_at_once(conn, database_url, redis_url, vault):
    fake = ForgeFake(seed=19, rate_limit=10_000)
    fake.add_app(APP, [ENV], EMAIL, TOKEN)
    resource_id = add_resource(conn)
    source_id = add_source(conn, vault, resource_id)
    in_flight = claim_one(conn, source_id)
    conn.execute("UPDATE resources SET state = 'deprovisioned' WHERE id = %s", (resource_id,))
    conn.execute("UPDATE sources SET state = 'paused', api_token_enc = NULL")  # what deprovision does
    with LocalServer(fake.wsgi()) as server:
        outcome = make_poller(database_url, redis_url, server.url, vault).poll(in_flight)
    assert outcome.result == "lost-lease"
    assert conn.execute("SELECT count(*) AS n FROM outbox").fetchone()["n"] == 0
    conn.execute("DELETE FROM sources")
    assert polling.claim(conn, 10, 180) == []


@pytest.mark.parametrize("state", ["deprovisioned", "failed"])
def test_a_source_left_active_on_a_dead_resource_is_never_polled(conn, vault, state):
    """Whatever state a source was left in (a form open in a tab, a race with deprovision), only
    sources of live resources are counted due or claimed; a live one is not held back by them."""
    dead = add_resource(conn)
    for i in range(5):
        add_source(conn, vault, dead, environment_id=f"env-{i}")
    conn.execute("UPDATE resources SET state = %s WHERE id = %s", (state, dead))
    live = add_resource(conn)
    wanted = add_source(conn, vault, live)
    conn.execute("UPDATE sources SET next_poll_at = now() - interval '1 hour' WHERE resource_id = %s", (dead,))
    assert polling.count_due(conn, 100) == 1
    assert [s["id"] for s in polling.claim(conn, 1, 180)] == [wanted]  # the older due ones are skipped
    assert polling.claim(conn, 10, 180) == []


def test_two_claimers_never_get_the_same_source(conn, database_url, vault):
    from broker import db

    resource_id = add_resource(conn)
    for i in range(20):
        add_source(conn, vault, resource_id, environment_id=f"env-{i}")
    with db.connect(database_url) as a, db.connect(database_url) as b:
        first = polling.claim(a, 12, 180)
        second = polling.claim(b, 12, 180)
    assert len(first) == 12 and len(second) == 8
    assert not {s["id"] for s in first} & {s["id"] for s in second}


def test_fingerprints_tell_records_apart_by_time_invocation_and_body():
    base = {"timeUnixNano": "1", "severityText": "INFO", "body": {"stringValue": "x"},
            "attributes": [{"key": "invocationId", "value": {"stringValue": "i"}}]}
    same = {**base, "attributes": list(base["attributes"])}
    assert polling.fingerprint(base) == polling.fingerprint(same)
    for change in ({"timeUnixNano": "2"}, {"body": {"stringValue": "y"}},
                   {"attributes": [{"key": "invocationId", "value": {"stringValue": "j"}}]}):
        assert polling.fingerprint({**base, **change}) != polling.fingerprint(base)


def test_a_call_counts_for_a_period_from_its_completion_not_its_start(redis_url):
    """Judged on the limiter's own log (call times from Redis's clock), not on sleeps: done() moves
    the call's entry to its completion time, and the wait a refused take is told runs from there."""
    import time

    import redis as redis_client

    from broker.ratelimit import KEY, RateLimiter

    connection = redis_client.Redis.from_url(redis_url)
    log = KEY.format(app="app-x")

    def redis_now() -> int:
        seconds, micros = connection.time()
        return seconds * 1_000_000 + micros

    period = 60_000_000  # µs: far longer than anything below, so nothing ages out meanwhile
    limiter = RateLimiter(connection, limit=1, period_seconds=period / 1_000_000)
    wait, call = limiter.take("app-x")
    assert wait == 0 and call
    taken = int(connection.zscore(log, call))
    while redis_now() <= taken + 20_000:  # a slow call: it completes some time after it was taken
        time.sleep(0.005)
    before = redis_now()
    limiter.done("app-x", call)
    after = redis_now()
    completed = int(connection.zscore(log, call))
    assert taken < before <= completed <= after  # re-stamped at its completion, on Redis's clock
    assert connection.zcard(log) == 1

    before = redis_now()
    refused = limiter.try_take("app-x")
    after = redis_now()
    waited = round(refused * 1_000_000)
    # The wait runs a period from the completion (a take-time log would say taken + period - now).
    assert completed + period - after <= waited <= completed + period - before
    assert connection.zcard(log) == 1  # the refused take left no entry


@pytest.mark.parametrize("visible_within, lag_grows", [(60, True), (3, False)])
def test_a_source_whose_records_reach_the_api_late_polls_with_a_longer_lag(
        conn, database_url, redis_url, vault, visible_within, lag_grows):
    """Atlassian documents no ingestion delay. When the sweep finds most records new (the fresh
    window ended before they were visible), the source's lag doubles, up to half the overlap;
    records that show up within seconds leave it at the configured lag. Nothing is lost either way."""
    start = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(days=2)
    clock = SimClock(start)
    fake = ForgeFake(seed=20, page_size=100, clock=clock, rate_limit=10_000)
    fake.add_app(APP, [ENV], EMAIL, TOKEN, records_per_minute=60, late_fraction=0,
                 prompt_delay_seconds=visible_within)
    source_id = add_source(conn, vault, add_resource(conn))
    first = start - timedelta(minutes=5)
    conn.execute("UPDATE sources SET checkpoint = %s", (first,))
    lags = []
    with LocalServer(fake.wsgi()) as server:
        poller = make_poller(database_url, redis_url, server.url, vault, lag=10, overlap=300)
        for _ in range(40):  # one-minute polls
            outcome = poller.poll(claim_one(conn, source_id, clock.now))
            assert outcome.result == "caught-up", outcome
            lags.append(source_row(conn, source_id)["lag_seconds"])
            clock.now += timedelta(minutes=1)
    row = source_row(conn, source_id)
    if lag_grows:
        assert row["lag_seconds"] is not None and 20 <= row["lag_seconds"] <= 80, lags
    else:
        assert set(lags) == {None}
    stored = Counter(map(identity, outbox_records(conn, source_id)))
    assert max(stored.values()) == 1
    expected = fake.records(APP, ENV, first, row["settled_until"], now=clock() + 86400)
    assert len(expected) > 500 and set(map(identity, expected)) <= set(stored)


def test_a_take_is_one_round_trip_to_redis_once_the_apps_log_is_marked_held(redis_url):
    """The marker that Redis still holds the app's call log is checked inside the take's script:
    no EXISTS of its own per Forge call. PostgreSQL is asked only when the marker is missing."""
    import redis as redis_client

    from broker.ratelimit import HELD_KEY, RateLimiter

    class Counting(redis_client.Redis):
        """Redis's client, noting each command it sends (the library's, not ours)."""

        sent: list[str] = []

        def execute_command(self, *args, **options):
            self.sent.append(str(args[0]).upper())
            return super().execute_command(*args, **options)

    connection = Counting.from_url(redis_url)
    asked: list[str] = []
    limiter = RateLimiter(connection, 5, 60, called_recently=lambda app, seconds: asked.append(app) or False)
    assert limiter.try_take("app-x") == 0.0  # a Redis that never held a log: PostgreSQL is asked once
    assert asked == ["app-x"] and connection.exists(HELD_KEY.format(app="app-x"))
    connection.sent.clear()
    for _ in range(3):
        assert limiter.try_take("app-x") == 0.0
    assert connection.sent == ["EVALSHA"] * 3
    assert asked == ["app-x"]
    connection.delete(HELD_KEY.format(app="app-x"))  # lost with the log
    assert limiter.try_take("app-x") == 0.0
    assert asked == ["app-x", "app-x"]
