"""A partner's view of its fleet (issue 17 item 2, SPEC §11): ``/partner/v1``.

For any partner — Heroku or an integrator — with the same HTTP Basic
credentials as the Partner API, and only ever its own resources:

- ``GET /partner/v1/resources``: state, plan, created time and health, a page at a
  time by id (``after``, ``limit``), filtered by ``state``, ``plan`` and ``health``;
- ``GET /partner/v1/resources/<id>``: one of them;
- ``GET /partner/v1/usage``: per resource and UTC day, records and bytes received
  and records delivered and dropped per drain kind, as JSON or CSV
  (``format=csv`` or ``Accept: text/csv``);
- ``GET /partner/v1/openapi.json``: this interface's own OpenAPI document.

A query parameter that is unknown or out of range is a 400 naming it; nothing here changes anything.
"""

from __future__ import annotations

import csv
import io
import uuid
from datetime import date, datetime, timedelta, timezone

from flask import Blueprint, Response, g, request, url_for

from broker import fleet, plans, usage
from broker.validation import InputError
from web import services
from web.errors import error, json_response
from web.heroku import authenticate_partner

bp = Blueprint("partner", __name__, url_prefix="/partner/v1")

MAX_LIMIT = 200
MAX_USAGE_RESOURCES = 1000
MAX_USAGE_DAYS = 92
CSV_COLUMNS = (["resource_id", "day", "forge_records", "forge_bytes", "ingest_records", "ingest_bytes"]
               + [f"delivered_{kind}" for kind in usage.DRAIN_KINDS] + [f"dropped_{kind}" for kind in usage.DRAIN_KINDS])


@bp.before_request
def _authenticate():
    return authenticate_partner("application/json")


@bp.errorhandler(InputError)
def _invalid(exc: InputError) -> Response:
    return json_response({"error": "invalid", "message": exc.message, "parameter": exc.field}, 400)


def _params(*allowed: str) -> dict[str, str]:
    """The query parameters, refusing any this view does not know and any given twice."""
    for name in request.args:
        if name not in allowed:
            raise InputError(name, f"unknown parameter {name!r}; this view takes {', '.join(allowed)}")
        if len(request.args.getlist(name)) > 1:
            raise InputError(name, f"{name} is given more than once")
    return request.args.to_dict()


def _choice(params: dict, name: str, choices) -> str | None:
    value = params.get(name)
    if value is not None and value not in choices:
        raise InputError(name, f"{name} must be one of {', '.join(choices)}")
    return value


def _uuid(params: dict, name: str) -> uuid.UUID | None:
    value = params.get(name)
    if value is None:
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InputError(name, f"{name} must be a resource id (a UUID)") from None


def _limit(params: dict, default: int, maximum: int) -> int:
    value = params.get("limit")
    if value is None:
        return default
    if not value.isascii() or not value.isdigit() or not 1 <= int(value) <= maximum:
        raise InputError("limit", f"limit must be a whole number from 1 to {maximum}")
    return int(value)


def _day(params: dict, name: str, default: date) -> date:
    value = params.get(name)
    if value is None:
        return default
    try:
        if len(value) != 10:
            raise ValueError
        return date.fromisoformat(value)
    except ValueError:
        raise InputError(name, f"{name} must be a day as YYYY-MM-DD (UTC)") from None


def _describe(resource: fleet.Resource) -> dict:
    return {
        "id": str(resource.id), "name": resource.name, "state": resource.state, "plan": resource.plan,
        "region": resource.region, "created_at": resource.created_at,
        "provisioned_at": resource.provisioned_at, "deprovisioned_at": resource.deprovisioned_at,
        "health": {
            "status": resource.health, "problems": resource.problems(),
            "sources": {"active": resource.sources_active, "paused": resource.sources_paused,
                        "over_capacity": resource.sources_over_capacity},
            "drains": {"total": resource.drains, "enabled": resource.drains_enabled,
                       "failing": resource.drains_failing},
            "oldest_undelivered_at": resource.oldest_undelivered,
        },
    }


