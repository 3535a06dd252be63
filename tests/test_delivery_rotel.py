"""OTLP delivery to a real collector: the broker's delivery code sends to rotel on loopback.

rotel (``tests/fakes/rotel.py``) decodes each request itself and exports what
it decoded onward as protobuf, where the records are read back; so every check
here is on rotel's reading of the broker's JSON or protobuf, gzip or not.
"""

from __future__ import annotations

import gzip
import os
import time
from collections import Counter

import orjson
import pytest
import requests

from broker.formats import otlp
from tests.fakes.rotel import Received, rotel_receiver
from tests.support.markers import rotel_after_marker
from tests.support.polling import APP, ENV
from tests.test_delivery import (add_drain, deliver_all, drain_row, forge_record, make_deliverer,  # noqa: F401
                                 store, vault, world)

# OTLP severity numbers by text (the OTel log data model), written out here rather than
# taken from broker.formats.severity so a wrong mapping there cannot agree with itself.
SEVERITY = {"DEBUG": 5, "INFO": 9, "WARN": 13, "ERROR": 17, "FATAL": 21}


def record(i: int, severity: str = "INFO", body: str | None = None) -> dict:
    return {**forge_record(i, body), "severityText": severity}


def watch(deliverer) -> list[dict]:
    """What the broker's own HTTP session sent and what rotel answered (observed, not altered)."""
    exchanges: list[dict] = []

    def hook(response: requests.Response, *args, **kwargs):
        sent = response.request
        exchanges.append({"url": sent.url, "headers": dict(sent.headers), "body": sent.body,
                          "status": response.status_code, "reply_type": response.headers.get("Content-Type"),
                          "reply": response.content})

    deliverer.wire.session_for().hooks["response"].append(hook)
    return exchanges


def by_invocation(received: list[Received]) -> dict[str, Received]:
    keyed = {r.attributes["faas.invocation_id"]: r for r in received}
    assert len(keyed) == len(received), "rotel exported some record twice"
    return keyed


def wire_json(exchange: dict) -> dict:
    body = exchange["body"]
    if exchange["headers"].get("Content-Encoding") == "gzip":
        body = gzip.decompress(body)
    return orjson.loads(body)


