"""``python -m demo.setup``: wire the demo together through the broker's public interfaces.

1. Waits until the web answers ``/readyz`` and the Forge fake and the receiver answer.
2. Provisions a resource through the Add-on Partner API (HTTP Basic ``ADDON_ID`` and the first
   of ``ADDON_PASSWORDS``, as Heroku does), plan ``basic`` (polled every minute), with the demo
   app's credentials as provisioning options, which registers the first source. The resource's
   id is kept in ``--state``: a later run replays the same provision (idempotent on ``uuid``)
   and gets the same ``FORGEDRAIN_TOKEN``; a resource that was deprovisioned is replaced.
3. With that token, through the resource API: points the logplex drain named "demo receiver"
   at ``--receiver`` (created the first time), then keeps the demo source: verified again on a
   later run (which resumes it if paused and makes it due at once), or re-created when its
   checkpoint is more than two hours old, so a restart after a long pause does not replay a
   day of backlog before anything new shows.
4. Prints a banner: the sign-in link, the resource id, what to watch.
5. Serves the sign-in link on ``--signin-port`` until stopped: every ``GET /`` answers a page
   that POSTs a fresh SSO form (``resource_id``, ``resource_token``, ``user_scoped_resource_token``,
   ``timestamp``) to the broker's ``/sso/login``, exactly as Heroku's dashboard does, so the
   link never expires (an SSO timestamp is only good for five minutes). ``--no-serve`` stops
   after the banner.

Settings come from the options, else from the environment ``./scripts/run`` exports
(``ADDON_ID``, ``ADDON_PASSWORDS``, ``SSO_SALT``).
"""

from __future__ import annotations

import argparse
import hashlib
import html
import os
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlsplit

import requests

from demo import API_TOKEN, APP_ID, DRAIN_NAME, EMAIL, ENVIRONMENT_ID, PLAN

WAIT_SECONDS = 180
# A new source starts an hour back; past two hours, catching up would fill the first minutes.
STALE_CHECKPOINT = timedelta(hours=2)


class SetupError(Exception):
    pass


def _session() -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # no proxy may carry loopback traffic elsewhere
    return session


def wait_for(session: requests.Session, url: str, what: str, deadline: float, ok=(200,)) -> None:
    last = "no answer yet"
    while True:
        try:
            status = session.get(url, timeout=(1, 5)).status_code
            if status in ok:
                return
            last = f"HTTP {status}"
        except requests.RequestException as exc:
            last = type(exc).__name__
        if time.monotonic() > deadline:
            raise SetupError(f"{what} ({url}) did not answer in time: {last}")
        time.sleep(0.5)


def _check(response: requests.Response, what: str, expected: tuple[int, ...]) -> dict:
    if response.status_code not in expected:
        raise SetupError(f"{what}: HTTP {response.status_code} {response.text[:500]}")
    return response.json() if response.content else {}


def sso_form(resource_id: str, salt: str, now: float | None = None) -> dict[str, str]:
    """The fields Heroku's dashboard POSTs to the add-on's sso_url: the v3 resource_token and the
    user_scoped_resource_token that signs who the user is (only signed fields name the user)."""
    timestamp = str(int(time.time() if now is None else now))
    email, user_id = "demo@forgedrain.test", "demo-user"
    token = hashlib.sha1(f"{resource_id}:{salt}:{timestamp}".encode()).hexdigest()
    scoped = hashlib.sha256(f"{resource_id}:{salt}:{timestamp}:{user_id}:{email}".encode()).hexdigest()
    return {"resource_id": resource_id, "resource_token": token, "user_scoped_resource_token": scoped,
            "timestamp": timestamp, "user_id": user_id, "email": email, "app": "forgedrain-demo"}


def sso_page(web: str, resource_id: str, salt: str) -> str:
    fields = "\n".join(f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
                       for k, v in sso_form(resource_id, salt).items())
    action = html.escape(f"{web}/sso/login")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Forge Drain demo: signing in</title></head>
