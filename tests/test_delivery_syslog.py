"""Syslog drains against a real rsyslog: strict RFC 5424, octet-counted, over TLS (and TCP)."""

from __future__ import annotations

import contextlib
import dataclasses
import ssl

import pytest

from broker import db, delivery, drains
from broker.senders import Wire
from broker.formats import syslog5424
from broker.sinks import http, syslog
from broker.validation import InputError
from tests.fakes.receivers import logplex_receiver
from tests.fakes.rsyslog import Rsyslog
from tests.fakes.server import LocalServer
from tests.support.markers import syslog_after_marker
from tests.test_delivery import add_drain, deliver_all, drain_row, forge_record, store, vault, world  # noqa: F401


@pytest.fixture
def rsyslog(tmp_path):
    with Rsyslog(tmp_path) as receiver:
        yield receiver


def deliverer_for(database_url, vault, context: ssl.SSLContext | None) -> delivery.Deliverer:
    @contextlib.contextmanager
    def connect():
        with db.connect(database_url, "forgedrain-tests") as conn:
            yield conn

    session = http.new_session(allow_private=True)
    return delivery.Deliverer(connect, Wire(lambda: session, True, context), vault)


def trusting(receiver: Rsyslog) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(receiver.cert))


def records_with_metadata(start: int, count: int) -> list[dict]:
    out = []
    for i in range(start, start + count):
        record = forge_record(i, body=f"record {i} ✓\n  at line two\t\"quoted\" ]" if i % 3 == 0 else None)
        record["attributes"].append({"key": "appVersion", "value": {"stringValue": f'2.{i}"]\\'}})
        out.append(record)
    return out


def test_syslog_over_tls_delivers_every_record_whole_in_strict_5424(conn, vault, database_url, world, rsyslog):
    resource_id, source_id = world
    drain_id = add_drain(conn, vault, resource_id, "syslog", rsyslog.tls_url, {"sd_id": "forge@32473"})
    stored = [records_with_metadata(b * 100, 100) for b in range(3)]
    batches = [store(conn, resource_id, source_id, records) for records in stored]
    (outcome,) = deliver_all(deliverer_for(database_url, vault, trusting(rsyslog)), conn)
    assert outcome.result == "caught-up" and outcome.delivered == 300 and outcome.requests == 1
    rsyslog.wait_for(300)
    messages = syslog_after_marker(rsyslog)  # a late duplicate would have come out before the marker
    assert len(messages) == 300 and {m["input"] for m in messages} == {"tls"}
    token = drain_row(conn, drain_id)["token"]
    expected = {r["body"]["stringValue"]: r for records in stored for r in records}
    assert len(expected) == 300  # every body differs: equal sorted lists mean each record exactly once
    assert sorted(m["msg"] for m in messages) == sorted(expected)  # multi-line bodies arrive whole
    for message in messages:
        record = expected[message["msg"]]
        invocation = record["attributes"][0]["value"]["stringValue"]
        version = record["attributes"][-1]["value"]["stringValue"]
        assert (message["pri"], message["hostname"], message["app"], message["procid"], message["msgid"]) == (
            "190", token, "acme-app", "run", "-")
        assert message["timestamp"].endswith("Z") and len(message["timestamp"].split(".")[1]) == 7
        # rsyslog's own structured-data parser reads back the escaped values exactly
        params = message["params"]["forge@32473"]
        assert params["invocationId"] == invocation and params["appVersion"] == version
    row = drain_row(conn, drain_id)
    assert row["cursor"] == batches[-1] and row["delivered"] == 300 and row["consecutive_failures"] == 0


def test_plain_tcp_is_octet_counted_too_but_only_for_private_drains(conn, vault, database_url, world, rsyslog):
    resource_id, source_id = world
    add_drain(conn, vault, resource_id, "syslog", rsyslog.tcp_url)
    store(conn, resource_id, source_id, [forge_record(i) for i in range(50)])
    (outcome,) = deliver_all(deliverer_for(database_url, vault, None), conn)
    assert outcome.result == "caught-up"
    rsyslog.wait_for(50)
    messages = syslog_after_marker(rsyslog, tls=False)  # the same input: a late duplicate came out before it
    assert sorted(m["msg"] for m in messages) == sorted(f"record {i} ✓" for i in range(50))
    assert {m["input"] for m in messages} == {"tcp"} and {m["sd"] for m in messages} == {"-"}
    with pytest.raises(InputError):
        drains.validate({"kind": "syslog", "url": rsyslog.tcp_url}, allow_private=False)
    assert syslog.send(rsyslog.tcp_url, [b"1 x"], allow_private=False).outcome == "drop"


