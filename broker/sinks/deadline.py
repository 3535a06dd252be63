"""One wall-clock deadline per send, enforced on the sockets the send uses.

A receiver is a stranger's server, and socket timeouts bound each read or
write, not the send: a receiver that trickles one byte every few seconds (or
accepts a body it never reads, or never closes) holds a worker for as long as
it likes. So a send runs inside :func:`within`; every socket it uses — a new
connection or a kept-alive one taken from a pool — is :func:`attach`-ed to the
thread's current deadline, and when the deadline passes one reaper thread
calls ``shutdown(SHUT_RDWR)`` on them. A ``send``/``recv``/TLS read blocked on
such a socket returns (an error, or end of stream) at once, and the sender
asks :attr:`Deadline.expired` to tell a stalled receiver from a broken one.

- The reaper is a single daemon thread, started on first use (and again in a
  forked child: RQ's work horses fork), sleeping on a condition variable until
  the earliest deadline in its heap — never polling.
- A deadline holds a duplicate descriptor of each attached socket, not the
  socket object: ``SSLContext.wrap_socket`` detaches the plain socket before
  its handshake, so the duplicate is what lets the reaper cut a stalled
  handshake too, and a descriptor number closed and reused meanwhile can never
  be hit by mistake. The duplicates are closed when the ``with`` block ends,
  so after it nothing of the deadline's holds a connection open.
- ``shutdown`` acts on the connection, not the descriptor: a socket whose
  deadline fired is dead for every holder. HTTP pools discard it (a failed
  request closes its connection; a pooled one is found dropped before reuse).
- Connecting cannot be cut this way (the socket is made inside the call), so
  connect timeouts are capped at what is left (:func:`connect_timeout`).
  Name resolution (``getaddrinfo``) cannot be interrupted at all: a resolver
  that stalls holds the send for the system's resolver timeout (about 5 s per
  try on glibc), after which the deadline, already spent, refuses to connect.
"""

from __future__ import annotations

import heapq
import itertools
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

# The OpenTelemetry exporters' default timeout: an answer or a close within 10 s.
DEFAULT_SECONDS = 10.0
_FLOOR = 0.01  # a connect attempt gets at least this long (a zero timeout would mean non-blocking)


class Deadline:
    """A point in time after which a send's sockets are shut down."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.when = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._held: dict[tuple[int, int], socket.socket] = {}  # (device, inode) -> duplicate
        self._fired = False
        self._done = False

    @property
    def expired(self) -> bool:
        """The deadline has passed (whether or not the reaper got to the sockets yet)."""
        return self._fired or time.monotonic() >= self.when

    def remaining(self) -> float:
        return max(0.0, self.when - time.monotonic())

    def attach(self, sock: socket.socket) -> None:
        """Shut ``sock`` down when the deadline passes (at once if it has)."""
        try:
            fd = sock.fileno()
            if fd < 0:
                return
            stat = os.fstat(fd)
        except (OSError, ValueError):
            return
        key = (stat.st_dev, stat.st_ino)  # the socket itself, however many descriptors name it
        with self._lock:
            if self._done or key in self._held:
                return
            duplicate_fd = os.dup(fd)
            try:
                duplicate = socket.socket(fileno=duplicate_fd)
            except OSError:
                os.close(duplicate_fd)
                return
            self._held[key] = duplicate
            if self._fired:
                _shutdown(duplicate)

    def _fire(self) -> None:
        with self._lock:
            if self._done:
                return
            self._fired = True
            for duplicate in self._held.values():
                _shutdown(duplicate)

    def _finish(self) -> None:
        with self._lock:
            self._done = True
            held, self._held = self._held, {}
        for duplicate in held.values():
            duplicate.close()


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already reset or closed by the peer: nothing left to cut


class _Reaper:
    """One daemon thread firing deadlines in time order."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Deadline]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def add(self, deadline: Deadline) -> None:
        with self._cond:
            heapq.heappush(self._heap, (deadline.when, next(self._order), deadline))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="send-deadline-reaper", daemon=True)
                self._thread.start()
            elif self._heap[0][2] is deadline:
                self._cond.notify()  # earlier than what the reaper sleeps towards

    def _run(self) -> None:
        while True:
            with self._cond:
                due = self._next_due()
            due._fire()

    def _next_due(self) -> Deadline:
        while True:
            while self._heap and self._heap[0][2]._done:
                heapq.heappop(self._heap)  # finished in time: nothing to cut
            if not self._heap:
                self._cond.wait()
                continue
            delay = self._heap[0][0] - time.monotonic()
            if delay <= 0:
                return heapq.heappop(self._heap)[2]
            self._cond.wait(delay)


_reaper = _Reaper()
_local = threading.local()


def _after_fork_in_child() -> None:
    global _reaper
    _reaper = _Reaper()  # the parent's reaper thread does not exist here


os.register_at_fork(after_in_child=_after_fork_in_child)


def current() -> Deadline | None:
    """The deadline of the send running on this thread, if any."""
    return getattr(_local, "deadline", None)


@contextmanager
def within(seconds: float) -> Iterator[Deadline]:
    """Run a send with a total deadline: sockets attached meanwhile are cut when it passes."""
    deadline = Deadline(seconds)
    outer = current()
    _local.deadline = deadline
    _reaper.add(deadline)
    try:
        yield deadline
    finally:
        _local.deadline = outer
        deadline._finish()


def attach(sock: socket.socket) -> None:
    """Attach ``sock`` to this thread's current deadline; nothing when there is none."""
    deadline = current()
    if deadline is not None:
        deadline.attach(sock)


def connect_timeout(timeout: float | None) -> float | None:
    """A connect timeout that does not reach past this thread's current deadline."""
    deadline = current()
    if deadline is None:
        return timeout
    left = max(deadline.remaining(), _FLOOR)
    return left if not isinstance(timeout, (int, float)) else min(timeout, left)
