"""Property-based tests: no input makes any endpoint answer 5xx, and refused input changes nothing."""

from __future__ import annotations

import json
import re
import string
import uuid
from datetime import datetime, timedelta, timezone
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, example, given, settings as hsettings, strategies as st

from tests.support.partner import basic, heroku_headers, provision_body, sso_token
from tests.support.resolver import loopback_only

# What may appear inside one path segment unescaped.
PATH_CHARS = "".join(c for c in string.printable if c not in "/?#%\\ \t\n\r\x0b\x0c")
FUZZ = hsettings(max_examples=80, deadline=None,
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
# A Forge token in the options that requests could not encode as Latin-1 answered 500.
@example(body=provision_body(options={"app_id": "5f0f8a4e-1f5a-4c3e-9d7b-1a2b3c4d5e6f", "environment_id": "prod",
                                      "email": "bot@acme.test", "api_token": "ATATT-\U0001F600"}))
# A lone surrogate in a field stored as given answered 500 (psycopg, the vault).
@example(body=provision_body(name="acme\ud800"))
@example(body=provision_body(callback_url="https://api.heroku.com/addons/\udfff"))
@example(body=provision_body(oauth_grant={"code": "c\ud800", "expires_at": "2030-01-01T00:00:00Z"}))
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


# Bodies every field of which is valid (Heroku's own shapes, and the edges the validators allow):
# the fuzzing above must not pass by refusing everything, so these must all provision.
# Printable as str.isprintable() says: no "Other" or "Separator" character but the ASCII space.
PRINTABLE_TEXT = st.text(st.one_of(st.characters(codec="utf-8", exclude_categories=("C", "Z")), st.just(" ")),
                         max_size=255)
valid_fields = {
    "plan": st.sampled_from(["test", "basic", "pro"]),
    "region": st.one_of(st.none(), st.sampled_from(["amazon-web-services::us-east-1",
                                                    "amazon-web-services::eu-west-1", "us", "eu"])),
    "name": st.one_of(st.none(), PRINTABLE_TEXT),
    "callback_url": st.one_of(st.none(), st.builds("https://api.heroku.com/addons/{}".format, st.uuids()),
                              st.just("http://integrator.example/callback?x=1")),
    "log_drain_token": st.one_of(st.none(), st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E),
                                                    min_size=1, max_size=150)),
    "log_input_url": st.one_of(st.none(), st.just("https://token:t.5f1d6c0e@1.us.logplex.io/logs"),
                               st.builds("https://{}.example/logs".format,
                                         st.text(string.ascii_lowercase + string.digits, min_size=1,
                                                 max_size=30))),
    "options": st.one_of(st.none(), st.just({})),
    "unknown_field": st.one_of(st.none(), json_values),  # unknown fields are ignored
}


@FUZZ
@given(fields=st.fixed_dictionaries(valid_fields))
@example(fields={"plan": "test", "region": None, "name": None, "callback_url": None, "log_drain_token": None,
                 "log_input_url": None, "options": None, "unknown_field": None})  # the least a body may say
def test_any_valid_provision_body_provisions_once(client, conn, fields):
    resource_id = uuid.uuid4()  # a new resource each time: replays are the second request below
    body = {"uuid": str(resource_id), **{k: v for k, v in fields.items() if v is not None}}
    if "log_drain_token" in body:
        body["log_drain_token"] += f".{resource_id}"  # unique per resource, as Heroku's d.<uuid> is
    before = rows(conn)[0]
    response = client.post("/heroku/resources", data=json.dumps(body), headers=heroku_headers())
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json(force=True)["id"] == str(resource_id)
    replay = client.post("/heroku/resources", data=json.dumps(body), headers=heroku_headers())
    assert replay.status_code == 200 and replay.get_json(force=True)["id"] == str(resource_id)
    assert rows(conn)[0] == before + 1
    stored = conn.execute("SELECT plan, name, region FROM resources WHERE id = %s", (resource_id,)).fetchone()
    assert (stored["plan"], stored["name"], stored["region"]) == (body["plan"], body.get("name"),
                                                                   body.get("region"))


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


