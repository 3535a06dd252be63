"""The resource API under ``/v1`` (SPEC §2): bearer ``FORGEDRAIN_TOKEN``, one resource.

Everything under ``/v1/resources/<resource_id>`` hangs off one blueprint,
:data:`resource`, whose one ``before_request`` (:func:`_authenticate`) opens the
resource or answers for it; views then read ``g.resource`` and raise, and the
error handlers registered once on it (``web.errors``) answer. Its children,
``web.drains`` and ``web.sources``, nest under it, so no route there can skip
the guard. ``/v1/openapi.json`` sits outside it and needs no token.

The token is looked up by its SHA-256 digest, so the database never holds a
usable token. A token opens only its own resource: any other id answers 404,
exactly as a missing one does, so ids cannot be probed.
"""

from __future__ import annotations

import logging
import uuid

import redis
from flask import Blueprint, Response, abort, g, request

from broker import audit, ingest, jobs, operations, plans, resources, tokens
from broker.validation import InputError
from web import alerts, drains, ingest_otlp, openapi, services, sources
from web.errors import error, invalid, json_response, refused

log = logging.getLogger(__name__)

bp = Blueprint("api", __name__, url_prefix="/v1")
resource = Blueprint("resource", __name__, url_prefix="/resources/<resource_id>")

# How long a rotated-out FORGEDRAIN_TOKEN keeps working: Heroku restarts every
# attached app after a config change, and Private Spaces restart slowly
# (Dev Center "implementing-cred-rolls-as-an-add-on-partner").
TOKEN_GRACE_SECONDS = 2 * 3600

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="forgedrain"'}


@bp.get("/openapi.json")
def openapi_document():
    return json_response(openapi.document(services().settings.public_url))


@resource.before_request
def _authenticate() -> None:
    """Set ``g.resource`` when the bearer token opens the resource the path names; answer otherwise.

    401 (with the challenge) without a valid token, 404 for any other resource's id or one that
    is no id at all, 403 when the previous token (in its grace period) asks to change anything.
    The path's ``resource_id`` is taken out of the view's arguments: views use ``g.resource``.
    """
    requested = request.view_args.pop("resource_id")
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > 200:
        abort(error(401, "unauthorized", "a bearer token (FORGEDRAIN_TOKEN) is required", headers=CHALLENGE))
    with services().db.connection() as conn:
        row = resources.by_api_token_digest(conn, tokens.digest(token))
    # The digest finds the row; the token must also be the one SECRET_KEY derives for it now, so a new
    # SECRET_KEY ends every token the old one made (whoever holds a leaked key can derive them all).
    if row is None or not tokens.derived(services().settings.secret_key, token, row["id"],
                                         row["api_token_generation"] - (0 if row["current_token"] else 1)):
        abort(error(401, "unauthorized", "the bearer token is not valid", headers=CHALLENGE))
    try:
        opens = uuid.UUID(requested) == row["id"]
    except ValueError:
        opens = False
    if not opens:
        abort(error(404, "not_found", "no such resource"))
    if not row["current_token"] and request.method not in ("GET", "HEAD"):
        # A token that leaked is rotated away: its grace period lets running apps keep reading,
        # never change anything, rotate again or lock the owner out.
        abort(error(403, "previous_token", "the previous FORGEDRAIN_TOKEN only reads during its grace "
                                           "period; use the current token to change anything"))
    g.resource = row


resource.register_error_handler(413, lambda exc: error(413, "too_large", "request body is larger than 1 MiB"))
resource.register_error_handler(InputError, invalid)
resource.register_error_handler(operations.OperationError, refused)


def resource_view(row: dict, drain_rows: list[dict]) -> dict:
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
            for d in drain_rows
        ],
        "created_at": row["created_at"].isoformat(),
        "provisioned_at": row["provisioned_at"].isoformat() if row["provisioned_at"] else None,
        "config_push": config_push_view(row),
    }


