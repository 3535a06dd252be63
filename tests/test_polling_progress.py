"""Polling progresses whatever the App logs API's page size, record order and cursor lifetime.

Atlassian documents none of them (research otlp-syslog-forge.md §4.2), so each
test runs the real poller against the Forge fake with its awkward switches on,
with time compressed: the fake's clock runs ``SPEED`` times faster than the
wall clock, so its 60-second rate-limit period and its cursor lifetimes pass
in a fraction of the time, and the broker's budget (25 calls per period) is
compressed the same way. Waits are on conditions with deadlines, never fixed
sleeps; nothing asserts on timings.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest

from broker import polling
from broker.vault import Vault
from tests.fakes.forge import ForgeFake
from tests.fakes.server import LocalServer
from tests.support.polling import (APP, BUDGET, EMAIL, ENV, PERIOD, TOKEN, FastClock, add_resource, add_source,
                                   identity, make_poller, outbox_records, source_row)

@pytest.fixture
def vault(settings):
    return Vault(settings.fernet_keys)


def drive(conn, poller, source_id, deadline_seconds: float = 90) -> list[tuple]:
    """Poll the source as the poll job would, whenever it is due, until a poll finds it caught up.

    Returns (outcome, checkpoint before, checkpoint after) per poll.
    """
    polls = []
    deadline = time.monotonic() + deadline_seconds
    while time.monotonic() < deadline:
        claimed = polling.claim(conn, 1, 180)
        if not claimed:
            time.sleep(0.02)  # not due yet: it yielded for budget
            continue
        before = claimed[0]["checkpoint"]
        outcome = poller.poll(claimed[0])
        polls.append((outcome, before, source_row(conn, source_id)["checkpoint"]))
        if outcome.result == "caught-up":
            return polls
        assert outcome.result in ("no-budget", "time-box"), outcome
    raise AssertionError(f"the source did not catch up in {deadline_seconds} s: {polls[-3:]}")


def assert_complete_and_once(conn, fake: ForgeFake, source_id, first: datetime, final: datetime) -> int:
    stored = outbox_records(conn, source_id)
    counts = Counter(map(identity, stored))
    assert counts and max(counts.values()) == 1, "a record was stored twice"
    expected = Counter(map(identity, fake.records(APP, ENV, first, final, now=fake.clock() + 86_400)))
    in_range = Counter(identity(r) for r in stored if first <= polling.record_time(r, first) < final)
    missing = set(expected) - set(in_range)
    lost = sorted(polling.record_time(r, first).isoformat() for r in fake.records(
        APP, ENV, first, final, now=fake.clock() + 86_400) if identity(r) in missing)
    assert not missing, f"{len(missing)} of {len(expected)} records were lost: {lost[:5]}, checkpoint {final}"
    assert in_range == expected, "stored a record the API never served"
    return len(expected)


def start_source(conn, vault, backlog: timedelta):
    source_id = add_source(conn, vault, add_resource(conn), checkpoint_ago=backlog)
    return source_id, source_row(conn, source_id)["checkpoint"]


@pytest.mark.parametrize("page_size", [20, 100])
@pytest.mark.parametrize("cursor_ttl", [30, 60, 900])
@pytest.mark.parametrize("order", ["oldest", "newest", "shuffled"])
def test_a_two_hour_backlog_arrives_complete_and_once_whatever_the_pages(
        conn, database_url, redis_url, vault, order, cursor_ttl, page_size):
    clock = FastClock()
    fake = ForgeFake(seed=40, page_size=page_size, order=order, cursor_ttl=cursor_ttl, clock=clock,
                     retry_after=True)
    # Dense enough that every window takes many pages: 0.6 pages per minute of log.
    fake.add_app(APP, [ENV], EMAIL, TOKEN, records_per_minute=0.6 * page_size, late_fraction=0)
    source_id, first = start_source(conn, vault, timedelta(hours=2))
    with LocalServer(fake.wsgi()) as server:
        poller = make_poller(database_url, redis_url, server.url, vault, limit=BUDGET, period=PERIOD,
                             lag=10)
        polls = drive(conn, poller, source_id)
    row = source_row(conn, source_id)
    assert datetime.now(timezone.utc) - row["checkpoint"] < timedelta(minutes=2)
    count = assert_complete_and_once(conn, fake, source_id, first, row["checkpoint"])
    assert count > 100 * 0.6 * page_size
    assert not [c for c in fake.calls if c.status == 429], "the broker caused a 429"
    # Every poll that got budget moved the checkpoint, cut a window that could not finish, or
    # ended for budget or time with its window open; and no two such polls came in a row.
    budgeted = [(o, b, a) for o, b, a in polls if o.calls]
    stalled = [a <= b and not o.shrunk for o, b, a in budgeted]
    assert all(o.result in ("no-budget", "time-box") for (o, _, _), s in zip(budgeted, stalled) if s)
    assert not any(x and y for x, y in zip(stalled, stalled[1:])), budgeted
    assert row["density_per_minute"] == pytest.approx(0.6 * page_size, rel=0.5)
    assert row["page_records"] == page_size
    assert row["over_capacity_since"] is None


def test_empty_pages_that_carry_a_cursor_lose_nothing(conn, database_url, redis_url, vault):
    clock = FastClock()
    fake = ForgeFake(seed=46, page_size=20, order="newest", cursor_ttl=30, empty_pages=3, clock=clock,
                     retry_after=True)
    fake.add_app(APP, [ENV], EMAIL, TOKEN, records_per_minute=15, late_fraction=0)
    source_id, first = start_source(conn, vault, timedelta(hours=1))
    with LocalServer(fake.wsgi()) as server:
        poller = make_poller(database_url, redis_url, server.url, vault, limit=BUDGET, period=PERIOD, lag=10)
        drive(conn, poller, source_id)
    row = source_row(conn, source_id)
    assert_complete_and_once(conn, fake, source_id, first, row["checkpoint"])
    assert row["page_records"] == 20  # an empty page with a cursor does not pass for the page size
    assert not [c for c in fake.calls if c.status == 429]


def test_the_busy_app_that_never_arrived_now_does(conn, database_url, redis_url, vault):
    """The measured case: ~60 records a minute, 50-record pages, newest first, cursors live a minute."""
    clock = FastClock()
    fake = ForgeFake(seed=41, page_size=50, order="newest", cursor_ttl=60, clock=clock, retry_after=True)
    fake.add_app(APP, [ENV], EMAIL, TOKEN, records_per_minute=60, late_fraction=0)
    source_id, first = start_source(conn, vault, timedelta(hours=1))
    with LocalServer(fake.wsgi()) as server:
        poller = make_poller(database_url, redis_url, server.url, vault, limit=BUDGET, period=PERIOD, lag=10)
        polls = drive(conn, poller, source_id)
    assert_complete_and_once(conn, fake, source_id, first, source_row(conn, source_id)["checkpoint"])
    calls = sum(o.calls for o, _, _ in polls)
    stored = sum(o.stored for o, _, _ in polls)
    assert stored / (calls * 50) > 0.6, (stored, calls)  # not spent re-reading the same pages


@pytest.mark.parametrize("stale_status", [400, 410, 500])
def test_a_window_whose_cursor_dies_shrinks_and_keeps_what_it_read(
        conn, database_url, redis_url, vault, stale_status):
    """A quiet app turns busy: its estimate says an hour fits a page; the window needs ~150.

    Its cursor dies after 30 s or one minute's budget of pages (``cursor_pages``), whichever comes
    first: with time compressed, a loaded machine answers so slowly that the budget frees as fast
    as it is spent and a 30 s cursor alone would live to the window's end."""
    clock = FastClock()
    fake = ForgeFake(seed=42, page_size=20, order="newest", cursor_ttl=30, cursor_pages=BUDGET,
                     stale_cursor_status=stale_status, clock=clock, retry_after=True)
    fake.add_app(APP, [ENV], EMAIL, TOKEN, records_per_minute=60, late_fraction=0)
    source_id, first = start_source(conn, vault, timedelta(minutes=50))
    conn.execute("UPDATE sources SET density_per_minute = 1, page_records = 20 WHERE id = %s", (source_id,))
    with LocalServer(fake.wsgi()) as server:
        poller = make_poller(database_url, redis_url, server.url, vault, limit=BUDGET, period=PERIOD, lag=10)
        polls = drive(conn, poller, source_id, deadline_seconds=120)
    assert sum(o.shrunk for o, _, _ in polls) >= 1
    row = source_row(conn, source_id)
    assert_complete_and_once(conn, fake, source_id, first, row["checkpoint"])
    assert row["density_per_minute"] > 20  # learnt from the pages it read
    assert row["state"] == "active" and row["pause_reason"] is None
    assert not [c for c in fake.calls if c.status == 429]


