"""Every check Heroku's add-on test tool kensa makes, against the running web process.

kensa (heroku/kensa, ``lib/heroku/kensa/{check,sso,http}.rb``; research
heroku-addon-and-logplex.md §8) is re-expressed here check by check:
``kensa test manifest | provision | planchange <id> <plan> | sso <id> |
deprovision <id>``. The app runs as it does on a dyno: gunicorn with
gunicorn.conf.py serving ``web:create_app()``, reached over real sockets with
``requests``; requests are shaped the way kensa's RestClient / Mechanize shape
them (``Accept: application/json``, never the vendor type; JSON bodies; Basic
auth with the manifest's id and password; the SSO form POST).

kensa is run in its ``--production`` mode: the manifest's production URLs
(``https://forgedrain.example.com/...``) with the host swapped for the local
gunicorn, which terminates TLS itself (tests/support/live.py). That is also
what PUBLIC_URL=https://… needs: the app then marks its cookies Secure, and a
browser-like client sends them back over HTTPS only. Production mode also turns
on kensa's "config URL is not localhost" check.

One gunicorn serves the whole module (one fresh migrated database, a flushed
Redis), because starting and stopping gunicorn costs about five seconds; every
test provisions its own resources with fresh uuids and drain tokens, so no test
depends on another's rows.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import re
import secrets
import time
import uuid
from typing import Iterator
from urllib.parse import quote_plus, urlsplit

import pytest
import requests

from broker import db, redisconn
from tests.conftest import base_env, migrated_database
from tests.support.live import LiveWeb, live_web
from tests.test_addon_manifest import kensa_manifest_errors, load_manifest

PUBLIC_URL = "https://forgedrain.example.com"
VENDOR_TYPE = "application/vnd.heroku-addons+json; version=3"
# kensa check.rb, ProvisionCheck / create_provision_payload.
KENSA_CALLBACK = "http://localhost:7779/callback/999"
KENSA_REGION = "amazon-web-services::us-east-1"
KENSA_PLAN = "test"
WRONG_CREDENTIALS = ("wrong", "secret")
# kensa check.rb, ProvisionResponseCheck "log_drain_url is returned if required".
KENSA_DRAIN_URL = re.compile(r"(https|syslog)://\S+")
# What kensa's Nokogiri search for 'div#heroku-header' finds.
HEROKU_HEADER = re.compile(r"""<div\b[^>]*\bid\s*=\s*["']heroku-header["']""", re.IGNORECASE)


# --- the running app ----------------------------------------------------------------


@pytest.fixture(scope="module")
def live(server_url: str, template_database: str, fernet_key: str,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveWeb, dict[str, str]]]:
    """gunicorn serving the app with the ``env`` fixture's environment and an https PUBLIC_URL.

    Built from the same pieces as conftest's ``env`` (``base_env`` on a fresh
    migrated database and a flushed Redis), at module scope.
    """
    redis_url = os.environ["REDIS_URL"]
    client = redisconn.connect(redis_url)
    client.flushdb()
    client.close()
    with migrated_database(server_url, template_database) as database_url:
        env = dict(base_env(database_url, redis_url, fernet_key), PUBLIC_URL=PUBLIC_URL)
        with live_web(env, tmp_path_factory.mktemp("kensa-web"), tls=True) as web:
            yield web, env


@pytest.fixture
def web(live) -> LiveWeb:
    return live[0]


@pytest.fixture
def database_url_of_live(live) -> str:
    return live[1]["DATABASE_URL"]


# --- kensa's side -------------------------------------------------------------------


def show(response: requests.Response) -> str:
    """The request and the answer, for assertion messages (Authorization left out)."""
    request = response.request
    headers = {k: v for k, v in request.headers.items() if k.lower() != "authorization"}
    body = request.body.decode() if isinstance(request.body, bytes) else request.body
    chain = " -> ".join(f"{r.status_code} {r.headers.get('Location', '')}".strip()
                        for r in response.history)
    return (f"\n{request.method} {request.url}\n  headers: {headers}\n  body: {body}\n"
            f"{'  redirects: ' + chain + chr(10) if chain else ''}"
            f"=> {response.status_code} Content-Type: {response.headers.get('Content-Type')}\n"
            f"  {response.text[:2000]}")


