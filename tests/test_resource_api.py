"""The resource API under /v1: bearer FORGEDRAIN_TOKEN scoped to one resource."""

from __future__ import annotations

import json
import uuid

import jsonschema
import pytest

from tests.support.partner import heroku_headers, provision_body
from web import openapi


def provisioned(client, **overrides) -> tuple[dict, str]:
    body = provision_body(**overrides)
    response = client.post("/heroku/resources", data=json.dumps(body), headers=heroku_headers())
    assert response.status_code == 200
    return body, response.get_json(force=True)["config"]["FORGEDRAIN_TOKEN"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def schema(name: str) -> dict:
    document = openapi.document("http://x")
    return {**document["components"]["schemas"][name], "$defs": {}}


def test_it_returns_plan_limits_and_state(client):
    body, token = provisioned(client, plan="test", name="acme-drain")
    response = client.get(f"/v1/resources/{body['uuid']}", headers=bearer(token))
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    data = response.json
    assert data["id"] == body["uuid"]
    assert data["name"] == "acme-drain"
    assert data["plan"] == "test"
    assert data["limits"] == {"max_sources": 1, "max_drains": 2, "poll_interval_seconds": 300,
                              "backlog_hours": 24}
    assert data["state"] == "provisioned"
    assert data["config_push"] is None  # no Heroku grant: the broker never pushes its config
    assert [d["kind"] for d in data["drains"]] == ["heroku"]
    assert data["log_drain_token"] != body["log_drain_token"]  # masked
    jsonschema.validate(data, schema("Resource"))


def test_the_token_reflects_plan_changes(client):
    body, token = provisioned(client, plan="test")
    client.put(f"/heroku/resources/{body['uuid']}", data=json.dumps({"plan": "pro"}),
               headers=heroku_headers())
    assert client.get(f"/v1/resources/{body['uuid']}", headers=bearer(token)).json["plan"] == "pro"


def test_another_resources_id_is_404(client):
    mine, token = provisioned(client)
    other, _ = provisioned(client)
    response = client.get(f"/v1/resources/{other['uuid']}", headers=bearer(token))
    assert response.status_code == 404
    assert response.json["error"] == "not_found"
    assert other["uuid"] not in response.get_data(as_text=True)
    assert client.get(f"/v1/resources/{uuid.uuid4()}", headers=bearer(token)).status_code == 404
    assert client.get("/v1/resources/not-a-uuid", headers=bearer(token)).status_code == 404


@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": "Bearer "},
    {"Authorization": "Bearer fdr_wrong"},
    {"Authorization": "Basic Zm9yZ2VkcmFpbjp4"},
    {"Authorization": "Bearer " + "x" * 500},
])
def test_missing_or_wrong_tokens_get_401(client, headers):
    body, _ = provisioned(client)
    response = client.get(f"/v1/resources/{body['uuid']}", headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert set(response.json) == {"error", "message"}
    jsonschema.validate(response.json, schema("Error"))


def test_the_openapi_document_describes_every_v1_route(app, client):
    response = client.get("/v1/openapi.json")
    assert response.status_code == 200
    document = response.json
    assert document["openapi"].startswith("3.1")
    documented = set(document["paths"])
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/v1"):
            path = rule.rule.replace("<resource_id>", "{id}").replace("<source_id>", "{source_id}").replace(
                "<drain_id>", "{drain_id}")
            assert path in documented, f"{rule.rule} is not in the OpenAPI document"
            methods = rule.methods - {"HEAD", "OPTIONS"}
            assert methods <= {m.upper() for m in document["paths"][path]}


def test_unknown_v1_paths_and_methods_are_json_errors(client):
    body, token = provisioned(client)
    assert client.get("/v1/nothing", headers=bearer(token)).status_code == 404
    response = client.post(f"/v1/resources/{body['uuid']}", headers=bearer(token))
    assert response.status_code == 405
    assert response.json["error"]


def test_a_leaked_previous_token_reads_but_cannot_rotate_change_or_keep_its_grace(client, conn):
    body, old = provisioned(client)
    rid = body["uuid"]
    new = client.post(f"/v1/resources/{rid}/token", headers=bearer(old)).json["token"]
    assert client.get(f"/v1/resources/{rid}", headers=bearer(old)).status_code == 200  # running apps read on
    before = conn.execute("SELECT api_token_hash, api_token_generation FROM resources").fetchone()
    for method, path, payload in (("post", f"/v1/resources/{rid}/token", None),
                                  ("delete", f"/v1/resources/{rid}/token/previous", None),
                                  ("post", f"/v1/resources/{rid}/drains", {"kind": "logplex",
                                                                          "url": "https://l.example.com/"})):
        answer = getattr(client, method)(path, headers=bearer(old), json=payload)
        assert answer.status_code == 403 and answer.json["error"] == "previous_token", (path, answer.json)
    assert conn.execute("SELECT api_token_hash, api_token_generation FROM resources").fetchone() == before
    assert conn.execute("SELECT count(*) AS n FROM drains WHERE kind <> 'heroku'").fetchone()["n"] == 0
    # the owner ends the grace now
    assert client.delete(f"/v1/resources/{rid}/token/previous", headers=bearer(new)).status_code == 204
    assert client.get(f"/v1/resources/{rid}", headers=bearer(old)).status_code == 401
    assert client.get(f"/v1/resources/{rid}", headers=bearer(new)).status_code == 200
    assert client.delete(f"/v1/resources/{rid}/token/previous", headers=bearer(new)).status_code == 404
    actions = [r["action"] for r in conn.execute("SELECT action FROM audit_log ORDER BY id")]
    assert actions[-2:] == ["resource.token_rotated", "resource.token_grace_ended"]


def test_rotating_the_token_keeps_the_old_one_for_a_grace_period(client, conn):
    body, old = provisioned(client)
    response = client.post(f"/v1/resources/{body['uuid']}/token", headers=bearer(old))
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    new = response.json["token"]
    assert new != old
    assert client.get(f"/v1/resources/{body['uuid']}", headers=bearer(new)).status_code == 200
    assert client.get(f"/v1/resources/{body['uuid']}", headers=bearer(old)).status_code == 200
    conn.execute("UPDATE resources SET api_token_previous_until = now() - interval '1 second'")
    assert client.get(f"/v1/resources/{body['uuid']}", headers=bearer(old)).status_code == 401
    assert client.get(f"/v1/resources/{body['uuid']}", headers=bearer(new)).status_code == 200
    entry = conn.execute("SELECT actor, action, detail FROM audit_log ORDER BY id DESC LIMIT 1").fetchone()
    assert entry == {"actor": "api-token", "action": "resource.token_rotated", "detail": {"generation": 2}}
    # a replayed provision now hands out the current token, not the first one
    replay = client.post("/heroku/resources", data=json.dumps(body), headers=heroku_headers())
    assert replay.get_json(force=True)["config"]["FORGEDRAIN_TOKEN"] == new
