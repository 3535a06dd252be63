"""Single sign-on from Heroku and the dashboard page it leads to."""

from __future__ import annotations

import hashlib
import json
import time
from urllib.parse import urlencode

import pytest

from broker import config, partners
from broker.vault import Vault
from tests.support.partner import (SSO_SALT, basic, heroku_headers, provision_body, sso_token,
                                   user_scoped_token)
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
    # a resource_token signs neither user_id nor email: the actor is the partner whose salt signed
    assert entry == {"actor": "sso:forgedrain", "action": "sso.login"}


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


# --- SSO scoped to the partner; only signed fields name the user (issue 14, items 4 and 5) ---

INTEGRATOR = "acme-cloud"


def sso_logins(conn) -> list[dict]:
    return conn.execute("SELECT actor, detail FROM audit_log WHERE action = 'sso.login' ORDER BY id").fetchall()


@pytest.fixture
def integrator(client, conn, settings):
    """An integrator partner with its own SSO salt, and a resource it provisioned: (resource id, salt)."""
    password = partners.create(conn, settings, INTEGRATOR, "Acme Cloud")
    salt = partners.rotate_sso_salt(conn, Vault(settings.fernet_keys), INTEGRATOR)
    body = provision_body(name="acme-cloud-app", log_drain_token=None, log_input_url=None)
    response = client.post("/heroku/resources", data=json.dumps(body),
                           headers={**basic(INTEGRATOR, password), "Content-Type": "application/json"})
    assert response.status_code == 200, response.get_data(as_text=True)
    return body["uuid"], salt


def test_herokus_salt_does_not_open_an_integrators_resource(client, integrator, conn):
    rid, _ = integrator
    for response in (sign_in(client, rid),
                     sign_in(client, rid, resource_token=None, user_scoped_resource_token=user_scoped_token(
                         rid, "u-1", "owner@acme.test")[1])):
        assert response.status_code == 403
        assert "forgedrain_session" not in cookies(response)
    assert client.get(f"/dashboard/{rid}").status_code == 403
    assert sso_logins(conn) == []


def test_an_integrators_salt_opens_its_resources_and_not_herokus(client, integrator, resource, conn):
    rid, salt = integrator
    stamp, token = sso_token(rid, salt=salt)
    response = sign_in(client, rid, resource_token=token, timestamp=stamp)
    assert response.status_code == 302
    assert client.get(f"/dashboard/{rid}").status_code == 200
    stamp, scoped = user_scoped_token(rid, "u-1", "owner@acme.test", salt=salt)
    assert sign_in(client, rid, resource_token=None, user_scoped_resource_token=scoped,
                   timestamp=stamp).status_code == 302
    assert [r["actor"] for r in sso_logins(conn)] == [f"sso:{INTEGRATOR}", "sso:owner@acme.test"]
    # ... and the integrator's salt opens nothing of Heroku's
    stamp, token = sso_token(resource["uuid"], salt=salt)
    refused = sign_in(client, resource["uuid"], resource_token=token, timestamp=stamp)
    assert refused.status_code == 403
    assert client.get(f"/dashboard/{resource['uuid']}").status_code == 403
    assert len(sso_logins(conn)) == 2


def test_a_rotated_sso_salt_overlaps_for_a_while_and_can_end_now(client, integrator, conn, settings):
    rid, first = integrator
    vault = Vault(settings.fernet_keys)

    def opens(salt: str) -> bool:
        stamp, token = sso_token(rid, salt=salt)
        return sign_in(client, rid, resource_token=token, timestamp=stamp).status_code == 302

    second = partners.rotate_sso_salt(conn, vault, INTEGRATOR, overlap_seconds=600)
    assert second != first
    assert opens(second) and opens(first)
    assert partners.end_sso_salt_overlap(conn, INTEGRATOR) is True
    assert opens(second) and not opens(first)
    third = partners.rotate_sso_salt(conn, vault, INTEGRATOR, overlap_seconds=0)
    assert opens(third) and not opens(second)
    stored = conn.execute("SELECT sso_salt_enc, sso_salt_previous_enc FROM partners").fetchone()
    assert third not in str(stored) and vault.decrypt(stored["sso_salt_enc"]) == third
    assert stored["sso_salt_previous_enc"] is None


def test_an_integrator_without_a_salt_cannot_be_signed_into(client, conn, settings, integrator):
    rid, salt = integrator
    conn.execute("UPDATE partners SET sso_salt_enc = NULL")  # as partners created before migration 0015
    for candidate in (salt, SSO_SALT, ""):
        stamp, token = sso_token(rid, salt=candidate)
        assert sign_in(client, rid, resource_token=token, timestamp=stamp).status_code == 403
    assert sso_logins(conn) == []


def test_refusals_look_the_same_whatever_failed(client, resource, integrator):
    import uuid

    stale = int(time.time()) - 6 * 60
    bodies = {
        "unknown resource": sign_in(client, str(uuid.uuid4())),
        "wrong salt": sign_in(client, integrator[0]),
        "expired": sign_in(client, resource["uuid"], timestamp=str(stale),
                           resource_token=sso_token(resource["uuid"], stale)[1]),
        "malformed": sign_in(client, resource["uuid"], resource_token="zz"),
    }
    assert {r.status_code for r in bodies.values()} == {403}
    assert len({r.get_data() for r in bodies.values()}) == 1