# --- every endpoint and form, with the strings that broke things ---------------------------------
#
# Bodies are sent as JSON text written by json.dumps, whose \\uXXXX escapes carry lone surrogates
# (raw UTF-8 cannot); forms are sent as bytes, so a lone surrogate arrives as the invalid UTF-8
# a browser or a script could send. The assertion everywhere: no 5xx (bar the documented 502 of a
# drain test that did not get through), and a refused request changes none of the resource's rows.

BREAKERS = ["\x00", "\ud800", "\udfff", "\r\n", "\n", "\x85", "\u2028", "\u200b", "\x7f", "\x01", ":", " ",
            "\U0001F600", "%00", "é"]
MEGABYTE = "x" * 1_000_000  # with its JSON quotes and field name, just under the 1 MiB body limit
nasty_text = st.one_of(
    st.text(max_size=30),
    st.builds(lambda a, bad, b: a + bad + b, st.text(string.printable, max_size=12), st.sampled_from(BREAKERS),
              st.text(string.printable, max_size=12)),
    st.just(MEGABYTE),
)
nasty_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), nasty_text)
nasty_json = st.recursive(nasty_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(nasty_text, inner, max_size=3)), max_leaves=6)


def nasty(*good) -> st.SearchStrategy:
    """A field's value: something it takes (or almost takes), a string that broke things, any JSON."""
    return st.one_of(st.sampled_from(good), nasty_text, nasty_json) if good else st.one_of(nasty_text, nasty_json)


FUZZ_APP = "5f0f8a4e-1f5a-4c3e-9d7b-1a2b3c4d5e6f"
FUZZ_EMAIL = "bot@acme.test"
FUZZ_TOKEN = "ATATT-fuzz-token"
LOOPBACK_URLS = ("http://127.0.0.1:9/drain", "https://127.0.0.1:9/v1/logs", "syslog+tcp://127.0.0.1:9",
                 "syslog+tls://localhost:9", "https://u:p@127.0.0.1:9/x?k=v")
