"""Property-based tests: no input makes any endpoint answer 5xx, and refused input changes nothing."""

from __future__ import annotations

import json
import string
import uuid

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from tests.support.partner import basic, heroku_headers, provision_body, sso_token

# What may appear inside one path segment unescaped.
PATH_CHARS = "".join(c for c in string.printable if c not in "/?#%\\ \t\n\r\x0b\x0c")
FUZZ = hsettings(max_examples=120, deadline=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                    st.floats(allow_nan=False), st.text(max_size=40))
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)), max_leaves=12)

# Values that look like what each field expects, and values that almost do.
field_values = {
    "uuid": st.one_of(st.uuids().map(str), st.text(max_size=40), json_values),
    "plan": st.one_of(st.sampled_from(["test", "basic", "pro", "foo", "", "TEST"]), json_values),
    "region": st.one_of(st.sampled_from(["amazon-web-services::us-east-1", "us", "eu", "mars"]), json_values),
    "name": st.one_of(st.text(max_size=300), json_values),
    "callback_url": st.one_of(st.text(max_size=60), json_values),
    "log_drain_token": st.one_of(st.text(alphabet=string.printable, max_size=60), json_values),
    "log_input_url": st.one_of(st.sampled_from(["https://token:t.x@1.us.logplex.io/logs", "http://[::1",
                                                "https://", "javascript:alert(1)"]), json_values),
    "oauth_grant": st.one_of(st.fixed_dictionaries({"code": json_values, "expires_at": json_values}),
                             json_values),
    "options": json_values,
}
provision_bodies = st.one_of(
    json_values,
    st.fixed_dictionaries({}, optional=field_values),
)


def rows(conn) -> tuple[int, int, int]:
    r = conn.execute("SELECT (SELECT count(*) FROM resources) AS a, (SELECT count(*) FROM drains) AS b, "
                     "(SELECT count(*) FROM audit_log) AS c").fetchone()
    return r["a"], r["b"], r["c"]


@FUZZ
@given(body=provision_bodies)
def test_no_provision_body_causes_a_5xx_and_refusals_write_nothing(client, conn, body):
    before = rows(conn)
    response = client.post("/heroku/resources", data=json.dumps(body), headers=heroku_headers())
    assert response.status_code < 500, response.get_data(as_text=True)
    assert response.get_json(force=True) is not None
    if response.status_code >= 400:
        assert rows(conn) == before
        assert response.get_json(force=True)["message"]


@FUZZ
@given(raw=st.binary(max_size=300))
def test_no_raw_body_causes_a_5xx(client, conn, raw):
    before = rows(conn)
    response = client.post("/heroku/resources", data=raw, headers=heroku_headers())
    assert response.status_code < 500
    if response.status_code >= 400:
        assert rows(conn) == before


@pytest.fixture
def existing(client):
    body = provision_body(plan="basic")
    client.post("/heroku/resources", data=json.dumps(body), headers=heroku_headers())
    return body


@FUZZ
@given(body=json_values, path_id=st.one_of(st.just("EXISTING"), st.text(alphabet=string.ascii_letters + "-", max_size=40)))
def test_no_plan_change_or_deprovision_causes_a_5xx(client, conn, existing, body, path_id):
    rid = existing["uuid"] if path_id == "EXISTING" else (path_id or "x")
    before = rows(conn)
    response = client.put(f"/heroku/resources/{rid}", data=json.dumps(body), headers=heroku_headers())
    assert response.status_code < 500
    if response.status_code >= 400:
        assert rows(conn) == before
    if path_id != "EXISTING":
        assert client.delete(f"/heroku/resources/{rid}", headers=heroku_headers()).status_code in (404, 405)


@FUZZ
@given(user=st.text(max_size=30), password=st.text(max_size=80))
def test_no_credentials_cause_a_5xx(client, conn, user, password):
    try:
        headers = basic(user, password)
    except UnicodeEncodeError:
        return
    response = client.post("/heroku/resources", data=json.dumps(provision_body()), headers=headers)
    assert response.status_code in (200, 401)
    if response.status_code == 401:
        assert rows(conn)[0] == 0


sso_fields = st.fixed_dictionaries({}, optional={
    name: st.one_of(st.text(max_size=80), st.just("EXISTING"), st.just("VALID"))
    for name in ("resource_id", "id", "resource_token", "token", "user_scoped_resource_token",
                 "timestamp", "user_id", "email", "nav-data", "app")
})


