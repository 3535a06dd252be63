"""A faithful local fake of Heroku's identity service and the partner part of the Platform API.

Implements what research heroku-addon-and-logplex.md §2 documents, and checks
every request it receives the way Heroku would:

- ``POST /oauth/token``: form-encoded; ``grant_type=authorization_code`` with a
  known, unexpired, unused ``code`` and the add-on's ``client_secret``, or
  ``grant_type=refresh_token`` with a known refresh token; answers
  ``access_token``, ``refresh_token``, ``expires_in``, ``token_type``,
  ``user_id``, ``session_nonce``; 400 ``invalid_grant`` / 401 ``invalid_client``.
- ``PATCH /addons/<id>/config`` with ``{"config": [{"name", "value"}]}``,
  ``POST /addons/<id>/actions/provision``, ``GET /addons/<id>/log-drains`` and
  ``PUT /addons/<id>/log-drains/<id|url|token>`` with ``{"url": "https://…"}``:
  ``Accept: application/vnd.heroku+json; version=3`` (else 406) and a bearer
  token issued for that add-on (else 401).

Like Heroku, the fake creates an add-on's log drain from the partner's answer to
a provision request that asked for ``syslog_drain`` (:func:`answer_provision`):
at once for a 200/201 answer, and for a 202 answer only when the partner calls
the provision action. A drain's object has the fields of the Platform API's
``log-drain`` (research §2.2): ``id``, ``url``, ``token``, ``addon``, ``app``,
``created_at``, ``updated_at``.

Anything else is answered 404 and recorded as a violation; tests assert the
list of violations is empty. ``fail(path_fragment, status, times)`` injects
failures.
"""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field

from flask import Flask, jsonify, request

PLATFORM_ACCEPT = "application/vnd.heroku+json; version=3"


@dataclass
class Grant:
    addon_id: str
    expires_at: float
    used: bool = False


