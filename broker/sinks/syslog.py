"""Syslog over TLS (RFC 5425): octet-counted RFC 5424 frames on a verified TLS connection.

Syslog has no acknowledgement, so a write that returned is not a delivery:
the bytes may still sit in a kernel buffer when the receiver restarts. Each
send therefore opens a connection, writes the frames, closes its side (TLS
``close_notify``, then FIN) and waits for the receiver to close its own. A
receiver closes only after it has read everything before our close, so a
clean close on both sides means every frame was read; anything else — refused
connection, failed handshake, reset, timeout — is a retry of the same frames.
Duplicates after a failure are bounded to that send.

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
from broker.sinks.guard import BlockedDestination, resolve

# Connect fast; a receiver gets as long as a logplex drain to read a send.
SYSLOG_TIMEOUT = (3.05, 10)
SCHEMES = ("syslog+tls", "syslog+tcp")


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
            sock = socket.create_connection((address, port), timeout=SYSLOG_TIMEOUT[0])
        except OSError as exc:
            last = exc
            continue
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


def send(url: str, chunks: list[bytes], *, context: ssl.SSLContext | None = None,
         allow_private: bool) -> Result:
    """Write octet-counted frames to a syslog drain and confirm the receiver read them."""
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port
    if parts.scheme not in SCHEMES or not host or not port:
        return Result("drop", detail="the drain's url is not syslog+tls://host:port")
    if parts.scheme == "syslog+tcp" and not allow_private:
        return Result("drop", detail="plain syslog+tcp is only allowed where private drains are")
    try:
        addresses = resolve(host, port, allow_private=allow_private)
    except BlockedDestination as exc:
        return Result("retry", detail=f"destination refused: {exc}")  # the owner's to fix; records wait
    stage = "connect"
    try:
        raw = _connect(addresses, port)
    except OSError as exc:
        return _failure(stage, exc)
    sock: socket.socket = raw
    try:
        if parts.scheme == "syslog+tls":
            stage = "TLS handshake"
            sock = (context or default_context()).wrap_socket(raw, server_hostname=host)
        stage = "write"
        for chunk in chunks:
            sock.sendall(chunk)
        stage = "close"
        if isinstance(sock, ssl.SSLSocket):
            sock = sock.unwrap()  # close_notify out, the receiver's close_notify (or EOF) in
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(4096):
            pass  # a syslog receiver never answers; whatever it says is ignored until it closes
    except (ssl.SSLEOFError, ssl.SSLZeroReturnError) as exc:
        if stage != "close":
            return _failure(stage, exc)
        # The receiver closed without its own close_notify after reading ours: it read everything.
    except (OSError, ValueError) as exc:
        return _failure(stage, exc)
    finally:
        try:
            sock.close()
        finally:
            raw.close()
    return Result("delivered")
