"""Forge sources in the resource API: list, create, read, update, delete, verify now (SPEC §2–3).

Credentials are verified against the App logs API before anything is saved,
with no database connection held during that call. A refusal answers 422
naming what is wrong (the email and token, or the app and environment ids);
Atlassian being unreachable or rate limiting answers 502/503 — in every case
nothing is written. The API token is stored encrypted and never returned.
"""

from __future__ import annotations

import logging

import psycopg
from flask import Blueprint, Response

from broker import audit, plans, resources, sources
from broker.validation import InputError
from web import services
from web.api import authenticated, invalid, json_object_body, owned
from web.errors import error, json_response

log = logging.getLogger(__name__)

bp = Blueprint("sources", __name__, url_prefix="/v1/resources/<resource_id>/sources")

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
        "next_poll_at": _iso(row["next_poll_at"]),
        "last_poll_at": _iso(row["last_poll_at"]),
        "last_success_at": _iso(row["last_success_at"]),
        "consecutive_failures": row["consecutive_failures"],
        "backfill": backfill,
    }


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
    }
    if gaps is not None:
        view["gaps"] = [{"from": _iso(g["gap_from"]), "until": _iso(g["gap_until"]), "reason": g["reason"],
                         "recorded_at": _iso(g["recorded_at"])} for g in gaps]
    return view


def _refused(refusal: sources.Refusal) -> Response:
    headers = {"Retry-After": str(max(1, int(refusal.retry_after)))} if refusal.retry_after else None
    return error(refusal.http_status, refusal.code, refusal.message, headers=headers)


def _verify(values: dict) -> sources.Refusal | None:
    """Verify credentials and ids; None when Atlassian accepts them."""
    refusal = sources.verify(services().forge(), values)
    if refusal is not None:
        log.info("source verification refused app=%s code=%s", values["app_id"], refusal.code)
    return refusal


def _limit_message(plan: plans.Plan) -> str:
    return (f"plan {plan.name} allows {plan.max_sources} source{'s' if plan.max_sources > 1 else ''}; "
            "delete one or change plan first")


def _authorized_source(resource_id: str, source_id: str):
    return owned(resource_id, source_id, sources.get, "source")


@bp.get("")
def list_sources(resource_id: str):
    resource, failure = authenticated(resource_id)
    if failure is not None:
        return failure
    svc = services()
    with svc.db.connection() as conn:
        rows = sources.list_for(conn, resource["id"])
    return json_response({"sources": [source_view(r, svc.vault) for r in rows]})


@bp.post("")
def create_source(resource_id: str):
    resource, failure = authenticated(resource_id)
    if failure is not None:
        return failure
    svc = services()
    try:
        submitted = sources.validate(json_object_body())
    except InputError as exc:
        return invalid(exc)
    values = submitted.values
    plan = plans.get(resource["plan"])
    with svc.db.connection() as conn:
        if sources.count(conn, resource["id"]) >= plan.max_sources:
            return error(422, "plan_limit", _limit_message(plan))
    refusal = _verify(values)
    if refusal is not None:
        return _refused(refusal)
    try:
        with svc.db.connection() as conn, conn.transaction():
            # Lock the resource so two creates cannot both pass the limit check.
            locked = resources.get_for_update(conn, resource["id"])
            plan = plans.get(locked["plan"])
            if sources.count(conn, resource["id"]) >= plan.max_sources:
                return error(422, "plan_limit", _limit_message(plan))
            row = sources.insert(conn, resource["id"], values, svc.vault.encrypt(values["api_token"]))
            audit.record(conn, resource["id"], ACTOR, "source.created", _audit_detail(row))
    except psycopg.errors.UniqueViolation:
        return error(409, "duplicate", f"app {values['app_id']} environment {values['environment_id']} "
                                       "is already a source of this resource")
    log.info("source created resource=%s source=%s app=%s", resource["id"], row["id"], row["app_id"])
    response = json_response(source_view(row, svc.vault), 201)
    response.headers["Location"] = f"/v1/resources/{resource['id']}/sources/{row['id']}"
    return response


def _audit_detail(row: dict, changed: list[str] | None = None) -> dict:
    detail = {"source_id": str(row["id"]), "app_id": row["app_id"],
              "environment_id": row["environment_id"]}
    if changed is not None:
        detail["changed"] = changed
    return detail


