"""Receivers that misbehave on purpose: what a stranger's server can do to a sender.

A drain's receiver is whoever the owner points it at, so the sinks must stay
bounded in time and memory against servers that answer too much, too slowly
or never. These fakes do that on raw loopback sockets (127.0.0.1, ephemeral
ports), with byte-level control no HTTP framework gives:

- :class:`HostileHTTP` — ``mode`` is one of :data:`MODES`; it is read per
  request (and per connection for ``unread``), so a test can turn a healthy
  receiver hostile between two sends on one kept-alive connection, and back.
- :class:`HostileSyslog` — by default reads everything and never closes, so a
  sender waiting for the receiver's close waits for ever; it can also close or
  reset a connection after so many bytes (mid-send), reset instead of closing
  once it read everything, or close cleanly (the one acknowledgement syslog has).
- :func:`gzip_bomb` and :func:`sockets_to` — the bomb they serve, and how many
  sockets this process still holds to a port (for "nothing left open").

Every connection is served by its own daemon thread on a non-blocking socket
that waits only in ``select`` alongside a wake-up pipe, so ``__exit__``
returns within about a second even while connections are stalled.
"""

from __future__ import annotations

import functools
import os
import select
import socket
import ssl
import struct
import tempfile
import threading
import time
import zlib
from pathlib import Path

from tests.support.tls import self_signed

MODES = ("ok", "gzip-bomb", "trickle", "silent", "slow", "unread")
BOMB_INFLATED = 256 * 1024 * 1024
_HEAD_LIMIT = 64 * 1024
_JOIN_SECONDS = 1.0


@functools.cache
def gzip_bomb() -> bytes:
    """About 260 KB of gzip that inflates to 256 MiB of zeros; built once, a MiB at a time."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: gzip framing
    zeros = bytes(1 << 20)
    parts = [packer.compress(zeros) for _ in range(BOMB_INFLATED >> 20)]
    parts.append(packer.flush())
    return b"".join(parts)


def sockets_to(port: int) -> int:
    """How many sockets this process holds that are connected to ``port`` (Linux ``/proc``)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            if int(fields[2].rsplit(":", 1)[1], 16) == port and fields[9] != "0":
                inodes.add(fields[9])
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            count += 1
    return count


class _Stopped(Exception):
    """The server is shutting down: leave the connection."""


class _Gone(Exception):
    """The peer closed or reset the connection."""