def config_push_view(row: dict) -> dict | None:
    """Whether Heroku has the resource's current config (after a token rotation); None when the
    broker holds no Heroku grant to push with (integrators get the new token in the rotation's answer)."""
    if row["oauth_access_token_enc"] is None and row["oauth_grant_code_enc"] is None:
        return None
    return {"pending": row["api_token_generation"] > row["config_pushed_generation"],
            "error": row["config_push_error"],
            "next_attempt_at": row["config_push_next_at"].isoformat() if row["config_push_next_at"] else None}


@resource.get("")
def get_resource():
    with services().db.connection() as conn:
        drain_rows = resources.drains(conn, g.resource["id"])
        received = ingest.stats(conn, g.resource["id"])
        received_otlp = ingest.stats(conn, g.resource["id"], origin="otlp")
    return json_response({**resource_view(g.resource, drain_rows), "ingest": received,
                          "otlp_ingest": otlp_ingest_view(g.resource, received_otlp)})


def otlp_ingest_view(row: dict, received: dict) -> dict:
    """Where and how to send logs over OTLP, and what came in; never the token (it is shown where it
    is issued: the provision answer's message and ``POST …/ingest-token``)."""
    return {**ingest_otlp.guide(services().settings.public_url),
            "token": f"issued once: in the provision answer's message, and by POST /v1/resources/{row['id']}"
                     "/ingest-token (which ends the previous one)",
            "token_generation": row["ingest_token_generation"], "received": received}


@resource.post("/ingest-token")
def issue_ingest_token():
    """Issue a new OTLP ingest token; the previous one stops at once (a telemetry drain's header is
    seen by the app's collaborators: this is how a leaked one ends)."""
    row = g.resource
    svc = services()
    with svc.db.connection() as conn, conn.transaction():
        generation = resources.next_ingest_token_generation(conn, row["id"])
        audit.record(conn, row["id"], "api-token", "resource.ingest_token_issued", {"generation": generation})
    token = tokens.ingest_token(svc.settings.secret_key, row["id"], generation)
    log.info("ingest token issued resource=%s generation=%d", row["id"], generation)
    response = json_response({"token": token, **ingest_otlp.guide(svc.settings.public_url, token)})
    response.headers["Cache-Control"] = "no-store"
    return response


@resource.delete("/token/previous")
def end_token_grace():
    """End the previous FORGEDRAIN_TOKEN's grace period now (after a leak, say)."""
    rid = g.resource["id"]
    with services().db.connection() as conn, conn.transaction():
        ended = resources.end_token_grace(conn, rid)
        if ended:
            audit.record(conn, rid, "api-token", "resource.token_grace_ended", {})
    if not ended:
        return error(404, "not_found", "no previous token is in its grace period")
    log.info("token grace ended resource=%s", rid)
    return Response(status=204)


@resource.post("/token")
def rotate_token():
    """Issue a new FORGEDRAIN_TOKEN; the old one keeps working for a grace period."""
    row = g.resource
    svc = services()
    with svc.db.connection() as conn, conn.transaction():
        locked = resources.get_for_update(conn, row["id"])
        generation = locked["api_token_generation"] + 1
        token = tokens.api_token(svc.settings.secret_key, row["id"], generation)
        until = resources.rotate_api_token(conn, row["id"], tokens.digest(token), TOKEN_GRACE_SECONDS)
        audit.record(conn, row["id"], "api-token", "resource.token_rotated", {"generation": generation})
        # Pending in PostgreSQL with the rotation itself: the tick enqueues it again if Redis loses the job.
        push = resources.request_config_push(conn, row["id"])
    if push:
        try:
            jobs.enqueue_config_push(svc.redis, str(row["id"]))
        except redis.RedisError:
            log.warning("config push resource=%s not enqueued: redis unavailable (the tick will)", row["id"])
    log.info("token rotated resource=%s generation=%d", row["id"], generation)
    response = json_response({"token": token, "previous_token_valid_until": until.isoformat()})
    response.headers["Cache-Control"] = "no-store"
    return response


# The tree of the resource API: /v1/resources/<resource_id>/{drains,sources,alerts,alert-webhook}/...,
# every route under the one guard above.
resource.register_blueprint(drains.bp)
resource.register_blueprint(sources.bp)
resource.register_blueprint(alerts.bp)
bp.register_blueprint(resource)
