"""Every sink is bounded against every receiver (issue 13, item 3).

The real sinks (``http.send_logplex``, ``http.send_otlp``, ``syslog.send`` on a
``new_session`` session) against the receivers of :mod:`tests.fakes.hostile`:
a send that meets a stalled receiver returns ``retry`` with the deadline's
reason within its deadline, leaves no socket open to the receiver, and the same
session then delivers to a healthy one; a gzip bomb answered with 200 is a
delivery that costs a few hundred KB, not 256 MiB.

Elapsed times are a liveness bound (the deadline plus :data:`SLACK`), not a
speed verdict: the bug they catch is a send that never returns. :data:`SLACK`
stays under the sinks' 10 s per-read timeout, so a pass means the deadline
cut the send, not the per-read timeout.
"""

from __future__ import annotations

import gzip
import socket
import time
import tracemalloc
from pathlib import Path

import orjson
import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse

from broker.sinks import deadline as deadlines
from broker.sinks import http, syslog
from tests.fakes.hostile import HostileHTTP, HostileSyslog, gzip_bomb, sockets_to

DEADLINE = 1.5
SLACK = 5.0
TOO_SLOW = f"no complete answer within {DEADLINE:g} s: the receiver is too slow or stalled; retrying"
BIG = 16 * 1024 * 1024  # more than loopback's socket buffers hold: a receiver that never reads blocks the write


def wait_until(predicate, timeout: float = 10.0) -> bool:
    until = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > until:
            return False
        time.sleep(0.02)
    return True


def logplex(session, url: str, body: bytes = b"1 x", deadline: float = DEADLINE):
    return http.send_logplex(session, url, body, count=1, frame_id="frame-1", drain_token="d.hostile",
                             allow_private=True, deadline=deadline)


def otlp(session, url: str, body: bytes = b"{}", deadline: float = DEADLINE, encoding: str = "json"):
    return http.send_otlp(session, url, body, encoding=encoding, use_gzip=False, headers={}, allow_private=True,
                          deadline=deadline)


SENDERS = {"logplex": logplex, "otlp": otlp}


def timed(send, *args, **kwargs):
    started = time.monotonic()
    result = send(*args, **kwargs)
    return result, time.monotonic() - started


def peak_rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc/self/status")


def connected_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    return client, server


# --- the deadline itself --------------------------------------------------------------------------


def test_a_deadline_cuts_a_blocked_read_and_the_peer_sees_the_end():
    client, server = connected_pair()
    try:
        client.settimeout(30)  # far longer than the deadline: only the deadline can end this read
        with deadlines.within(0.3) as limit:
            deadlines.attach(client)
            started = time.monotonic()
            assert client.recv(1) == b""
            assert time.monotonic() - started < 0.3 + SLACK
            assert limit.expired
        server.settimeout(10)
        assert server.recv(1) == b""  # the receiver sees the sender leave
    finally:
        client.close()
        server.close()


def test_a_send_that_ends_in_time_leaves_its_sockets_alone():
    kept, peer = connected_pair()
    other, other_peer = connected_pair()
    try:
        with deadlines.within(0.2):
            deadlines.attach(kept)
        assert deadlines.current() is None
        other.settimeout(30)
        with deadlines.within(0.3):
            deadlines.attach(other)
            assert other.recv(1) == b""  # a later deadline fired, so the earlier one's time has passed
        kept.sendall(b"x")
        peer.settimeout(10)
        assert peer.recv(1) == b"x"
        peer.sendall(b"y")
        kept.settimeout(10)
        assert kept.recv(1) == b"y"
    finally:
        for sock in (kept, peer, other, other_peer):
            sock.close()


def test_a_connect_timeout_never_reaches_past_the_deadline():
    assert deadlines.connect_timeout(3.05) == 3.05  # no send running: unchanged
    with deadlines.within(1.0):
        assert 0 < deadlines.connect_timeout(3.05) <= 1.0
        assert 0 < deadlines.connect_timeout(None) <= 1.0


# --- HTTP sinks -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", SENDERS)
def test_a_healthy_receiver_is_reached_on_one_kept_alive_connection(kind):
    send = SENDERS[kind]
    with HostileHTTP("ok") as receiver:
        session = http.new_session(allow_private=True)
        assert send(session, receiver.url).outcome == "delivered"
        assert send(session, receiver.url).outcome == "delivered"
        assert (receiver.hits, receiver.connections) == (2, 1)


