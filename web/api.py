"""The resource API under ``/v1`` (SPEC §2): bearer ``FORGEDRAIN_TOKEN``, one resource.

The token is looked up by its SHA-256 digest, so the database never holds a
usable token. A token opens only its own resource: any other id answers 404,
exactly as a missing one does, so ids cannot be probed.
"""

from __future__ import annotations

import logging
import uuid

import redis
from flask import Blueprint, Response, g, request

from broker import audit, ingest, jobs, plans, resources, tokens
from broker.validation import InputError
from web import openapi, services
from web.errors import error, json_response, retry_after_header

log = logging.getLogger(__name__)

bp = Blueprint("api", __name__, url_prefix="/v1")

# How long a rotated-out FORGEDRAIN_TOKEN keeps working: Heroku restarts every
# attached app after a config change, and Private Spaces restart slowly
# (Dev Center "implementing-cred-rolls-as-an-add-on-partner").
TOKEN_GRACE_SECONDS = 2 * 3600

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="forgedrain"'}


@bp.errorhandler(405)
def _method(exc):
    return error(405, "method_not_allowed", f"method {request.method} is not allowed here")


@bp.errorhandler(413)
def _too_large(exc):
    return error(413, "too_large", "request body is larger than 1 MiB")


@bp.get("/openapi.json")
def openapi_document():
    return json_response(openapi.document(services().settings.public_url))


