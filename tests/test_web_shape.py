"""The resource API's one shape: every route under /v1/resources/<resource_id> sits behind one guard.

The test walks the app's URL map instead of a list of paths, so a view added later cannot forget
authentication: every method of every rule there is refused without a token (401 with the
challenge), with another resource's token or an id that is none (404), and with the previous token
for anything but reading (403) — and none of these changes anything.
"""

from __future__ import annotations

import json
import re
import uuid

from tests.support.partner import heroku_headers, provision_body

GUARDED = "/v1/resources/<resource_id>"
ARGUMENT = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")


def provisioned(client) -> tuple[str, str]:
    body = provision_body()
    response = client.post("/heroku/resources", data=json.dumps(body), headers=heroku_headers())
    assert response.status_code == 200
    return body["uuid"], response.get_json(force=True)["config"]["FORGEDRAIN_TOKEN"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def state(conn) -> list:
    """Everything a request under the guard could change."""
    return [conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
            for table in ("resources", "drains", "sources", "audit_log")]


def test_every_route_under_a_resource_is_guarded_and_refusals_change_nothing(app, client, conn):
    rid, old = provisioned(client)
    other, other_token = provisioned(client)
    current = client.post(f"/v1/resources/{rid}/token", headers=bearer(old)).json["token"]  # old: previous now
    drain_id = client.get(f"/v1/resources/{rid}", headers=bearer(current)).json["drains"][0]["id"]
    values = {"resource_id": rid, "drain_id": drain_id, "source_id": str(uuid.uuid4())}
    rules = [r for r in app.url_map.iter_rules() if r.rule.startswith("/v1")]
    guarded = [r for r in rules if r.rule == GUARDED or r.rule.startswith(GUARDED + "/")]
    # Outside the guard under /v1 only the OpenAPI document, which anyone may read.
    assert {r.rule for r in rules} - {r.rule for r in guarded} == {"/v1/openapi.json"}
    assert client.get("/v1/openapi.json").status_code == 200
    assert {"/drains", "/drains/<drain_id>/test", "/sources", "/sources/<source_id>/verify", "/token"} <= {
        r.rule[len(GUARDED):] for r in guarded}
    before = state(conn)
    checked = 0
    for rule in guarded:
        path = ARGUMENT.sub(lambda m: values[m.group(1)], rule.rule)
        elsewhere = path.replace(rid, other, 1)
        no_id = path.replace(rid, "not-a-uuid", 1)
        for method in sorted(rule.methods):
            where = f"{method} {rule.rule}"
            for headers in ({}, {"Authorization": "Basic Zm9yZ2VkcmFpbjp4"}, bearer("fdr_not-a-token")):
                refused = client.open(path, method=method, headers=headers, json={})
                assert refused.status_code == 401, where
                assert refused.headers["WWW-Authenticate"].startswith("Bearer"), where
                if method != "HEAD":
                    assert refused.json["error"] == "unauthorized", where
            for target, token in ((path, other_token), (elsewhere, current), (no_id, current)):
                refused = client.open(target, method=method, headers=bearer(token), json={})
                assert refused.status_code == 404, where
                if method != "HEAD":
                    assert refused.json == {"error": "not_found", "message": "no such resource"}, where
            if method not in ("GET", "HEAD"):
                refused = client.open(path, method=method, headers=bearer(old), json={})
                assert refused.status_code == 403 and refused.json["error"] == "previous_token", where
            checked += 1
    assert checked >= 2 * len(guarded)  # every rule has at least its own method and OPTIONS
    assert state(conn) == before


def test_a_body_over_one_mib_is_a_413_with_the_api_s_own_error_code(client, conn):
    rid, token = provisioned(client)
    before = state(conn)
    response = client.post(f"/v1/resources/{rid}/drains", headers=bearer(token),
                           data=json.dumps({"kind": "logplex", "url": "https://" + "x" * (1 << 20)}))
    assert response.status_code == 413
    assert response.get_json(force=True) == {"error": "too_large", "message": "request body is larger than 1 MiB"}
    assert state(conn) == before