@pytest.mark.parametrize("use_gzip", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("encoding", ["json", "protobuf"])
def test_rotel_accepts_every_record_with_its_content(conn, vault, database_url, world, encoding, use_gzip):
    resource_id, source_id = world
    awkward = {1200: "", 1201: "line one\nline two\n\tindented", 1202: "Grüße, 日本語, emoji 🚀",
               1203: '{"json": "as text", "n": 1}', 1204: "x" * 20_000}
    severities = ["DEBUG", "INFO", "WARN", "ERROR", "FATAL"]
    first = [record(i) for i in range(1200)]  # more than one request's worth (≤ 1,000 records each)
    second = [record(i, severities[i % 5], awkward.get(i)) for i in range(1200, 1500)]
    stored = first + second
    with rotel_receiver() as rotel:
        drain_id = add_drain(conn, vault, resource_id, "otlp", rotel.url, {"encoding": encoding, "gzip": use_gzip})
        batches = [store(conn, resource_id, source_id, first), store(conn, resource_id, source_id, second)]
        deliverer = make_deliverer(database_url, vault)
        exchanges = watch(deliverer)
        before = time.time_ns()
        outcomes = deliver_all(deliverer, conn)
        after = time.time_ns()
        (outcome,) = outcomes
        assert outcome.result == "caught-up", outcome.errors
        assert (outcome.delivered, outcome.dropped, outcome.rejected, outcome.requests) == (1500, 0, 0, 3), \
            (outcome.errors, rotel.output())
        rotel.wait_for_records(len(stored), settle=0)
        received = rotel_after_marker(rotel)  # a duplicate would have come out before the marker
        assert "Failed to decode" not in rotel.output()

    row = drain_row(conn, drain_id)
    assert row["delivered"] == len(stored) and row["cursor"] == batches[-1]
    assert (row["dropped"], row["rejected"], row["retried"], row["last_error"]) == (0, 0, 0, None)

    # what went over the wire, and rotel's answers
    content_type = "application/json" if encoding == "json" else "application/x-protobuf"
    assert len(exchanges) == 3
    for exchange in exchanges:
        assert exchange["url"] == rotel.url + "/v1/logs"
        assert exchange["status"] == 200, exchange["reply"]
        assert exchange["headers"]["Content-Type"] == content_type
        assert exchange["headers"].get("Content-Encoding") == ("gzip" if use_gzip else None)
        assert exchange["reply_type"] == content_type  # rotel answers in the request's encoding

    # what rotel decoded: every record once, with its content
    assert len(received) == len(stored)
    token = row["token"]
    got = by_invocation(received)
    assert set(got) == {f"inv-{i}" for i in range(1500)}
    for i, sent in enumerate(stored):
        r = got[f"inv-{i}"]
        log = r.record
        assert log.body.string_value == sent["body"]["stringValue"], i
        assert log.severity_text == sent["severityText"]
        assert log.severity_number == SEVERITY[sent["severityText"]]
        assert log.time_unix_nano == 1_763_700_000_000_000_000 + i * 1_000_000
        assert before <= log.observed_time_unix_nano <= after
        assert log.trace_id == (bytes.fromhex(f"{i:032x}") if i else b"")
        assert log.span_id == bytes.fromhex(f"{i + 1:016x}")
        attributes = r.attributes
        assert attributes["forge.function.key"] == "run"
        assert attributes["forge.severity_number"] == 30  # Forge's pino number, kept as an int
        assert r.resource["forgedrain.drain.token"] == token
        assert r.resource["service.name"] == "acme-app"
        assert r.resource["service.namespace"] == "atlassian-forge"
        assert (r.resource["forge.app.id"], r.resource["forge.environment.id"]) == (APP, ENV)
        assert (r.scope_name, r.scope_version) == ("forgedrain", "1")
    assert Counter(log.record.severity_number for log in received) == Counter(
        {9: 1200 + 60, 5: 60, 13: 60, 17: 60, 21: 60})


@pytest.mark.parametrize("use_gzip", [False, True], ids=["plain", "gzip"])
def test_json_hex_ids_reach_rotel_as_the_right_bytes(conn, vault, database_url, world, use_gzip):
    """OTLP/JSON ids are hex, and proto3 JSON's base64 reading of the same text is wrong bytes.

    Digits-only ids are valid base64 as well as hex (the trap: json_format.Parse reads
    32 hex digits as 24 bytes without complaint); upper case, a 64-bit B3 trace id,
    an all-zero id and a non-hex id are what Forge may hand over.
    """
    resource_id, source_id = world
    ids = {  # invocation → (Forge traceId, Forge spanId, expected trace bytes, expected span bytes)
        "digits": ("12345678901234567890123456789012", "1234567890123456",
                   bytes.fromhex("12345678901234567890123456789012"), bytes.fromhex("1234567890123456")),
        "upper": ("4BF92F3577B34DA6A3CE929D0E0E4736", "00F067AA0BA902B7",
                  bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736"), bytes.fromhex("00f067aa0ba902b7")),
        "b3": ("a3ce929d0e0e4736", "b7ad6b7169203331",
               bytes(8) + bytes.fromhex("a3ce929d0e0e4736"), bytes.fromhex("b7ad6b7169203331")),
        "zero": ("0" * 32, "0" * 16, b"", b""),
        "not-hex": ("not-a-trace-id", "span?", b"", b""),
        "none": ("", "", b"", b""),
    }
    records = []
    for n, (invocation, (trace, span, _, _)) in enumerate(ids.items()):
        record = forge_record(n + 1, f"ids {invocation}")
        record.update(traceId=trace, spanId=span)
        record["attributes"][0]["value"]["stringValue"] = invocation
        records.append(record)
    with rotel_receiver() as rotel:
        drain_id = add_drain(conn, vault, resource_id, "otlp", rotel.url, {"encoding": "json", "gzip": use_gzip})
        batch = store(conn, resource_id, source_id, records)
        deliverer = make_deliverer(database_url, vault)
        exchanges = watch(deliverer)
        (outcome,) = deliver_all(deliverer, conn)
        assert outcome.result == "caught-up", outcome.errors
        assert (outcome.delivered, outcome.dropped) == (len(records), 0), (outcome.errors, rotel.output())
        rotel.wait_for_records(len(records), settle=0)
        received = rotel_after_marker(rotel)

        # the request crossed the trap: hex on the wire, ids that base64 would also accept
        (exchange,) = exchanges
        assert exchange["status"] == 200
        sent = wire_json(exchange)
        wire_ids = {log["attributes"][0]["value"]["stringValue"]: (log.get("traceId"), log.get("spanId"))
                    for rl in sent["resourceLogs"] for sl in rl["scopeLogs"] for log in sl["logRecords"]}
        assert wire_ids["digits"] == ("12345678901234567890123456789012", "1234567890123456")
        assert wire_ids["b3"] == ("0" * 16 + "a3ce929d0e0e4736", "b7ad6b7169203331")

        # rotel is a strict judge: the same request with proto3-JSON (base64) ids is refused whole
        base64_ids = requests.post(rotel.url + "/v1/logs", data=orjson.dumps(otlp.hex_ids_to_base64(sent)),
                                   headers={"Content-Type": "application/json"}, timeout=10)
        assert base64_ids.status_code == 400
        assert len(rotel_after_marker(rotel)) == len(received)  # nothing of it came out before the marker
        assert "Failed to decode OTLP HTTP/JSON request" in rotel.output()

    row = drain_row(conn, drain_id)
    assert (row["delivered"], row["cursor"], row["dropped"]) == (len(records), batch, 0)
    got = by_invocation(received)
    assert set(got) == set(ids)
    for invocation, (trace, span, trace_bytes, span_bytes) in ids.items():
        log = got[invocation].record
        assert (log.trace_id, log.span_id) == (trace_bytes, span_bytes), invocation
        assert log.body.string_value == f"ids {invocation}"
        attributes = got[invocation].attributes
        # an id that is not a valid one travels as an attribute instead, never as garbage bytes
        assert attributes.get("forge.trace_id") == (trace if trace and not trace_bytes else None), invocation
        assert attributes.get("forge.span_id") == (span if span and not span_bytes else None), invocation
    assert len(got["digits"].record.trace_id) == 16  # not the 24 bytes base64 would make of it
    assert all(got[i].resource["forgedrain.drain.token"] == row["token"] for i in got)


def test_the_rotel_helper_stops_the_collector_and_frees_its_port():
    with rotel_receiver() as rotel:
        pid, url = rotel.process.pid, rotel.url
        assert requests.get(url + "/", timeout=5).status_code == 404  # up: it serves OTLP paths only
        assert rotel.process.poll() is None
    assert rotel.process.returncode == 0  # SIGTERM is a clean shutdown: no kill was needed
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped, not a zombie or a stray
    with pytest.raises(requests.ConnectionError):
        requests.get(url + "/", timeout=2)