@bp.get("/resources")
def list_resources():
    params = _params("state", "plan", "health", "limit", "after")
    limit = _limit(params, 50, MAX_LIMIT)
    with services().db.connection() as conn:
        found = fleet.page(conn, g.partner.id, limit=limit + 1, after=_uuid(params, "after"),
                           state=_choice(params, "state", fleet.STATES),
                           plan=_choice(params, "plan", sorted(plans.PLANS)),
                           health=_choice(params, "health", fleet.HEALTH))
    more = len(found) > limit
    found = found[:limit]
    return json_response({"resources": [_describe(r) for r in found],
                          "next_after": str(found[-1].id) if more else None})


@bp.get("/resources/<resource_id>")
def show_resource(resource_id: str):
    _params()
    try:
        wanted = uuid.UUID(resource_id)
    except ValueError:
        wanted = None
    found = []
    if wanted is not None:
        with services().db.connection() as conn:
            found = fleet.page(conn, g.partner.id, limit=1, resource_id=wanted)
    if not found:
        return error(404, "not_found", "no such resource of this partner")
    return json_response(_describe(found[0]))


@bp.get("/usage")
def read_usage():
    params = _params("from", "to", "resource_id", "limit", "after", "format")
    today = datetime.now(timezone.utc).date()
    last = _day(params, "to", today)
    first = _day(params, "from", last - timedelta(days=29))
    if first > last:
        raise InputError("from", "from must not be after to")
    if (last - first).days + 1 > MAX_USAGE_DAYS:
        raise InputError("from", f"a usage read covers at most {MAX_USAGE_DAYS} days")
    wanted_csv = (_choice(params, "format", ("json", "csv")) or
                  ("csv" if request.accept_mimetypes.best_match(["application/json", "text/csv"]) == "text/csv"
                   else "json")) == "csv"
    limit = _limit(params, 100, MAX_USAGE_RESOURCES)
    resource_id = _uuid(params, "resource_id")
    with services().db.connection() as conn:
        if resource_id is not None:
            resource_ids = fleet.owned(conn, g.partner.id, [resource_id])
            if not resource_ids:
                return error(404, "not_found", "no such resource of this partner")
            more = False
        else:
            resource_ids = fleet.ids(conn, g.partner.id, limit=limit + 1, after=_uuid(params, "after"))
            more = len(resource_ids) > limit
            resource_ids = resource_ids[:limit]
        days = usage.days(conn, resource_ids, first, last)
    next_after = str(resource_ids[-1]) if more else None
    if wanted_csv:
        return _csv(days, first, last, next_after)
    return json_response({
        "from": first.isoformat(), "to": last.isoformat(), "next_after": next_after,
        "days": [{"resource_id": str(d.resource_id), "day": d.day.isoformat(),
                  "received": {"forge": {"records": d.forge_records, "bytes": d.forge_bytes},
                               "ingest": {"records": d.ingest_records, "bytes": d.ingest_bytes}},
                  "delivered": d.delivered, "dropped": d.dropped} for d in days],
    })


def _csv(days: list[usage.Day], first: date, last: date, next_after: str | None) -> Response:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for d in days:
        writer.writerow([str(d.resource_id), d.day.isoformat(), d.forge_records, d.forge_bytes, d.ingest_records,
                         d.ingest_bytes] + [d.delivered.get(k, 0) for k in usage.DRAIN_KINDS]
                        + [d.dropped.get(k, 0) for k in usage.DRAIN_KINDS])
    headers = {"Content-Disposition": f'attachment; filename="forgedrain-usage-{first}-{last}.csv"'}
    if next_after:
        following = url_for("partner.read_usage", _external=False, **{**request.args.to_dict(),
                                                                     "after": next_after})
        headers["Link"] = f'<{following}>; rel="next"'
    return Response(out.getvalue(), content_type="text/csv; charset=utf-8", headers=headers)


@bp.get("/openapi.json")
def openapi():
    from web import partner_openapi

    return json_response(partner_openapi.document(services().settings.public_url))
