"""An HTTP receiver that keeps every send in flight until the test releases it.

For verdicts on order ("refused while the first send is still in flight") instead of on seconds.
A receiver that never answers does not hold a send for long: the sender's read times out. This
one starts its answer at once — ``503`` and a header whose value it trickles a byte every
``tick`` seconds, so no read of the sender's times out — and ends the answer only when
:meth:`HeldHTTP.release` is called (or the receiver closes). Whatever the moment, the send ends
refused (503: retryable, nothing delivered).
"""

from __future__ import annotations

import threading

from tests.fakes.hostile import HostileHTTP


class HeldHTTP(HostileHTTP):
    """``hits`` counts requests read; every one waits, in flight, for :meth:`release`."""

    def __init__(self, *, tick: float = 0.5):
        super().__init__("silent")
        self.tick = tick
        self._released = threading.Event()

    def release(self) -> None:
        """Let every held answer (and any later one) end: a 503."""
        self._released.set()

    def _respond(self, wire, mode: str) -> bool:
        wire.sendall(b"HTTP/1.1 503 Service Unavailable\r\nX-Held: ")
        while not self._released.is_set():
            if wire.left_within(self.tick):  # the sender gave up: the connection is over
                return False
            wire.sendall(b".")
        wire.sendall(b"\r\nContent-Length: 0\r\n\r\n")
        return True
