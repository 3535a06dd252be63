"""Add-on Partner API v3: provision, plan change, deprovision (SPEC §1).

Research: heroku-addon-and-logplex.md §1 and §8. Heroku delivers at least
once, so every endpoint is idempotent; every answer is JSON typed
``application/vnd.heroku-addons+json; version=3`` whatever the request's
Accept header says (Heroku records a 406 otherwise, and kensa sends
``Accept: application/json``). Bad input is refused with a precise 4xx and
changes nothing.
"""

from __future__ import annotations

import logging
import re
import uuid
from datetime import datetime

import psycopg
import redis
from flask import Blueprint, Response, g, request

from broker import audit, jobs, partners, plans, provisioning, resources, sources, tokens
from broker.validation import InputError
from broker.partners import Partner
from web import services
from web.errors import error, json_response, retry_after_header

log = logging.getLogger(__name__)

bp = Blueprint("heroku", __name__, url_prefix="/heroku")

CONTENT_TYPE = "application/vnd.heroku-addons+json; version=3"

# Heroku's regions as the Partner API names them, plus the short names an
# integrator may use (research heroku-addon-and-logplex.md §1.3).
REGIONS = frozenset(
    [f"amazon-web-services::{r}" for r in (
        "us-east-1", "us-west-1", "us-west-2", "eu-west-1", "eu-central-1", "ca-central-1",
        "ap-northeast-1", "ap-southeast-1", "ap-southeast-2", "ap-south-1",
    )]
    + ["us", "eu"]
)
DRAIN_TOKEN = re.compile(r"^[\x21-\x7e]{1,200}\Z")
MAX_TEXT = 255
MAX_URL = 2048


class BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def reply(body: dict, status: int = 200) -> Response:
    return json_response(body, status, CONTENT_TYPE)


def refuse(status: int, message: str, **headers: str) -> Response:
    codes = {400: "bad_request", 401: "unauthorized", 404: "not_found", 409: "conflict",
             410: "gone", 413: "too_large", 422: "unprocessable", 502: "forge_unavailable",
             503: "unavailable"}
    return error(status, codes.get(status, "error"), message, CONTENT_TYPE, headers or None)


@bp.after_request
def _vendor_content_type(response: Response) -> Response:
    # Covers Flask's own errors on these routes too (405, 413).
    response.headers["Content-Type"] = CONTENT_TYPE
    return response


@bp.errorhandler(413)
def _too_large(exc):
    return refuse(413, "request body is larger than 1 MiB")


@bp.before_request
def _authenticate():
    auth = request.authorization
    challenge = {"WWW-Authenticate": 'Basic realm="forgedrain"'}
    if auth is None or auth.type != "basic" or auth.username is None or auth.password is None:
        return refuse(401, "partner credentials are required (HTTP Basic)", **challenge)
    svc = services()
    try:
        partner = partners.authenticate(svc.db.connection, svc.settings, auth.username, auth.password)
    except psycopg.Error:
        log.exception("partner authentication could not reach the database")
        return error(503, "unavailable", "temporarily unavailable; retry", CONTENT_TYPE)
    if partner is None:
        return refuse(401, "wrong partner id or password", **challenge)
    g.partner = partner


