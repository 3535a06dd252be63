"""Add-on Partner API v3: provision, plan change, deprovision (SPEC §1).

Research: heroku-addon-and-logplex.md §1 and §8. Heroku delivers at least
once, so every endpoint is idempotent; every answer is JSON typed
``application/vnd.heroku-addons+json; version=3`` whatever the request's
Accept header says (Heroku records a 406 otherwise, and kensa sends
``Accept: application/json``). Bad input is refused with a precise 4xx and
changes nothing.

The use cases live in :mod:`broker.provisioning`; these views read the request,
call them, and turn the outcome or a :class:`~broker.provisioning.RequestRefused`
into the answer.
"""

from __future__ import annotations

import logging

import psycopg
from flask import Blueprint, Response, g, request

from broker import partners, provisioning, tokens
from broker.provisioning import RequestRefused
from web import ingest_otlp, services
from web.errors import error, json_response, retry_after_header

log = logging.getLogger(__name__)

bp = Blueprint("heroku", __name__, url_prefix="/heroku")

CONTENT_TYPE = "application/vnd.heroku-addons+json; version=3"


def reply(body: dict, status: int = 200) -> Response:
    return json_response(body, status, CONTENT_TYPE)


def refuse(status: int, message: str, **headers: str) -> Response:
    codes = {400: "bad_request", 401: "unauthorized", 404: "not_found", 409: "conflict",
             410: "gone", 413: "too_large", 422: "unprocessable", 502: "forge_unavailable",
             503: "unavailable"}
    return error(status, codes.get(status, "error"), message, CONTENT_TYPE, headers or None)


@bp.errorhandler(RequestRefused)
def _refused(exc: RequestRefused) -> Response:
    return refuse(exc.http_status, exc.message, **(retry_after_header(exc.retry_after) or {}))


@bp.after_request
def _vendor_content_type(response: Response) -> Response:
    # Covers Flask's own errors on these routes too (405, 413).
    response.headers["Content-Type"] = CONTENT_TYPE
    return response


@bp.errorhandler(413)
def _too_large(exc):
    return refuse(413, "request body is larger than 1 MiB")


def authenticate_partner(content_type: str) -> Response | None:
    """Set ``g.partner`` from the request's HTTP Basic credentials, or answer 401 (503 without the database).
    The guard of every partner-facing blueprint (this one, and the partner's view in web/partner.py)."""
    auth = request.authorization
    challenge = {"WWW-Authenticate": 'Basic realm="forgedrain"'}
    if auth is None or auth.type != "basic" or auth.username is None or auth.password is None:
        return error(401, "unauthorized", "partner credentials are required (HTTP Basic)", content_type, challenge)
    svc = services()
    try:
        partner = partners.authenticate(svc.db.connection, svc.settings, auth.username, auth.password)
    except psycopg.Error:
        log.exception("partner authentication could not reach the database")
        return error(503, "unavailable", "temporarily unavailable; retry", content_type)
    if partner is None:
        return error(401, "unauthorized", "wrong partner id or password", content_type, challenge)
    g.partner = partner
    return None


@bp.before_request
def _authenticate():
    return authenticate_partner(CONTENT_TYPE)


def _body() -> dict:
    data = request.get_data(cache=True)
    try:
        body = request.get_json(force=True, silent=False, cache=True) if data else None
    except Exception:
        raise RequestRefused(400, "request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise RequestRefused(400, "request body must be a JSON object")
    return body


def provision_body(resource: dict, issued_drain_token: bool) -> dict:
    settings = services().settings
    body = {
        "id": str(resource["id"]),
        "config": provisioning.resource_config(settings, resource["id"], resource["api_token_generation"]),
        "message": (
            "Forge Drain is being set up; it will be ready in a moment."
            if resource["state"] == "provisioning"
            else "Forge Drain is ready: open its dashboard to add your Forge app's credentials."
        ),
    }
    # Apps without logplex (Heroku Fir) send their logs over OTLP: the exact command, with the token.
    body["message"] += " To send this app's logs over OTLP (Fir apps): " + ingest_otlp.guide(
        settings.public_url, tokens.ingest_token(settings.secret_key, resource["id"],
                                                 resource["ingest_token_generation"]))["command"]
    if resource["log_drain_token"]:
        body["log_drain_url"] = provisioning.log_drain_url(settings)
        if issued_drain_token:
            body["log_drain_token"] = resource["log_drain_token"]
    return body


@bp.post("/resources")
def provision():
    svc = services()
    wanted = provisioning.read_provision_request(_body(), svc.settings)
    done = provisioning.provision(svc.db.connection, svc.settings, svc.vault, svc.verifier, svc.redis,
                                  g.partner, wanted)
    status = 202 if done.resource["state"] == "provisioning" else 200
    return reply(provision_body(done.resource, done.issued_drain_token), status)


@bp.put("/resources/<resource_id>")
def change_plan(resource_id: str):
    change = provisioning.change_plan(services().db.connection, g.partner, resource_id, _body())
    if not change.changed:
        return reply({"message": f"already on plan {change.plan}"})
    return reply({"config": {}, "message": f"plan changed to {change.plan}"})


@bp.delete("/resources/<resource_id>")
def deprovision(resource_id: str):
    provisioning.deprovision(services().db.connection, g.partner, resource_id)
    return Response(status=204, content_type=CONTENT_TYPE)
