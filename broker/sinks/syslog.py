"""Syslog over TLS (RFC 5425): octet-counted RFC 5424 frames on a verified TLS connection.

Syslog has no acknowledgement, so a write that returned is not a delivery:
the bytes may still sit in a kernel buffer when the receiver restarts. Each
send therefore opens a connection, writes the frames, closes its side (TLS
``close_notify``, then FIN) and waits for the receiver to close its own. A
receiver closes only after it has read everything before our close, so a
clean close on both sides means every frame was read; anything else — refused
connection, failed handshake, reset, timeout — is a retry of the same frames.
Duplicates after a failure are bounded to that send.

A receiver that reads everything but never closes would otherwise hold the
worker for good, so the whole send — resolve, connect, TLS handshake, writes,
``close_notify`` and the wait for the receiver's close — runs within one
deadline (:mod:`broker.sinks.deadline`, :data:`DEADLINE_SECONDS`): when it
passes the socket is shut down and the send is retried with the stage it
stalled in. Name resolution is the one step it cannot interrupt.

The host is resolved once, checked by the SSRF guard, and the connection goes
to the checked address (never to the name again); the certificate is checked
against the name in the URL. Plain ``syslog+tcp://`` exists only where private
drains are allowed (tests, private networks).
"""

from __future__ import annotations

import os
import socket
import ssl
from functools import lru_cache
from urllib.parse import urlsplit

import certifi

from broker.sinks import Result
from broker.sinks.deadline import DEFAULT_SECONDS, Deadline, attach, connect_timeout, within
from broker.sinks.guard import BlockedDestination, resolve

# Connect fast; a receiver gets as long as an HTTP drain to read a send and close. Per socket
# operation: an extra bound inside the send's deadline.
SYSLOG_TIMEOUT = (3.05, 10)
DEADLINE_SECONDS = DEFAULT_SECONDS  # the whole send, up to the receiver's close
SCHEMES = ("syslog+tls", "syslog+tcp")
# What the sender was doing when the deadline passed, in an owner's words.
_STALLED = {"connect": "while connecting", "TLS handshake": "during the TLS handshake",
            "write": "while writing", "close": "waiting for the receiver to close"}


def default_context() -> ssl.SSLContext:
    """Verify certificates against the same trust store as HTTPS drains.

    ``REQUESTS_CA_BUNDLE`` (which ``requests`` also reads) replaces certifi's
    bundle, so one setting serves every kind of drain.
    """
    return _context(os.environ.get("REQUESTS_CA_BUNDLE") or certifi.where())


@lru_cache(maxsize=8)
def _context(cafile: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=cafile)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _connect(addresses: list[str], port: int) -> socket.socket:
    last: OSError | None = None
    for address in addresses:
        try:
            sock = socket.create_connection((address, port), timeout=connect_timeout(SYSLOG_TIMEOUT[0]))
        except OSError as exc:
            last = exc
            continue
        attach(sock)  # from here on the deadline can cut it: handshake, writes, close
        # Small writes and the closing handshake must not wait for delayed ACKs.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(SYSLOG_TIMEOUT[1])
        return sock
    raise last or OSError("no address to connect to")


def _failure(stage: str, exc: BaseException) -> Result:
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = exc.verify_message or "certificate verify failed"
        return Result("retry", detail=f"TLS certificate refused during {stage}: {reason}")
    kind = "timeout" if isinstance(exc, (socket.timeout, TimeoutError)) else type(exc).__name__
    return Result("retry", detail=f"could not deliver during {stage} ({kind})")


def _too_slow(stage: str, seconds: float) -> Result:
    return Result("retry", detail=f"no confirmed delivery within {seconds:g} s: the receiver is too slow "
                                  f"or stalled ({_STALLED.get(stage, stage)}); retrying")


def send(url: str, chunks: list[bytes], *, context: ssl.SSLContext | None = None,
         allow_private: bool, deadline: float = DEADLINE_SECONDS) -> Result:
    """Write octet-counted frames to a syslog drain and confirm the receiver read them, within ``deadline`` s."""
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port
    if parts.scheme not in SCHEMES or not host or not port:
        return Result("drop", detail="the drain's url is not syslog+tls://host:port")
    if parts.scheme == "syslog+tcp" and not allow_private:
        return Result("drop", detail="plain syslog+tcp is only allowed where private drains are")
    with within(deadline) as limit:
        return _send(limit, parts.scheme == "syslog+tls", host, port, chunks, context, allow_private)


def _send(limit: Deadline, tls: bool, host: str, port: int, chunks: list[bytes],
          context: ssl.SSLContext | None, allow_private: bool) -> Result:
    try:
        addresses = resolve(host, port, allow_private=allow_private)
    except BlockedDestination as exc:
        return Result("retry", detail=f"destination refused: {exc}")  # the owner's to fix; records wait
    stage = "connect"
    try:
        raw = _connect(addresses, port)
    except OSError as exc:
        return _too_slow(stage, limit.seconds) if limit.expired else _failure(stage, exc)
    sock: socket.socket = raw
    try:
        if tls:
            stage = "TLS handshake"
            sock = (context or default_context()).wrap_socket(raw, server_hostname=host)
        stage = "write"
        for chunk in chunks:
            sock.sendall(chunk)
        stage = "close"
        if isinstance(sock, ssl.SSLSocket):
            sock = sock.unwrap()  # close_notify out, the receiver's close_notify (or EOF) in
        sock.shutdown(socket.SHUT_WR)
        # A syslog receiver never answers; whatever it says is ignored until it closes. A shut-down
        # socket reads as closed too, and one that keeps talking must not keep us here: ask the deadline.
        while sock.recv(4096) and not limit.expired:
            pass
    except (ssl.SSLEOFError, ssl.SSLZeroReturnError) as exc:
        if limit.expired:
            return _too_slow(stage, limit.seconds)
        if stage != "close":
            return _failure(stage, exc)
        # The receiver closed without its own close_notify after reading ours: it read everything.
    except (OSError, ValueError) as exc:
        return _too_slow(stage, limit.seconds) if limit.expired else _failure(stage, exc)
    finally:
        try:
            sock.close()
        finally:
            raw.close()
    if limit.expired:
        return _too_slow(stage, limit.seconds)  # the close we saw may be the deadline's shutdown
    return Result("delivered")