def _body() -> dict:
    data = request.get_data(cache=True)
    try:
        body = request.get_json(force=True, silent=False, cache=True) if data else None
    except Exception:
        raise BadRequest(400, "request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest(400, "request body must be a JSON object")
    return body


def _optional_text(body: dict, key: str, limit: int = MAX_TEXT) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > limit or "\x00" in value:
        raise BadRequest(422, f"{key} must be a string of at most {limit} characters")
    return value


def _uuid(body: dict) -> uuid.UUID:
    value = body.get("uuid")
    if value is None or value == "":
        raise BadRequest(422, "uuid is required")
    message = "uuid must be a UUID such as 01234567-89ab-cdef-0123-456789abcdef"
    if not isinstance(value, str):
        raise BadRequest(422, message)
    try:
        return uuid.UUID(value)
    except ValueError:
        raise BadRequest(422, message) from None


def _plan(body: dict) -> plans.Plan:
    value = body.get("plan")
    if value is None or value == "":
        raise BadRequest(422, "plan is required")
    plan = plans.get(value)
    if plan is None:
        shown = value if isinstance(value, str) and len(value) <= 40 else "given"
        raise BadRequest(422, f"unknown plan {shown!r}; plans are {plans.names()}")
    return plan


def _region(body: dict) -> str | None:
    value = body.get("region")
    if value is None:
        return None
    if not isinstance(value, str) or value not in REGIONS:
        raise BadRequest(422, "region is not supported; supported regions are amazon-web-services::"
                              "<us-east-1, eu-west-1, …> (Heroku's names) or us, eu")
    return value


def _drain_token(body: dict) -> str | None:
    value = body.get("log_drain_token")
    if value is None:
        return None
    if not isinstance(value, str) or not DRAIN_TOKEN.match(value):
        raise BadRequest(422, "log_drain_token must be 1 to 200 printable characters without spaces")
    return value


def _log_input_url(body: dict) -> str | None:
    value = body.get("log_input_url")
    if value is None:
        return None
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(value) if isinstance(value, str) else None
        schemes = ("https", "http") if services().settings.allow_private_drains else ("https",)
        ok = (parts is not None and parts.scheme in schemes and bool(parts.hostname)
              and value.isprintable() and " " not in value)
    except ValueError:
        ok = False
    if not ok or len(value) > MAX_URL:
        # Plain http only where private drains are allowed (tests, private networks), like every drain.
        raise BadRequest(422, "log_input_url must be an https URL" if not services().settings.allow_private_drains
                         else "log_input_url must be an http(s) URL")
    return value


def _grant(body: dict) -> tuple[str, datetime] | None:
    value = body.get("oauth_grant")
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BadRequest(422, "oauth_grant must be an object with code and expires_at")
    code, expires = value.get("code"), value.get("expires_at")
    if not isinstance(code, str) or not code or len(code) > 1024:
        raise BadRequest(422, "oauth_grant.code must be a non-empty string")
    try:
        expires_at = datetime.fromisoformat(expires.replace("Z", "+00:00"))
        if expires_at.tzinfo is None:
            raise ValueError
    except (AttributeError, ValueError, TypeError):
        raise BadRequest(422, "oauth_grant.expires_at must be an ISO 8601 time with a zone") from None
    return code, expires_at


def _options(body: dict) -> dict:
    value = body.get("options")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(422, "options must be an object")
    return value


FORGE_OPTIONS = ("app_id", "environment_id", "email", "api_token")


def _first_source(options: dict) -> dict | None:
    """Forge credentials passed as provisioning options (``heroku addons:create forgedrain
    --app_id=… --environment_id=… --email=… --api_token=…``), validated; None when absent."""
    given = {k: options[k] for k in FORGE_OPTIONS if options.get(k) not in (None, "")}
    if not given:
        return None
    missing = [k for k in FORGE_OPTIONS if k not in given]
    if missing:
        raise BadRequest(422, "options " + ", ".join(FORGE_OPTIONS) + " go together to register a "
                              "Forge source; missing: " + ", ".join(missing))
    try:
        return sources.validate(given).values
    except InputError as exc:
        raise BadRequest(422, f"options: {exc.message}") from None


def _owned(conn, resource_id: str, partner: Partner) -> dict | None:
    """The resource if it exists and belongs to ``partner`` (else None: another partner's is 404)."""
    try:
        parsed = uuid.UUID(resource_id)
    except ValueError:
        return None
    row = resources.get_for_update(conn, parsed)
    if row is None or row["partner_id"] != partner.id:
        return None
    return row


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
    if resource["log_drain_token"]:
        body["log_drain_url"] = f"{settings.public_url}/ingest/logplex"
        if issued_drain_token:
            body["log_drain_token"] = resource["log_drain_token"]
    return body


@bp.post("/resources")
def provision():
    partner: Partner = g.partner
    svc = services()
    try:
        body = _body()
        resource_id = _uuid(body)
        plan = _plan(body)
        region = _region(body)
        name = _optional_text(body, "name")
        callback_url = _optional_text(body, "callback_url", MAX_URL)
        drain_token = _drain_token(body)
        log_input_url = _log_input_url(body)
        grant = _grant(body)
        first_source = _first_source(_options(body))
    except BadRequest as exc:
        return refuse(exc.status, exc.message)

    if first_source is not None:
        # Verify before anything is written, and only for a new resource: a
        # replay must answer as the first request did, without calling Atlassian.
        with svc.db.connection() as conn:
            existing = resources.get(conn, resource_id)
        if existing is None:
            refusal = sources.verify(svc.verifier(), first_source)
            if refusal is not None:
                return refuse(refusal.http_status,
                              f"the Forge source in the options could not be registered: {refusal.message}",
                              **(retry_after_header(refusal.retry_after) or {}))

    # An integrator that sends no drain token gets one issued and returned
    # (a replay returns the one stored by the first request).
    issued = drain_token is None and not partner.is_heroku
    if issued:
        drain_token = tokens.new_drain_token()
    asynchronous = grant is not None and partner.is_heroku and svc.settings.heroku_client_secret is not None
    state = "provisioning" if asynchronous else "provisioned"
    digest = tokens.digest(tokens.api_token(svc.settings.secret_key, resource_id, 1))

    with svc.db.connection() as conn, conn.transaction():
        resource = resources.insert(
            conn, resource_id=resource_id, partner_id=partner.id, name=name, plan=plan.name,
            region=region, callback_url=callback_url, state=state, log_drain_token=drain_token,
            api_token_digest=digest,
            grant_code_enc=svc.vault.encrypt(grant[0]) if asynchronous else None,
            grant_expires_at=grant[1] if asynchronous else None,
        )
        created = resource is not None
        if created:
            if log_input_url:
                resources.insert_heroku_drain(conn, resource_id, svc.vault.encrypt(log_input_url),
                                              tokens.new_drain_token())
            audit.record(conn, resource_id, f"partner:{partner.id}", "resource.provisioned",
                         {"plan": plan.name, "region": region, "asynchronous": asynchronous,
                          "log_drain_token": tokens.mask(drain_token),
                          "log_input": log_input_url is not None})
            if first_source is not None:
                source = sources.insert(conn, resource_id, first_source,
                                        svc.vault.encrypt(first_source["api_token"]))
                audit.record(conn, resource_id, f"partner:{partner.id}", "source.created",
                             {"source_id": str(source["id"]), "app_id": source["app_id"],
                              "environment_id": source["environment_id"]})
        else:
            resource = resources.get(conn, resource_id)
            if resource is None:
                # The insert conflicted, but not on this id: the drain token is taken.
                return refuse(422, "log_drain_token is already used by another resource")

    if resource["partner_id"] != partner.id:
        return refuse(409, "uuid is already used by another partner's resource")
    if resource["state"] == "deprovisioned":
        return refuse(410, "this resource was deprovisioned")
    if resource["state"] == "failed":
        return refuse(422, f"provisioning failed: {resource['provision_error']}")
    if created and asynchronous:
        try:
            jobs.enqueue_provision(svc.redis, str(resource_id))
        except redis.RedisError:
            # The clock's tick enqueues due provisions, so this only delays it.
            log.warning("provision resource=%s not enqueued: redis unavailable", resource_id)
    if created:
        log.info("provision resource=%s partner=%s plan=%s state=%s", resource_id, partner.id,
                 plan.name, state)
    status = 202 if resource["state"] == "provisioning" else 200
    return reply(provision_body(resource, issued), status)


@bp.put("/resources/<resource_id>")
def change_plan(resource_id: str):
    partner: Partner = g.partner
    svc = services()
    try:
        plan = _plan(_body())
    except BadRequest as exc:
        return refuse(exc.status, exc.message)
    with svc.db.connection() as conn, conn.transaction():
        row = _owned(conn, resource_id, partner)
        if row is None:
            return refuse(404, "no such resource")
        if row["state"] == "deprovisioned":
            return refuse(410, "this resource was deprovisioned")
        if row["plan"] == plan.name:
            return reply({"message": f"already on plan {plan.name}"})
        sources, drains = resources.usage(conn, row["id"])
        excess = plans.excess(plan, sources, drains)
        if excess:
            return refuse(422, f"plan {plan.name} is too small for this resource: remove "
                               + " and ".join(excess) + " first")
        resources.set_plan(conn, row["id"], plan.name)
        audit.record(conn, row["id"], f"partner:{partner.id}", "resource.plan_changed",
                     {"from": row["plan"], "to": plan.name})
    log.info("plan change resource=%s from=%s to=%s", row["id"], row["plan"], plan.name)
    return reply({"config": {}, "message": f"plan changed to {plan.name}"})


@bp.delete("/resources/<resource_id>")
def deprovision(resource_id: str):
    partner: Partner = g.partner
    svc = services()
    with svc.db.connection() as conn, conn.transaction():
        row = _owned(conn, resource_id, partner)
        if row is None:
            return refuse(404, "no such resource")
        if row["state"] == "deprovisioned":
            return refuse(410, "this resource was already deprovisioned")
        resources.deprovision(conn, row["id"])
        audit.record(conn, row["id"], f"partner:{partner.id}", "resource.deprovisioned", {})
    log.info("deprovision resource=%s partner=%s", row["id"], partner.id)
    return Response(status=204, content_type=CONTENT_TYPE)
