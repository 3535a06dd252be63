"""Alerts in the resource API: the resource's alerts, and its alert webhook (issue 16 item 2, SPEC §10).

- ``GET /alerts``: ``{"open": [...], "recent": [...]}``, newest first.
- ``PUT /alert-webhook`` ``{"url": "https://…"}``: set (201) or replace (200) the webhook; the
  answer carries its new signing secret, shown this once (``Cache-Control: no-store``).
- ``GET /alert-webhook``: the host it points at (never the URL: it may hold a key) and how
  delivery stands; ``DELETE`` removes it; ``POST /alert-webhook/test`` sends a signed test notice.

Nested under ``web.api``'s resource blueprint, behind its guard and error handlers.
"""

from __future__ import annotations

from flask import Blueprint, Response, g

from broker import alert_webhook, operations
from broker.vault import VaultError
from web import services
from web.errors import json_object_body, json_response, test_message

bp = Blueprint("alerts", __name__)

ACTOR = "api-token"


def _time(moment) -> str | None:
    return moment.isoformat() if moment else None


def alert_view(alert: alert_webhook.Alert) -> dict:
    return {"id": alert.id, "condition": alert.condition, "subject_id": str(alert.subject_id),
            "subject_name": alert.subject_name, "detail": alert.detail, "raised_at": _time(alert.raised_at),
            "recovered_at": _time(alert.recovered_at), "message": alert.message}


def webhook_view(row: alert_webhook.Webhook, vault, pending: int) -> dict:
    try:
        host = alert_webhook.host(vault.decrypt(row.url_enc))
    except VaultError:  # the key it was saved with is gone: PUT it again
        host = None
    return {
        "host": host,
        "delivery": {
            "pending": pending, "delivered": row.delivered, "dropped": row.dropped, "retried": row.retried,
            "consecutive_failures": row.consecutive_failures, "last_error": row.last_error,
            "last_delivery_at": _time(row.last_delivery_at), "next_attempt_at": _time(row.next_attempt_at),
        },
        "created_at": _time(row.created_at),
        "updated_at": _time(row.updated_at),
    }


@bp.get("/alerts")
def list_alerts():
    with services().db.connection() as conn:
        opened = alert_webhook.open_alerts(conn, g.resource["id"])
        recent = alert_webhook.recent_alerts(conn, g.resource["id"])
    return json_response({"open": [alert_view(a) for a in opened], "recent": [alert_view(a) for a in recent]})


@bp.get("/alert-webhook")
def read_webhook():
    svc = services()
    with svc.db.connection() as conn:
        row = alert_webhook.get(conn, g.resource["id"])
        waiting = alert_webhook.pending(conn, g.resource["id"], row.cursor) if row else 0
    if row is None:
        raise operations.NotFound("no alert webhook is set")
    return json_response(webhook_view(row, svc.vault, waiting))


@bp.put("/alert-webhook")
def set_webhook():
    svc = services()
    done = operations.set_alert_webhook(svc.db.connection, svc.vault, g.resource["id"], json_object_body(),
                                        actor=ACTOR, allow_private=svc.settings.allow_private_drains)
    with svc.db.connection() as conn:
        waiting = alert_webhook.pending(conn, g.resource["id"], done.webhook.cursor)
    view = {**webhook_view(done.webhook, svc.vault, waiting), "secret": done.secret}
    return json_response(view, 201 if done.created else 200, headers={"Cache-Control": "no-store"})


@bp.delete("/alert-webhook")
def delete_webhook():
    operations.delete_alert_webhook(services().db.connection, g.resource["id"], actor=ACTOR)
    return Response(status=204)


@bp.post("/alert-webhook/test")
def test_webhook():
    """Send one signed test notice now (``change`` and ``condition`` are ``test``); the answer says
    what happened: 200 when the receiver accepted it, 502 with the reason when it did not."""
    svc = services()
    outcome = operations.test_alert_webhook(svc.db.connection, svc.wire(), svc.vault, g.resource["id"],
                                            actor=ACTOR, message=test_message(), calls=svc.owner_calls)
    if outcome.delivered:
        return json_response({"delivered": True, "status": outcome.status})
    return json_response({"error": "test_failed", "delivered": False, "status": outcome.status,
                          "message": outcome.message, "retryable": outcome.retryable}, 502)
