"""Drains in the resource API: list, create, read, update, delete, test, rotate token (SPEC §2, §4).

Secrets (a URL's password, OTLP headers) are stored encrypted and shown
masked; the drain's broker-issued ``d.<uuid>`` token is shown in full, since
it is what the receiver uses to recognise the drain.

A drain's ``rules`` (:mod:`broker.rules`) are checked before anything is
written (by :mod:`broker.operations`, that they name only this resource's
sources under its lock); problems answer 422 ``invalid_rules`` listing every
one with its field path (``problems``).
"""

from __future__ import annotations

import logging

import orjson
from flask import Blueprint, Response, g

from broker import drains, operations, outbox, rules
from broker.validation import InputError
from broker.vault import VaultError
from web import services
from web.errors import error, json_object_body, json_response, owned, test_message

log = logging.getLogger(__name__)

# Nested under web.api's resource blueprint: /v1/resources/<resource_id>/drains, behind its guard.
bp = Blueprint("drains", __name__, url_prefix="/drains")

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
        "rules": row["rules"] or {},
        "delivery": {
            "delivered": row["delivered"], "retried": row["retried"], "dropped": row["dropped"],
            "rejected": row["rejected"], "filtered": row["filtered"], "redacted": row["redacted"],
            "consecutive_failures": row["consecutive_failures"],
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


@bp.errorhandler(rules.RulesInvalid)
def invalid_rules(exc: rules.RulesInvalid) -> Response:
    """422 naming every problem of the submitted rules (``field``: the first one's path)."""
    return json_response({"error": "invalid_rules", "message": exc.message, "field": exc.field,
                          "problems": [{"field": path, "message": message} for path, message in exc.problems]},
                         422)


def get_drain(drain_id: str) -> dict:
    """The authenticated resource's drain ``drain_id``, or the JSON 404."""
    return owned(drains.get, drain_id, "drain")


@bp.get("")
def list_drains():
    svc = services()
    with svc.db.connection() as conn:
        rows = drains.list_for(conn, g.resource["id"])
        backlogs = outbox.backlogs(conn, g.resource["id"])
    return json_response({"drains": [drain_view(r, svc.vault, backlogs.get(r["id"], outbox.Backlog()).records)
                                     for r in rows]})


@bp.post("")
def create_drain():
    svc = services()
    body = json_object_body()
    row = operations.create_drain(svc.db.connection, svc.vault, g.resource["id"], body,
                                  actor=ACTOR, allow_private=svc.settings.allow_private_drains)
    response = json_response(drain_view(row, svc.vault), 201)
    response.headers["Location"] = f"/v1/resources/{g.resource['id']}/drains/{row['id']}"
    return response


@bp.get("/<drain_id>")
def read_drain(drain_id: str):
    row = get_drain(drain_id)
    svc = services()
    with svc.db.connection() as conn:
        backlog = outbox.backlog(conn, row["resource_id"], row["id"])
    return json_response(drain_view(row, svc.vault, backlog.records))


@bp.patch("/<drain_id>")
def update_drain(drain_id: str):
    row = get_drain(drain_id)
    svc = services()
    body = json_object_body()
    updated, _ = operations.update_drain(svc.db.connection, svc.vault, g.resource["id"], row["id"], body,
                                         actor=ACTOR, allow_private=svc.settings.allow_private_drains)
    return json_response(drain_view(updated, svc.vault))


@bp.delete("/<drain_id>")
def delete_drain(drain_id: str):
    row = get_drain(drain_id)
    try:
        operations.delete_drain(services().db.connection, g.resource["id"], row["id"], actor=ACTOR)
    except InputError:  # the API says what to do instead, in its own words
        return error(422, "invalid", "the heroku drain is the app's own log stream: disable it instead "
                                     "(PATCH {\"enabled\": false})")
    return Response(status=204)


@bp.post("/<drain_id>/token")
def rotate_drain_token(drain_id: str):
    row = get_drain(drain_id)
    svc = services()
    updated = operations.rotate_drain_token(svc.db.connection, g.resource["id"], row["id"], actor=ACTOR)
    return json_response(drain_view(updated, svc.vault))


@bp.post("/<drain_id>/test")
def test_drain(drain_id: str):
    """Send one test record through the drain now, as a delivery would; the answer says what happened.

    The record goes out in the drain's own format (a Forge record from the
    resource's first source, or ``forgedrain`` when it has none) and does not
    touch the drain's cursor or counters. 200 when the receiver accepted it;
    502 with the reason when it did not (a 4xx/5xx, a refused certificate, an
    unreachable or private address). The drain's rules redact the record as they
    would a delivered one (``record.message`` is what was sent); one they would
    filter out is sent anyway, and ``rules.filtered`` says so.
    """
    row = get_drain(drain_id)
    svc = services()
    outcome = operations.test_drain(svc.db.connection, svc.wire(), svc.vault, g.resource["id"], row["id"],
                                    actor=ACTOR, message=test_message(), calls=svc.owner_calls)
    if outcome.delivered:
        return json_response({"delivered": True, "status": outcome.status, "record": outcome.record,
                              "rules": outcome.rules})
    return json_response({"error": "test_failed", "delivered": False, "status": outcome.status,
                          "message": outcome.message, "retryable": outcome.retryable,
                          "record": outcome.record, "rules": outcome.rules}, 502)