def test_an_app_beyond_capacity_is_shown_over_capacity_and_loses_nothing(conn, database_url, redis_url, vault):
    fake = ForgeFake(seed=43, page_size=20, order="shuffled", rate_limit=30, rate_period=60, retry_after=True)
    fake.add_app(APP, [ENV], EMAIL, TOKEN, records_per_minute=1500, late_fraction=0)
    source_id, first = start_source(conn, vault, timedelta(hours=3))
    # As measured by earlier windows: 1,500 records a minute, 20 a page.
    conn.execute("UPDATE sources SET density_per_minute = 1500, page_records = 20 WHERE id = %s", (source_id,))
    with LocalServer(fake.wsgi()) as server:
        poller = make_poller(database_url, redis_url, server.url, vault, limit=BUDGET, period=60, lag=10)
        claimed = polling.claim(conn, 1, 180)
        outcome = poller.poll(claimed[0])
    assert outcome.result == "no-budget" and outcome.windows >= 1
    row = source_row(conn, source_id)
    assert row["over_capacity_since"] is not None
    assert row["capacity_per_minute"] == pytest.approx(BUDGET * 20)  # 25 calls a minute x 20 records
    assert 1000 < row["density_per_minute"] < 2200
    assert row["checkpoint"] > first
    assert_complete_and_once(conn, fake, source_id, first, row["checkpoint"])
    assert not [c for c in fake.calls if c.status == 429]