@bp.get("/<source_id>")
def read_source(resource_id: str, source_id: str):
    _, row, failure = _authorized_source(resource_id, source_id)
    if failure is not None:
        return failure
    with services().db.connection() as conn:
        recorded = sources.gaps(conn, row["id"])
    return json_response(source_view(row, services().vault, recorded))


@bp.post("/<source_id>/backfill")
def backfill_source(resource_id: str, source_id: str):
    """Re-poll from a past time (at most 14 days back); progress shows in ``polling.backfill``."""
    resource, row, failure = _authorized_source(resource_id, source_id)
    if failure is not None:
        return failure
    svc = services()
    try:
        body = json_object_body()
        start = sources.parse_time(body.get("from") if isinstance(body, dict) else None, "from")
        with svc.db.connection() as conn:
            updated = sources.backfill(conn, row["id"], start, actor=ACTOR, resource_id=resource["id"])
    except InputError as exc:
        return invalid(exc)
    if updated is None:
        return error(404, "not_found", "no such source")
    log.info("backfill source=%s from=%s", row["id"], start.isoformat())
    return json_response(source_view(updated, svc.vault), 202)


@bp.patch("/<source_id>")
def update_source(resource_id: str, source_id: str):
    resource, current, failure = _authorized_source(resource_id, source_id)
    if failure is not None:
        return failure
    try:
        changes = sources.validate(json_object_body(), partial=True).values
    except InputError as exc:
        return invalid(exc)
    svc = services()
    sid = str(current["id"])
    if not changes:
        return error(422, "invalid", "nothing to change: send at least one field")
    stored_token = svc.vault.decrypt(current["api_token_enc"]) if current["api_token_enc"] else None
    changed = [f for f in changes if (stored_token if f == "api_token" else current[f]) != changes[f]]
    needs_verification = any(f in sources.VERIFIED_FIELDS for f in changed)
    if needs_verification:
        merged = {f: current[f] for f in ("app_id", "environment_id", "email")}
        merged["api_token"] = stored_token
        merged.update({f: changes[f] for f in sources.VERIFIED_FIELDS if f in changes})
        refusal = _verify(merged)
        if refusal is not None:
            return _refused(refusal)
    token_enc = svc.vault.encrypt(changes["api_token"]) if "api_token" in changed else None
    try:
        with svc.db.connection() as conn, conn.transaction():
            if sources.get(conn, resource["id"], sid, for_update=True) is None:
                return error(404, "not_found", "no such source")
            row = sources.update(conn, sid, {f: changes[f] for f in changed}, token_enc,
                                 verified=needs_verification)
            if changed:
                audit.record(conn, resource["id"], ACTOR, "source.updated", _audit_detail(row, changed))
    except psycopg.errors.UniqueViolation:
        return error(409, "duplicate", "that app environment is already a source of this resource")
    return json_response(source_view(row, svc.vault))


@bp.delete("/<source_id>")
def delete_source(resource_id: str, source_id: str):
    resource, row, failure = _authorized_source(resource_id, source_id)
    if failure is not None:
        return failure
    svc = services()
    sid = str(row["id"])
    with svc.db.connection() as conn, conn.transaction():
        if sources.get(conn, resource["id"], sid, for_update=True) is None:
            return error(404, "not_found", "no such source")
        sources.delete(conn, sid)
        audit.record(conn, resource["id"], ACTOR, "source.deleted", _audit_detail(row))
    log.info("source deleted resource=%s source=%s", resource["id"], sid)
    return Response(status=204)


@bp.post("/<source_id>/verify")
def verify_source(resource_id: str, source_id: str):
    resource, row, failure = _authorized_source(resource_id, source_id)
    if failure is not None:
        return failure
    svc = services()
    sid = str(row["id"])
    values = {"app_id": row["app_id"], "environment_id": row["environment_id"], "email": row["email"],
              "api_token": svc.vault.decrypt(row["api_token_enc"]) if row["api_token_enc"] else ""}
    refusal = _verify(values)
    if refusal is not None and refusal.pause_reason is None:
        return _refused(refusal)  # Atlassian unavailable: says nothing about the source
    with svc.db.connection() as conn, conn.transaction():
        updated = sources.record_verification(
            conn, sid, refusal.pause_reason if refusal else None, refusal.message if refusal else None)
        audit.record(conn, resource["id"], ACTOR, "source.verified",
                     {**_audit_detail(row), "ok": refusal is None})
    return json_response({
        "source": source_view(updated, svc.vault),
        "verification": {"ok": refusal is None,
                         "message": refusal.message if refusal else "Atlassian accepted the credentials"},
    })
