"""Single sign-on from Heroku and the dashboard page it leads to."""

from __future__ import annotations

import json
import time

import pytest

from broker import config
from tests.support.partner import heroku_headers, provision_body, sso_token, user_scoped_token
from web import create_app

NAV = "eyJhZGRvbiI6IkZvcmdlIERyYWluIiwiYXBwbmFtZSI6ImFjbWUifQ"


@pytest.fixture
def resource(client):
    body = provision_body(name="acme-forgedrain", plan="basic", log_drain_token="d.11112222-3333-4444-5555-666677778888")
    response = client.post("/heroku/resources", data=json.dumps(body), headers=heroku_headers())
    assert response.status_code == 200
    return body


def sign_in(client, rid: str, **overrides):
    stamp, token = sso_token(rid)
    form = {"resource_id": rid, "resource_token": token, "timestamp": stamp,
            "app": "acme", "email": "owner@acme.test", "user_id": "u-1", "nav-data": NAV}
    form.update(overrides)
    return client.post("/sso/login", data={k: v for k, v in form.items() if v is not None})


def cookies(response) -> dict[str, str]:
    found = {}
    for header in response.headers.getlist("Set-Cookie"):
        name, _, rest = header.partition("=")
        found[name] = header
    return found


def test_a_v3_resource_token_signs_in_and_redirects_to_the_dashboard(client, resource, conn):
    response = sign_in(client, resource["uuid"])
    assert response.status_code == 302
    assert response.headers["Location"].endswith(f"/dashboard/{resource['uuid']}")
    set_cookies = cookies(response)
    session_cookie = set_cookies["forgedrain_session"]
    assert "HttpOnly" in session_cookie and "SameSite=Lax" in session_cookie
    assert set_cookies["heroku-nav-data"].startswith(f"heroku-nav-data={NAV};")
    page = client.get(response.headers["Location"])
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "acme-forgedrain" in html
    assert 'class="plan">basic' in html
    assert "up to 5" in html and "1 min" in html and "72 h" in html
    assert "d.1111…8888" in html  # drain token state, masked
    assert 'id="heroku-header"' in html
    entry = conn.execute("SELECT actor, action FROM audit_log ORDER BY id DESC LIMIT 1").fetchone()
    assert entry == {"actor": "sso:owner@acme.test", "action": "sso.login"}


def test_a_user_scoped_token_signs_in_and_binds_the_user(client, resource):
    stamp, token = user_scoped_token(resource["uuid"], "u-1", "owner@acme.test")
    ok = sign_in(client, resource["uuid"], resource_token=None, user_scoped_resource_token=token,
                 timestamp=stamp)
    assert ok.status_code == 302
    forged = sign_in(client, resource["uuid"], resource_token=None, user_scoped_resource_token=token,
                     timestamp=stamp, email="attacker@evil.test")
    assert forged.status_code == 403


@pytest.mark.parametrize("method", ["post", "get"])
def test_the_legacy_id_and_token_kensa_sends_sign_in(client, resource, method):
    stamp, token = sso_token(resource["uuid"])
    fields = {"id": resource["uuid"], "token": token, "timestamp": stamp, "nav-data": NAV}
    if method == "post":
        response = client.post("/sso/login", data=fields)
    else:
        response = client.get("/sso/login", query_string=fields)
    assert response.status_code == 302
    assert client.get(response.headers["Location"]).status_code == 200


@pytest.mark.parametrize("change", [
    {"resource_token": "0" * 40},
    {"timestamp": -6 * 60},  # seconds from now, taken when the test runs (not when collected)
    {"timestamp": 5 * 60},
    {"timestamp": "yesterday"},
    {"resource_id": "not-a-uuid"},
    {"resource_token": None},
    {"timestamp": None},
])
def test_a_bad_or_stale_sign_in_gets_403(client, resource, change):
    if isinstance(change.get("timestamp"), int):
        # a correct token for the wrong time: only the window refuses it
        stamp = int(time.time()) + change["timestamp"]
        change = dict(change, timestamp=str(stamp), resource_token=sso_token(resource["uuid"], stamp)[1])
    response = sign_in(client, resource["uuid"], **change)
    assert response.status_code == 403
    assert "forgedrain_session" not in cookies(response)
    assert client.get(f"/dashboard/{resource['uuid']}").status_code == 403


def test_a_token_made_with_another_salt_gets_403(client, resource):
    stamp, token = sso_token(resource["uuid"], salt="some-other-salt-value")
    assert sign_in(client, resource["uuid"], resource_token=token, timestamp=stamp).status_code == 403


def test_unknown_and_deprovisioned_resources_get_403(client, resource):
    import uuid

    assert sign_in(client, str(uuid.uuid4())).status_code == 403
    client.delete(f"/heroku/resources/{resource['uuid']}", headers=heroku_headers())
    assert sign_in(client, resource["uuid"]).status_code == 403


def test_a_session_is_bound_to_one_resource(client, resource):
    other = provision_body(name="someone-else")
    client.post("/heroku/resources", data=json.dumps(other), headers=heroku_headers())
    assert sign_in(client, resource["uuid"]).status_code == 302
    assert client.get(f"/dashboard/{resource['uuid']}").status_code == 200
    refused = client.get(f"/dashboard/{other['uuid']}")
    assert refused.status_code == 403
    assert "someone-else" not in refused.get_data(as_text=True)
    # signing in to the other resource moves the session there
    assert sign_in(client, other["uuid"]).status_code == 302
    assert client.get(f"/dashboard/{resource['uuid']}").status_code == 403


def test_a_dashboard_without_a_session_is_refused(client, resource):
    assert client.get(f"/dashboard/{resource['uuid']}").status_code == 403


def test_cookies_are_secure_outside_tests(env, resource):
    env["PUBLIC_URL"] = "https://forgedrain.example.com"
    app = create_app(config.load(env))
    try:
        response = sign_in(app.test_client(), resource["uuid"])
        assert response.status_code == 302
        assert "Secure" in cookies(response)["forgedrain_session"]
        assert "Secure" in cookies(response)["heroku-nav-data"]
    finally:
        app.extensions["forgedrain"].db.close()


def test_no_secret_reaches_the_dashboard(client, resource, conn):
    response = client.post("/heroku/resources", data=json.dumps(resource), headers=heroku_headers())
    api_token = response.get_json(force=True)["config"]["FORGEDRAIN_TOKEN"]
    sign_in(client, resource["uuid"])
    html = client.get(f"/dashboard/{resource['uuid']}").get_data(as_text=True)
    assert api_token not in html
    assert resource["log_drain_token"] not in html
    assert "logplex.io" not in html and "t.5f1d6c0e" not in html
