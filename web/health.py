"""Liveness and readiness.

``/healthz`` answers 200 whenever the process can serve a request (for a
platform's liveness check). ``/readyz`` answers 200 only when PostgreSQL and
Redis both answer now, else 503 naming what failed — without connection
strings or server messages, which can carry host names and user names.
"""

from __future__ import annotations

from flask import Blueprint, jsonify

from web import services

bp = Blueprint("health", __name__)

# Readiness must answer well inside a load balancer's check timeout.
CHECK_TIMEOUT_SECONDS = 2.0


@bp.get("/healthz")
def healthz():
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():
    svc = services()
    failed: dict[str, str] = {}
    try:
        with svc.db.connection(timeout=CHECK_TIMEOUT_SECONDS) as conn:
            conn.execute("SELECT 1").fetchone()
    except Exception as exc:  # any failure means "not ready"; the type says which kind
        failed["postgres"] = f"unreachable ({type(exc).__name__})"
    try:
        svc.redis.ping()
    except Exception as exc:
        failed["redis"] = f"unreachable ({type(exc).__name__})"
    if failed:
        return jsonify(status="unavailable", failed=failed), 503
    return jsonify(status="ok", checks={"postgres": "ok", "redis": "ok"})