def test_a_source_that_catches_up_clears_over_capacity(conn, database_url, redis_url, vault):
    fake = ForgeFake(seed=44, page_size=100, rate_limit=10_000)
    fake.add_app(APP, [ENV], EMAIL, TOKEN, records_per_minute=10, late_fraction=0)
    source_id, _ = start_source(conn, vault, timedelta(hours=1))
    conn.execute("UPDATE sources SET over_capacity_since = now() - interval '1 hour', density_per_minute = 10, "
                 "page_records = 100, capacity_per_minute = 5 WHERE id = %s", (source_id,))
    with LocalServer(fake.wsgi()) as server:
        poller = make_poller(database_url, redis_url, server.url, vault)
        outcome = poller.poll(polling.claim(conn, 1, 180)[0])
    assert outcome.result == "caught-up"
    row = source_row(conn, source_id)
    assert row["over_capacity_since"] is None and row["capacity_per_minute"] == pytest.approx(10_000 * 100)


AWKWARD = {
    "lone surrogate in the body": '{"timeUnixNano":"%d","severityText":"INFO","body":{"stringValue":"half \\ud800 a pair"}}',
    "lone surrogate in an attribute": '{"timeUnixNano":"%d","severityText":"WARN","body":{"stringValue":"ok"},'
                                      '"attributes":[{"key":"user","value":{"stringValue":"\\udfff"}}]}',
    "severityNumber beyond float range": '{"timeUnixNano":"%d","severityNumber":1e400,"severityText":"ERROR",'
                                         '"body":{"stringValue":"huge"}}',
    "doubleValue beyond float range": '{"timeUnixNano":"%d","severityText":"INFO","body":{"stringValue":"d"},'
                                      '"attributes":[{"key":"ratio","value":{"doubleValue":1e400}}]}',
    "a bare string body": '{"timeUnixNano":"%d","severityText":"INFO","body":"plain text body"}',
    "a structured body": '{"timeUnixNano":"%d","severityText":"INFO","body":{"kvlistValue":{"values":'
                         '[{"key":"order","value":{"intValue":"42"}},{"key":"paid","value":{"boolValue":true}}]}}}',
    "typed attributes": '{"timeUnixNano":"%d","severityText":"DEBUG","body":{"stringValue":"t"},"attributes":'
                        '[{"key":"n","value":{"intValue":"7"}},{"key":"tags","value":{"arrayValue":{"values":'
                        '[{"stringValue":"a"},{"stringValue":"b"}]}}}]}',
    "not an object": '42',
}


def test_a_page_with_every_undecodable_case_completes_its_window(conn, database_url, redis_url, vault):
    fake = ForgeFake(seed=45, page_size=5, rate_limit=10_000)
    fake.add_app(APP, [ENV], EMAIL, TOKEN, records_per_minute=2, late_fraction=0)
    source_id, first = start_source(conn, vault, timedelta(minutes=40))
    base = first + timedelta(minutes=5)
    for n, raw in enumerate(AWKWARD.values()):
        ts = base + timedelta(seconds=n)
        text = raw % (int(ts.timestamp() * 1000) * 1_000_000) if "%d" in raw else raw
        fake.inject_raw(APP, ENV, ts, text, visible_at=0)
    with LocalServer(fake.wsgi()) as server:
        poller = make_poller(database_url, redis_url, server.url, vault)
        outcome = poller.poll(polling.claim(conn, 1, 180)[0])
    assert outcome.result == "caught-up", outcome
    row = source_row(conn, source_id)
    assert row["checkpoint"] > base + timedelta(minutes=5)
    assert row["consecutive_failures"] == 0 and row["state"] == "active"
    stored = outbox_records(conn, source_id)
    bodies = [r.get("body") for r in stored]
    # Every record that can be read with repair is stored; only the non-object is unreadable.
    assert row["unreadable"] == 1 and row["unreadable_sample"]
    assert len(stored) == len(fake.records(APP, ENV, first, row["checkpoint"], now=fake.clock() + 86_400)) - 1
    assert {"kvlistValue": {"values": [{"key": "order", "value": {"intValue": "42"}},
                                       {"key": "paid", "value": {"boolValue": True}}]}} in bodies
    assert {"stringValue": "plain text body"} in bodies
    assert any(b == {"stringValue": "half \ufffd a pair"} for b in bodies)
