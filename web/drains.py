"""Drains in the resource API: list, create, read, update, delete, test, rotate token (SPEC §2, §4).

Secrets (a URL's password, OTLP headers) are stored encrypted and shown
masked; the drain's broker-issued ``d.<uuid>`` token is shown in full, since
it is what the receiver uses to recognise the drain.
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import datetime, timezone

import orjson
from flask import Blueprint, Response, request

from broker import audit, drains, plans, resources, sources
from broker.validation import InputError
from web import services
from web.api import authenticated, invalid, json_object_body, owned
from web.errors import error, json_response

log = logging.getLogger(__name__)

bp = Blueprint("drains", __name__, url_prefix="/v1/resources/<resource_id>/drains")

ACTOR = "api-token"


def drain_view(row: dict, vault, backlog: int | None = None) -> dict:
    url = vault.decrypt(row["url_enc"]) if row["url_enc"] else None
    headers = orjson.loads(vault.decrypt(row["headers_enc"])) if row["headers_enc"] else {}
    view = {
        "id": str(row["id"]),
        "kind": row["kind"],
        "name": row["name"],
        # The heroku drain's URL is Heroku's log_input_url with its token: never shown.
        "url": None if row["kind"] == "heroku" else drains.masked_url(url),
        "token": row["token"],
        "enabled": row["enabled"],
        "settings": row["settings"],
        "headers": {name: "****" for name in headers},
        "delivery": {
            "delivered": row["delivered"], "retried": row["retried"], "dropped": row["dropped"],
            "rejected": row["rejected"], "consecutive_failures": row["consecutive_failures"],
            "last_error": row["last_error"],
            "last_delivery_at": row["last_delivery_at"].isoformat() if row["last_delivery_at"] else None,
            "next_attempt_at": row["next_attempt_at"].isoformat(),
        },
        "created_at": row["created_at"].isoformat(),
        "updated_at": row["updated_at"].isoformat(),
    }
    if backlog is not None:
        view["delivery"]["backlog"] = backlog
    return view


def _authorized_drain(resource_id: str, drain_id: str):
    return owned(resource_id, drain_id, drains.get, "drain")


def _detail(row: dict, changed: list[str] | None = None) -> dict:
    detail = {"drain_id": str(row["id"]), "kind": row["kind"]}
    if changed is not None:
        detail["changed"] = changed
    return detail


@bp.get("")
def list_drains(resource_id: str):
    resource, failure = authenticated(resource_id)
    if failure is not None:
        return failure
    svc = services()
    with svc.db.connection() as conn:
        rows = drains.list_for(conn, resource["id"])
        backlogs = drains.backlogs(conn, resource["id"])
    return json_response({"drains": [drain_view(r, svc.vault, backlogs.get(r["id"], 0)) for r in rows]})


@bp.post("")
def create_drain(resource_id: str):
    resource, failure = authenticated(resource_id)
    if failure is not None:
        return failure
    svc = services()
    try:
        values = drains.validate(json_object_body(), allow_private=svc.settings.allow_private_drains).values
    except InputError as exc:
        return invalid(exc)
    headers_enc = svc.vault.encrypt(orjson.dumps(values["headers"]).decode()) if values.get("headers") else None
    with svc.db.connection() as conn, conn.transaction():
        locked = resources.get_for_update(conn, resource["id"])
        plan = plans.get(locked["plan"])
        if drains.count_owned(conn, resource["id"]) >= plan.max_drains:
            return error(422, "plan_limit", f"plan {plan.name} allows {plan.max_drains} drains; "
                                            "delete one or change plan first")
        row = drains.insert(conn, resource["id"], values, svc.vault.encrypt(values["url"]), headers_enc)
        audit.record(conn, resource["id"], ACTOR, "drain.created", _detail(row))
    log.info("drain created resource=%s drain=%s kind=%s", resource["id"], row["id"], row["kind"])
    response = json_response(drain_view(row, svc.vault), 201)
    response.headers["Location"] = f"/v1/resources/{resource['id']}/drains/{row['id']}"
    return response


@bp.get("/<drain_id>")
def read_drain(resource_id: str, drain_id: str):
    _, row, failure = _authorized_drain(resource_id, drain_id)
    if failure is not None:
        return failure
    svc = services()
    with svc.db.connection() as conn:
        backlog = drains.backlog(conn, row)
    return json_response(drain_view(row, svc.vault, backlog))


@bp.patch("/<drain_id>")
def update_drain(resource_id: str, drain_id: str):
    resource, row, failure = _authorized_drain(resource_id, drain_id)
    if failure is not None:
        return failure
    svc = services()
    try:
        body = json_object_body()
        values = drains.validate(body, allow_private=svc.settings.allow_private_drains, current=row).values
    except InputError as exc:
        return invalid(exc)
    url_enc = svc.vault.encrypt(values["url"]) if "url" in values else None
    headers_enc = svc.vault.encrypt(orjson.dumps(values["headers"]).decode()) if "headers" in values else None
    with svc.db.connection() as conn, conn.transaction():
        if drains.get(conn, resource["id"], row["id"], for_update=True) is None:
            return error(404, "not_found", "no such drain")
        updated = drains.update(conn, row["id"], values, url_enc, headers_enc)
        audit.record(conn, resource["id"], ACTOR, "drain.updated", _detail(row, sorted(body)))
    return json_response(drain_view(updated, svc.vault))


@bp.delete("/<drain_id>")
def delete_drain(resource_id: str, drain_id: str):
    resource, row, failure = _authorized_drain(resource_id, drain_id)
    if failure is not None:
        return failure
    if row["kind"] == "heroku":
        return error(422, "invalid", "the heroku drain is the app's own log stream: disable it instead "
                                     "(PATCH {\"enabled\": false})")
    with services().db.connection() as conn, conn.transaction():
        drains.delete(conn, row["id"])
        audit.record(conn, resource["id"], ACTOR, "drain.deleted", _detail(row))
    return Response(status=204)


@bp.post("/<drain_id>/token")
def rotate_drain_token(resource_id: str, drain_id: str):
    resource, row, failure = _authorized_drain(resource_id, drain_id)
    if failure is not None:
        return failure
    svc = services()
    with svc.db.connection() as conn, conn.transaction():
        updated = drains.rotate_token(conn, row["id"])
        audit.record(conn, resource["id"], ACTOR, "drain.token_rotated", _detail(row))
    return json_response(drain_view(updated, svc.vault))


TEST_MESSAGE_CHARS = 1000


@bp.post("/<drain_id>/test")
def test_drain(resource_id: str, drain_id: str):
    """Send one test record through the drain now, as a delivery would; the answer says what happened.

    The record goes out in the drain's own format (a Forge record from the
    resource's first source, or ``forgedrain`` when it has none) and does not
    touch the drain's cursor or counters. 200 when the receiver accepted it;
    502 with the reason when it did not (a 4xx/5xx, a refused certificate, an
    unreachable or private address).
    """
    resource, row, failure = _authorized_drain(resource_id, drain_id)
    if failure is not None:
        return failure
    message = "Forge Drain test record: if you can read this, the drain works."
    if request.get_data():
        try:
            body = json_object_body()
            if set(body) - {"message"}:
                raise InputError(sorted(set(body) - {"message"})[0], "the only field is message")
            if "message" in body:
                message = body["message"]
                if not isinstance(message, str) or not 1 <= len(message) <= TEST_MESSAGE_CHARS:
                    raise InputError("message", f"message must be 1 to {TEST_MESSAGE_CHARS} characters")
        except InputError as exc:
            return invalid(exc)
    svc = services()
    with svc.db.connection() as conn:
        first = sources.list_for(conn, resource["id"])
    source = first[0] if first else {"service_name": "forgedrain"}
    invocation = f"forgedrain-test-{uuid.uuid4()}"
    now = time.time_ns()
    record = {"timeUnixNano": str(now), "observedTimeUnixNano": str(now), "severityText": "INFO",
              "severityNumber": 9, "body": {"stringValue": message},
              "attributes": [{"key": "invocationId", "value": {"stringValue": invocation}},
                             {"key": "functionKey", "value": {"stringValue": "forgedrain-test"}}]}
    result = svc.deliverer().probe(row, [record], source)
    with svc.db.connection() as conn, conn.transaction():
        audit.record(conn, resource["id"], ACTOR, "drain.tested",
                     {**_detail(row), "outcome": result.outcome, "status": result.status})
    log.info("drain test resource=%s drain=%s kind=%s outcome=%s status=%s", resource["id"], row["id"],
             row["kind"], result.outcome, result.status)
    sent = {"invocation_id": invocation, "message": message,
            "time": datetime.fromtimestamp(now / 1e9, timezone.utc).isoformat()}
    if result.outcome == "delivered":
        return json_response({"delivered": True, "status": result.status, "record": sent})
    return json_response({"error": "test_failed", "delivered": False, "status": result.status,
                          "message": result.detail or "the receiver did not accept the record",
                          "retryable": result.outcome == "retry", "record": sent}, 502)