@dataclass
class State:
    client_secret: str
    grants: dict[str, Grant] = field(default_factory=dict)
    access: dict[str, tuple[str, float]] = field(default_factory=dict)  # token -> (addon, expiry)
    refresh: dict[str, str] = field(default_factory=dict)  # token -> addon
    config: dict[str, dict[str, str]] = field(default_factory=dict)
    provisioned: set[str] = field(default_factory=set)
    drains: dict[str, list[dict]] = field(default_factory=dict)  # add-on -> its log drains
    pending_drains: dict[str, dict] = field(default_factory=dict)  # add-on -> drain made at its provision action
    requests: list[tuple[str, str]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    failures: list[list] = field(default_factory=list)  # [fragment, status, remaining]
    expires_in: int = 28800
    lock: threading.Lock = field(default_factory=threading.Lock)


def create_fake(client_secret: str) -> tuple[Flask, State]:
    state = State(client_secret=client_secret)
    app = Flask("fake-heroku")

    def violation(message: str, status: int):
        state.violations.append(f"{request.method} {request.path}: {message}")
        return jsonify(id="bad_request", message=message), status

    @app.before_request
    def record_and_inject():
        with state.lock:
            state.requests.append((request.method, request.path))
            for failure in state.failures:
                fragment, status, remaining = failure
                if remaining > 0 and fragment in request.path:
                    failure[2] -= 1
                    return jsonify(id="injected", message="injected failure"), status
        return None

    def issue(addon_id: str) -> dict:
        access, refresh = secrets.token_hex(16), secrets.token_hex(16)
        state.access[access] = (addon_id, time.time() + state.expires_in)
        state.refresh[refresh] = addon_id
        return {"access_token": access, "refresh_token": refresh, "expires_in": state.expires_in,
                "token_type": "Bearer", "user_id": "00000000-0000-0000-0000-000000000001",
                "session_nonce": None}

    @app.post("/oauth/token")
    def token():
        if request.mimetype != "application/x-www-form-urlencoded":
            return violation("token requests must be form-encoded", 400)
        form = request.form
        if not secrets.compare_digest(form.get("client_secret", ""), state.client_secret):
            return violation("wrong client_secret", 401)
        with state.lock:
            if form.get("grant_type") == "authorization_code":
                grant = state.grants.get(form.get("code", ""))
                if grant is None or grant.used or grant.expires_at < time.time():
                    return jsonify(id="invalid_grant", message="grant is invalid or expired"), 400
                grant.used = True
                return jsonify(issue(grant.addon_id))
            if form.get("grant_type") == "refresh_token":
                addon_id = state.refresh.pop(form.get("refresh_token", ""), None)
                if addon_id is None:
                    return jsonify(id="invalid_grant", message="refresh token unknown"), 400
                return jsonify(issue(addon_id))
        return violation(f"unsupported grant_type {form.get('grant_type')!r}", 400)

    def platform_auth(addon_id: str):
        if request.headers.get("Accept") != PLATFORM_ACCEPT:
            return violation(f"Accept must be {PLATFORM_ACCEPT!r}", 406)
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        owner = state.access.get(token) if scheme == "Bearer" else None
        if owner is None or owner[1] < time.time():
            return violation("missing, unknown or expired bearer token", 401)
        if owner[0] != addon_id:
            return violation("token belongs to another add-on", 403)
        return None

    @app.patch("/addons/<addon_id>/config")
    def update_config(addon_id: str):
        refused = platform_auth(addon_id)
        if refused:
            return refused
        body = request.get_json(silent=True)
        items = body.get("config") if isinstance(body, dict) else None
        if not isinstance(items, list) or not all(
            isinstance(i, dict) and isinstance(i.get("name"), str)
            and (i.get("value") is None or isinstance(i.get("value"), str)) for i in items
        ):
            return violation('body must be {"config": [{"name": str, "value": str|null}]}', 422)
        with state.lock:
            config = state.config.setdefault(addon_id, {})
            for item in items:
                config[item["name"]] = item["value"]
        return jsonify([{"name": k, "value": v} for k, v in config.items()])

    @app.post("/addons/<addon_id>/actions/provision")
    def provision(addon_id: str):
        refused = platform_auth(addon_id)
        if refused:
            return refused
        with state.lock:
            state.provisioned.add(addon_id)
            pending = state.pending_drains.pop(addon_id, None)
            if pending is not None:
                state.drains.setdefault(addon_id, []).append(pending)
        return jsonify(id=addon_id, state="provisioned")

    @app.get("/addons/<addon_id>/log-drains")
    def list_log_drains(addon_id: str):
        refused = platform_auth(addon_id)
        if refused:
            return refused
        with state.lock:
            return jsonify(list(state.drains.get(addon_id, [])))

    @app.put("/addons/<addon_id>/log-drains/<path:identity>")
    def update_log_drain(addon_id: str, identity: str):
        refused = platform_auth(addon_id)
        if refused:
            return refused
        body = request.get_json(silent=True)
        url = body.get("url") if isinstance(body, dict) else None
        if not isinstance(url, str) or not url.startswith(("https://", "syslog://", "syslog+tls://")):
            return violation('body must be {"url": "https://…" or "syslog://…"}', 422)
        with state.lock:
            for drain in state.drains.get(addon_id, []):
                if identity in (drain["id"], drain["url"], drain["token"]):
                    drain["url"] = url
                    drain["updated_at"] = _now()
                    return jsonify(drain)
        return jsonify(id="not_found", message="Couldn't find that log drain."), 404

    @app.errorhandler(404)
    def unknown(exc):
        return violation("no such endpoint in Heroku's API", 404)

    return app, state


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def answer_provision(state: State, request_body: dict, status: int, answer: dict, app_name: str = "forge-app") -> None:
    """What Heroku does with a partner's answer to a provision request (research §6).

    A 200/201 or 202 answer carrying ``log_drain_url`` to a request that had a
    ``log_drain_token`` makes the add-on's drain with that token: at once for a
    synchronous answer, at the partner's provision action for an asynchronous one.
    """
    token = request_body.get("log_drain_token")
    url = answer.get("log_drain_url")
    if status not in (200, 201, 202) or not token or not url:
        return
    addon_id = request_body["uuid"]
    drain = {"id": str(uuid.uuid4()), "url": url, "token": token,
             "addon": {"id": addon_id, "name": f"forgedrain-{addon_id[:8]}",
                       "app": {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, app_name)), "name": app_name}},
             "app": {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, app_name)), "name": app_name},
             "created_at": _now(), "updated_at": _now()}
    with state.lock:
        if status == 202 and addon_id not in state.provisioned:
            state.pending_drains[addon_id] = drain
        else:
            state.drains.setdefault(addon_id, []).append(drain)


def add_grant(state: State, addon_id: str, ttl_seconds: float = 300) -> str:
    code = secrets.token_hex(12)
    state.grants[code] = Grant(addon_id, time.time() + ttl_seconds)
    return code


def fail(state: State, fragment: str, status: int, times: int = 1) -> None:
    state.failures.append([fragment, status, times])
