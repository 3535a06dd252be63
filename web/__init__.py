"""The web process: partner API, SSO and dashboard, resource API, drain ingest, health.

``create_app()`` is the only entry point (``gunicorn 'web:create_app()'``). It
reads the environment once, builds the app and opens nothing: the database
pool opens after gunicorn forks (``gunicorn.conf.py``) or on first use.
"""

from __future__ import annotations

import datetime
import logging
import threading
import uuid

import psycopg

from flask import Flask, g, jsonify, render_template, request

from broker import config, db, logs, outbound, ratelimit, redisconn
from broker.config import Settings
from broker.forge import ForgeClient
from broker.ratelimit import RateLimiter
from broker.senders import Wire
from broker.sources import Verifier, called_recently
from broker.sinks import http, syslog
from broker.vault import Vault

# Bodies larger than this are refused with 413 before any view runs. Partner
# API and resource API bodies are a few KB; drain ingest sets its own limit.
MAX_CONTENT_LENGTH = 1 * 1024 * 1024
# Web threads that may be calling out at once (a test record, a verification); the others stay free
# for the partner API, SSO and drain ingest (gunicorn runs WEB_THREADS, 5 by default, per process).
CALLS_OUT_PER_PROCESS = 2


def create_app(settings: Settings | None = None) -> Flask:
    if settings is None:
        settings = config.load_or_exit()
    logs.configure(settings.log_level)

    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=settings.secret_key,
        MAX_CONTENT_LENGTH=MAX_CONTENT_LENGTH,
        TESTING=settings.testing,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=not settings.testing and settings.public_url.startswith("https:"),
        SESSION_COOKIE_NAME="forgedrain_session",
        # A dashboard session lasts a working day; SSO starts a new one any time.
        PERMANENT_SESSION_LIFETIME=8 * 3600,
    )
    app.extensions["forgedrain"] = Services(settings)

    @app.before_request
    def _request_id() -> None:
        # Heroku's router sets X-Request-Id; keep it so logs join up with the router's.
        incoming = request.headers.get("X-Request-Id", "")
        g.request_id = incoming[:200] if incoming.isprintable() and incoming else str(uuid.uuid4())
        logs.request_id.set(g.request_id)

    @app.after_request
    def _echo_request_id(response):
        response.headers["X-Request-Id"] = g.get("request_id", "")
        return response

    @app.teardown_request
    def _forget_request_id(exc):
        logs.request_id.set(None)

    for code, message in ((404, "not found"), (405, "method not allowed"),
                          (413, "request body too large")):
        app.register_error_handler(code, _json_error(code, message))

    @app.errorhandler(psycopg.OperationalError)
    def _database_unavailable(exc):
        # PostgreSQL is down or the pool is exhausted: a retry may well succeed
        # (Heroku retries partner calls), so say so instead of a bare 500.
        logging.getLogger("web").warning("database unavailable: %s", type(exc).__name__)
        if browser_route():
            return browser_error(503)
        return jsonify(error="unavailable", message="temporarily unavailable; retry shortly",
                       request_id=g.get("request_id")), 503

    @app.errorhandler(500)
    def _internal_error(exc):
        if browser_route():
            return browser_error(500)
        return jsonify(error="internal_error", message="internal error; it has been logged",
                       request_id=g.get("request_id")), 500

    @app.template_filter("utc")
    def _utc(moment):
        return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if moment else ""

    from web import api, dashboard, health, heroku, ingest, ingest_otlp, metrics, partner, sso

    # api.bp carries the whole resource API: web.drains and web.sources nest under its guard.
    for blueprint in (health.bp, metrics.bp, heroku.bp, partner.bp, sso.bp, dashboard.bp, api.bp, ingest.bp,
                      ingest_otlp.bp):
        app.register_blueprint(blueprint)
    return app


def _json_error(code: int, message: str):
    def handler(exc):
        if browser_route():
            return browser_error(code)
        return jsonify(error=message.replace(" ", "_"), message=message), code

    return handler


def browser_route() -> bool:
    """Whether this address is one a person opens in a browser (the dashboard, ``/``, the icon a browser
    asks for): its errors are pages, never JSON. The APIs' errors stay JSON."""
    path = request.path
    return path in ("/", "/favicon.ico") or path == "/dashboard" or path.startswith("/dashboard/")


BROWSER_ERRORS = {
    400: ("Something was wrong with that request", "Nothing was changed."),
    403: ("Not allowed", "This page belongs to another add-on, or you are not signed in to it."),
    404: ("Page not found", "There is nothing at this address: the source or drain may have been deleted, "
                            "or the link is out of date."),
    405: ("Page not found", "This address only receives forms; there is no page to show here."),
    410: ("Gone", "This add-on has been removed."),
    413: ("Too much to send", "The form was larger than Forge Drain accepts. Nothing was changed."),
    500: ("Something went wrong", "Forge Drain hit an error and has logged it. Nothing you did caused it; "
                                  "try again in a moment."),
    503: ("Try again shortly", "Forge Drain cannot reach its database right now. Nothing was changed; "
                               "try again in a moment."),
}


def browser_error(code: int):
    """An error as a page with a way back: to this session's dashboard, or how to open it from Heroku."""
    title, message = BROWSER_ERRORS.get(code, ("Something went wrong", "Nothing was changed."))
    return render_template("dashboard_error.html", title=title, message=message), code


class Services:
    """What a request needs, built once per process from :class:`Settings`."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.db = db.Database(settings.database_url)
        self.redis = redisconn.connect(settings.redis_url)
        self.vault = Vault(settings.fernet_keys)
        # The per-app Forge call budget the workers poll with (SPEC §3): owner actions that call
        # Atlassian spend it too, with the calls polling leaves them and a little headroom.
        self.limiter = RateLimiter(self.redis, ratelimit.owner_limit(settings.forge_rate_limit),
                                   settings.forge_rate_period_seconds, called_recently=self._called_recently)
        # Sending a test record and verifying a source are calls out from web threads: bounded per
        # resource, and to CALLS_OUT_PER_PROCESS at once in this process whatever the resource.
        self.owner_calls = ratelimit.OwnerCalls(self.redis, process_slots=CALLS_OUT_PER_PROCESS)
        self._local = threading.local()

    def _called_recently(self, app_id: str, seconds: float) -> bool:
        with self.db.connection() as conn:
            return called_recently(conn, app_id, seconds)

    def forge(self) -> ForgeClient:
        """This thread's App logs API client (a requests.Session is not shared across threads)."""
        client = getattr(self._local, "forge", None)
        if client is None:
            client = self._local.forge = ForgeClient(self.settings.forge_api_url, outbound.session())
        return client

    def verifier(self) -> Verifier:
        """Checks credentials with Atlassian within the app's call budget (this thread's client)."""
        return Verifier(self.forge(), self.limiter)

    def wire(self) -> Wire:
        """How "send a test record" reaches receivers: the workers' senders and sinks, this thread's
        HTTP session, the same total deadline per send."""
        wire = getattr(self._local, "wire", None)
        if wire is None:
            session = http.new_session(self.settings.allow_private_drains)
            wire = self._local.wire = Wire(lambda: session, self.settings.allow_private_drains,
                                           syslog.default_context())
        return wire


def services(app: Flask | None = None) -> Services:
    from flask import current_app

    return (app or current_app).extensions["forgedrain"]
