"""README promise (Delivery, syslog): syslog has no acknowledgement, so a send counts as accepted only
when the receiver closes its side cleanly after reading everything; a receiver that closes or resets
the connection mid-send (or resets instead of closing) gets the same frames again, whole, and nothing
is counted delivered until a send ends in that clean close.

The receivers are :class:`tests.fakes.hostile.HostileSyslog` on loopback, over plain TCP (a private
drain) and TLS, told where to end each connection. No timing is asserted: every send here ends by the
receiver's own move, long before its deadline.
"""

from __future__ import annotations

import contextlib
import re

import pytest

from broker import db, delivery
from broker.senders import Wire
from broker.sinks import http, syslog
from broker.vault import Vault
from tests.fakes.hostile import HostileSyslog
from tests.support.polling import add_resource, add_source
from tests.test_delivery import add_drain, deliver_all, drain_row, forge_record, store

FRAMES = [f"{len(m)} {m}".encode() for m in (f"<14>1 - host app - - - message {i:04d} " + "x" * 400
                                              for i in range(200))]
SENT = sum(map(len, FRAMES))  # ~85 KB: several TCP segments, more than the receiver reads before it ends
MID_SEND = 1000  # bytes a receiver reads before it closes or resets in the middle of a send


@pytest.fixture
def vault(settings):
    return Vault(settings.fernet_keys)


def send(receiver: HostileSyslog, frames: list[bytes]):
    return syslog.send(receiver.url, [b"".join(frames)], context=receiver.client_context if receiver.tls else None,
                       allow_private=True)


ENDINGS = {
    "reset-mid-send": ("reset", MID_SEND),
    "close-mid-send": ("close", MID_SEND),
    "close-before-reading": ("close", 0),
    "reset-before-reading": ("reset", 0),
    "reset-after-reading-everything": ("reset", None),
}


@pytest.mark.parametrize("ending", ENDINGS)
@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_a_send_the_receiver_did_not_close_cleanly_after_reading_is_a_retry(tls, ending):
    end, after = ENDINGS[ending]
    with HostileSyslog(tls=tls, end=end, after=after) as receiver:
        result = send(receiver, FRAMES)
        assert result.outcome == "retry", result
        assert result.detail.startswith("could not deliver during ")
        assert receiver.connections == 1
        if after is not None:
            assert receiver.received <= after  # it really ended mid-send: the rest never reached it


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_a_clean_close_after_reading_everything_is_the_acknowledgement(tls):
    with HostileSyslog(tls=tls, end="close") as receiver:
        result = send(receiver, FRAMES)
        assert (result.outcome, result.detail) == ("delivered", "")
        assert receiver.payloads == [b"".join(FRAMES)]
        assert receiver.ended == 1  # it saw our end of the stream before it closed


def messages(payload: bytes) -> list[str]:
    """The messages of an octet-counted stream, in order; AssertionError on any broken frame."""
    out, i = [], 0
    while i < len(payload):
        match = re.compile(rb"([1-9][0-9]*) ").match(payload, i)
        assert match, f"no frame length at byte {i}"
        length = int(match.group(1))
        start = match.end()
        assert start + length <= len(payload), "a frame is cut short"
        out.append(payload[start:start + length].decode())
        i = start + length
    return out


def deliverer(database_url: str, vault: Vault, receiver: HostileSyslog) -> delivery.Deliverer:
    @contextlib.contextmanager
    def connect():
        with db.connect(database_url, "forgedrain-tests") as conn:
            yield conn

    session = http.new_session(allow_private=True)
    context = receiver.client_context if receiver.tls else None
    return delivery.Deliverer(connect, Wire(lambda: session, True, context), vault)


@pytest.mark.parametrize("ending", ["reset-mid-send", "close-mid-send", "close-before-reading"])
@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_a_drain_counts_nothing_until_a_clean_close_and_then_gets_every_frame_again_whole(
        conn, vault, database_url, tls, ending):
    resource_id = add_resource(conn)
    source_id = add_source(conn, vault, resource_id)
    end, after = ENDINGS[ending]
    with HostileSyslog(tls=tls, end=end, after=after) as receiver:
        drain_id = add_drain(conn, vault, resource_id, "syslog", receiver.url)
        last = store(conn, resource_id, source_id, [forge_record(i, f"record {i:03d} " + "y" * 300)
                                                    for i in range(150)])
        sender = deliverer(database_url, vault, receiver)
        for attempt in range(2):  # it keeps ending mid-send: nothing is ever counted
            (outcome,) = deliver_all(sender, conn)
            row = drain_row(conn, drain_id)
            assert outcome.result == "retry", outcome
            assert (row["cursor"], row["partial_batch"], row["delivered"], row["dropped"]) == (0, None, 0, 0)
            assert row["retried"] == attempt + 1 and "could not deliver" in row["last_error"]
            conn.execute("UPDATE drains SET next_attempt_at = now() WHERE id = %s", (drain_id,))
        receiver.end, receiver.after = "close", None  # the receiver is healthy again
        (outcome,) = deliver_all(sender, conn)
        assert outcome.result == "caught-up" and outcome.delivered == 150
        payloads = receiver.payloads
    row = drain_row(conn, drain_id)
    assert (row["cursor"], row["delivered"], row["dropped"]) == (last, 150, 0)
    # The accepted send carries every record from the first one on, each frame whole and once.
    accepted = messages(payloads[-1])
    assert len(accepted) == 150
    assert [re.search(r"record (\d{3}) ", m).group(1) for m in accepted] == [f"{i:03d}" for i in range(150)]
    assert len(payloads) == 3
