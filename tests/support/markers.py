"""Positive markers: how a test tells that something did NOT arrive at a receiver.

A receiver writes asynchronously (rsyslog to its file, rotel exporting onward), so "nothing
arrived" seen after a short sleep only says that nothing arrived yet. Instead the test sends a
marker of its own after the thing it watches, through the same receiver, and waits (with a
deadline) until the marker comes out: whatever went in before it has had its chance to come out
too, and what came out besides the marker is what the test judges.
"""

from __future__ import annotations

import socket
import ssl
import time
import uuid

import orjson

DEADLINE_SECONDS = 30.0


def _wait(found, describe, deadline_seconds: float):
    deadline = time.monotonic() + deadline_seconds
    while True:
        result = found()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"the marker did not come out within {deadline_seconds} s: {describe()}")
        time.sleep(0.02)


# --- rsyslog (tests.fakes.rsyslog.Rsyslog) ---------------------------------------------------

def syslog_after_marker(receiver, *, tls: bool = True, deadline_seconds: float = DEADLINE_SECONDS) -> list[dict]:
    """Send one RFC 5424 frame to ``receiver`` (over its TLS input, or plain TCP), wait until
    rsyslog has written it, and return every message written besides the markers."""
    text = f"marker-{uuid.uuid4().hex}"
    message = f"<14>1 - marker-host marker - - - {text}".encode()
    frame = str(len(message)).encode() + b" " + message
    port = receiver.tls_port if tls else receiver.tcp_port
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        if tls:
            context = ssl.create_default_context()
            context.check_hostname = False  # the marker only needs rsyslog's ear, whatever its certificate
            context.verify_mode = ssl.CERT_NONE
            with context.wrap_socket(raw, server_hostname="localhost") as sock:
                sock.sendall(frame)
        else:
            raw.sendall(frame)

    def found():
        messages = receiver.messages()
        if any(m.get("msg") == text for m in messages):
            return [m for m in messages if m.get("app") != "marker"]  # this marker and earlier ones
        return None

    return _wait(found, lambda: f"{len(receiver.messages())} messages written", deadline_seconds)


# --- rotel (tests.fakes.rotel.Rotel) ---------------------------------------------------------

MARKER_SCOPE = "forgedrain-tests-marker"

def rotel_after_marker(rotel, *, deadline_seconds: float = DEADLINE_SECONDS) -> list:
    """Post one OTLP/JSON record to ``rotel``, wait until rotel has exported it, and return every
    record exported besides the markers (in the order exported)."""
    import requests

    text = f"marker-{uuid.uuid4().hex}"
    body = {"resourceLogs": [{"resource": {"attributes": []}, "scopeLogs": [{
        "scope": {"name": MARKER_SCOPE},
        "logRecords": [{"timeUnixNano": str(time.time_ns()), "body": {"stringValue": text}}]}]}]}
    sent = requests.post(rotel.url + "/v1/logs", data=orjson.dumps(body),
                         headers={"Content-Type": "application/json"}, timeout=10)
    assert sent.status_code == 200, sent.text

    def found():
        records = rotel.records()
        if any(r.record.body.string_value == text for r in records):
            return [r for r in records if r.scope_name != MARKER_SCOPE]  # this marker and earlier ones
        return None

    return _wait(found, lambda: f"{len(rotel.records())} records exported; rotel said:\n{rotel.output()}",
                 deadline_seconds)
