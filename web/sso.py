"""Single sign-on from the Heroku dashboard (SPEC §1; research heroku-addon-and-logplex.md §4).

Heroku POSTs a form (older flows GET a query string) to the manifest's
``sso_url``. Three tokens are accepted, all over the same salted secret:

- ``user_scoped_resource_token = sha256(uuid:salt:timestamp:user_id:email)``
  (newest; binds the user);
- ``resource_token = sha1(uuid:salt:timestamp)`` (v3);
- legacy ``id`` + ``token = sha1(id:salt:timestamp)``, what kensa sends; our
  ``id`` is the uuid, so it is the v3 formula under other field names.

A timestamp older than five minutes (or more than a minute ahead), a wrong
token, or an unknown or deprovisioned resource gets 403. Success starts a
session bound to that one resource, sets ``heroku-nav-data`` to the posted
``nav-data``, and redirects to the resource's dashboard.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
import uuid

from flask import Blueprint, make_response, redirect, render_template, request, session, url_for

from broker import audit, resources
from web import services

log = logging.getLogger(__name__)

bp = Blueprint("sso", __name__)

WINDOW_SECONDS = 300
# Clocks drift; a token from slightly in the future is still fresh.
FUTURE_SKEW_SECONDS = 60
MAX_FIELD = 512


def _denied(reason: str):
    log.info("sso refused reason=%s", reason.replace(" ", "_"))
    body = render_template("sso_denied.html", reason=reason)
    return make_response(body, 403)


def expected_tokens(resource_id: str, salt: str, timestamp: str, user_id: str | None,
                    email: str | None) -> dict[str, str]:
    base = f"{resource_id}:{salt}:{timestamp}"
    tokens = {"resource_token": hashlib.sha1(base.encode()).hexdigest()}
    if user_id is not None and email is not None:
        tokens["user_scoped_resource_token"] = hashlib.sha256(
            f"{base}:{user_id}:{email}".encode()
        ).hexdigest()
    return tokens


@bp.route("/sso/login", methods=["GET", "POST"])
def login():
    fields = request.form if request.method == "POST" else request.args
    get = lambda name: (fields.get(name) or None)  # noqa: E731
    if any(len(v) > MAX_FIELD for v in fields.values()):
        return _denied("a form field is too long")

    resource_id = get("resource_id") or get("id")
    timestamp = get("timestamp")
    if not resource_id or not timestamp:
        return _denied("the sign-in request is incomplete")
    try:
        parsed_id = uuid.UUID(resource_id)
        stamp = int(timestamp)
    except ValueError:
        return _denied("the sign-in request is malformed")
    now = time.time()
    if now - stamp > WINDOW_SECONDS or stamp - now > FUTURE_SKEW_SECONDS:
        return _denied("the sign-in link has expired; open the add-on from Heroku again")

    user_id, email = get("user_id"), get("email")
    expected = expected_tokens(resource_id, services().settings.sso_salt, timestamp, user_id, email)
    if get("user_scoped_resource_token"):
        given, wanted = get("user_scoped_resource_token"), expected.get("user_scoped_resource_token")
    else:
        given, wanted = get("resource_token") or get("token"), expected["resource_token"]
    if not given or not wanted or not hmac.compare_digest(given.lower().encode(), wanted.encode()):
        return _denied("the sign-in token is not valid")

    svc = services()
    with svc.db.connection() as conn, conn.transaction():
        row = resources.get(conn, parsed_id)
        if row is None or row["state"] == "deprovisioned":
            return _denied("this add-on does not exist or was removed")
        actor = f"sso:{email or user_id or 'heroku'}"
        audit.record(conn, parsed_id, actor, "sso.login", {"app": get("app")})

    session.clear()
    session.permanent = True
    session["resource_id"] = str(parsed_id)
    session["user"] = email or user_id or "heroku user"
    session["app"] = get("app")
    response = redirect(url_for("dashboard.show", resource_id=parsed_id), code=302)
    nav_data = get("nav-data")
    if nav_data is not None:
        # Heroku's own header script reads it; it must be readable by scripts.
        response.set_cookie("heroku-nav-data", nav_data, secure=svc.settings.public_url.startswith("https:")
                            and not svc.settings.testing, samesite="Lax")
    log.info("sso login resource=%s", parsed_id)
    return response