def decoded(response: requests.Response) -> object:
    """kensa's "valid JSON" check: the body must parse as JSON."""
    try:
        return json.loads(response.text)
    except ValueError:
        pytest.fail("the body is not valid JSON:" + show(response))


def heroku_id_avoiding(text: str) -> str:
    """``appNNNN@kensa.heroku.com`` whose digits do not occur in ``text``.

    kensa draws NNNN with ``rand(10000)``, so a UUID id sometimes "contains" it
    by chance (research §9 item 12). Picking NNNN among four-digit numbers absent
    from the uuid we send keeps the check deterministic for an app whose id is
    the uuid, and still meaningful: an id built from heroku_id would contain it.
    """
    candidates = [n for n in range(1000, 10000) if str(n) not in text]
    return f"app{random.choice(candidates)}@kensa.heroku.com"


def heroku_id_digits(heroku_id: str) -> str:
    return re.search(r"app(\d+)@", heroku_id).group(1)


def sample_nav_data() -> str:
    """kensa sso.rb ``sample_nav_data``: base64url JSON, padding removed."""
    raw = json.dumps({
        "addon": "Your Addon",
        "appname": "myapp",
        "addons": [
            {"slug": "cron", "name": "Cron"},
            {"slug": "custom_domains+wildcard", "name": "Custom Domains + Wildcard"},
            {"slug": "youraddon", "name": "Your Addon", "current": True},
        ],
    }, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


class Kensa:
    """The calls kensa makes, from the manifest, against the live server."""

    def __init__(self, web: LiveWeb, manifest: dict):
        self.web = web
        self.manifest = manifest
        api = manifest["api"]
        self.credentials = (manifest["id"], api["password"])
        self.base_path = urlsplit(api["production"]["base_url"]).path
        self.sso_path = urlsplit(api["production"]["sso_url"]).path
        self.salt = api["sso_salt"]
        self.requires = api.get("requires") or []
        self.config_vars = api.get("config_vars") or []
        self.http = web.session()

    def close(self) -> None:
        self.http.close()

    # kensa http.rb: Accept application/json always; Content-Type only with a body.
    def request(self, method: str, path: str, payload: dict | None = None,
                credentials: tuple[str, str] | None = None) -> requests.Response:
        headers = {"Accept": "application/json"}
        data = None
        if payload is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(payload)
        return self.http.request(method, self.web.url(path), data=data, headers=headers,
                                 auth=credentials or self.credentials, timeout=10,
                                 allow_redirects=False)

    def resource_path(self, resource_id: object) -> str:
        return f"{self.base_path}/{quote_plus(str(resource_id))}"  # CGI.escape

    def provision_payload(self, plan: str = KENSA_PLAN) -> dict:
        resource_uuid = str(uuid.uuid4())
        payload = {
            "heroku_id": heroku_id_avoiding(resource_uuid),
            "plan": plan,
            "callback_url": KENSA_CALLBACK,
            "logplex_token": None,
            "region": KENSA_REGION,
            "options": {},
            "uuid": resource_uuid,
        }
        if "syslog_drain" in self.requires:
            payload["log_drain_token"] = secrets.token_hex(16)  # SecureRandom.hex: no "d."
        return payload

    def provision(self, payload: dict | None = None,
                  credentials: tuple[str, str] | None = None) -> tuple[dict, requests.Response]:
        payload = payload if payload is not None else self.provision_payload()
        return payload, self.request("POST", self.base_path, payload, credentials)

    def provisioned_id(self) -> str:
        _, response = self.provision()
        assert 200 <= response.status_code < 300, show(response)
        return decoded(response)["id"]

    def plan_change(self, resource_id: str, plan: str,
                    credentials: tuple[str, str] | None = None) -> requests.Response:
        payload = {"plan": plan, "heroku_id": heroku_id_avoiding(str(resource_id)),
                   "uuid": str(uuid.uuid4())}
        return self.request("PUT", self.resource_path(resource_id), payload, credentials)

    def deprovision(self, resource_id: str,
                    credentials: tuple[str, str] | None = None) -> requests.Response:
        return self.request("DELETE", self.resource_path(resource_id), None, credentials)

    # kensa sso.rb: with an sso_url it POSTs a form (Mechanize follows redirects).
    def sso_form(self, resource_id: str, timestamp: int | None = None,
                 token: str | None = None) -> dict[str, str]:
        stamp = str(int(time.time()) if timestamp is None else timestamp)
        if token is None:
            token = hashlib.sha1(f"{resource_id}:{self.salt}:{stamp}".encode()).hexdigest()
        return {"id": str(resource_id), "token": token, "timestamp": stamp,
                "nav-data": sample_nav_data(), "email": "username@example.com", "app": "myapp"}

    def sso(self, browser: requests.Session, form: dict[str, str]) -> requests.Response:
        return browser.post(self.web.url(self.sso_path), data=form, timeout=10,
                            allow_redirects=True)


@pytest.fixture
def kensa(web: LiveWeb) -> Iterator[Kensa]:
    client = Kensa(web, load_manifest())
    yield client
    client.close()


@pytest.fixture
def browser(web: LiveWeb) -> Iterator[requests.Session]:
    """Mechanize's stand-in: one cookie jar across the SSO request and its redirects."""
    session = web.session()
    yield session
    session.close()


def is_2xx(response: requests.Response) -> bool:
    # kensa http.rb records any RestClient success (2xx) as 200.
    return 200 <= response.status_code < 300


# --- kensa test manifest --------------------------------------------------------------


def test_kensa_manifest_check_passes_on_addon_manifest_json():
    assert kensa_manifest_errors(load_manifest()) == []


# --- kensa test provision -------------------------------------------------------------


def test_kensa_provision_answers_2xx_with_a_json_object(kensa):
    _, response = kensa.provision()

    assert is_2xx(response), show(response)
    assert isinstance(decoded(response), dict), show(response)


def test_kensa_provision_refuses_wrong_credentials_with_401_and_creates_nothing(
        kensa, database_url_of_live):
    payload, _ = kensa.provision()
    payload["uuid"] = str(uuid.uuid4())  # kensa takes a new uuid for the wrong-credentials POST

    _, response = kensa.provision(payload, credentials=WRONG_CREDENTIALS)

    assert response.status_code == 401, show(response)
    with db.connect(database_url_of_live) as conn:
        row = conn.execute("SELECT 1 FROM resources WHERE id = %s", (payload["uuid"],)).fetchone()
    assert row is None


def test_kensa_provision_response_contains_an_id_free_of_the_heroku_id_digits(kensa):
    payload, response = kensa.provision()
    body = decoded(response)

    assert is_2xx(response), show(response)
    assert isinstance(body, dict) and body.get("id"), show(response)
    digits = heroku_id_digits(payload["heroku_id"])
    assert digits not in str(body["id"]), f"id contains heroku_id's digits {digits}" + show(response)


def test_kensa_provision_response_config_holds_only_manifest_vars_as_strings(kensa):
    _, response = kensa.provision()
    body = decoded(response)

    assert is_2xx(response), show(response)
    assert "config" in body, "no config in the provision response" + show(response)
    config = body["config"]
    assert isinstance(config, dict), show(response)
    assert [k for k in config if k not in kensa.config_vars] == [], show(response)
    assert [k for k in kensa.config_vars if k not in config] == [], show(response)
    assert {k: v for k, v in config.items() if not isinstance(v, str)} == {}, show(response)


def test_kensa_provision_response_url_config_vars_have_scheme_and_public_host(kensa):
    _, response = kensa.provision()
    config = decoded(response).get("config") or {}
    urls = {k: v for k, v in config.items() if re.search(r"_URL$", k)}

    assert urls, "no *_URL config var to check" + show(response)
    for key, value in urls.items():
        # Ruby's URI.parse refuses whitespace; urlsplit would not.
        assert isinstance(value, str) and not re.search(r"\s", value), (key, value)
        parts = urlsplit(value)
        assert parts.scheme, f"{key}={value} is missing a scheme"
        assert parts.hostname, f"{key}={value} is missing a host"
        assert parts.hostname != "localhost", f"{key}={value} points to localhost"
        assert value.startswith(PUBLIC_URL + "/"), f"{key}={value} is not under PUBLIC_URL"


def test_kensa_provision_response_returns_an_https_or_syslog_log_drain_url(kensa):
    assert "syslog_drain" in kensa.requires  # otherwise kensa would not ask for it
    _, response = kensa.provision()
    drain_url = decoded(response).get("log_drain_url")

    assert drain_url, "no log_drain_url in the provision response" + show(response)
    assert isinstance(drain_url, str) and KENSA_DRAIN_URL.fullmatch(drain_url), show(response)
    assert drain_url.startswith(PUBLIC_URL + "/"), show(response)


def test_kensa_duplicate_provision_check_gets_json_from_both_posts(kensa):
    """kensa's DuplicateProvisionCheck: the same payload twice, only the uuid changed.

    For a manifest without ``many_per_app`` kensa asserts nothing but that both
    answers decode as JSON (its OkJson.decode raises otherwise); with
    ``many_per_app`` the two ids must differ. The drain token is reused as kensa
    reuses it.
    """
    payload = kensa.provision_payload()
    _, first = kensa.provision(dict(payload))
    payload["uuid"] = str(uuid.uuid4())
    _, second = kensa.provision(dict(payload))

    assert is_2xx(first), show(first)
    first_body, second_body = decoded(first), decoded(second)
    if "many_per_app" in kensa.requires:
        assert first_body.get("id") != second_body.get("id"), show(first) + show(second)


def test_kensa_two_provisions_with_different_uuids_both_succeed_with_distinct_ids(kensa):
    # The manifest is not many_per_app; each provision still gets its own
    # resource. Each carries its own drain token, as Heroku gives every add-on.
    assert "many_per_app" not in kensa.requires
    _, first = kensa.provision()
    _, second = kensa.provision()

    assert is_2xx(first), show(first)
    assert is_2xx(second), show(second)
    assert decoded(first)["id"] != decoded(second)["id"]


# --- kensa test planchange <id> <plan> ------------------------------------------------


@pytest.mark.parametrize("plan", ["basic", "pro", KENSA_PLAN])
def test_kensa_planchange_answers_2xx(kensa, plan):
    resource_id = kensa.provisioned_id()

    response = kensa.plan_change(resource_id, plan)

    assert is_2xx(response), show(response)


def test_kensa_planchange_refuses_wrong_credentials_with_401(kensa, database_url_of_live):
    resource_id = kensa.provisioned_id()
    assert is_2xx(kensa.plan_change(resource_id, "basic"))

    response = kensa.plan_change(resource_id, "pro", credentials=WRONG_CREDENTIALS)

    assert response.status_code == 401, show(response)
    with db.connect(database_url_of_live) as conn:
        plan = conn.execute("SELECT plan FROM resources WHERE id = %s", (resource_id,)).fetchone()
    assert plan == {"plan": "basic"}


# --- kensa test deprovision <id> ------------------------------------------------------


def test_kensa_deprovision_answers_2xx(kensa, database_url_of_live):
    resource_id = kensa.provisioned_id()

    response = kensa.deprovision(resource_id)

    assert is_2xx(response), show(response)
    with db.connect(database_url_of_live) as conn:
        state = conn.execute("SELECT state FROM resources WHERE id = %s", (resource_id,)).fetchone()
    assert state == {"state": "deprovisioned"}


def test_kensa_deprovision_refuses_wrong_credentials_with_401(kensa, database_url_of_live):
    # kensa deletes with the right credentials first, then with wrong ones.
    resource_id = kensa.provisioned_id()
    assert is_2xx(kensa.deprovision(resource_id))
    wrong_first = kensa.provisioned_id()

    after_delete = kensa.deprovision(resource_id, credentials=WRONG_CREDENTIALS)
    live_resource = kensa.deprovision(wrong_first, credentials=WRONG_CREDENTIALS)

    assert after_delete.status_code == 401, show(after_delete)
    assert live_resource.status_code == 401, show(live_resource)
    with db.connect(database_url_of_live) as conn:
        state = conn.execute("SELECT state FROM resources WHERE id = %s", (wrong_first,)).fetchone()
    assert state == {"state": "provisioned"}


# --- kensa test sso <id> --------------------------------------------------------------


def test_kensa_sso_refuses_an_invalid_token_with_403(kensa, browser):
    resource_id = kensa.provisioned_id()

    response = kensa.sso(browser, kensa.sso_form(resource_id, token="invalid"))

    assert response.status_code == 403, show(response)
    assert "heroku-nav-data" not in browser.cookies


def test_kensa_sso_refuses_a_six_minute_old_timestamp_with_403(kensa, browser):
    resource_id = kensa.provisioned_id()
    # The token is right for that timestamp: only its age is wrong.
    form = kensa.sso_form(resource_id, timestamp=int(time.time()) - 6 * 60)

    response = kensa.sso(browser, form)

    assert response.status_code == 403, show(response)
    assert "heroku-nav-data" not in browser.cookies


def test_kensa_sso_logs_in_and_lands_on_a_200_page(kensa, browser):
    resource_id = kensa.provisioned_id()

    response = kensa.sso(browser, kensa.sso_form(resource_id))

    assert response.status_code == 200, show(response)
    assert response.history, "expected the sign-in to redirect to the dashboard" + show(response)
    assert urlsplit(response.url).path == f"/dashboard/{resource_id}", show(response)


def test_kensa_sso_sets_the_heroku_nav_data_cookie_to_the_posted_nav_data(kensa, browser):
    resource_id = kensa.provisioned_id()
    form = kensa.sso_form(resource_id)

    response = kensa.sso(browser, form)

    assert response.status_code == 200, show(response)
    assert browser.cookies.get("heroku-nav-data") == form["nav-data"], (
        dict(browser.cookies), show(response))


def test_kensa_sso_page_displays_the_heroku_header(kensa, browser):
    resource_id = kensa.provisioned_id()

    response = kensa.sso(browser, kensa.sso_form(resource_id))

    assert response.status_code == 200, show(response)
    assert HEROKU_HEADER.search(response.text), "no div#heroku-header" + show(response)


def test_kensa_sso_check_passes_in_kensa_order_with_one_cookie_jar(kensa, browser):
    """kensa's SsoCheck runs its three attempts with one Mechanize agent, in this order."""
    resource_id = kensa.provisioned_id()

    bad_token = kensa.sso(browser, kensa.sso_form(resource_id, token="invalid"))
    stale = kensa.sso(browser, kensa.sso_form(resource_id, timestamp=int(time.time()) - 360))
    form = kensa.sso_form(resource_id)
    logged_in = kensa.sso(browser, form)

    assert bad_token.status_code == 403, show(bad_token)
    assert stale.status_code == 403, show(stale)
    assert logged_in.status_code == 200, show(logged_in)
    assert browser.cookies.get("heroku-nav-data") == form["nav-data"]
    assert HEROKU_HEADER.search(logged_in.text), show(logged_in)


# --- what Forge Drain needs beyond kensa ----------------------------------------------


def test_partner_api_answers_with_the_vendor_content_type_to_accept_application_json(kensa):
    _, provisioned = kensa.provision()
    resource_id = decoded(provisioned)["id"]
    changed = kensa.plan_change(resource_id, "basic")
    refused = kensa.plan_change(resource_id, "pro", credentials=WRONG_CREDENTIALS)
    deleted = kensa.deprovision(resource_id)

    for response in (provisioned, changed, refused, deleted):
        assert response.request.headers["Accept"] == "application/json"
        assert response.headers.get("Content-Type") == VENDOR_TYPE, show(response)


def test_kensa_provision_stores_the_bare_hex_drain_token_verbatim(kensa, database_url_of_live):
    payload, response = kensa.provision()
    assert re.fullmatch(r"[0-9a-f]{32}", payload["log_drain_token"])

    assert is_2xx(response), show(response)
    with db.connect(database_url_of_live) as conn:
        row = conn.execute("SELECT log_drain_token FROM resources WHERE id = %s",
                           (decoded(response)["id"],)).fetchone()
    assert row == {"log_drain_token": payload["log_drain_token"]}