@pytest.mark.parametrize("mode", ["trickle", "silent", "slow", "unread"])
@pytest.mark.parametrize("kind", SENDERS)
def test_a_stalling_receiver_costs_one_deadline_and_leaves_nothing_open(kind, mode):
    send = SENDERS[kind]
    with HostileHTTP(mode, delay=60 if mode == "slow" else None) as receiver:
        session = http.new_session(allow_private=True)
        result, elapsed = timed(send, session, receiver.url, bytes(BIG) if mode == "unread" else b"1 x")
        assert (result.outcome, result.detail) == ("retry", TOO_SLOW)
        assert elapsed < DEADLINE + SLACK
        assert sockets_to(receiver.port) == 0
        if mode != "unread":  # one that never reads never sees the end either
            assert wait_until(lambda: receiver.open == 0)
        hits = receiver.hits
        receiver.mode = "ok"
        assert send(session, receiver.url).outcome == "delivered"  # the fired deadline left the pool usable
        assert receiver.hits == hits + 1


@pytest.mark.parametrize("mode", ["trickle", "silent", "unread"])
def test_a_stalling_receiver_over_tls_is_cut_too_even_in_the_handshake(mode):
    """``unread`` over TLS never answers the ClientHello: the deadline cuts the handshake."""
    with HostileHTTP(mode, tls=True) as receiver:
        session = http.new_session(allow_private=True)
        session.verify = str(receiver.cafile)
        result, elapsed = timed(logplex, session, receiver.url)
        assert (result.outcome, result.detail) == ("retry", TOO_SLOW)
        assert elapsed < DEADLINE + SLACK
        assert sockets_to(receiver.port) == 0
        receiver.mode = "ok"
        assert logplex(session, receiver.url).outcome == "delivered"


@pytest.mark.parametrize("kind", SENDERS)
def test_a_kept_alive_connection_that_stalls_on_its_next_request_is_cut(kind):
    send = SENDERS[kind]
    with HostileHTTP("ok") as receiver:
        session = http.new_session(allow_private=True)
        assert send(session, receiver.url).outcome == "delivered"
        receiver.mode = "silent"
        result, elapsed = timed(send, session, receiver.url)
        assert (receiver.hits, receiver.connections) == (2, 1)  # the second request went on the pooled connection
        assert (result.outcome, result.detail) == ("retry", TOO_SLOW)
        assert elapsed < DEADLINE + SLACK
        assert sockets_to(receiver.port) == 0
        receiver.mode = "ok"
        assert send(session, receiver.url).outcome == "delivered"
        assert receiver.connections == 2  # the cut connection was not reused


@pytest.mark.parametrize("kind", SENDERS)
def test_a_gzip_bomb_answer_is_a_delivery_read_within_a_few_hundred_kilobytes(kind):
    send = SENDERS[kind]
    with HostileHTTP("gzip-bomb") as receiver:
        session = http.new_session(allow_private=True)
        rss_before = peak_rss_kib()
        tracemalloc.start()
        try:
            result = send(session, receiver.url, deadline=10)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert (result.outcome, result.status, result.rejected) == ("delivered", 200, 0)
        assert peak < 16 * 1024 * 1024
        assert peak_rss_kib() - rss_before < 64 * 1024
        assert sockets_to(receiver.port) == 0  # the rest of the answer unread: the connection closed
        receiver.mode = "ok"
        assert send(session, receiver.url).outcome == "delivered"


def test_a_redirect_carrying_a_gzip_bomb_is_retried_without_reading_it():
    """With redirects off, ``Session.send`` would still read (and un-gzip) a 3xx's whole body."""
    with HostileHTTP("gzip-bomb", status=302) as receiver:
        session = http.new_session(allow_private=True)
        tracemalloc.start()
        try:
            result = logplex(session, receiver.url, deadline=10)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert (result.outcome, result.status) == ("retry", 302)
        assert "redirects to 127.0.0.1" in result.detail
        assert peak < 16 * 1024 * 1024


def test_otlp_partial_success_is_read_from_a_gzipped_json_answer():
    answer = gzip.compress(orjson.dumps({"partialSuccess": {"rejectedLogRecords": "3", "errorMessage": "x"}}))
    with HostileHTTP("ok", answer=answer, answer_headers={"Content-Type": "application/json",
                                                         "Content-Encoding": "gzip"}) as receiver:
        result = otlp(http.new_session(allow_private=True), receiver.url)
    assert (result.outcome, result.rejected) == ("delivered", 3)


