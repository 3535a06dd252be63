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