def test_an_unsigned_email_is_not_the_actor_of_a_resource_token_sign_in(client, resource, conn):
    response = sign_in(client, resource["uuid"], email="ceo@victim.test", user_id="u-ceo", app="acme")
    assert response.status_code == 302
    [entry] = sso_logins(conn)
    assert entry["actor"] == "sso:forgedrain"
    assert "victim" not in json.dumps(entry["detail"]) and "u-ceo" not in json.dumps(entry["detail"])
    assert entry["detail"] == {"user_scoped": False, "app": "acme"}
    html = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "ceo@victim.test" not in html and "Heroku user" in html
    # a user-scoped token signs the email: then it names the user
    stamp, token = user_scoped_token(resource["uuid"], "u-1", "owner@acme.test")
    response = sign_in(client, resource["uuid"], resource_token=None, user_scoped_resource_token=token,
                       timestamp=stamp)
    assert response.status_code == 302
    assert [r["actor"] for r in sso_logins(conn)] == ["sso:forgedrain", "sso:owner@acme.test"]
    assert sso_logins(conn)[1]["detail"] == {"user_scoped": True, "app": "acme"}
    assert "owner@acme.test" in client.get(response.headers["Location"]).get_data(as_text=True)


def test_an_unsafe_app_name_is_left_out_but_the_sign_in_goes_on(client, resource, conn):
    response = sign_in(client, resource["uuid"], app="<script>x</script>")
    assert response.status_code == 302
    assert sso_logins(conn)[0]["detail"] == {"user_scoped": False}
    assert "<script>x" not in client.get(response.headers["Location"]).get_data(as_text=True)


@pytest.mark.parametrize("nav_data", ["abc; Path=/; Domain=evil.test", "eyJ hcH", 'eyJ"a"'])
def test_nav_data_that_is_not_cookie_safe_sets_no_cookie(client, resource, nav_data):
    response = sign_in(client, resource["uuid"], **{"nav-data": nav_data})
    assert response.status_code == 302
    assert "heroku-nav-data" not in cookies(response)
    assert "forgedrain_session" in cookies(response)


def post_raw(client, fields: dict[str, str], name: str, raw: str, method: str = "post"):
    """The form with ``name`` set to ``raw``, already percent-encoded (so it may hold bytes that are not UTF-8)."""
    body = urlencode({k: v for k, v in fields.items() if k != name}) + f"&{name}={raw}"
    if method == "get":
        return client.get(f"/sso/login?{body}")
    return client.post("/sso/login", data=body.encode("ascii"), content_type="application/x-www-form-urlencoded")


BAD_VALUES = {
    "NUL": "a%00b",
    "lone surrogate": "a%ED%A0%80b",
    "not UTF-8": "a%FFb",
    "escape": "a%1Bb",
    "C1 control": "a%C2%85b",
    "line break": "acme%0A",
}


@pytest.mark.parametrize("method", ["post", "get"])
@pytest.mark.parametrize("field", ["app", "email", "nav-data", "user_id"])
@pytest.mark.parametrize("bad", BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_bad_characters_in_any_field_get_403_and_record_nothing(client, resource, conn, field, bad, method):
    stamp, token = sso_token(resource["uuid"])
    fields = {"resource_id": resource["uuid"], "resource_token": token, "timestamp": stamp, "app": "acme",
              "email": "owner@acme.test", "user_id": "u-1", "nav-data": NAV}
    response = post_raw(client, fields, field, bad, method)
    assert response.status_code == 403, response.get_data(as_text=True)
    assert "forgedrain_session" not in cookies(response) and "heroku-nav-data" not in cookies(response)
    assert client.get(f"/dashboard/{resource['uuid']}").status_code == 403
    assert sso_logins(conn) == []


@pytest.mark.parametrize("field, value", [("email", "own\x00er@acme.test"), ("user_id", "u-\x00"),
                                          ("email", "owner\x7f@acme.test")])
def test_a_user_scoped_token_signing_a_control_character_is_refused(client, resource, conn, field, value):
    signed = {"user_id": "u-1", "email": "owner@acme.test", field: value}
    stamp, token = user_scoped_token(resource["uuid"], signed["user_id"], signed["email"])
    response = sign_in(client, resource["uuid"], resource_token=None, user_scoped_resource_token=token,
                       timestamp=stamp, **signed)
    assert response.status_code == 403
    assert sso_logins(conn) == []


def test_a_field_sent_twice_is_refused(client, resource, conn):
    stamp, token = sso_token(resource["uuid"])
    body = f"resource_id={resource['uuid']}&resource_id={resource['uuid']}&resource_token={token}&timestamp={stamp}"
    response = client.post("/sso/login", data=body.encode("ascii"), content_type="application/x-www-form-urlencoded")
    assert response.status_code == 403
    assert sso_logins(conn) == []


def test_a_timestamp_in_other_digits_than_ascii_is_refused(client, resource, conn):
    # int() reads fullwidth digits as the same number; the token below signs them as sent
    stamp = "".join(chr(ord(c) - ord("0") + 0xFF10) for c in str(int(time.time())))
    token = hashlib.sha1(f"{resource['uuid']}:{SSO_SALT}:{stamp}".encode()).hexdigest()
    body = urlencode({"resource_id": resource["uuid"], "resource_token": token, "timestamp": stamp})
    response = client.post("/sso/login", data=body.encode("ascii"), content_type="application/x-www-form-urlencoded")
    assert response.status_code == 403
    assert sso_logins(conn) == []
