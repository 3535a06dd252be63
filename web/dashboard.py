"""The owner's dashboard, reached through SSO and bound to one resource.

This first page shows what the resource is: name, plan and limits, state,
and whether Heroku's log drain token is set. Sources, drains and charts join
it as they are built.
"""

from __future__ import annotations

import uuid

from flask import Blueprint, abort, make_response, render_template, session

from broker import audit, plans, resources, tokens
from web import services

bp = Blueprint("dashboard", __name__, url_prefix="/dashboard")


def signed_in_resource(resource_id: uuid.UUID) -> None:
    """403 unless this browser signed in, through SSO, to exactly this resource."""
    if session.get("resource_id") != str(resource_id):
        abort(make_response(render_template(
            "sso_denied.html", reason="you are not signed in to this add-on"), 403))


@bp.get("/<uuid:resource_id>")
def show(resource_id: uuid.UUID):
    signed_in_resource(resource_id)
    with services().db.connection() as conn:
        row = resources.get(conn, resource_id)
        if row is None or row["state"] == "deprovisioned":
            session.clear()
            abort(404)
        drains = resources.drains(conn, resource_id)
        entries = audit.recent(conn, resource_id, 20)
    plan = plans.get(row["plan"])
    return render_template(
        "dashboard.html",
        resource=row,
        plan=plan,
        drain_token=tokens.mask(row["log_drain_token"]),
        drains=drains,
        audit_entries=entries,
        user=session.get("user"),
        app_name=session.get("app"),
    )