def authenticated(resource_id: str):
    """The caller's resource if the bearer token opens ``resource_id``; else an error response."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > 200:
        return None, error(401, "unauthorized", "a bearer token (FORGEDRAIN_TOKEN) is required",
                           headers=CHALLENGE)
    with services().db.connection() as conn:
        row = resources.by_api_token_digest(conn, tokens.digest(token))
    if row is None:
        return None, error(401, "unauthorized", "the bearer token is not valid", headers=CHALLENGE)
    if str(row["id"]) != resource_id:
        return None, error(404, "not_found", "no such resource")
    if not row["current_token"] and request.method not in ("GET", "HEAD"):
        # A token that leaked is rotated away: its grace period lets running apps keep reading,
        # never change anything, rotate again or lock the owner out.
        return None, error(403, "previous_token", "the previous FORGEDRAIN_TOKEN only reads during its grace "
                                                  "period; use the current token to change anything")
    return row, None


def json_object_body() -> dict:
    """The request's JSON body, a JSON object whose every string (keys included) is text that can
    be stored and sent: :class:`InputError` otherwise, naming where (``body`` when unreadable)."""
    if not request.get_data(cache=True):
        raise InputError("body", "request body must be a JSON object")
    try:
        body = request.get_json(force=True, silent=False, cache=True)
    except Exception:
        raise InputError("body", "request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise InputError("body", "request body must be a JSON object")
    _check_text(body, "")
    return body


def _check_text(value, where: str) -> None:
    """Refuse NUL characters and lone surrogates (``"\\ud800"`` is valid JSON but not text):
    PostgreSQL, the vault and HTTP headers each fail on them later."""
    if isinstance(value, str):
        if "\x00" in value:
            raise InputError(where or "body", f"{where or 'a value'} contains a NUL character")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InputError(where or "body", f"{where or 'a value'} is not valid Unicode text "
                                              "(a lone surrogate)") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key, f"{where}.{key!r}" if where else "a field name")
            _check_text(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_text(item, f"{where}[{index}]")


def invalid(exc: InputError):
    """400 for an unreadable body, 422 naming the bad field otherwise."""
    return json_response({"error": "invalid", "message": exc.message, "field": exc.field},
                         400 if exc.field == "body" else 422)


def operation_failed(exc: Exception):
    """The answer for a refused :mod:`broker.operations` call (or a bad body)."""
    from broker import operations

    if isinstance(exc, InputError):
        return invalid(exc)
    if isinstance(exc, operations.Refused):
        refusal = exc.refusal
        headers = retry_after_header(refusal.retry_after)
        return error(refusal.http_status, refusal.code, refusal.message, headers=headers)
    return error(exc.http_status, exc.code, exc.message)


def owned(resource_id: str, child_id: str, lookup, noun: str):
    """(resource, row, None) when the bearer token opens ``resource_id`` and ``lookup(conn,
    resource id, child id)`` finds the row; else (.., None, the error response)."""
    resource, failure = authenticated(resource_id)
    if failure is not None:
        return None, None, failure
    try:
        parsed = str(uuid.UUID(child_id))
    except ValueError:
        parsed = None
    with services().db.connection() as conn:
        row = lookup(conn, resource["id"], parsed) if parsed else None
    if row is None:
        return resource, None, error(404, "not_found", f"no such {noun}")
    return resource, row, None


def resource_view(row: dict, drains: list[dict]) -> dict:
    plan = plans.get(row["plan"])
    return {
        "id": str(row["id"]),
        "name": row["name"],
        "plan": row["plan"],
        "limits": plan.limits() if plan else None,
        "state": row["state"],
        "region": row["region"],
        "provision_error": row["provision_error"],
        "log_drain_token": tokens.mask(row["log_drain_token"]),
        "drains": [
            {"id": str(d["id"]), "kind": d["kind"], "token": d["token"], "enabled": d["enabled"]}
            for d in drains
        ],
        "created_at": row["created_at"].isoformat(),
        "provisioned_at": row["provisioned_at"].isoformat() if row["provisioned_at"] else None,
    }


@bp.get("/resources/<resource_id>")
def get_resource(resource_id: str):
    try:
        resource_id = str(uuid.UUID(resource_id))
    except ValueError:
        pass  # authentication answers first; an unparseable id then fails as 404
    row, failure = authenticated(resource_id)
    if failure is not None:
        return failure
    with services().db.connection() as conn:
        drains = resources.drains(conn, row["id"])
        received = ingest.stats(conn, row["id"])
    g.resource_id = row["id"]
    return json_response({**resource_view(row, drains), "ingest": received})


@bp.delete("/resources/<resource_id>/token/previous")
def end_token_grace(resource_id: str):
    """End the previous FORGEDRAIN_TOKEN's grace period now (after a leak, say)."""
    row, failure = authenticated(resource_id)
    if failure is not None:
        return failure
    with services().db.connection() as conn, conn.transaction():
        ended = resources.end_token_grace(conn, row["id"])
        if ended:
            audit.record(conn, row["id"], "api-token", "resource.token_grace_ended", {})
    if not ended:
        return error(404, "not_found", "no previous token is in its grace period")
    log.info("token grace ended resource=%s", row["id"])
    return Response(status=204)


@bp.post("/resources/<resource_id>/token")
def rotate_token(resource_id: str):
    """Issue a new FORGEDRAIN_TOKEN; the old one keeps working for a grace period."""
    row, failure = authenticated(resource_id)
    if failure is not None:
        return failure
    svc = services()
    with svc.db.connection() as conn, conn.transaction():
        locked = resources.get_for_update(conn, row["id"])
        generation = locked["api_token_generation"] + 1
        token = tokens.api_token(svc.settings.secret_key, row["id"], generation)
        resources.rotate_api_token(conn, row["id"], tokens.digest(token), TOKEN_GRACE_SECONDS)
        audit.record(conn, row["id"], "api-token", "resource.token_rotated", {"generation": generation})
        until = conn.execute("SELECT api_token_previous_until FROM resources WHERE id = %s",
                             (row["id"],)).fetchone()["api_token_previous_until"]
    if locked["oauth_access_token_enc"] is not None:
        try:
            jobs.enqueue_config_push(svc.redis, str(row["id"]))
        except redis.RedisError:
            log.warning("config push resource=%s not enqueued: redis unavailable", row["id"])
    log.info("token rotated resource=%s generation=%d", row["id"], generation)
    response = json_response({"token": token, "previous_token_valid_until": until.isoformat()})
    response.headers["Cache-Control"] = "no-store"
    return response