body_fields = {
    # sources
    "app_id": nasty(FUZZ_APP, "ari:cloud:ecosystem::app/" + FUZZ_APP), "environment_id": nasty("prod"),
    "email": nasty(FUZZ_EMAIL, "用户@例子.测试"), "api_token": nasty(FUZZ_TOKEN),
    "levels": nasty(["INFO"], ["LOUD"]), "installation_contexts": nasty(["ari:cloud:jira::site/1"]),
    "service_name": nasty("svc"), "environment_label": nasty("prod"), "include_arguments": nasty(True),
    # drains
    "kind": nasty("logplex", "syslog", "otlp", "heroku"), "url": nasty(*LOOPBACK_URLS),
    "name": nasty("n"), "enabled": nasty(False), "encoding": nasty("json", "protobuf"), "gzip": nasty(True),
    "headers": st.one_of(st.dictionaries(nasty_text, nasty_text, max_size=3), nasty()),
    "sd_id": nasty("forge@32473"),
    # backfill, drain test
    "from": nasty("2026-11-20T08:00:00Z"), "message": nasty("hello"),
}
nasty_values = st.one_of(nasty_text, nasty_text, nasty_json)
BACKFILL_FROM = (datetime.now(timezone.utc) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
GOOD_SOURCE = {"app_id": FUZZ_APP, "environment_id": "prod", "email": FUZZ_EMAIL, "api_token": FUZZ_TOKEN}
SOURCE_FIELDS = ("app_id", "environment_id", "email", "api_token", "levels", "installation_contexts",
                 "service_name", "environment_label", "include_arguments")
DRAIN_FIELDS = ("kind", "url", "name", "enabled", "encoding", "gzip", "headers", "sd_id")
# Each call: its path under the resource, a body it accepts, and the fields worth spoiling one at a time.
RESOURCE_CALLS = {
    "read": ("get", "", None, ()),
    "rotate token": ("post", "/token", None, ("token",)),
    "end token grace": ("delete", "/token/previous", None, ("token",)),
    "list sources": ("get", "/sources", None, ()),
    "add source": ("post", "/sources", GOOD_SOURCE, SOURCE_FIELDS),
    "read source": ("get", "/sources/{source}", None, ()),
    "change source": ("patch", "/sources/{source}", {"service_name": "svc"}, SOURCE_FIELDS),
    "delete source": ("delete", "/sources/{source}", None, ()),
    "verify source": ("post", "/sources/{source}/verify", None, ("from",)),
    "backfill source": ("post", "/sources/{source}/backfill", {"from": BACKFILL_FROM}, ("from",)),
    "list drains": ("get", "/drains", None, ()),
    "add logplex drain": ("post", "/drains", {"kind": "logplex", "url": "http://127.0.0.1:9/d"}, DRAIN_FIELDS),
    "add otlp drain": ("post", "/drains", {"kind": "otlp", "url": "http://127.0.0.1:9", "encoding": "json",
                                          "headers": {"X-Key": "v"}}, DRAIN_FIELDS),
    "add syslog drain": ("post", "/drains", {"kind": "syslog", "url": "syslog+tcp://127.0.0.1:9",
                                            "sd_id": "forge@32473"}, DRAIN_FIELDS),
    "read drain": ("get", "/drains/{drain}", None, ()),
    "change drain": ("patch", "/drains/{drain}", {"name": "n"}, DRAIN_FIELDS),
    "delete drain": ("delete", "/drains/{drain}", None, ()),
    "test drain": ("post", "/drains/{drain}/test", {"message": "hello"}, ("message",)),
    "rotate drain token": ("post", "/drains/{drain}/token", None, ("token",)),
}
child_ids = st.one_of(st.just("EXISTING"), st.just("EXISTING"), st.uuids().map(str),
                      st.text(alphabet=PATH_CHARS, min_size=1, max_size=40))
FUZZ_WIDE = hsettings(FUZZ, max_examples=150)


def spoiled(call: str, whole, spoil: int | None, value):
    """The body to send: ``whole`` as it is, or the call's good body with one of its fields set to
    ``value`` (``spoil`` picks which), or the good body itself."""
    if whole is not None:
        return whole
    _, _, good, fields = RESOURCE_CALLS[call]
    body = dict(good or {})
    if spoil is not None and fields:
        body[fields[spoil % len(fields)]] = value
    return body or None


def resource_rows(conn, rid) -> list:
    """Everything of one resource a request could change (the resource, its sources, drains, audit)."""
    return [conn.execute(f"SELECT * FROM {table} WHERE {column} = %s ORDER BY 1", (rid,)).fetchall()
            for table, column in (("resources", "id"), ("sources", "resource_id"), ("drains", "resource_id"),
                                  ("audit_log", "resource_id"))]


def assert_stored_text_is_clean(conn, vault, rid) -> None:
    """What was accepted can be sent later: no stored text holds a control or invisible character,
    a URL no space, a header nothing but printable ASCII (a bad value saved once fails every send)."""
    for row in conn.execute("SELECT * FROM sources WHERE resource_id = %s", (rid,)).fetchall():
        for field in ("app_id", "environment_id", "email", "service_name", "environment_label"):
            assert row[field] is None or row[field].isprintable(), (field, row[field])
        assert all(c.isprintable() for c in row["installation_contexts"])
        token = vault.decrypt(row["api_token_enc"])
        assert token.isascii() and token.isprintable() and " " not in token
    for row in conn.execute("SELECT * FROM drains WHERE resource_id = %s", (rid,)).fetchall():
        assert row["name"] is None or row["name"].isprintable(), row["name"]
        if row["url_enc"] is not None:
            url = vault.decrypt(row["url_enc"])
            assert url.isprintable() and " " not in url, url
        if row["headers_enc"] is not None:
            for name, value in json.loads(vault.decrypt(row["headers_enc"])).items():
                assert re.fullmatch(r"[!-~]+", name) and re.fullmatch(r"[ -~]*", value), (name, value)
        assert (row["settings"] or {}).get("sd_id") is None or row["settings"]["sd_id"].isascii()


def allowed_5xx(response) -> bool:
    """The one 5xx that is an answer, not a failure: a drain test that did not get through (502)."""
    body = response.get_json(silent=True) or {}
    return response.status_code == 502 and body.get("error") == "test_failed"


@pytest.fixture
def owner(env, monkeypatch):
    """A resource with one source and one drain, its API client and token, Forge's fake on loopback."""
    from broker import config
    from broker.vault import Vault
    from tests.fakes.forge import ForgeFake
    from tests.fakes.server import LocalServer
    from web import create_app

    loopback_only(monkeypatch)
    fake = ForgeFake(seed=9, rate_limit=100000)
    fake.add_app(FUZZ_APP, ["prod"], FUZZ_EMAIL, FUZZ_TOKEN)
    with LocalServer(fake.wsgi()) as server:
        # The app's Forge call budget never runs out here: a 503 forge_budget_spent is a documented
        # answer, but it would hide what the body would have done.
        env.update(FORGE_API_URL=server.url, FORGE_RATE_LIMIT="30", FORGE_RATE_PERIOD_SECONDS="0.1")
        settings = config.load(env, testing=True)
        app = create_app(settings)
        client = app.test_client()
        body = provision_body(plan="pro")
        token = client.post("/heroku/resources", data=json.dumps(body),
                            headers=heroku_headers()).get_json(force=True)["config"]["FORGEDRAIN_TOKEN"]
        yield {"client": client, "rid": body["uuid"], "auth": {"Authorization": f"Bearer {token}"},
               "vault": Vault(settings.fernet_keys)}
        app.extensions["forgedrain"].db.close()


def children(owner, conn) -> tuple[str, str]:
    """The ids of the resource's first source and first owner drain, made again if a call deleted them
    (the source straight into its table: adding one through the API spends the resource's checks)."""
    from tests.support.polling import add_source

    client, base, auth = owner["client"], f"/v1/resources/{owner['rid']}", owner["auth"]
    found = client.get(f"{base}/sources", headers=auth).json["sources"]
    if not found:
        found = [{"id": str(add_source(conn, owner["vault"], owner["rid"], app_id=FUZZ_APP,
                                       environment_id="prod", token=FUZZ_TOKEN))}]
    drains = [d for d in client.get(f"{base}/drains", headers=auth).json["drains"] if d["kind"] != "heroku"]
    if not drains:
        made = client.post(f"{base}/drains", headers=auth,
                           data=json.dumps({"kind": "logplex", "url": "http://127.0.0.1:9/drain"}))
        assert made.status_code == 201, made.get_data(as_text=True)
        drains = [made.json]
    return found[0]["id"], drains[0]["id"]


@FUZZ_WIDE
@given(call=st.sampled_from(sorted(RESOURCE_CALLS)), whole=st.one_of(st.none(), nasty_json),
       spoil=st.one_of(st.none(), st.integers(0, 8)), value=nasty_values, child=child_ids)
# Inputs that answered 500 or were saved and then broke every send, before issue 14's fixes.
@example(call="add source", whole=None, spoil=3, value="ATATT-\U0001F600", child="EXISTING")
@example(call="add source", whole=None, spoil=2, value="bot:x@acme.test", child="EXISTING")
@example(call="add logplex drain", whole=None, spoil=1, value="http://127.0.0.1:9/\x01", child="EXISTING")
@example(call="add syslog drain", whole=None, spoil=7, value="forge\U0001F600@32473", child="EXISTING")
@example(call="change drain", whole=None, spoil=1, value="http://127.0.0.1:9/a\u200bb", child="EXISTING")
def test_no_resource_api_call_causes_a_5xx_and_refusals_change_nothing(owner, conn, call, whole, spoil, value,
                                                                       child):
    client, rid = owner["client"], owner["rid"]
    source, drain = children(owner, conn)
    method, template, _, _ = RESOURCE_CALLS[call]
    path = f"/v1/resources/{rid}" + template.format(
        source=source if child == "EXISTING" else quote(child, safe=""),
        drain=drain if child == "EXISTING" else quote(child, safe=""))
    body = spoiled(call, whole, spoil, value)
    before = resource_rows(conn, rid)
    data = None if body is None else json.dumps(body)
    response = getattr(client, method)(path, data=data, headers={**owner["auth"], "Content-Type": "application/json"})
    assert response.status_code < 500 or allowed_5xx(response), (path, response.get_data(as_text=True)[:500])
    if response.status_code >= 400:
        assert response.get_json(silent=True, force=True)["message"], response.get_data(as_text=True)[:500]
        if not allowed_5xx(response):
            assert resource_rows(conn, rid) == before, (path, response.status_code)
    else:
        assert_stored_text_is_clean(conn, owner["vault"], rid)
    if template == "/token" and response.status_code == 200:
        owner["auth"] = {"Authorization": f"Bearer {response.json['token']}"}


def form_bytes(fields: dict) -> bytes:
    """A urlencoded form as a client could send it: lone surrogates become invalid UTF-8 bytes."""
    return "&".join(f"{quote(k, safe='', errors='surrogatepass')}={quote(v, safe='', errors='surrogatepass')}"
                    for k, v in fields.items()).encode("ascii")


form_text = st.one_of(st.text(max_size=30), st.builds(
    lambda a, bad, b: a + bad + b, st.text(string.printable, max_size=12), st.sampled_from(BREAKERS),
    st.text(string.printable, max_size=12)), st.just("x" * 200_000))
GOOD_SOURCE_FORM = {**GOOD_SOURCE, "levels": "INFO", "service_name": "svc"}
FORM_CALLS = {
    "add source": ("post", "/sources", GOOD_SOURCE_FORM),
    "source edit page": ("get", "/sources/{source}/edit", {}),
    "change source": ("post", "/sources/{source}", GOOD_SOURCE_FORM),
    "verify source": ("post", "/sources/{source}/verify", {}),
    "backfill source": ("post", "/sources/{source}/backfill", {"from": BACKFILL_FROM}),
    "delete source": ("post", "/sources/{source}/delete", {}),
    "add drain": ("post", "/drains", {"kind": "logplex", "url": "http://127.0.0.1:9/d", "name": "n"}),
    "add otlp drain": ("post", "/drains", {"kind": "otlp", "url": "http://127.0.0.1:9", "headers": "X-Key: v"}),
    "add syslog drain": ("post", "/drains", {"kind": "syslog", "url": "syslog+tcp://127.0.0.1:9",
                                             "sd_id": "forge@32473"}),
    "drain edit page": ("get", "/drains/{drain}/edit", {}),
    "change drain": ("post", "/drains/{drain}", {"name": "n", "url": ""}),
    "test drain": ("post", "/drains/{drain}/test", {}),
    "rotate drain token": ("post", "/drains/{drain}/token", {}),
    "disable drain": ("post", "/drains/{drain}/enabled", {"enabled": "false"}),
    "delete drain": ("post", "/drains/{drain}/delete", {}),
    "dashboard": ("get", "", {}),
}
FORM_FIELDS = ("app_id", "environment_id", "email", "api_token", "levels", "installation_contexts", "service_name",
               "environment_label", "include_arguments", "kind", "url", "name", "encoding", "gzip", "headers",
               "sd_id", "enabled", "from", "csrf_token")


@FUZZ_WIDE
@given(call=st.sampled_from(sorted(FORM_CALLS)), field=st.sampled_from(FORM_FIELDS), value=form_text,
       child=st.sampled_from(["EXISTING", "EXISTING", "OTHER"]))
@example(call="add source", field="api_token", value="ATATT-\u7528", child="EXISTING")
@example(call="add drain", field="url", value="http://127.0.0.1:9/\x01x", child="EXISTING")
def test_no_dashboard_form_causes_a_5xx_and_refusals_change_nothing(signed_in, conn, call, field, value, child):
    client, rid = signed_in["client"], signed_in["rid"]
    source, drain = children(signed_in, conn)
    method, template, good = FORM_CALLS[call]
    other = str(uuid.uuid4())  # the dashboard's routes take UUIDs only; anything else is Flask's 404
    path = f"/dashboard/{rid}" + template.format(source=source if child == "EXISTING" else other,
                                                 drain=drain if child == "EXISTING" else other)
    form = {**good, "csrf_token": signed_in["csrf"], field: value}
    before = resource_rows(conn, rid)
    if method == "get":
        response = client.get(path)
    else:
        response = client.post(path, data=form_bytes(form), content_type="application/x-www-form-urlencoded")
    assert response.status_code < 500, (path, response.get_data(as_text=True)[:500])
    if response.status_code >= 400:
        assert resource_rows(conn, rid) == before, (path, response.status_code)
    else:
        assert_stored_text_is_clean(conn, signed_in["vault"], rid)


@pytest.fixture
def signed_in(owner):
    """The owner's dashboard after Heroku's SSO sign-in, with the session's CSRF token."""
    from tests.support.partner import sso_token

    client, rid = owner["client"], owner["rid"]
    stamp, token = sso_token(rid)
    assert client.post("/sso/login", data={"resource_id": rid, "resource_token": token, "timestamp": stamp,
                                           "app": "acme", "email": "owner@acme.test"}).status_code == 302
    page = client.get(f"/dashboard/{rid}").get_data(as_text=True)
    owner["csrf"] = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    return owner


SSO_FIELDS = ("resource_id", "id", "resource_token", "token", "user_scoped_resource_token", "timestamp", "user_id",
              "email", "nav-data", "app")


@FUZZ_WIDE
@given(field=st.sampled_from(SSO_FIELDS), value=form_text, method=st.sampled_from(["post", "get"]))
@example(field="app", value="acme\x00", method="post")
@example(field="email", value="owner\x00@acme.test", method="post")
@example(field="app", value="acme\ud800", method="post")
def test_no_sso_sign_in_with_any_string_causes_a_5xx_and_a_refusal_writes_nothing(owner, conn, field, value, method):
    """A correctly signed sign-in with one field replaced by any string."""
    from tests.support.partner import sso_token

    client, rid = owner["client"], owner["rid"]
    stamp, token = sso_token(rid)
    form = {"resource_id": rid, "resource_token": token, "timestamp": stamp, "app": "acme",
            "email": "owner@acme.test", "user_id": "u-1", field: value}
    before = resource_rows(conn, rid)
    encoded = form_bytes(form)
    if method == "post":
        response = client.post("/sso/login", data=encoded, content_type="application/x-www-form-urlencoded")
    else:
        response = client.get("/sso/login?" + encoded.decode("ascii"))
    assert response.status_code in (302, 400, 403), (form, response.status_code, response.get_data(as_text=True)[:300])
    if response.status_code != 302:
        assert resource_rows(conn, rid) == before
    else:
        assert client.get(f"/dashboard/{rid}").status_code == 200


ingest_headers = st.fixed_dictionaries({}, optional={
    "Content-Type": st.one_of(st.sampled_from(["application/logplex-1", "application/json", ""]), form_text),
    "Logplex-Drain-Token": st.one_of(st.just("EXISTING"), form_text),
    "Logplex-Msg-Count": st.one_of(st.integers(-3, 5).map(str), form_text),
    "Logplex-Frame-Id": st.one_of(st.uuids().map(str), form_text),
    "Content-Encoding": st.sampled_from(["gzip", "identity", "br"]),
})
FRAME = b"<190>1 2026-11-21T10:00:00+00:00 host app web.1 - hello"
ingest_bodies = st.one_of(
    st.binary(max_size=300),
    st.lists(st.one_of(st.just(FRAME), st.binary(max_size=60)), max_size=4).map(
        lambda frames: b"".join(str(len(f)).encode() + b" " + f + b"\n" for f in frames)),
    st.builds(lambda t: t.encode("utf-8", "surrogatepass"), form_text),
)


def outbox_rows(conn) -> int:
    return conn.execute("SELECT count(*) AS n FROM outbox").fetchone()["n"]


@FUZZ_WIDE
@given(headers=ingest_headers, body=ingest_bodies)
def test_no_ingest_request_causes_a_5xx_and_refusals_store_nothing(owner, conn, headers, body):
    client = owner["client"]
    token = conn.execute("SELECT log_drain_token FROM resources WHERE id = %s", (owner["rid"],)).fetchone()
    sent = {k: (token["log_drain_token"] if v == "EXISTING" else v) for k, v in headers.items()}
    try:
        sent = {k: v.encode("utf-8", "surrogatepass").decode("latin-1") for k, v in sent.items()}
        before = outbox_rows(conn)
        response = client.post("/ingest/logplex", data=body, headers=sent)
    except ValueError:
        return  # a header with a line break: not a request a client can send
    assert response.status_code < 500, (sent, response.get_data(as_text=True)[:300])
    if response.status_code >= 400:
        assert outbox_rows(conn) == before
