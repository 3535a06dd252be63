"""A partner's view of its fleet (issue 17 item 2): its resources with health, and usage per resource and day
that adds up to what the receivers counted, across drain deletions; scoped to the partner; documented."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import uuid
from datetime import datetime, timezone

import jsonschema
import orjson
import pytest

from broker import config, db, delivery, outbox, partners, polling
from broker.senders import Wire
from broker.sinks import http
from broker.vault import Vault
from tests.fakes.receivers import logplex_receiver, otlp_receiver
from tests.fakes.server import LocalServer
from tests.support.partner import basic, heroku_headers, provision_body
from tests.test_delivery import claim_due
from web import create_app


@pytest.fixture
def app(env):
    application = create_app(config.load({**env, "ALLOW_PRIVATE_DRAINS": "true"}, testing=True))
    yield application
    application.extensions["forgedrain"].db.close()


@pytest.fixture
def web(app):
    return app.test_client()


@pytest.fixture
def vault(settings):
    return Vault(settings.fernet_keys)


@pytest.fixture
def integrator(conn, settings):
    return basic("acme-cloud", partners.create(conn, settings, "acme-cloud", "Acme Cloud"))


def provision(web, headers=None, **overrides) -> dict:
    body = provision_body(log_input_url=None, **overrides)
    answer = web.post("/heroku/resources", data=json.dumps(body), headers={**heroku_headers(), **(headers or {})})
    assert answer.status_code == 200, answer.data
    data = answer.get_json(force=True)
    return {"id": data["id"], "token": body.get("log_drain_token") or data.get("log_drain_token"),
            "api": {"Authorization": f"Bearer {data['config']['FORGEDRAIN_TOKEN']}"}}


def schema(web, name: str) -> dict:
    document = web.get("/partner/v1/openapi.json", headers=basic()).json
    return {**document["components"]["schemas"][name], "components": document["components"]}


def forge_records(n: int, start: int = 0) -> list[dict]:
    return [{"timeUnixNano": str(1_763_700_000_000_000_000 + (start + i) * 1_000_000), "severityText": "INFO",
             "severityNumber": 9, "body": {"stringValue": f"record {start + i} ✓"},
             "attributes": [{"key": "invocationId", "value": {"stringValue": f"inv-{start + i}"}}]}
            for i in range(n)]


def store_forge(conn, resource_id, records: list[dict]) -> int:
    """Store a page as polling does (outbox.append_forge in its own transaction); its JSON size."""
    times = [polling.record_time(r, datetime.now(timezone.utc)) for r in records]
    with conn.transaction():
        outbox.append_forge(conn, resource_id, None, records, times)
    return len(orjson.dumps(records))


def frame(message: bytes) -> bytes:
    line = b"<190>1 2026-11-21T08:00:00.000000+00:00 host app web.1 - " + message
    return str(len(line)).encode() + b" " + line


def ingest(web, token: str, messages: list[bytes]) -> int:
    body = b"".join(frame(m) for m in messages)
    answer = web.post("/ingest/logplex", data=body, headers={
        "Content-Type": "application/logplex-1", "Logplex-Drain-Token": token, "Logplex-Msg-Count": str(len(messages)),
        "Logplex-Frame-Id": uuid.uuid4().hex.upper(), "User-Agent": "Logplex/v123"})
    assert answer.status_code == 204, answer.data
    return len(body)


def deliver_all(database_url: str, vault: Vault) -> None:
    @contextlib.contextmanager
    def connect():
        with db.connect(database_url, "forgedrain-tests") as conn:
            yield conn

    session = http.new_session(allow_private=True)
    deliverer = delivery.Deliverer(connect, Wire(lambda: session, True), vault, turn_seconds=20)
    with db.connect(database_url, "forgedrain-tests") as conn:
        for drain in claim_due(conn, 50):
            deliverer.deliver(drain)


def test_usage_adds_up_to_what_the_receivers_counted_and_survives_a_drain_deletion(
        web, conn, vault, database_url):
    resource = provision(web)
    other = provision(web)  # a second resource of the same partner, with its own usage
    logplex_app, logplex_inbox = logplex_receiver()
    otlp_app, otlp_inbox = otlp_receiver()
    with LocalServer(logplex_app) as logplex_server, LocalServer(otlp_app) as otlp_server:
        drains = {}
        for kind, url in (("logplex", f"http://127.0.0.1:{logplex_server.port}/logs"),
                          ("otlp", f"http://127.0.0.1:{otlp_server.port}")):
            answer = web.post(f"/v1/resources/{resource['id']}/drains", json={"kind": kind, "url": url},
                              headers=resource["api"])
            assert answer.status_code == 201, answer.json
            drains[kind] = answer.json["id"]

        forge_bytes = sum(store_forge(conn, resource["id"], forge_records(n, start))
                          for n, start in ((40, 0), (25, 40), (10, 65)))
        ingest_bytes = (ingest(web, resource["token"], [f"line {i}".encode() for i in range(5)])
                        + ingest(web, resource["token"], [f"more {i}".encode() for i in range(3)]))
        store_forge(conn, other["id"], forge_records(4))
        deliver_all(database_url, vault)

        received_logplex = sum(len(r["events"]) for r in logplex_inbox.requests)
        received_otlp = sum(len(s.log_records) for r in otlp_inbox.requests
                            for rl in r["message"].resource_logs for s in rl.scope_logs)
        assert received_logplex == received_otlp == 75 + 8

        # A batch older than the plan's backlog that neither drain received is dropped by the prune.
        store_forge(conn, resource["id"], forge_records(7, 100))
        conn.execute("UPDATE outbox SET created_at = now() - interval '1000 hours' "
                     "WHERE id = (SELECT max(id) FROM outbox WHERE resource_id = %s)", (resource["id"],))
        assert outbox.prune(conn).dropped_records == 14

    assert web.delete(f"/v1/resources/{resource['id']}/drains/{drains['otlp']}",
                      headers=resource["api"]).status_code == 204

    answer = web.get(f"/partner/v1/usage?resource_id={resource['id']}", headers=basic())
    assert answer.status_code == 200, answer.json
    jsonschema.validate(answer.json, schema(web, "Usage"))
    today = datetime.now(timezone.utc).date().isoformat()
    assert answer.json["days"] == [{
        "resource_id": resource["id"], "day": today,
        "received": {"forge": {"records": 82, "bytes": forge_bytes + len(orjson.dumps(forge_records(7, 100)))},
                     "ingest": {"records": 8, "bytes": ingest_bytes}},
        "delivered": {"heroku": 0, "logplex": received_logplex, "syslog": 0, "otlp": received_otlp},
        "dropped": {"heroku": 0, "logplex": 7, "syslog": 0, "otlp": 7},
    }]

    every = web.get("/partner/v1/usage?format=csv", headers=basic())
    assert every.status_code == 200 and every.content_type.startswith("text/csv")
    rows = {r["resource_id"]: r for r in csv.DictReader(io.StringIO(every.get_data(as_text=True)))}
    assert set(rows) == {resource["id"], other["id"]}
    assert rows[resource["id"]]["delivered_otlp"] == str(received_otlp)
    assert rows[resource["id"]]["dropped_logplex"] == "7"
    assert rows[other["id"]]["forge_records"] == "4" and rows[other["id"]]["delivered_logplex"] == "0"
    by_accept = web.get("/partner/v1/usage", headers={**basic(), "Accept": "text/csv"})
    assert by_accept.get_data() == every.get_data()


def test_usage_pages_go_by_resource_and_the_csv_names_the_next_page(web, conn):
    made = sorted(provision(web)["id"] for _ in range(3))
    for resource_id in made:
        store_forge(conn, resource_id, forge_records(2))
    first = web.get("/partner/v1/usage?limit=2", headers=basic()).json
    assert [d["resource_id"] for d in first["days"]] == made[:2] and first["next_after"] == made[1]
    second = web.get(f"/partner/v1/usage?limit=2&after={first['next_after']}", headers=basic()).json
    assert [d["resource_id"] for d in second["days"]] == made[2:] and second["next_after"] is None
    paged = web.get("/partner/v1/usage?limit=2&format=csv", headers=basic())
    assert paged.headers["Link"] == f'</partner/v1/usage?limit=2&format=csv&after={made[1]}>; rel="next"'


def test_a_partner_lists_only_its_own_resources_with_state_plan_and_health(web, conn, vault, integrator):
    healthy = provision(web)
    troubled = provision(web, plan="test")
    acme = provision(web, headers=integrator, log_drain_token=None)
    # The troubled resource: a source Atlassian refused, and a drain whose last attempt failed.
    conn.execute("INSERT INTO sources (resource_id, app_id, environment_id, email, state, pause_reason) "
                 "VALUES (%s, 'app-1', 'prod', 'bot@acme.test', 'paused', 'auth_failed')", (troubled["id"],))
    conn.execute("INSERT INTO drains (resource_id, kind, url_enc, token, consecutive_failures) "
                 "VALUES (%s, 'logplex', %s, %s, 3)", (troubled["id"], vault.encrypt("https://l.example/"),
                                                        f"d.{uuid.uuid4()}"))
    gone = provision(web)
    assert web.delete(f"/heroku/resources/{gone['id']}", headers=heroku_headers()).status_code == 204

    listing = web.get("/partner/v1/resources", headers=basic())
    assert listing.status_code == 200
    jsonschema.validate(listing.json, {"type": "object", "properties": {"resources": {
        "type": "array", "items": schema(web, "Resource")}}})
    by_id = {r["id"]: r for r in listing.json["resources"]}
    assert set(by_id) == {healthy["id"], troubled["id"], gone["id"]}
    assert by_id[healthy["id"]]["health"]["status"] == "ok"
    assert by_id[healthy["id"]]["plan"] == "basic" and by_id[troubled["id"]]["plan"] == "test"
    assert by_id[troubled["id"]]["health"]["status"] == "attention"
    assert by_id[troubled["id"]]["health"]["problems"] == ["1 source paused", "1 drain failing"]
    assert by_id[troubled["id"]]["health"]["sources"] == {"active": 0, "paused": 1, "over_capacity": 0}
    assert by_id[gone["id"]]["state"] == "deprovisioned" and by_id[gone["id"]]["health"]["status"] == "inactive"

    attention = web.get("/partner/v1/resources?health=attention", headers=basic()).json["resources"]
    assert [r["id"] for r in attention] == [troubled["id"]]
    on_test = web.get("/partner/v1/resources?plan=test&state=provisioned", headers=basic()).json["resources"]
    assert [r["id"] for r in on_test] == [troubled["id"]]

    # The integrator sees its own resource only, and nothing of Heroku's.
    theirs = web.get("/partner/v1/resources", headers=integrator).json["resources"]
    assert [r["id"] for r in theirs] == [acme["id"]]
    assert web.get(f"/partner/v1/resources/{healthy['id']}", headers=integrator).status_code == 404
    assert web.get(f"/partner/v1/usage?resource_id={healthy['id']}", headers=integrator).status_code == 404
    assert web.get(f"/partner/v1/resources/{acme['id']}", headers=integrator).json["id"] == acme["id"]


def test_resources_come_a_page_at_a_time(web):
    made = sorted(provision(web)["id"] for _ in range(5))
    seen, after = [], None
    while True:
        page = web.get("/partner/v1/resources?limit=2" + (f"&after={after}" if after else ""), headers=basic()).json
        seen += [r["id"] for r in page["resources"]]
        after = page["next_after"]
        if after is None:
            break
    assert seen == made


@pytest.mark.parametrize("query, parameter", [
    ("/resources?limit=0", "limit"), ("/resources?limit=201", "limit"), ("/resources?limit=x", "limit"),
    ("/resources?health=bad", "health"), ("/resources?state=gone", "state"), ("/resources?plan=gold", "plan"),
    ("/resources?after=nope", "after"), ("/resources?sort=name", "sort"), ("/resources?limit=1&limit=2", "limit"),
    ("/usage?from=2026-13-01", "from"), ("/usage?from=2026-12-02&to=2026-12-01", "from"),
    ("/usage?from=2026-01-01&to=2026-12-01", "from"), ("/usage?format=xml", "format"),
    ("/usage?resource_id=1", "resource_id"), ("/usage?to=20261201", "to"),
])
def test_bad_parameters_are_a_400_naming_them(web, query, parameter):
    answer = web.get(f"/partner/v1{query}", headers=basic())
    assert answer.status_code == 400, answer.json
    assert answer.json["parameter"] == parameter and answer.json["message"]
    assert answer.content_type == "application/json"


def test_without_partner_credentials_nothing_is_shown(web):
    provision(web)
    for path in ("/resources", "/usage", "/openapi.json"):
        answer = web.get(f"/partner/v1{path}")
        assert answer.status_code == 401 and answer.headers["WWW-Authenticate"].startswith("Basic")
        assert web.get(f"/partner/v1{path}", headers=basic("forgedrain", "wrong")).status_code == 401


def test_the_openapi_document_describes_every_partner_view_route(app, web):
    document = web.get("/partner/v1/openapi.json", headers=basic()).json
    assert document["openapi"].startswith("3.1")
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/partner/v1"):
            path = rule.rule.replace("<resource_id>", "{id}")
            assert path in document["paths"], rule.rule
            assert rule.methods - {"HEAD", "OPTIONS"} <= {m.upper() for m in document["paths"][path]}
