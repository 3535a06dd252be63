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