def test_otlp_partial_success_is_read_from_a_protobuf_answer():
    answer = ExportLogsServiceResponse()
    answer.partial_success.rejected_log_records = 2
    with HostileHTTP("ok", answer=answer.SerializeToString(),
                     answer_headers={"Content-Type": "application/x-protobuf"}) as receiver:
        result = otlp(http.new_session(allow_private=True), receiver.url, b"", encoding="protobuf")
    assert (result.outcome, result.rejected) == ("delivered", 2)


def test_an_otlp_answer_longer_than_the_prefix_is_a_success_with_nothing_rejected():
    answer = orjson.dumps({"partialSuccess": {"rejectedLogRecords": 5, "errorMessage": "x" * http.ANSWER_BYTES}})
    with HostileHTTP("ok", answer=answer, answer_headers={"Content-Type": "application/json"}) as receiver:
        session = http.new_session(allow_private=True)
        result = otlp(session, receiver.url)
        assert (result.outcome, result.rejected) == ("delivered", 0)
        assert sockets_to(receiver.port) == 0


def test_response_hooks_still_see_each_exchange_but_only_what_was_read():
    """Tests observe a drain session through its response hooks (tests/test_delivery_rotel.py)."""
    seen = []
    answer = b'{"partialSuccess":{}}' + b" " * (2 * http.ANSWER_BYTES)
    with HostileHTTP("ok", answer=answer, answer_headers={"Content-Type": "application/json"}) as receiver:
        session = http.new_session(allow_private=True)
        session.hooks["response"].append(
            lambda response, *args, **kwargs: seen.append((response.status_code, response.content,
                                                           response.request.headers["Content-Type"])))
        assert otlp(session, receiver.url).outcome == "delivered"
    assert seen == [(200, answer[:http.ANSWER_BYTES], "application/json")]


def test_a_gzip_answer_is_inflated_no_further_than_the_prefix():
    bomb = gzip_bomb()
    tracemalloc.start()
    try:
        count = http.rejected_count(bomb[:http.ANSWER_BYTES], {"Content-Encoding": "gzip"}, "json")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == 0
    assert peak < 2 * 1024 * 1024  # the prefix, 64 KiB inflated, and orjson's error: not 256 MiB


# --- syslog ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_a_syslog_receiver_that_never_closes_is_retried_within_the_deadline(tls):
    frames = [b"11 first frame", b"12 second frame"]
    with HostileSyslog(tls=tls) as receiver:
        context = receiver.client_context if tls else None
        result, elapsed = timed(syslog.send, receiver.url, frames, context=context, allow_private=True,
                                deadline=DEADLINE)
        assert result.outcome == "retry"
        assert result.detail == (f"no confirmed delivery within {DEADLINE:g} s: the receiver is too slow or "
                                 "stalled (waiting for the receiver to close); retrying")
        assert elapsed < DEADLINE + SLACK
        assert sockets_to(receiver.port) == 0
        assert wait_until(lambda: receiver.received == sum(map(len, frames)))  # it read everything...
        assert receiver.ended == 1  # ...and our close, and still never closed its own side


@pytest.mark.parametrize("scheme, stage", [("syslog+tcp://127.0.0.1", "while writing"),
                                           ("syslog+tls://localhost", "during the TLS handshake")])
def test_a_syslog_receiver_that_never_reads_is_cut_where_it_stalls(scheme, stage):
    with HostileHTTP("unread") as receiver:
        result, elapsed = timed(syslog.send, f"{scheme}:{receiver.port}", [bytes(BIG)], allow_private=True,
                                deadline=DEADLINE)
        assert result.outcome == "retry"
        assert f"within {DEADLINE:g} s" in result.detail and f"({stage})" in result.detail
        assert elapsed < DEADLINE + SLACK
        assert sockets_to(receiver.port) == 0


# --- the fakes themselves -------------------------------------------------------------------------


@pytest.mark.parametrize("fake", [lambda: HostileHTTP("silent"), lambda: HostileHTTP("unread"),
                                  lambda: HostileSyslog(tls=True)], ids=["silent", "unread", "syslog-tls"])
def test_a_hostile_receiver_shuts_down_quickly_while_a_connection_stalls(fake):
    receiver = fake().__enter__()
    client = socket.create_connection(("127.0.0.1", receiver.port))
    try:
        client.sendall(b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        assert wait_until(lambda: receiver.connections == 1)
        started = time.monotonic()
        receiver.__exit__(None, None, None)
        assert time.monotonic() - started < 2.0
    finally:
        client.close()
