"""Forge sources in the resource API: list, create, read, update, delete, verify now (SPEC §2–3).

Credentials are verified against the App logs API before anything is saved,
with no database connection held during that call. A refusal answers 422
naming what is wrong (the email and token, or the app and environment ids);
Atlassian being unreachable or rate limiting answers 502/503, and so does an
app whose shared call budget is spent (503 ``forge_budget_spent`` with
``Retry-After``, before any call) — in every case nothing is written. The
API token is stored encrypted and never returned.
"""

from __future__ import annotations

import logging

from flask import Blueprint, Response, g

from broker import operations, sources
from web import services
from web.errors import json_object_body, json_response, owned

log = logging.getLogger(__name__)

# Nested under web.api's resource blueprint: /v1/resources/<resource_id>/sources, behind its guard.
bp = Blueprint("sources", __name__, url_prefix="/sources")

ACTOR = "api-token"


def _iso(moment):
    return moment.isoformat() if moment else None


def _polling_view(row: dict) -> dict:
    backfill = None
    if row["backfill_from"] is not None and row["backfill_until"] is not None:
        total = (row["backfill_until"] - row["backfill_from"]).total_seconds()
        done = (row["checkpoint"] - row["backfill_from"]).total_seconds()
        backfill = {"from": _iso(row["backfill_from"]), "until": _iso(row["backfill_until"]),
                    "progress": round(min(1.0, max(0.0, done / total)), 4) if total > 0 else 1.0}
    return {
        "checkpoint": _iso(row["checkpoint"]),
        "settled_until": _iso(row["settled_until"]),
        "lag_seconds": row["lag_seconds"],
        "next_poll_at": _iso(row["next_poll_at"]),
        "last_poll_at": _iso(row["last_poll_at"]),
        "last_success_at": _iso(row["last_success_at"]),
        "consecutive_failures": row["consecutive_failures"],
        "backfill": backfill,
    }


def _capacity_view(row: dict) -> dict:
    """Whether the app logs more than its share of the App logs API can export, with the figures."""
    return {
        "over_capacity": row["over_capacity_since"] is not None,
        "since": _iso(row["over_capacity_since"]),
        "density_per_minute": row["density_per_minute"],
        "capacity_per_minute": row["capacity_per_minute"],
        "records_per_page": row["page_records"],
    }


def _unreadable_view(row: dict) -> dict:
    return {"count": row["unreadable"], "sample": row["unreadable_sample"], "last_seen_at": _iso(row["unreadable_at"])}


def source_view(row: dict, vault, gaps: list[dict] | None = None) -> dict:
    token = vault.decrypt(row["api_token_enc"]) if row["api_token_enc"] else None
    view = {
        "id": str(row["id"]),
        "app_id": row["app_id"],
        "environment_id": row["environment_id"],
        "email": row["email"],
        "api_token": sources.mask_secret(token),
        "levels": list(row["levels"]),
        "installation_contexts": list(row["installation_contexts"]),
        "service_name": row["service_name"],
        "environment_label": row["environment_label"],
        "include_arguments": row["include_arguments"],
        "state": row["state"],
        "pause_reason": row["pause_reason"],
        "last_error": row["last_error"],
        "verified_at": row["verified_at"].isoformat() if row["verified_at"] else None,
        "created_at": row["created_at"].isoformat(),
        "updated_at": row["updated_at"].isoformat(),
        "polling": _polling_view(row),
        "capacity": _capacity_view(row),
        "unreadable": _unreadable_view(row),
    }
    if gaps is not None:
        view["gaps"] = [{"from": _iso(g["gap_from"]), "until": _iso(g["gap_until"]), "reason": g["reason"],
                         "recorded_at": _iso(g["recorded_at"])} for g in gaps]
    return view


def get_source(source_id: str) -> dict:
    """The authenticated resource's source ``source_id``, or the JSON 404."""
    return owned(sources.get, source_id, "source")


@bp.get("")
def list_sources():
    svc = services()
    with svc.db.connection() as conn:
        rows = sources.list_for(conn, g.resource["id"])
    return json_response({"sources": [source_view(r, svc.vault) for r in rows]})


@bp.post("")
def create_source():
    svc = services()
    row = operations.create_source(svc.db.connection, svc.vault, svc.verifier(), g.resource["id"],
                                   json_object_body(), actor=ACTOR, calls=svc.owner_calls)
    response = json_response(source_view(row, svc.vault), 201)
    response.headers["Location"] = f"/v1/resources/{g.resource['id']}/sources/{row['id']}"
    return response


@bp.get("/<source_id>")
def read_source(source_id: str):
    row = get_source(source_id)
    with services().db.connection() as conn:
        recorded = sources.gaps(conn, row["id"])
    return json_response(source_view(row, services().vault, recorded))


@bp.post("/<source_id>/backfill")
def backfill_source(source_id: str):
    """Re-poll from a past time (at most 14 days back); progress shows in ``polling.backfill``."""
    row = get_source(source_id)
    svc = services()
    updated = operations.backfill_source(svc.db.connection, g.resource["id"], row["id"],
                                         json_object_body().get("from"), actor=ACTOR)
    return json_response(source_view(updated, svc.vault), 202)


@bp.patch("/<source_id>")
def update_source(source_id: str):
    current = get_source(source_id)
    svc = services()
    row, _ = operations.update_source(svc.db.connection, svc.vault, svc.verifier(), g.resource["id"],
                                      current["id"], json_object_body(), actor=ACTOR,
                                      calls=svc.owner_calls)
    return json_response(source_view(row, svc.vault))


@bp.delete("/<source_id>")
def delete_source(source_id: str):
    row = get_source(source_id)
    operations.delete_source(services().db.connection, g.resource["id"], row["id"], actor=ACTOR)
    return Response(status=204)


@bp.post("/<source_id>/verify")
def verify_source(source_id: str):
    """Check the stored credentials with Atlassian now. A refusal is an answer (200, ``ok`` false, the
    source paused); Atlassian being unavailable says nothing about the source (502/503)."""
    row = get_source(source_id)
    svc = services()
    updated, refusal = operations.verify_source(svc.db.connection, svc.vault, svc.verifier(), g.resource["id"],
                                                row["id"], actor=ACTOR, calls=svc.owner_calls)
    return json_response({
        "source": source_view(updated, svc.vault),
        "verification": {"ok": refusal is None,
                         "message": refusal.message if refusal else "Atlassian accepted the credentials"},
    })
