"""``GET /metrics``: the fleet in Prometheus' text format, for the operator (SPEC §8).

Off unless ``METRICS_TOKEN`` is set: it then answers 404 like any unknown
path, so an unconfigured deployment shows nothing. With a token, the request
must carry ``Authorization: Bearer <token>``, compared in constant time;
otherwise 401 with ``WWW-Authenticate: Bearer``. Every figure is read from
PostgreSQL and Redis at scrape time (:mod:`broker.metrics`), so any web
process answers for the whole fleet. PostgreSQL down or too slow answers 503
with a short text naming only the error's class.
"""

from __future__ import annotations

import hashlib
import hmac
import logging

import psycopg
from flask import Blueprint, Response, abort, request
from prometheus_client import CONTENT_TYPE_LATEST

from broker import metrics
from web import services

bp = Blueprint("metrics", __name__)
log = logging.getLogger(__name__)

# The wait for a pooled connection; the queries have their own statement_timeout.
CONNECTION_TIMEOUT_SECONDS = 2.0


def _authorized(expected: str) -> bool:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    # Digests of equal length: compare_digest then leaks nothing, not even the token's length.
    return hmac.compare_digest(hashlib.sha256(given.strip().encode("utf-8", "surrogateescape")).digest(),
                               hashlib.sha256(expected.encode()).digest())


@bp.get("/metrics")
def scrape():
    svc = services()
    token = svc.settings.metrics_token
    if token is None:
        abort(404)
    if not _authorized(token):
        return Response("unauthorized\n", 401, mimetype="text/plain",
                        headers={"WWW-Authenticate": 'Bearer realm="metrics"', "Cache-Control": "no-store"})
    try:
        with svc.db.connection(timeout=CONNECTION_TIMEOUT_SECONDS) as conn:
            snapshot = metrics.read(conn, svc.redis)
    except psycopg.Error as exc:  # down, pool exhausted (PoolTimeout) or statement_timeout
        log.warning("metrics scrape failed: postgres %s", type(exc).__name__)
        return Response(f"postgres unavailable ({type(exc).__name__})\n", 503, mimetype="text/plain",
                        headers={"Cache-Control": "no-store", "Retry-After": "15"})
    return Response(metrics.render(snapshot), 200, content_type=CONTENT_TYPE_LATEST,
                    headers={"Cache-Control": "no-store"})
