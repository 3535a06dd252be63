"""README promise (Delivery): an OTLP drain's 429, 502, 503 and 504 are retried with the receiver's
``Retry-After`` honoured, and any other refusal drops the batch, counted — never retried, never lost
silently (OpenTelemetry's OTLP/HTTP retry rules; decision 12).

The real delivery loop against the OTLP receiver fake, which answers a chosen status for the next
request. Waiting is read from the drain's ``next_attempt_at`` in PostgreSQL, never slept through.
"""

from __future__ import annotations

import email.utils
import time
from collections import Counter

import pytest

from broker.vault import Vault
from tests.fakes.receivers import otlp_receiver
from tests.fakes.server import LocalServer
from tests.support.polling import add_resource, add_source
from tests.test_delivery import add_drain, deliver_all, drain_row, forge_record, make_deliverer, store

RETRY_AFTER_SECONDS = 600  # under the 15-minute cap on any Retry-After (broker.forge)
# Without Retry-After a first failure backs off at most 2 s (broker.delivery.backoff): a wait this
# long can only be the receiver's.
HONOURED = RETRY_AFTER_SECONDS - 120


@pytest.fixture
def vault(settings):
    return Vault(settings.fernet_keys)


@pytest.fixture
def world(conn, vault):
    resource_id = add_resource(conn)
    return resource_id, add_source(conn, vault, resource_id)


def bodies(inbox) -> Counter:
    return Counter(log.body.string_value for r in inbox.requests for rl in r["message"].resource_logs
                   for sl in rl.scope_logs for log in sl.log_records)


def seconds_until_next_attempt(conn, drain_id) -> float:
    return float(conn.execute("SELECT extract(epoch FROM next_attempt_at - now()) AS s FROM drains WHERE id = %s",
                              (drain_id,)).fetchone()["s"])


def dropped_activity(conn, drain_id) -> int:
    return conn.execute("SELECT COALESCE(sum(records), 0) AS n FROM activity WHERE subject = %s AND kind = 'dropped'",
                        (drain_id,)).fetchone()["n"]


@pytest.mark.parametrize("retry_after", ["seconds", "http-date"])
@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_a_retryable_status_waits_as_the_receiver_asks_then_delivers_every_record_once(
        conn, vault, database_url, world, status, retry_after):
    resource_id, source_id = world
    header = (str(RETRY_AFTER_SECONDS) if retry_after == "seconds"
              else email.utils.formatdate(time.time() + RETRY_AFTER_SECONDS, usegmt=True))
    app, inbox = otlp_receiver()
    with LocalServer(app) as server:
        drain_id = add_drain(conn, vault, resource_id, "otlp", server.url, {"encoding": "protobuf", "gzip": True})
        store(conn, resource_id, source_id, [forge_record(i) for i in range(5)])
        deliverer = make_deliverer(database_url, vault)
        inbox.fail(status, retry_after=header)

        (refused,) = deliver_all(deliverer, conn)
        row = drain_row(conn, drain_id)
        assert refused.result == "retry"
        assert (row["cursor"], row["delivered"], row["dropped"], row["retried"]) == (0, 0, 0, 1)
        assert f"HTTP {status}" in row["last_error"]
        assert HONOURED < seconds_until_next_attempt(conn, drain_id) <= RETRY_AFTER_SECONDS
        assert deliver_all(deliverer, conn) == []  # it waits: no job claims it meanwhile
        assert inbox.requests == []

        conn.execute("UPDATE drains SET next_attempt_at = now() WHERE id = %s", (drain_id,))  # the wait is over
        (retried,) = deliver_all(deliverer, conn)
    assert retried.result == "caught-up"
    assert bodies(inbox) == Counter(f"record {i} ✓" for i in range(5))
    row = drain_row(conn, drain_id)
    assert (row["delivered"], row["dropped"], row["consecutive_failures"]) == (5, 0, 0)
    assert dropped_activity(conn, drain_id) == 0


def test_without_retry_after_a_retryable_status_backs_off_briefly_and_keeps_the_batch(conn, vault, database_url,
                                                                                     world):
    resource_id, source_id = world
    app, inbox = otlp_receiver()
    with LocalServer(app) as server:
        drain_id = add_drain(conn, vault, resource_id, "otlp", server.url, {"encoding": "json", "gzip": False})
        store(conn, resource_id, source_id, [forge_record(i) for i in range(3)])
        inbox.fail(503)
        (refused,) = deliver_all(make_deliverer(database_url, vault), conn)
    row = drain_row(conn, drain_id)
    assert refused.result == "retry" and (row["cursor"], row["dropped"], row["retried"]) == (0, 0, 1)
    assert seconds_until_next_attempt(conn, drain_id) <= 2  # the broker's own back-off, not a long wait


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 409, 410, 500, 501, 505])
def test_any_other_status_drops_the_batch_counted_and_delivery_goes_on(conn, vault, database_url, world, status):
    resource_id, source_id = world
    app, inbox = otlp_receiver()
    with LocalServer(app) as server:
        drain_id = add_drain(conn, vault, resource_id, "otlp", server.url, {"encoding": "protobuf", "gzip": False})
        store(conn, resource_id, source_id, [forge_record(i, f"refused {i}") for i in range(4)])
        last = store(conn, resource_id, source_id, [forge_record(10 + i, f"accepted {i}") for i in range(6)])
        inbox.fail(status, retry_after="60")  # a Retry-After on a refusal changes nothing
        (outcome,) = deliver_all(make_deliverer(database_url, vault), conn)
    assert outcome.result == "caught-up" and (outcome.dropped, outcome.delivered) == (4, 6)
    assert bodies(inbox) == Counter(f"accepted {i}" for i in range(6))
    row = drain_row(conn, drain_id)
    assert (row["cursor"], row["delivered"], row["dropped"], row["retried"]) == (last, 6, 4, 0)
    assert f"HTTP {status}" in row["last_error"]
    assert dropped_activity(conn, drain_id) == 4  # what the dashboard's chart and /metrics count
