"""Bodies that are JSON but not what the resource API takes: a precise 4xx, and nothing changes."""

from __future__ import annotations

import json

import pytest

from broker.vault import Vault
from tests.support.polling import add_source
from tests.test_drains_api import api, api_factory, create, resource  # noqa: F401

BODIES = [
    ("[1, 2]", "body"),
    ('"a string"', "body"),
    ("null", "body"),
    ('{"kind": "logplex", "url": "https://l.example.com/\\u0000x"}', "url"),
    ('{"kind": "logplex", "url": "https://l.example.com/", "name": "\\ud800"}', "name"),
    ('{"kind": "otlp", "url": "https://o.example.com", "headers": {"X-Key": "v\\udfff"}}', "headers.X-Key"),
    ('{"kind": "otlp", "url": "https://o.example.com", "headers": {"X\\ud800": "v"}}', "headers."),
    ('{"from": "\\u0000"}', "from"),
    ('{"message": "\\ud800"}', "message"),
]


def snapshot(conn) -> list:
    return [conn.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in ("drains", "sources", "audit_log")]


@pytest.mark.parametrize("raw, field", BODIES)
def test_json_that_is_not_a_clean_object_is_refused_everywhere(api, resource, conn, settings, raw, field):
    rid, auth = resource
    drain = create(api, resource, kind="logplex", url="https://l.example.com/").json["id"]
    source = str(add_source(conn, Vault(settings.fernet_keys), rid))
    before = snapshot(conn)
    targets = [("post", f"/v1/resources/{rid}/drains"), ("patch", f"/v1/resources/{rid}/drains/{drain}"),
               ("post", f"/v1/resources/{rid}/drains/{drain}/test"), ("post", f"/v1/resources/{rid}/sources"),
               ("patch", f"/v1/resources/{rid}/sources/{source}"),
               ("post", f"/v1/resources/{rid}/sources/{source}/backfill")]
    for method, path in targets:
        answer = getattr(api, method)(path, data=raw, headers={**auth, "Content-Type": "application/json"})
        assert 400 <= answer.status_code < 500, (path, raw, answer.status_code, answer.get_data(as_text=True))
        body = json.loads(answer.get_data(as_text=True))
        assert body["error"] == "invalid" and body["message"]
        if field == "body":
            assert answer.status_code == 400 and body["field"] == "body"
    assert snapshot(conn) == before


@pytest.mark.parametrize("body, field", [
    ({"kind": "otlp", "url": "https://o.example.com", "headers": {"X-Key\n": "v"}}, "headers"),
    ({"kind": "syslog", "url": "syslog+tls://l.example.com:6514", "sd_id": "forge@32473\n"}, "sd_id"),
])
def test_a_trailing_line_break_does_not_pass_a_pattern(api, resource, conn, body, field):
    """Patterns end at the end of the text (``\\Z``), not before a final line break (``$``): a header
    name ``"X-Key\\n"`` saved once would make every send fail."""
    before = snapshot(conn)
    answer = create(api, resource, **body)
    assert answer.status_code == 422 and answer.json["field"] == field, answer.json
    assert snapshot(conn) == before


def test_source_fields_refuse_a_trailing_line_break():
    from broker import sources
    from broker.validation import InputError

    good = {"app_id": "ari:cloud:ecosystem::app/0b5e4b9c-3ad0-4a4a-9f0b-000000000001",
            "environment_id": "0d1e2f30-4152-6374-8596-a7b8c9d0e1f2", "email": "bot@acme.test",
            "api_token": "ATATT3xFfGF0-secret"}
    for name, value in (("environment_id", good["environment_id"] + "\n"), ("email", "bot@acme.test\n"),
                        ("email", "bot\x00@acme.test")):
        with pytest.raises(InputError) as refused:
            sources.validate({**good, name: value})
        assert refused.value.field == name


# Characters a URL may not carry anywhere: every C0 control, DEL, C1 controls, spaces of any kind,
# invisible format characters. Each is refused for every kind of drain, on create and on change.
URL_BREAKERS = ["\x00", "\x01", "\x1f", "\x7f", "\x85", "\u00a0", "\u200b", "\u2028", "\t", " ", "\r\n"]


