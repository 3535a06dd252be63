"""README promise (Delivery, broker/sinks/http.py): the SSRF guard checks every new connection to a
drain — the name is resolved again and the answer checked — while a kept-alive connection, checked
when it was made, is reused without resolving the name again (a send costs no DNS lookup of its own).

Names are answered by :class:`tests.support.resolver.ScriptedResolver` (only ``getaddrinfo`` is
patched), so a test can re-point the drain's name between sends and count every lookup. Receivers
listen on 127.0.0.1 only: a connection to 127.0.0.2 is refused, so an answer that changed is seen.
"""

from __future__ import annotations

import pytest

from broker.sinks import http, syslog
from tests.fakes.hostile import HostileHTTP, HostileSyslog
from tests.support.resolver import ScriptedResolver

NAME = "drain.keepalive.test"  # answered only by the scripted resolver


def logplex(session, url: str):
    return http.send_logplex(session, url, b"1 x", count=1, frame_id="frame-1", drain_token="d.guard",
                             allow_private=True)


def otlp(session, url: str):
    return http.send_otlp(session, url, b"{}", encoding="json", use_gzip=False, headers={}, allow_private=True)


SENDS = {"logplex": logplex, "otlp": otlp}


@pytest.mark.parametrize("kind", SENDS)
def test_a_kept_alive_connection_is_not_resolved_again_and_every_new_one_is_checked(monkeypatch, kind):
    send = SENDS[kind]
    with HostileHTTP("ok") as receiver:
        dns = ScriptedResolver(monkeypatch, NAME, ["127.0.0.1"])
        url = f"http://{NAME}:{receiver.port}/v1/logs"
        session = http.new_session(allow_private=True)
        assert send(session, url).outcome == "delivered"
        assert dns.lookups == [["127.0.0.1"]]  # the new connection's own lookup, checked

        dns.then(None)  # the name stops resolving: only a new connection would notice
        for _ in range(3):
            assert send(session, url).outcome == "delivered"
        assert dns.lookups == [["127.0.0.1"]]  # kept alive: no lookup at all
        assert (receiver.hits, receiver.connections) == (4, 1)

        # The receiver ends the kept-alive connection with its next answer.
        receiver.answer_headers = {"Connection": "close"}
        assert send(session, url).outcome == "delivered"
        receiver.answer_headers = {}
        refused = send(session, url)  # a new connection: resolved again, and the guard refuses
        assert refused.outcome == "retry"
        assert refused.detail.startswith("destination refused: cannot resolve")
        assert dns.lookups == [["127.0.0.1"], None]
        assert (receiver.hits, receiver.connections) == (5, 1)

        dns.then("127.0.0.2")  # re-pointed: the next new connection goes to the new answer
        moved = send(session, url)
        assert moved.outcome == "retry" and moved.detail == "could not deliver (ConnectionError)"
        dns.then("127.0.0.1")
        assert send(session, url).outcome == "delivered"
        assert dns.lookups == [["127.0.0.1"], None, ["127.0.0.2"], ["127.0.0.1"]]
        assert (receiver.hits, receiver.connections) == (6, 2)


def test_a_kept_alive_connection_the_guard_would_refuse_now_is_still_only_the_one_it_checked(monkeypatch):
    """Re-pointing the name at a private address after the connection was made reaches nothing new:
    the kept-alive connection still goes to the address checked when it was made, and a new session
    (which must connect) is refused by the guard before any connection."""
    with HostileHTTP("ok") as receiver:
        dns = ScriptedResolver(monkeypatch, NAME, ["127.0.0.1"])
        url = f"http://{NAME}:{receiver.port}/"
        session = http.new_session(allow_private=True)
        assert logplex(session, url).outcome == "delivered"
        refused = http.send_logplex(http.new_session(allow_private=False), url, b"1 x", count=1, frame_id="f",
                                    drain_token="d.guard", allow_private=False)
        assert refused.outcome == "retry"
        assert refused.detail.startswith(f"destination refused: {NAME} resolves to 127.0.0.1, a private")
        assert (receiver.hits, receiver.connections) == (1, 1)  # the refused session never connected
        assert dns.lookups == [["127.0.0.1"], ["127.0.0.1"]]


def test_every_syslog_send_is_a_new_connection_resolved_and_checked_again(monkeypatch):
    with HostileSyslog(end="close") as receiver:
        dns = ScriptedResolver(monkeypatch, NAME, ["127.0.0.1"])
        url = f"syslog+tcp://{NAME}:{receiver.port}"
        for _ in range(2):
            assert syslog.send(url, [b"11 first frame"], allow_private=True).outcome == "delivered"
        dns.then(None)
        refused = syslog.send(url, [b"11 first frame"], allow_private=True)
        assert refused.outcome == "retry" and refused.detail.startswith("destination refused: cannot resolve")
        assert dns.lookups == [["127.0.0.1"], ["127.0.0.1"], None]
        assert receiver.connections == 2
