"""Drain ingest at ``log_drain_url``: Heroku's logplex POSTs the app's own logs here (SPEC §5).

The resource is found by ``Logplex-Drain-Token`` only — never by anything in
the URL — so Heroku may change the drain's URL freely. The answer comes as
soon as the batch is durably in the outbox (one transaction); formatting and
sending happen in the delivery workers. See :mod:`broker.ingest`.

No pooled database connection is held while the body arrives: a client may
send its headers and then trickle the body, and the pool (a few connections
per process) serves every face. The token is looked up on a connection given back
at once; the body is read, inflated and parsed; the resource's volume limit
is checked in Redis; only then is a connection taken to store the batch.
"""

from __future__ import annotations

import logging
import zlib

import psycopg
from flask import Blueprint, Response, current_app, request

from broker import ingest, redisconn
from web import services
from web.errors import error, retry_after_header

log = logging.getLogger(__name__)

bp = Blueprint("ingest", __name__)

# Logplex aims at ~100 KB per request; the app-wide 1 MiB limit applies to the
# body as sent, and a gzip body may inflate to at most this much.
MAX_INFLATED_BYTES = 4 * 1024 * 1024
CONTENT_TYPES = ("application/logplex-1", "application/x-logplex-1")
# Logplex gives up on a request after 5 s: a Redis that has not answered the limit's check within
# this is treated as down (the batch is stored uncounted) rather than costing the batch.
LIMIT_REDIS_TIMEOUT_SECONDS = 1.0
# Writing refusal counts is bookkeeping: it never waits long for a pooled connection.
REFUSALS_POOL_TIMEOUT_SECONDS = 1.0


def volume() -> ingest.VolumeLimit:
    """This process's ingest volume limit, on its own Redis client with a short socket timeout."""
    limit = current_app.extensions.get("forgedrain.ingest-volume")
    if limit is None:
        settings = services().settings
        limit = current_app.extensions.setdefault("forgedrain.ingest-volume", ingest.VolumeLimit(
            redisconn.connect(settings.redis_url, socket_timeout=LIMIT_REDIS_TIMEOUT_SECONDS),
            settings.ingest_limit_scale, settings.ingest_limit_period_seconds))
    return limit


def record_refusals(conn, limit: ingest.VolumeLimit, resource_id) -> None:
    try:
        ingest.record_refusals(conn, limit, resource_id)
    except psycopg.Error as exc:  # the counts went back to Redis for the next try
        log.warning("ingest refusals not recorded resource=%s: %s", resource_id, type(exc).__name__)


def _refuse(resource: dict, limit: ingest.VolumeLimit, verdict: ingest.Verdict) -> Response:
    allowance = note_refusal(resource, limit, verdict)
    return error(429, "rate_limited",
                 f"over this resource's drain ingest limit of {allowance.frames_per_minute} frames and "
                 f"{allowance.bytes_per_minute} bytes per minute; nothing was stored, retry later",
                 headers=retry_after_header(verdict.retry_after))


def note_refusal(resource: dict, limit: ingest.VolumeLimit, verdict: ingest.Verdict) -> ingest.Allowance:
    """The bookkeeping of a batch refused over the volume limit (logplex or OTLP); the allowance."""
    allowance = verdict.allowance
    if verdict.notice:  # the resource's first refusal this minute: one log line, the counts written
        log.warning("ingest throttled resource=%s plan=%s frames_per_minute=%d bytes_per_minute=%d",
                    resource["id"], resource["plan"], allowance.frames_per_minute, allowance.bytes_per_minute)
        try:
            with services().db.connection(timeout=REFUSALS_POOL_TIMEOUT_SECONDS) as conn:
                record_refusals(conn, limit, resource["id"])
        except psycopg.OperationalError:
            pass  # no connection at hand: the counts wait in Redis for the next batch stored
    return allowance


def inflate(data: bytes, limit: int = MAX_INFLATED_BYTES) -> bytes | None:
    """A gzip body inflated, or None when it inflates to more than ``limit`` bytes;
    :class:`ingest.Malformed` when it is not gzip."""
    inflater = zlib.decompressobj(wbits=31)
    try:
        out = inflater.decompress(data, limit)
    except zlib.error:
        raise ingest.Malformed("the body is not valid gzip") from None
    if inflater.unconsumed_tail:
        return None
    if not inflater.eof:
        raise ingest.Malformed("the gzip body is truncated")
    return out


@bp.post("/ingest/logplex")
def logplex():
    token = request.headers.get("Logplex-Drain-Token", "")
    count = request.headers.get("Logplex-Msg-Count", "")
    frame_id = request.headers.get("Logplex-Frame-Id", "")
    missing = [name for name, value in (("Logplex-Drain-Token", token), ("Logplex-Msg-Count", count),
                                        ("Logplex-Frame-Id", frame_id)) if not value]
    if missing:
        return error(400, "missing_header", f"missing header{'s' if len(missing) > 1 else ''}: "
                                            f"{', '.join(missing)}")
    if not (count.isascii() and count.isdigit()) or not 1 <= int(count) <= ingest.MAX_FRAMES:
        return error(400, "invalid_header", f"Logplex-Msg-Count must be a whole number from 1 to "
                                            f"{ingest.MAX_FRAMES}")
    if len(frame_id) > 128 or not frame_id.isascii() or not frame_id.isprintable():
        return error(400, "invalid_header", "Logplex-Frame-Id must be at most 128 printable ASCII characters")
    content_type = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if content_type and content_type not in CONTENT_TYPES:
        return error(415, "unsupported_media_type", "Content-Type must be application/logplex-1")
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in ("", "identity", "gzip"):
        return error(415, "unsupported_encoding", "Content-Encoding may only be gzip")
    svc = services()
    resource = None
    if len(token) <= 200:
        with svc.db.connection() as conn:
            resource = ingest.resource_for_token(conn, token)
    if resource is None:
        return error(403, "unknown_token", "unknown or deprovisioned Logplex-Drain-Token")
    body = request.get_data(cache=False)
    try:
        if encoding == "gzip":
            body = inflate(body)
            if body is None:
                return error(413, "too_large", f"the body inflates to more than {MAX_INFLATED_BYTES} bytes")
        parsed = ingest.parse(body, int(count))
    except ingest.Malformed as exc:
        log.info("ingest refused resource=%s reason=malformed", resource["id"])
        return error(400, "malformed", str(exc))
    limit = volume()
    verdict = limit.check(resource["id"], resource["plan"], frame_id, parsed.frames, len(body))
    if not verdict.admitted:
        return _refuse(resource, limit, verdict)
    with svc.db.connection() as conn:
        fresh = ingest.store(conn, resource["id"], frame_id, parsed)
        if verdict.pending:
            record_refusals(conn, limit, resource["id"])
    log.debug("ingest resource=%s frames=%d stored=%d own=%d replay=%s", resource["id"], parsed.frames,
              parsed.stored, parsed.own, not fresh)
    return Response(status=204)