@FUZZ
@given(form=sso_fields, method=st.sampled_from(["post", "get"]))
def test_no_sso_request_causes_a_5xx(client, existing, form, method):
    stamp, token = sso_token(existing["uuid"])
    filled = {k: (existing["uuid"] if v == "EXISTING" else token if v == "VALID" else v)
              for k, v in form.items()}
    if "VALID" in form.values():
        filled.setdefault("timestamp", stamp)
    if method == "post":
        response = client.post("/sso/login", data=filled)
    else:
        response = client.get("/sso/login", query_string=filled)
    assert response.status_code in (302, 403)


@FUZZ
@given(authorization=st.one_of(st.none(), st.text(max_size=120)),
       rid=st.one_of(st.uuids().map(str), st.text(alphabet=PATH_CHARS, max_size=50)))
def test_no_resource_api_request_causes_a_5xx(client, authorization, rid):
    headers = {} if authorization is None else {"Authorization": authorization}
    try:
        response = client.get(f"/v1/resources/{rid}", headers=headers)
    except (UnicodeEncodeError, ValueError):
        return  # not a request a client can send
    assert response.status_code < 500
    assert response.json is not None


def test_a_fuzzed_valid_body_still_provisions(client, conn):
    # guard against a fuzz suite that only ever sees refusals
    response = client.post("/heroku/resources", data=json.dumps(provision_body(uuid=str(uuid.uuid4()))),
                           headers=heroku_headers())
    assert response.status_code == 200


source_fields = {
    "app_id": st.one_of(st.just("5f0f8a4e-1f5a-4c3e-9d7b-1a2b3c4d5e6f"), st.text(max_size=40), json_values),
    "environment_id": st.one_of(st.just("prod"), st.text(max_size=40), json_values),
    "email": st.one_of(st.just("bot@acme.test"), st.emails(), json_values),
    "api_token": st.one_of(st.just("ATATT-fuzz-token"), st.text(max_size=40), json_values),
    "levels": st.one_of(st.lists(st.sampled_from(["INFO", "ERROR", "LOUD", ""]), max_size=4), json_values),
    "installation_contexts": st.one_of(st.lists(st.sampled_from(["ari:cloud:jira::site/1", "x"]), max_size=3),
                                       json_values),
    "service_name": st.one_of(st.text(max_size=120), json_values),
    "environment_label": json_values,
    "include_arguments": json_values,
}


@pytest.fixture
def source_api(env):
    from broker import config
    from tests.fakes.forge import ForgeFake
    from tests.fakes.server import LocalServer
    from web import create_app

    fake = ForgeFake(seed=9, rate_limit=100000)
    fake.add_app("5f0f8a4e-1f5a-4c3e-9d7b-1a2b3c4d5e6f", ["prod"], "bot@acme.test", "ATATT-fuzz-token")
    with LocalServer(fake.wsgi()) as server:
        env["FORGE_API_URL"] = server.url
        app = create_app(config.load(env, testing=True))
        client = app.test_client()
        body = provision_body(plan="pro")
        token = client.post("/heroku/resources", data=json.dumps(body),
                            headers=heroku_headers()).get_json(force=True)["config"]["FORGEDRAIN_TOKEN"]
        yield client, body["uuid"], {"Authorization": f"Bearer {token}"}
        app.extensions["forgedrain"].db.close()


@FUZZ
@given(body=st.one_of(json_values, st.fixed_dictionaries({}, optional=source_fields)),
       method=st.sampled_from(["post", "patch"]))
def test_no_source_body_causes_a_5xx_and_refusals_write_nothing(source_api, conn, body, method):
    client, rid, auth = source_api
    existing = client.get(f"/v1/resources/{rid}/sources", headers=auth).json["sources"]
    if method == "patch" and existing:
        path = f"/v1/resources/{rid}/sources/{existing[0]['id']}"
    else:
        path = f"/v1/resources/{rid}/sources"
    before = json.dumps(existing, sort_keys=True)
    response = getattr(client, method)(path, data=json.dumps(body), headers=auth)
    assert response.status_code < 500, response.get_data(as_text=True)
    if response.status_code >= 400:
        after = client.get(f"/v1/resources/{rid}/sources", headers=auth).json["sources"]
        assert json.dumps(after, sort_keys=True) == before