<body onload="document.forms[0].submit()">
<form method="post" action="{action}">
{fields}
<p>Signing in to the Forge Drain dashboard as Heroku's SSO would&hellip;
<button type="submit">Continue</button></p>
</form>
</body></html>
"""


class Demo:
    def __init__(self, web: str, receiver: str, forge: str | None, state: Path, addon_id: str,
                 password: str, out=sys.stdout):
        self.web = web.rstrip("/")
        self.receiver = receiver
        self.forge = forge.rstrip("/") if forge else None
        self.state = state
        self.addon_id = addon_id
        self.password = password
        self.http = _session()
        self.out = out
        self.resource_id = ""
        self.token = ""

    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    # ------------------------------------------------------------- steps

    def wait(self, seconds: float = WAIT_SECONDS) -> None:
        deadline = time.monotonic() + seconds
        wait_for(self.http, f"{self.web}/readyz", "the web's /readyz", deadline)
        if self.forge:
            # Any HTTP answer will do (the fake answers 404 to paths it does not serve).
            wait_for(self.http, self.forge, "the Forge fake", deadline, ok=range(200, 500))
        parts = urlsplit(self.receiver)
        wait_for(self.http, f"{parts.scheme}://{parts.netloc}/", "the receiver", deadline)

    def provision(self) -> dict:
        options = {"app_id": APP_ID, "environment_id": ENVIRONMENT_ID, "email": EMAIL, "api_token": API_TOKEN}
        for attempt in range(2):
            resource_id = self._stored_id() if attempt == 0 else None
            if resource_id is None:
                resource_id = str(uuid.uuid4())
            response = self.http.post(
                f"{self.web}/heroku/resources", auth=(self.addon_id, self.password), timeout=30,
                json={"uuid": resource_id, "plan": PLAN, "region": "amazon-web-services::us-east-1",
                      "name": "forgedrain-demo", "options": options})
            if response.status_code in (409, 410) and attempt == 0:
                self.say(f"resource {resource_id} cannot be reused ({response.json().get('message')}); "
                         "provisioning a new one")
                continue
            body = _check(response, "provisioning through the Partner API", (200,))
            self.state.parent.mkdir(parents=True, exist_ok=True)
            self.state.write_text(resource_id + "\n")
            self.resource_id = body["id"]
            self.token = body["config"]["FORGEDRAIN_TOKEN"]
            return body
        raise AssertionError("unreachable")

    def _stored_id(self) -> str | None:
        try:
            return str(uuid.UUID(self.state.read_text().strip()))
        except (OSError, ValueError):
            return None

    def api(self, method: str, path: str, what: str, expected: tuple[int, ...] = (200,), **kwargs) -> dict:
        response = self.http.request(method, f"{self.web}/v1/resources/{self.resource_id}{path}",
                                     headers={"Authorization": f"Bearer {self.token}"}, timeout=30, **kwargs)
        return _check(response, what, expected)

    def ensure_source(self) -> dict:
        listed = self.api("GET", "/sources", "listing sources")["sources"]
        source = next((s for s in listed if s["app_id"] == APP_ID and s["environment_id"] == ENVIRONMENT_ID), None)
        if source is not None:
            checkpoint = datetime.fromisoformat(source["polling"]["checkpoint"])
            if datetime.now(timezone.utc) - checkpoint > STALE_CHECKPOINT:
                self.say(f"the demo source was last polled up to {checkpoint:%Y-%m-%d %H:%M} UTC; "
                         "re-creating it so the demo starts an hour back instead of replaying the gap")
                self.api("DELETE", f"/sources/{source['id']}", "deleting the stale source", (204,))
                source = None
            else:
                # Verifying resumes a paused source and makes it due now: the first poll comes
                # at the next tick instead of up to a minute after the last run's.
                if source["state"] != "active":
                    self.say(f"the demo source is {source['state']} ({source['pause_reason']}); "
                             "verifying it again")
                result = self.api("POST", f"/sources/{source['id']}/verify", "verifying the source")
                source = result["source"]
                if not result["verification"]["ok"]:
                    raise SetupError("the Forge fake refused the demo source: "
                                     + result["verification"]["message"])
        if source is None:
            source = self.api("POST", "/sources", "adding the demo source", (201,), json={
                "app_id": APP_ID, "environment_id": ENVIRONMENT_ID, "email": EMAIL, "api_token": API_TOKEN})
        return source

    def ensure_drain(self) -> dict:
        listed = self.api("GET", "/drains", "listing drains")["drains"]
        drain = next((d for d in listed if d["kind"] == "logplex" and d["name"] == DRAIN_NAME), None)
        if drain is None:
            return self.api("POST", "/drains", "adding the receiver's drain", (201,),
                            json={"kind": "logplex", "url": self.receiver, "name": DRAIN_NAME})
        # The receiver listens on a new port each run: point the drain at it (this also
        # clears any back-off left from the receiver being gone).
        return self.api("PATCH", f"/drains/{drain['id']}", "pointing the drain at the receiver",
                        json={"url": self.receiver, "enabled": True})

    def banner(self, signin_url: str | None) -> str:
        rule = "=" * 78
        lines = [rule, "Forge Drain demo is running", rule]
        if signin_url:
            lines.append(f"Dashboard sign-in:  {signin_url}   (open it in a browser; it signs you in")
            lines.append("                    through SSO as Heroku would, and works at any time)")
        lines += [
            f"Resource:           {self.resource_id} (plan {PLAN}, polled every minute)",
            f"Resource API:       curl -H 'Authorization: Bearer {self.token}' \\",
            f"                         {self.web}/v1/resources/{self.resource_id}/drains",
            f"Forge source:       app {APP_ID}, environment {ENVIRONMENT_ID} on the Forge fake"
            + (f" ({self.forge})" if self.forge else ""),
            f"Drain:              logplex -> {self.receiver}",
            "What to watch:      'receiver |' lines. The first poll reads the hour before the source",
            "                    was added, so a burst arrives within seconds; after that each minute's",
            "                    poll brings that minute's records (about 30, all levels, some",
            "                    multi-line or non-ASCII), about a minute after they were logged.",
            "                    'forge |' lines are the broker's calls to the App logs API; the worker",
            "                    and clock log warnings only (LOG_LEVEL=INFO shows their every job).",
            "Ctrl-C stops everything; ./scripts/run --demo again resumes the same resource.",
            rule,
        ]
        return "\n".join(lines)


def serve_signin(port: int, web: str, resource_id: str, salt: str):
    """A WSGI server whose every GET answers a freshly signed, self-submitting SSO form."""
    from werkzeug.serving import WSGIRequestHandler, make_server

    def app(environ, start_response):
        if environ["REQUEST_METHOD"] not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Content-Type", "text/plain")])
            return [b"GET this page to sign in\n"]
        body = sso_page(web, resource_id, salt).encode()
        start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"),
                                  ("Content-Length", str(len(body))), ("Cache-Control", "no-store")])
        return [body]

    class Handler(WSGIRequestHandler):
        def log_request(self, *args, **kwargs):
            pass

    return make_server("127.0.0.1", port, app, threaded=True, request_handler=Handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo.setup", description=__doc__.split("\n")[0])
    parser.add_argument("--web", required=True, help="the broker's base URL, e.g. http://127.0.0.1:5000")
    parser.add_argument("--receiver", required=True, help="the drain URL, e.g. http://127.0.0.1:8702/logs")
    parser.add_argument("--forge", help="the Forge fake's base URL (waited for)")
    parser.add_argument("--state", type=Path, default=Path(".local/demo/resource-id"))
    parser.add_argument("--signin-port", type=int, default=0, help="0: a free port")
    parser.add_argument("--no-serve", action="store_true", help="exit after the banner")
    parser.add_argument("--addon-id", default=os.environ.get("ADDON_ID", "forgedrain"))
    parser.add_argument("--password", default=(os.environ.get("ADDON_PASSWORDS") or "").split(",")[0])
    parser.add_argument("--sso-salt", default=os.environ.get("SSO_SALT", ""))
    opts = parser.parse_args(argv)
    if not opts.password or not opts.sso_salt:
        parser.error("the partner password and SSO salt are needed (--password/--sso-salt, or "
                     "ADDON_PASSWORDS/SSO_SALT as ./scripts/run exports them)")

    demo = Demo(opts.web, opts.receiver, opts.forge, opts.state, opts.addon_id, opts.password)
    try:
        demo.wait()
        demo.provision()
        demo.ensure_drain()
        demo.ensure_source()
    except (SetupError, requests.RequestException) as exc:
        print(f"demo setup failed: {exc}", file=sys.stderr, flush=True)
        return 1
    if opts.no_serve:
        demo.say(demo.banner(None))
        return 0
    server = serve_signin(opts.signin_port, demo.web, demo.resource_id, opts.sso_salt)
    demo.say(demo.banner(f"http://127.0.0.1:{server.server_port}/"))
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
