"""Drains in the resource API: list, create, read, update, delete, test, rotate token (SPEC §2, §4).

Secrets (a URL's password, OTLP headers) are stored encrypted and shown
masked; the drain's broker-issued ``d.<uuid>`` token is shown in full, since
it is what the receiver uses to recognise the drain.
"""

from __future__ import annotations

import logging

import orjson
from flask import Blueprint, Response, request

from broker import drains, operations, outbox
from broker.validation import InputError
from broker.vault import VaultError
from web import services
from web.api import authenticated, json_object_body, operation_failed, owned
from web.errors import error, json_response

log = logging.getLogger(__name__)

bp = Blueprint("drains", __name__, url_prefix="/v1/resources/<resource_id>/drains")

ACTOR = "api-token"


def drain_view(row: dict, vault, backlog: int | None = None) -> dict:
    try:
        url = vault.decrypt(row["url_enc"]) if row["url_enc"] else None
        headers = orjson.loads(vault.decrypt(row["headers_enc"])) if row["headers_enc"] else {}
    except VaultError:  # the key they were saved with is gone: shown as such, re-entered by the owner
        url, headers = None, {}
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
            # Set when the drain's URL or headers could not be decrypted: re-enter them (PATCH url/headers).
            "secret_lost_at": row["secret_lost_at"].isoformat() if row["secret_lost_at"] else None,
        },
        "created_at": row["created_at"].isoformat(),
        "updated_at": row["updated_at"].isoformat(),
    }
    if backlog is not None:
        view["delivery"]["backlog"] = backlog
    return view


def _authorized_drain(resource_id: str, drain_id: str):
    return owned(resource_id, drain_id, drains.get, "drain")


@bp.get("")
def list_drains(resource_id: str):
    resource, failure = authenticated(resource_id)
    if failure is not None:
        return failure
    svc = services()
    with svc.db.connection() as conn:
        rows = drains.list_for(conn, resource["id"])
        backlogs = outbox.backlogs(conn, resource["id"])
    return json_response({"drains": [drain_view(r, svc.vault, backlogs.get(r["id"], outbox.Backlog()).records)
                                     for r in rows]})


@bp.post("")
def create_drain(resource_id: str):
    resource, failure = authenticated(resource_id)
    if failure is not None:
        return failure
    svc = services()
    try:
        row = operations.create_drain(svc.db.connection, svc.vault, resource["id"], json_object_body(),
                                      actor=ACTOR, allow_private=svc.settings.allow_private_drains)
    except (InputError, operations.OperationError) as exc:
        return operation_failed(exc)
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
        backlog = outbox.backlog(conn, row["resource_id"], row["id"])
    return json_response(drain_view(row, svc.vault, backlog.records))


@bp.patch("/<drain_id>")
def update_drain(resource_id: str, drain_id: str):
    resource, row, failure = _authorized_drain(resource_id, drain_id)
    if failure is not None:
        return failure
    svc = services()
    try:
        updated, _ = operations.update_drain(svc.db.connection, svc.vault, resource["id"], row["id"],
                                             json_object_body(), actor=ACTOR,
                                             allow_private=svc.settings.allow_private_drains)
    except (InputError, operations.OperationError) as exc:
        return operation_failed(exc)
    return json_response(drain_view(updated, svc.vault))


@bp.delete("/<drain_id>")
def delete_drain(resource_id: str, drain_id: str):
    resource, row, failure = _authorized_drain(resource_id, drain_id)
    if failure is not None:
        return failure
    try:
        operations.delete_drain(services().db.connection, resource["id"], row["id"], actor=ACTOR)
    except InputError:
        return error(422, "invalid", "the heroku drain is the app's own log stream: disable it instead "
                                     "(PATCH {\"enabled\": false})")
    except operations.OperationError as exc:
        return operation_failed(exc)
    return Response(status=204)


@bp.post("/<drain_id>/token")
def rotate_drain_token(resource_id: str, drain_id: str):
    resource, row, failure = _authorized_drain(resource_id, drain_id)
    if failure is not None:
        return failure
    svc = services()
    try:
        updated = operations.rotate_drain_token(svc.db.connection, resource["id"], row["id"], actor=ACTOR)
    except operations.OperationError as exc:
        return operation_failed(exc)
    return json_response(drain_view(updated, svc.vault))


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
    svc = services()
    try:
        message = None
        if request.get_data():
            body = json_object_body()
            if set(body) - {"message"}:
                raise InputError(sorted(set(body) - {"message"})[0], "the only field is message")
            message = body.get("message", operations.TEST_MESSAGE)
        outcome = operations.test_drain(svc.db.connection, svc.wire(), svc.vault, resource["id"], row["id"],
                                        actor=ACTOR, message=message)
    except (InputError, operations.OperationError) as exc:
        return operation_failed(exc)
    if outcome.delivered:
        return json_response({"delivered": True, "status": outcome.status, "record": outcome.record})
    return json_response({"error": "test_failed", "delivered": False, "status": outcome.status,
                          "message": outcome.message, "retryable": outcome.retryable,
                          "record": outcome.record}, 502)