@pytest.mark.parametrize("bad", URL_BREAKERS, ids=[f"U+{ord(c[0]):04X}" for c in URL_BREAKERS])
def test_a_drain_url_with_a_control_character_or_space_anywhere_is_refused(api, resource, conn, bad):
    rid, auth = resource
    drain = create(api, resource, kind="logplex", url="https://l.example.com/").json["id"]
    before = snapshot(conn)
    for body in ({"kind": "logplex", "url": f"https://l.example.com/in{bad}path"},
                 {"kind": "logplex", "url": f"https://l.example.com/?q={bad}"},
                 {"kind": "otlp", "url": f"https://o.exa{bad}mple.com/v1/logs"},
                 {"kind": "syslog", "url": f"syslog+tls://s.example.com:6514{bad}"}):
        answer = create(api, resource, **body)
        assert answer.status_code == 422 and answer.json["field"] == "url", (body, answer.json)
        changed = api.patch(f"/v1/resources/{rid}/drains/{drain}", data=json.dumps({"url": body["url"]}),
                            headers=auth) if body["kind"] == "logplex" else answer
        assert changed.status_code == 422 and changed.json["field"] == "url", (body, changed.json)
    assert snapshot(conn) == before


def test_drain_url_validation_refuses_control_characters_whatever_face_calls_it():
    """The dashboard's forms reach ``drains.validate`` without the resource API's body check."""
    from broker import drains
    from broker.validation import InputError

    for bad in URL_BREAKERS:
        with pytest.raises(InputError) as refused:
            drains.validate({"kind": "logplex", "url": f"https://l.example.com/{bad}x"}, allow_private=True)
        assert refused.value.field == "url"


@pytest.mark.parametrize("name, value", [
    ("X-Key", "v\r\nX-Injected: 1"), ("X-Key", "v\nx"), ("X-Key", "v\rx"), ("X-Key", "v\x00"),
    ("X-Key", "v\x7f"), ("X-Key", "välue"), ("X-Key", "x" * 4097), ("X-Key\r\nX-Injected", "1"),
    ("X Key", "v"), ("", "v"), ("K" * 101, "v"),
])
def test_an_otlp_header_with_a_line_break_nul_or_beyond_its_bounds_is_refused(api, resource, conn, name, value):
    before = snapshot(conn)
    answer = create(api, resource, kind="otlp", url="https://o.example.com", headers={name: value})
    assert answer.status_code == 422 and answer.json["field"].startswith("headers"), answer.json
    assert snapshot(conn) == before


def test_more_than_20_otlp_headers_are_refused(api, resource, conn):
    before = snapshot(conn)
    answer = create(api, resource, kind="otlp", url="https://o.example.com",
                    headers={f"X-K{i}": "v" for i in range(21)})
    assert answer.status_code == 422 and answer.json["field"] == "headers"
    assert snapshot(conn) == before


@pytest.mark.parametrize("sd_id", ["forge\U0001F600@32473", "förge@32473", "forge@32473\u0660"])
def test_an_sd_id_outside_printable_ascii_is_refused(api, resource, conn, sd_id):
    """RFC 5424 §6.3.2: an SD-NAME is PRINTUSASCII; a character beyond U+FFFF slipped past the pattern."""
    before = snapshot(conn)
    answer = create(api, resource, kind="syslog", url="syslog+tls://l.example.com:6514", sd_id=sd_id)
    assert answer.status_code == 422 and answer.json["field"] == "sd_id", answer.json
    assert snapshot(conn) == before


@pytest.mark.parametrize("body", [
    {"name": "n" * 101}, {"url": "https://l.example.com/" + "a" * 2048},
    {"sd_id": "f" * 30 + "@32473"},
])
def test_every_drain_string_is_length_bounded(api, resource, conn, body):
    before = snapshot(conn)
    kind = "syslog" if "sd_id" in body else "logplex"
    url = "syslog+tls://l.example.com:6514" if kind == "syslog" else "https://l.example.com/"
    answer = create(api, resource, **{"kind": kind, "url": url, **body})
    assert answer.status_code == 422 and answer.json["field"] == next(iter(body)), answer.json
    assert snapshot(conn) == before


