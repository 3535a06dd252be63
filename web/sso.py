"""Single sign-on from the Heroku dashboard (SPEC §1; research heroku-addon-and-logplex.md §4).

Heroku POSTs a form (older flows GET a query string) to the manifest's
``sso_url``. Three tokens are accepted, all over the same salted secret:

- ``user_scoped_resource_token = sha256(uuid:salt:timestamp:user_id:email)``
  (newest; binds the user);
- ``resource_token = sha1(uuid:salt:timestamp)`` (v3);
- legacy ``id`` + ``token = sha1(id:salt:timestamp)``, what kensa sends; our
  ``id`` is the uuid, so it is the v3 formula under other field names.

The salt is the resource's partner's (:func:`broker.partners.sso_salts`):
Heroku's ``SSO_SALT`` opens only Heroku's resources, an integrator's own salt
only that integrator's. An unknown or deprovisioned resource, a token made
with any other salt, a timestamp older than five minutes (or more than a
minute ahead) and any malformed field all get the same 403 page, so a refusal
tells nothing about which resources exist; the log says why.

Only signed fields say who signed in. With ``user_scoped_resource_token`` the
audit actor is ``sso:<email>`` and the session's user is that email; the other
two tokens sign neither ``user_id`` nor ``email``, so the actor is
``sso:<partner id>`` and the user a generic label. ``app`` and ``nav-data`` are
signed by nothing: ``app`` is kept (audit detail, page header) only when it
looks like an app name, and ``nav-data`` becomes the ``heroku-nav-data`` cookie
only when it is cookie-safe.

Every field is read strictly from the raw form: bytes that are not UTF-8
(lone surrogates among them), NUL and other control characters, or values
longer than a form of Heroku's ever is refuse the whole sign-in.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import time
import uuid
from dataclasses import dataclass
from urllib.parse import parse_qsl

from flask import Blueprint, current_app, make_response, redirect, render_template, request, session, url_for

from broker import audit, partners, resources
from broker.vault import VaultError
from web import services

log = logging.getLogger(__name__)

bp = Blueprint("sso", __name__)

WINDOW_SECONDS = 300
# Clocks drift; a token from slightly in the future is still fresh.
FUTURE_SKEW_SECONDS = 60
MAX_FIELD = 512
# nav-data is base64url JSON naming the app's add-ons; it must still fit one cookie (4096 bytes).
MAX_NAV_DATA = 3072
MAX_FIELDS = 32
MAX_FORM = 16 * 1024
# What every refusal says: which check failed is for the log only.
REFUSED = "this sign-in link is not valid or has expired; open the add-on from Heroku again"

FIELDS = ("resource_id", "id", "timestamp", "resource_token", "token", "user_scoped_resource_token",
          "user_id", "email", "app", "nav-data")
# C0 and C1 controls, DEL, lone surrogates and the two noncharacters: no field of Heroku's holds one.
UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")
TIMESTAMP = re.compile(r"[0-9]{1,12}\Z")
SHA1_HEX = re.compile(r"[0-9a-fA-F]{40}\Z")
SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}\Z")
# Heroku app names are lowercase letters, digits and dashes; integrators' may also carry
# capitals, dots and underscores. Anything else is not kept.
APP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z")
# RFC 6265 cookie-octets, narrowed to the base64 / base64url alphabets nav-data is written in.
COOKIE_SAFE = re.compile(r"[A-Za-z0-9_+/=.-]+\Z")
# Compared against when the resource is unknown, so that case costs what a wrong token does.
UNKNOWN_SALT = "no-partner-salt-opens-an-unknown-resource"


class Refused(Exception):
    """A sign-in refused with the one 403 page; the message is for the log (no field values)."""


@dataclass(frozen=True)
class Signer:
    """Who a verified sign-in names: only what its token signs."""
    actor: str
    user: str
    user_scoped: bool


@bp.errorhandler(Refused)
def _denied(exc: Refused):
    log.info("sso refused reason=%s", str(exc).replace(" ", "_"))
    return make_response(render_template("sso_denied.html", reason=REFUSED), 403)


def expected_tokens(resource_id: str, salt: str, timestamp: str, user_id: str | None,
                    email: str | None) -> dict[str, str]:
    base = f"{resource_id}:{salt}:{timestamp}"
    tokens = {"resource_token": hashlib.sha1(base.encode()).hexdigest()}
    if user_id is not None and email is not None:
        tokens["user_scoped_resource_token"] = hashlib.sha256(
            f"{base}:{user_id}:{email}".encode()
        ).hexdigest()
    return tokens


def _raw_form() -> bytes:
    if request.method == "GET":
        return request.query_string
    # Heroku's dashboard and kensa post a plain form; nothing else is read (multipart would
    # turn undecodable bytes into U+FFFD instead of refusing them).
    if request.mimetype != "application/x-www-form-urlencoded":
        raise Refused("the request is not a form")
    if request.content_length is None or request.content_length > MAX_FORM:
        raise Refused("the form is too long or of unknown length")
    return request.get_data(cache=False)


def read_fields() -> dict[str, str]:
    """The form's fields, decoded strictly; raises Refused on anything a browser would not send."""
    raw = _raw_form()
    if len(raw) > MAX_FORM:
        raise Refused("the form is too long")
    try:
        pairs = parse_qsl(raw.decode("ascii"), keep_blank_values=True, encoding="utf-8", errors="strict",
                          max_num_fields=MAX_FIELDS)
    except ValueError:  # non-ASCII bytes, percent-escapes that are not UTF-8, too many fields
        raise Refused("the form is not valid UTF-8 form encoding") from None
    fields: dict[str, str] = {}
    for name, value in pairs:
        if UNSAFE.search(name) or UNSAFE.search(value):
            raise Refused("a form field holds a control character")
        if len(value) > (MAX_NAV_DATA if name == "nav-data" else MAX_FIELD):
            raise Refused("a form field is too long")
        if name in FIELDS:
            if name in fields:
                raise Refused("a form field is sent twice")
            fields[name] = value
    # An empty field is a missing one.
    return {name: value for name, value in fields.items() if value}