class _Wire:
    """A non-blocking socket (plain or TLS) whose every wait also watches the server's wake-up pipe."""

    def __init__(self, sock: socket.socket, wake: int):
        self.sock, self.wake = sock, wake

    def _wait(self, write: bool, timeout: float | None) -> bool:
        readable, writable, _ = select.select([self.wake] + ([] if write else [self.sock]),
                                              [self.sock] if write else [], [], timeout)
        if self.wake in readable:
            raise _Stopped
        return bool(readable or writable)

    def handshake(self) -> None:
        while True:
            try:
                self.sock.do_handshake()
                return
            except ssl.SSLWantReadError:
                self._wait(False, None)
            except ssl.SSLWantWriteError:
                self._wait(True, None)
            except (ssl.SSLError, OSError):
                raise _Gone from None

    def recv(self, size: int, timeout: float | None = None) -> bytes | None:
        """Up to ``size`` bytes; b"" at the peer's end; None when ``timeout`` passed first."""
        while True:
            try:
                return self.sock.recv(size)
            except (ssl.SSLWantReadError, BlockingIOError):
                if not self._wait(False, timeout):
                    return None
            except ssl.SSLWantWriteError:
                self._wait(True, timeout)
            except (ssl.SSLError, OSError):
                return b""  # reset, or a broken TLS stream: the peer is gone either way

    def sendall(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[self.sock.send(view[:65536]):]
            except (ssl.SSLWantWriteError, BlockingIOError):
                self._wait(True, None)
            except ssl.SSLWantReadError:
                self._wait(False, None)
            except (ssl.SSLError, OSError):
                raise _Gone from None

    def left_within(self, seconds: float | None) -> bool:
        """Wait up to ``seconds`` (None: for ever) for the peer to leave, discarding what it sends."""
        while True:
            data = self.recv(65536, seconds)
            if data is None:
                return False
            if not data:
                return True

    def wait_for_stop(self) -> None:
        select.select([self.wake], [], [])
        raise _Stopped


class _Server:
    """Accepts loopback connections and serves each on its own thread until ``__exit__``."""

    tls = False

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._socks: list[socket.socket] = []
        self._connections = 0
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.cafile: Path | None = None
        self._server_context: ssl.SSLContext | None = None
        if self.tls:
            self._tmp = tempfile.TemporaryDirectory(prefix="hostile-")
            self.cafile, key = self_signed(Path(self._tmp.name))
            self._server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._server_context.load_cert_chain(self.cafile, key)

    @property
    def client_context(self) -> ssl.SSLContext:
        """What a client should trust to reach this server over TLS."""
        return ssl.create_default_context(cafile=str(self.cafile))

    @property
    def connections(self) -> int:
        with self._lock:
            return self._connections

    def __enter__(self):
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # A small, fixed receive window (no autotuning): a receiver that never reads stops a writer soon.
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.setblocking(False)
        self.port = self._listener.getsockname()[1]
        self._wake_r, self._wake_w = os.pipe()
        accept = threading.Thread(target=self._accept, name=f"{type(self).__name__}-accept", daemon=True)
        self._threads.append(accept)
        accept.start()
        return self

    def __exit__(self, *exc) -> None:
        os.write(self._wake_w, b"x")  # never read: every select sees it from now on
        until = time.monotonic() + _JOIN_SECONDS
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout=max(0.0, until - time.monotonic()))
        with self._lock:
            socks, self._socks = self._socks, []
        for sock in socks:
            sock.close()
        self._listener.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        if self._tmp is not None:
            self._tmp.cleanup()

    def _accept(self) -> None:
        while True:
            readable, _, _ = select.select([self._listener, self._wake_r], [], [])
            if self._wake_r in readable:
                return
            try:
                sock, _ = self._listener.accept()
            except BlockingIOError:
                continue
            sock.setblocking(False)
            thread = threading.Thread(target=self._serve, args=(sock,), name=f"{type(self).__name__}-conn",
                                      daemon=True)
            with self._lock:
                self._connections += 1
                self._socks.append(sock)
                self._threads.append(thread)
            thread.start()

    def _serve(self, sock: socket.socket) -> None:
        try:
            self.handle(sock)
        except (_Stopped, _Gone):
            pass
        except (OSError, ValueError):
            pass  # its socket was closed under it by __exit__

    def _wrap(self, sock: socket.socket) -> _Wire:
        """The connection as a wire, after the TLS handshake when this server speaks TLS."""
        if not self.tls:
            return _Wire(sock, self._wake_r)
        tls = self._server_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        with self._lock:
            self._socks.append(tls)  # the plain socket is detached now: close this one on exit
        wire = _Wire(tls, self._wake_r)
        wire.handshake()
        return wire

    def handle(self, sock: socket.socket) -> None:
        raise NotImplementedError