# --- sources: what HTTP Basic credentials can carry --------------------------------------

FORGE_APP = "5f0f8a4e-1f5a-4c3e-9d7b-1a2b3c4d5e6f"
FORGE_ENV = "0d1e2f30-4152-6374-8596-a7b8c9d0e1f2"
FORGE_TOKEN = "ATATT3xFfGF0-secret-token-0123456789"
WIDE_EMAIL = "用户@例子.测试"  # RFC 6531: an Atlassian account may have one


@pytest.fixture
def forge_api(env):
    """The resource API with a Forge fake that knows an ASCII and an internationalised account."""
    from broker import config
    from tests.fakes.forge import ForgeFake
    from tests.fakes.server import LocalServer
    from tests.support.partner import heroku_headers, provision_body
    from web import create_app

    fake = ForgeFake(seed=5)
    fake.add_app(FORGE_APP, [FORGE_ENV], "bot@acme.test", FORGE_TOKEN)
    fake.add_app("0b5e4b9c-3ad0-4a4a-9f0b-000000000002", [FORGE_ENV], WIDE_EMAIL, FORGE_TOKEN)
    with LocalServer(fake.wsgi()) as server:
        env["FORGE_API_URL"] = server.url
        app = create_app(config.load(env, testing=True))
        client = app.test_client()
        body = provision_body(plan="basic")
        token = client.post("/heroku/resources", data=json.dumps(body),
                            headers=heroku_headers()).get_json(force=True)["config"]["FORGEDRAIN_TOKEN"]
        yield client, fake, body["uuid"], {"Authorization": f"Bearer {token}"}
        app.extensions["forgedrain"].db.close()


def _source(**overrides) -> dict:
    return {"app_id": FORGE_APP, "environment_id": FORGE_ENV, "email": "bot@acme.test",
            "api_token": FORGE_TOKEN, **overrides}


@pytest.mark.parametrize("field, value", [
    ("email", "bot:x@acme.test"),  # RFC 7617: a user-id with a colon cannot be sent
    ("email", "bot\x01@acme.test"), ("email", "bot@acme.test\x85"), ("email", "bot\u200b@acme.test"),
    ("email", "bot@acme\u2028.test"), ("email", "b" * 65 + "@acme.test"),
    ("api_token", "ATATT3x-tökén"), ("api_token", "ATATT3x-用"), ("api_token", "ATATT3x\u00a0x"),
    ("api_token", "ATATT3x\x7f"), ("api_token", "ATATT3x\x01"), ("api_token", "A" * 1025),
    ("app_id", "a" * 129), ("service_name", "s" * 101), ("service_name", "s\x85"),
    ("environment_label", "l\u2028"),
])
def test_a_source_field_basic_auth_or_its_bounds_cannot_carry_is_a_422_naming_it(forge_api, conn, field, value):
    """Before any call to Atlassian and before anything is saved: a non-Latin-1 token used to raise
    inside requests (a 500), a colon in the email would split the credentials in the wrong place."""
    client, fake, rid, auth = forge_api
    before = snapshot(conn)
    answer = client.post(f"/v1/resources/{rid}/sources", data=json.dumps(_source(**{field: value})),
                         headers=auth)
    assert answer.status_code == 422 and answer.json["field"] == field, answer.get_data(as_text=True)
    assert value not in answer.get_data(as_text=True) or field != "api_token"
    assert fake.calls == []
    assert snapshot(conn) == before


def test_an_internationalised_email_registers_a_source(forge_api, conn):
    client, fake, rid, auth = forge_api
    answer = client.post(f"/v1/resources/{rid}/sources", headers=auth, data=json.dumps(
        _source(app_id="0b5e4b9c-3ad0-4a4a-9f0b-000000000002", email=WIDE_EMAIL)))
    assert answer.status_code == 201, answer.get_data(as_text=True)
    assert answer.json["email"] == WIDE_EMAIL and answer.json["state"] == "active"
    assert [call.email for call in fake.calls] == [WIDE_EMAIL]
    assert conn.execute("SELECT email FROM sources").fetchone()["email"] == WIDE_EMAIL
