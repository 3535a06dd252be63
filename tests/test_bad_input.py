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