def test_a_long_body_is_split_into_frames_rsyslog_accepts_at_its_defaults(conn, vault, database_url, world,
                                                                           rsyslog):
    resource_id, source_id = world
    add_drain(conn, vault, resource_id, "syslog", rsyslog.tls_url)
    body = "".join(f"{i:05d}é" for i in range(5000))  # 35,000 bytes
    store(conn, resource_id, source_id, [forge_record(1, body=body)])
    deliver_all(deliverer_for(database_url, vault, trusting(rsyslog)), conn)
    rsyslog.wait_for(5)
    messages = syslog_after_marker(rsyslog)  # a sixth frame (a piece sent twice) would have come out before
    assert len(messages) == 5
    assert all(len(m["msg"].encode()) < syslog5424.MAX_MESSAGE_BYTES for m in messages)
    assert "".join(m["msg"] for m in messages) == body


def test_an_untrusted_certificate_is_a_retry_with_the_reason_and_nothing_sent(conn, vault, database_url, world,
                                                                              rsyslog):
    resource_id, source_id = world
    drain_id = add_drain(conn, vault, resource_id, "syslog", rsyslog.tls_url)
    store(conn, resource_id, source_id, [forge_record(i) for i in range(5)])
    (outcome,) = deliver_all(deliverer_for(database_url, vault, syslog.default_context()), conn)
    assert outcome.result == "retry"
    row = drain_row(conn, drain_id)
    assert row["cursor"] == 0 and row["retried"] == 1
    assert "certificate" in row["last_error"] and "self-signed" in row["last_error"]
    assert syslog_after_marker(rsyslog) == []  # a frame sent after the attempt came out alone


def test_a_certificate_for_another_host_is_refused(conn, vault, database_url, world, tmp_path):
    resource_id, source_id = world
    with Rsyslog(tmp_path, names=("logs.example.test",)) as other:
        drain_id = add_drain(conn, vault, resource_id, "syslog", other.tls_url)
        store(conn, resource_id, source_id, [forge_record(1)])
        (outcome,) = deliver_all(deliverer_for(database_url, vault, trusting(other)), conn)
        assert outcome.result == "retry"
        assert "certificate" in drain_row(conn, drain_id)["last_error"]
        assert "localhost" in drain_row(conn, drain_id)["last_error"]
        assert syslog_after_marker(other) == []  # a frame sent after the attempt came out alone


def test_a_drain_down_for_long_loses_nothing_and_holds_back_no_other(conn, vault, database_url, world, tmp_path):
    resource_id, source_id = world
    receiver = Rsyslog(tmp_path)  # not started: the drain is down
    syslog_id = add_drain(conn, vault, resource_id, "syslog", receiver.tls_url)
    app, inbox = logplex_receiver()
    deliverer = deliverer_for(database_url, vault, trusting(receiver))
    with LocalServer(app) as server:
        add_drain(conn, vault, resource_id, "logplex", f"http://127.0.0.1:{server.port}/")
        for attempt in range(6):
            store(conn, resource_id, source_id, [forge_record(attempt * 10 + i) for i in range(10)])
            outcomes = {str(o.drain_id): o.result for o in deliver_all(deliverer, conn)}
            assert outcomes[str(syslog_id)] == "retry"
            conn.execute("UPDATE drains SET next_attempt_at = now() WHERE id = %s", (syslog_id,))
        assert sum(len(r["events"]) for r in inbox.requests) == 60  # the other drain kept up all along
    row = drain_row(conn, syslog_id)
    assert row["cursor"] == 0 and row["retried"] == 6 and row["consecutive_failures"] == 6
    assert "connect" in row["last_error"]
    with receiver:
        (outcome,) = deliver_all(deliverer, conn)
        assert outcome.result == "caught-up"
        receiver.wait_for(60)
        messages = syslog_after_marker(receiver)  # a late duplicate would have come out before the marker
    assert sorted(m["msg"] for m in messages) == sorted(f"record {i} ✓" for i in range(60))
    row = drain_row(conn, syslog_id)
    assert row["delivered"] == 60 and row["consecutive_failures"] == 0


def test_a_private_destination_is_refused_before_connecting(conn, vault, database_url, world, rsyslog):
    resource_id, source_id = world
    drain_id = add_drain(conn, vault, resource_id, "syslog", rsyslog.tls_url)
    store(conn, resource_id, source_id, [forge_record(1)])
    guarded = deliverer_for(database_url, vault, trusting(rsyslog))
    guarded.wire = dataclasses.replace(guarded.wire, allow_private=False)
    (outcome,) = deliver_all(guarded, conn)
    row = drain_row(conn, drain_id)
    assert outcome.result == "retry" and row["dropped"] == 0 and row["cursor"] == 0
    assert "destination refused" in row["last_error"]
    assert syslog_after_marker(rsyslog) == []  # a frame sent after the attempt came out alone