def _fresh(timestamp: str) -> None:
    if not TIMESTAMP.match(timestamp):
        raise Refused("the timestamp is malformed")
    stamp, now = int(timestamp), time.time()
    if now - stamp > WINDOW_SECONDS or stamp - now > FUTURE_SKEW_SECONDS:
        raise Refused("the sign-in link has expired")


def _given_token(fields: dict[str, str]) -> tuple[str, str]:
    """(kind, token) of the token the form carries, shape-checked."""
    if "user_scoped_resource_token" in fields:
        given = fields["user_scoped_resource_token"]
        if not SHA256_HEX.match(given) or "user_id" not in fields or "email" not in fields:
            raise Refused("the user-scoped token, its user_id or its email is malformed or missing")
        return "user_scoped_resource_token", given.lower()
    given = fields.get("resource_token") or fields.get("token")
    if given is None or not SHA1_HEX.match(given):
        raise Refused("the token is malformed or missing")
    return "resource_token", given.lower()


def _verified(kind: str, given: str, resource_id: str, timestamp: str, fields: dict[str, str],
              salts: list[str]) -> bool:
    """Whether one of ``salts`` made ``given``; every salt is compared (constant time each)."""
    matched = False
    for salt in salts:
        wanted = expected_tokens(resource_id, salt, timestamp, fields.get("user_id"), fields.get("email"))[kind]
        matched |= hmac.compare_digest(given.encode(), wanted.encode())
    return matched


def _signer(kind: str, partner_id: str, fields: dict[str, str]) -> Signer:
    if kind == "user_scoped_resource_token":
        return Signer(actor=f"sso:{fields['email']}", user=fields["email"], user_scoped=True)
    # Neither user_id nor email is signed: name the partner whose salt signed, not the form.
    label = "Heroku user" if partner_id == services().settings.addon_id else f"{partner_id} user"
    return Signer(actor=f"sso:{partner_id}", user=label, user_scoped=False)


def within_session(signed_in_at: object) -> bool:
    """Whether a session signed in at ``signed_in_at`` (time.time()) is still in its lifetime, counted
    from sign-in however often it is used since. Flask's cookie expiry alone would slide with every
    request. A session without a sign-in time was made before they were kept: it has ended."""
    if not isinstance(signed_in_at, int):
        return False
    return time.time() - signed_in_at <= current_app.permanent_session_lifetime.total_seconds()


@bp.route("/sso/login", methods=["GET", "POST"])
def login():
    fields = read_fields()
    resource_id = fields.get("resource_id") or fields.get("id")
    timestamp = fields.get("timestamp")
    if not resource_id or not timestamp:
        raise Refused("the sign-in request is incomplete")
    try:
        parsed_id = uuid.UUID(resource_id)
    except ValueError:
        raise Refused("the resource id is malformed") from None
    _fresh(timestamp)
    kind, given = _given_token(fields)
    app = fields.get("app") if APP_NAME.match(fields.get("app", "")) else None

    svc = services()
    with svc.db.connection() as conn, conn.transaction():
        row = resources.get(conn, parsed_id)
        live = row is not None and row["state"] != "deprovisioned"
        try:
            salts = partners.sso_salts(conn, svc.vault, svc.settings, row["partner_id"]) if live else []
        except VaultError:
            log.warning("sso salt of partner %s cannot be decrypted (FERNET_KEYS?)", row["partner_id"])
            salts = []
        if not _verified(kind, given, resource_id, timestamp, fields, salts or [UNKNOWN_SALT]) or not salts:
            raise Refused("unknown resource, or a token not made with its partner's salt")
        signer = _signer(kind, row["partner_id"], fields)
        actor = signer.user if signer.user_scoped else signer.actor
        # Heroku signs the owner in again each time they open the add-on: within a session this browser
        # already holds for the same resource and person, that is not a new session, and the audit log
        # keeps one sign-in per session rather than one per click. The session keeps its start, so it
        # still ends 8 hours after the audited sign-in.
        continuing = (session.get("resource_id") == str(parsed_id) and session.get("actor") == actor
                      and within_session(session.get("signed_in_at")))
        if not continuing:
            detail = {"user_scoped": signer.user_scoped, **({"app": app} if app else {})}
            audit.record(conn, parsed_id, signer.actor, "sso.login", detail)
    signed_in_at = session.get("signed_in_at") if continuing else int(time.time())

    session.clear()
    session.permanent = True
    session["resource_id"] = str(parsed_id)
    session["user"] = signer.user
    # What the dashboard's changes are recorded under: the signed email, or sso:<partner> when the
    # token signed no user.
    session["actor"] = actor
    session["app"] = app
    # The dashboard's session lasts a working day from here: the cookie, re-issued by every request, cannot
    # say when that day began.
    session["signed_in_at"] = signed_in_at
    response = redirect(url_for("dashboard.show", resource_id=parsed_id), code=302)
    nav_data = fields.get("nav-data")
    if nav_data is not None and COOKIE_SAFE.match(nav_data):
        # Heroku's own header script reads it; it must be readable by scripts.
        response.set_cookie("heroku-nav-data", nav_data, secure=svc.settings.public_url.startswith("https:")
                            and not svc.settings.testing, samesite="Lax")
    log.info("sso login resource=%s partner=%s user_scoped=%s", parsed_id, row["partner_id"], signer.user_scoped)
    return response