class HostileHTTP(_Server):
    """An HTTP/1.1 receiver (optionally over TLS) that answers each request as ``mode`` says.

    - ``ok``: 200 at once (``answer`` as body, with ``answer_headers``), connection kept alive.
    - ``gzip-bomb``: ``status`` (200; a 3xx adds a ``Location``) with ``Content-Encoding: gzip``,
      a JSON content type and :func:`gzip_bomb` as the body.
    - ``trickle``: the status line at once, then headers and body one byte every ``delay`` s (5).
    - ``silent``: reads the request, never answers, keeps the connection open.
    - ``slow``: reads the request body per ``Content-Length``, answers 200 after ``delay`` s (9).
    - ``unread``: accepts the connection and never reads from it (nor, over TLS, shakes hands).

    ``hits`` counts requests whose headers were read; ``open`` the connections whose end the
    receiver has not seen (``unread`` connections never see it).
    """

    def __init__(self, mode: str, *, delay: float | None = None, tls: bool = False, status: int = 200,
                 answer: bytes = b"", answer_headers: dict[str, str] | None = None):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.tls = tls
        super().__init__()
        self.mode = mode
        self.delay = delay if delay is not None else (5.0 if mode == "trickle" else 9.0)
        self.status, self.answer, self.answer_headers = status, answer, answer_headers or {}
        self._hits = 0
        self._open = 0
        if mode == "gzip-bomb":
            gzip_bomb()  # built before any send is measured

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/"

    @property
    def hits(self) -> int:
        with self._lock:
            return self._hits

    @property
    def open(self) -> int:
        with self._lock:
            return self._open

    def handle(self, sock: socket.socket) -> None:
        with self._lock:
            self._open += 1
        try:
            if self.mode == "unread":
                _Wire(sock, self._wake_r).wait_for_stop()
            wire = self._wrap(sock)
            pending = bytearray()
            while self._request(wire, pending) and self._respond(wire, self.mode):
                pass
        finally:
            with self._lock:
                self._open -= 1

    def _request(self, wire: _Wire, pending: bytearray) -> bool:
        """Read one request, headers and body; False when the peer left instead."""
        while b"\r\n\r\n" not in pending:
            if len(pending) > _HEAD_LIMIT:
                return False
            data = wire.recv(65536)
            if not data:
                return False
            pending += data
        head, _, rest = bytes(pending).partition(b"\r\n\r\n")
        with self._lock:
            self._hits += 1
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        missing = length - len(rest)
        while missing > 0:  # the whole body is read (and dropped) before any answer
            data = wire.recv(min(65536, missing))
            if not data:
                return False
            missing -= len(data)
        pending[:] = rest[length:]  # a pipelined next request, if any
        return True

    def _respond(self, wire: _Wire, mode: str) -> bool:
        """Answer as ``mode`` says; False when the connection is over."""
        if mode == "ok":
            wire.sendall(self._head(self.status, self.answer_headers, len(self.answer)) + self.answer)
            return True
        if mode == "gzip-bomb":
            bomb = gzip_bomb()
            headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
            if 300 <= self.status < 400:
                headers["Location"] = "http://127.0.0.1:9/elsewhere"
            wire.sendall(self._head(self.status, headers, len(bomb)))
            wire.sendall(bomb)
            return True
        if mode == "slow":
            if wire.left_within(self.delay):
                return False
            wire.sendall(self._head(200, {}, 0))
            return True
        if mode == "trickle":
            answer = self._head(200, {"Content-Type": "application/json"}, 2) + b"{}"
            line, _, rest = answer.partition(b"\r\n")
            wire.sendall(line + b"\r\n")
            for i in range(len(rest)):
                if wire.left_within(self.delay):
                    return False
                wire.sendall(rest[i:i + 1])
            return True
        wire.left_within(None)  # silent: never answer; wait for the sender to leave
        return False

    @staticmethod
    def _head(status: int, headers: dict[str, str], length: int) -> bytes:
        lines = [f"HTTP/1.1 {status} Hostile", f"Content-Length: {length}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class HostileSyslog(_Server):
    """A syslog receiver that, by default, reads every byte and never closes (not even after the sender's close).

    ``url`` is ``syslog+tls://localhost:PORT`` (trust :attr:`client_context`) or
    ``syslog+tcp://127.0.0.1:PORT`` (which needs ``allow_private=True``); ``received`` counts
    the bytes read, ``ended`` the connections whose sender closed its side, ``payloads`` holds
    what each connection carried (after TLS), in the order they came.

    How a connection ends is read when it is accepted, so a test can change it between sends:

    - ``end="never"`` (the default): read to the sender's end, then hold the connection open.
    - ``end="close"``: close the connection (FIN; the kernel sends a reset instead if bytes are
      still unread) once ``after`` bytes were read, or — ``after=None`` — once the sender closed
      its side after sending everything: the clean close a sender may count as delivery.
    - ``end="reset"``: the same moments, but abort the connection with a TCP reset.
    - ``end="half-close"``: at the same moments, end its side (FIN) and read nothing more; the
      connection is reset when the server stops. On a real network a receiver that closes while
      bytes are still on their way shows the sender exactly this order (its FIN, the reset later);
      loopback delivers the reset at once, so this is how a test gets that order.

    ``after=0`` ends a connection as soon as it is accepted (over TLS: after the handshake),
    before reading anything.
    """

    ENDS = ("never", "close", "reset", "half-close")

    def __init__(self, *, tls: bool = False, end: str = "never", after: int | None = None):
        if end not in self.ENDS:
            raise ValueError(f"end must be one of {self.ENDS}")
        self.tls = tls
        super().__init__()
        self.end, self.after = end, after
        self._received = 0
        self._ended = 0
        self._payloads: list[bytearray] = []

    @property
    def url(self) -> str:
        return f"syslog+tls://localhost:{self.port}" if self.tls else f"syslog+tcp://127.0.0.1:{self.port}"

    @property
    def received(self) -> int:
        with self._lock:
            return self._received

    @property
    def ended(self) -> int:
        with self._lock:
            return self._ended

    @property
    def payloads(self) -> list[bytes]:
        with self._lock:
            return [bytes(p) for p in self._payloads]

    def handle(self, sock: socket.socket) -> None:
        end, after = self.end, self.after
        got = bytearray()
        with self._lock:
            self._payloads.append(got)
        wire = self._wrap(sock)
        sender_done = False
        while after is None or len(got) < after:
            data = wire.recv(65536 if after is None else min(65536, after - len(got)))
            if not data:
                sender_done = True
                break
            with self._lock:
                got += data
                self._received += len(data)
        if sender_done:
            with self._lock:
                self._ended += 1
        if end == "never":
            wire.wait_for_stop()  # no close_notify, no FIN: the sender waits for a close that never comes
        if end == "half-close":
            wire.sock.shutdown(socket.SHUT_WR)  # over TLS without close_notify, as a crash or restart would
            wire.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            wire.wait_for_stop()
        if end == "reset":
            wire.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        wire.sock.close()  # over TLS without close_notify: the sender reads the end of the stream
