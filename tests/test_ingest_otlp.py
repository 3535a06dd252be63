"""OTLP ingest at /ingest/otlp/v1/logs: an app's logs over OTLP/HTTP in, to the resource's drains out
(issue 17 item 3, SPEC §11)."""

from __future__ import annotations

import gzip
import json
import re
import uuid

import orjson
import pytest
import requests
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (ExportLogsServiceRequest,
                                                                     ExportLogsServiceResponse)

from broker import config, outbox, tokens
from broker.vault import Vault
from tests.fakes.receivers import logplex_receiver, otlp_receiver
from tests.fakes.server import LocalServer
from tests.support.partner import heroku_headers, provision_body
from tests.test_delivery import add_drain, deliver_all, drain_row, make_deliverer
from web import create_app

PATH = "/ingest/otlp/v1/logs"
TOKEN = re.compile(r"fdi_[0-9a-f]{32}_[A-Za-z0-9_-]{43}")
TRACE, SPAN = "5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174"


def make_app(env, **overrides):
    return create_app(config.load({**env, "ALLOW_PRIVATE_DRAINS": "true", **overrides}, testing=True))


@pytest.fixture
def app(env):
    application = make_app(env)
    yield application
    application.extensions["forgedrain"].db.close()


@pytest.fixture
def web(app):
    return app.test_client()


def provision(web, stream_url: str | None = None) -> dict:
    body = provision_body(log_input_url=stream_url) if stream_url else provision_body()
    answer = web.post("/heroku/resources", data=json.dumps(body), headers=heroku_headers())
    assert answer.status_code in (200, 202), answer.data
    reply = answer.get_json(force=True)
    # The provision answer's message carries the exact command, with the token.
    assert "heroku telemetry:add http://" in reply["message"] and "--signals logs --transport http" in reply["message"]
    found = TOKEN.findall(reply["message"])
    assert len(found) == 1 and f"'{{\"X-Forgedrain-Ingest-Token\":\"{found[0]}\"}}'" in reply["message"]
    return {"id": body["uuid"], "token": found[0],
            "auth": {"Authorization": f"Bearer {reply['config']['FORGEDRAIN_TOKEN']}"}}


@pytest.fixture
def resource(web):
    return provision(web)


def kv(key: str, value) -> dict:
    if isinstance(value, bool):
        return {"key": key, "value": {"boolValue": value}}
    if isinstance(value, int):
        return {"key": key, "value": {"intValue": str(value)}}
    return {"key": key, "value": {"stringValue": value}}


def json_request(*bodies: str, service: str = "acme-web", severity: int = 9) -> dict:
    """An OTLP/JSON request as otel-cli writes one."""
    return {"resourceLogs": [{
        "resource": {"attributes": [kv("service.name", service), kv("deployment.environment.name", "prod")]},
        "scopeLogs": [{"scope": {"name": "otel-cli", "version": "0.4.5"}, "logRecords": [
            {"timeUnixNano": str(1_763_700_000_000_000_000 + i), "severityNumber": severity, "severityText": "INFO",
             "body": {"stringValue": body}, "traceId": TRACE, "spanId": SPAN,
             "attributes": [kv("http.route", "/checkout"), kv("retries", 3), kv("cached", False)]}
            for i, body in enumerate(bodies)]}]}]}


def protobuf_request(*bodies: str, service: str = "acme-web") -> bytes:
    message = ExportLogsServiceRequest()
    resource_logs = message.resource_logs.add()
    attribute = resource_logs.resource.attributes.add()
    attribute.key, attribute.value.string_value = "service.name", service
    scope_logs = resource_logs.scope_logs.add()
    scope_logs.scope.name = "raw"
    for i, body in enumerate(bodies):
        log = scope_logs.log_records.add()
        log.time_unix_nano = 1_763_700_000_000_000_000 + i
        log.severity_number = 17
        log.severity_text = "ERROR"
        log.body.kvlist_value.values.add(key="event", value={"string_value": body})
        log.trace_id, log.span_id = bytes.fromhex(TRACE), bytes.fromhex(SPAN)
    return message.SerializeToString()


def post(web, token: str | None, data: bytes, kind: str = "application/x-protobuf", **headers):
    sent = {"Content-Type": kind, **headers}
    if token is not None:
        sent["X-Forgedrain-Ingest-Token"] = token
    return web.post(PATH, data=data, headers=sent)


def batches(conn, resource_id=None) -> int:
    if resource_id is None:
        return conn.execute("SELECT count(*) AS n FROM outbox").fetchone()["n"]
    return conn.execute("SELECT count(*) AS n FROM outbox WHERE resource_id = %s", (resource_id,)).fetchone()["n"]


def stored(conn, resource_id) -> list[dict]:
    rows = conn.execute("SELECT id, source_id, origin, record_count, min_ts, payload FROM outbox "
                        "WHERE resource_id = %s ORDER BY id", (resource_id,)).fetchall()
    assert all(r["origin"] == "otlp" for r in rows)
    out = []
    for r in rows:
        records = outbox.Batch(r["id"], r["source_id"], r["origin"], r["record_count"], r["min_ts"],
                               bytes(r["payload"])).records()
        assert len(records) == r["record_count"]
        out += records
    return out


def attributes(items) -> dict:
    return {a.key: getattr(a.value, a.value.WhichOneof("value")) for a in items}


# --- accepted ------------------------------------------------------------------------------------

def test_the_opentelemetry_sdk_exporter_reaches_the_resources_drains_but_not_the_apps_own_stream(app, conn, settings):
    from opentelemetry._logs import SeverityNumber
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
    from opentelemetry.sdk.resources import Resource

    vault = Vault(settings.fernet_keys)
    stream_app, stream = logplex_receiver()
    otlp_app, otlp_inbox = otlp_receiver()
    logplex_app, logplex_inbox = logplex_receiver()
    with LocalServer(stream_app) as stream_server, LocalServer(otlp_app) as otlp_server, \
            LocalServer(logplex_app) as logplex_server, LocalServer(app) as broker:
        resource = provision(app.test_client(), f"http://token:t.{uuid.uuid4()}@127.0.0.1:{stream_server.port}/logs")
        add_drain(conn, vault, resource["id"], "otlp", f"{otlp_server.url}/v1/logs", {"encoding": "json"})
        add_drain(conn, vault, resource["id"], "logplex", f"{logplex_server.url}/")
        provider = LoggerProvider(resource=Resource.create({"service.name": "acme-web", "service.version": "42"}))
        exporter = OTLPLogExporter(endpoint=f"{broker.url}{PATH}", timeout=10, compression=Compression.Gzip,
                                   headers={"X-Forgedrain-Ingest-Token": resource["token"]})
        provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
        logger = provider.get_logger("checkout", "1.2")
        logger.emit(body="order placed ✓", severity_number=SeverityNumber.INFO, severity_text="INFO",
                    attributes={"order.id": 17, "http.route": "/checkout"})
        logger.emit(body="card declined", severity_number=SeverityNumber.WARN, severity_text="WARN")
        provider.shutdown()
        assert len(stored(conn, resource["id"])) == 2
        # Every drain but the heroku one has them (the one backlog definition says so too).
        assert outbox.between(conn, resource["id"], "heroku", 0) == outbox.Backlog(0, 0)
        assert outbox.between(conn, resource["id"], "logplex", 0) == outbox.Backlog(2, 2)
        deliver_all(make_deliverer(settings.database_url, vault), conn)
    # One request per emit (the simple processor): one outbox batch, one request to the drain, each.
    logs = []
    for request in otlp_inbox.requests:
        (resource_logs,) = request["message"].resource_logs
        resource_attributes = attributes(resource_logs.resource.attributes)
        assert resource_attributes["service.name"] == "acme-web" and resource_attributes["service.version"] == "42"
        assert resource_attributes["telemetry.sdk.language"] == "python"  # the SDK's own, kept
        assert resource_attributes["forgedrain.drain.token"].startswith("d.")
        (scope_logs,) = resource_logs.scope_logs
        assert (scope_logs.scope.name, scope_logs.scope.version) == ("checkout", "1.2")
        logs += scope_logs.log_records
    first, second = logs
    assert first.body.string_value == "order placed ✓" and first.severity_number == 9
    assert attributes(first.attributes) == {"order.id": 17, "http.route": "/checkout"}
    assert (second.body.string_value, second.severity_number, second.severity_text) == ("card declined", 13, "WARN")
    events = [e for r in logplex_inbox.requests for e in r["events"]]
    assert [(e["app"], e["message"]) for e in events] == [(b"acme-web", "order placed ✓"), (b"acme-web", "card declined")]
    assert events[1]["pri"] == b"<188>1"  # local7.warning
    assert stream.requests == []  # the app's own logs never go back into its own stream


def test_raw_protobuf_and_json_bodies_gzip_or_not_are_stored_as_records_with_their_resource(web, conn, resource):
    answer = post(web, resource["token"], protobuf_request("a", "b"))
    assert answer.status_code == 200 and answer.content_type == "application/x-protobuf"
    assert not ExportLogsServiceResponse.FromString(answer.data).HasField("partial_success")
    answer = post(web, resource["token"], gzip.compress(orjson.dumps(json_request("c"))), "application/json",
                  **{"Content-Encoding": "gzip"})
    assert answer.status_code == 200 and answer.content_type == "application/json" and answer.json == {}
    # The base URL works too (senders that append /v1/logs themselves are given it), and a bearer token.
    answer = web.post("/ingest/otlp", data=gzip.compress(protobuf_request("d")), headers={
        "Content-Type": "application/x-protobuf", "Content-Encoding": "gzip",
        "Authorization": f"Bearer {resource['token']}"})
    assert answer.status_code == 200, answer.data
    a, b, c, d = stored(conn, resource["id"])
    assert a["body"] == {"kvlistValue": {"values": [{"key": "event", "value": {"stringValue": "a"}}]}}
    assert (a["severityNumber"], a["severityText"], a["traceId"], a["spanId"]) == (17, "ERROR", TRACE, SPAN)
    assert a["timeUnixNano"] == "1763700000000000000" and b["timeUnixNano"] == "1763700000000000001"
    assert a["otlp"]["service"] == "acme-web" and a["otlp"]["scope"] == {"name": "raw"}
    assert c["body"] == {"stringValue": "c"} and c["otlp"]["scope"] == {"name": "otel-cli", "version": "0.4.5"}
    assert c["otlp"]["resource"] == [kv("service.name", "acme-web"), kv("deployment.environment.name", "prod")]
    assert c["attributes"] == [kv("http.route", "/checkout"), kv("retries", 3), kv("cached", False)]
    assert (c["traceId"], c["spanId"]) == (TRACE, SPAN)
    assert d["body"]["kvlistValue"]["values"][0]["value"] == {"stringValue": "d"}
    view = web.get(f"/v1/resources/{resource['id']}", headers=resource["auth"]).json
    assert (view["otlp_ingest"]["received"]["batches"], view["otlp_ingest"]["received"]["stored"]) == (3, 4)
    assert view["ingest"]["batches"] == 0  # logplex ingest's own counts are its own


def test_the_brokers_own_records_are_refused_with_partial_success_and_counted(web, conn, resource):
    mixed = json_request("mine")
    mixed["resourceLogs"] += json_request("ours", "again", service="forgedrain")["resourceLogs"]
    mixed["resourceLogs"] += [{"resource": {"attributes": [kv("service.name", "forge-app-1"),
                                                           kv("forgedrain.drain.token", "d.1")]},
                               "scopeLogs": [{"logRecords": [{"body": {"stringValue": "looped"}}]}]}]
    answer = post(web, resource["token"], orjson.dumps(mixed), "application/json")
    assert answer.status_code == 200
    partial = answer.json["partialSuccess"]
    assert partial["rejectedLogRecords"] == "3" and "loop" in partial["errorMessage"]
    answer = post(web, resource["token"], protobuf_request("x", service="forgedrain"))
    assert answer.status_code == 200
    partial = ExportLogsServiceResponse.FromString(answer.data).partial_success
    assert partial.rejected_log_records == 1 and "service.name forgedrain" in partial.error_message
    assert [r["body"]["stringValue"] for r in stored(conn, resource["id"])] == ["mine"]
    received = web.get(f"/v1/resources/{resource['id']}", headers=resource["auth"]).json["otlp_ingest"]["received"]
    assert (received["batches"], received["frames"], received["stored"], received["own_dropped"]) == (2, 5, 1, 4)


# --- refused: each stores nothing ---------------------------------------------------------------

@pytest.mark.parametrize("data, kind, reason", [
    (b"\x0a\x05\x0a\x03", "application/x-protobuf", "not a protobuf ExportLogsServiceRequest"),
    (b"\xff\xff\xff", "application/x-protobuf", "not a protobuf"),
    (b"{not json", "application/json", "not valid JSON"),
    (b"[]", "application/json", "must be a JSON object"),
    (b'{"resourceLogs": {}}', "application/json", "body.resourceLogs must be a list"),
    (b'{"resourceLogs": [{"scopeLogs": [{"logRecords": [1]}]}]}', "application/json",
     "resourceLogs[0].scopeLogs[0].logRecords[0] must be an object"),
    (b'{"resourceLogs": [{"scopeLogs": [{"logRecords": [{"severityNumber": "SEVERITY_NUMBER_INFO"}]}]}]}',
     "application/json", "severityNumber must be an integer"),
    (b'{"resourceLogs": [{"scopeLogs": [{"logRecords": [{"timeUnixNano": "soon"}]}]}]}', "application/json",
     "timeUnixNano must be a non-negative integer"),
    (b'{"resourceLogs": [{"resource": {"attributes": [{"value": 1}]}}]}', "application/json",
     "resource.attributes[0] must be an object with a string key"),
])
def test_a_malformed_body_is_answered_400_in_its_own_content_type(web, conn, resource, data, kind, reason):
    answer = post(web, resource["token"], data, kind)
    assert answer.status_code == 400 and answer.content_type == kind
    if kind == "application/json":
        assert answer.json["error"] == "malformed" and reason in answer.json["message"]
    else:  # a google.rpc.Status: code 3 (INVALID_ARGUMENT), then the message
        assert answer.data[:2] == b"\x08\x03" and reason.encode() in answer.data
    assert batches(conn) == 0


def test_oversized_bodies_are_refused_413_as_sent_and_inflated(web, conn, resource):
    bomb = gzip.compress(protobuf_request("x" * (5 * 1024 * 1024)))
    answer = post(web, resource["token"], bomb, **{"Content-Encoding": "gzip"})
    assert answer.status_code == 413 and b"inflates to more than" in answer.data
    huge = orjson.dumps(json_request(*["y" * 1000] * 1100))
    answer = post(web, resource["token"], huge, "application/json")
    assert answer.status_code == 413 and answer.content_type == "application/json"
    assert answer.json["error"] == "too_large"
    assert post(web, resource["token"], b"not gzip", **{"Content-Encoding": "gzip"}).status_code == 400
    assert batches(conn) == 0


def test_requests_without_a_valid_ingest_token_are_refused_401(web, app, conn, resource):
    other = provision(web)
    body = protobuf_request("x")
    assert post(web, None, body).status_code == 401
    assert post(web, "", body).status_code == 401
    assert post(web, "fdi_nonsense", body).status_code == 401
    assert post(web, resource["auth"]["Authorization"].split()[1], body).status_code == 401  # the API token
    # Another resource's MAC under this resource's id, and this resource's token under another key.
    forged = f"fdi_{uuid.UUID(resource['id']).hex}_{other['token'].split('_')[2]}"
    assert post(web, forged, body).status_code == 401
    assert post(web, tokens.ingest_token("another-secret-key-" + "x" * 20, resource["id"], 1), body).status_code == 401
    refused = post(web, "fdi_" + "0" * 32 + "_" + "A" * 43, orjson.dumps(json_request("x")), "application/json")
    assert refused.status_code == 401 and refused.json["error"] == "unauthorized"
    assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    # The other resource's own token stores into the other resource only.
    assert post(web, other["token"], body).status_code == 200
    assert (batches(conn, resource["id"]), batches(conn, other["id"])) == (0, 1)


def test_a_new_ingest_token_ends_the_previous_one_and_deprovision_ends_both(web, conn, resource):
    body = protobuf_request("x")
    issued = web.post(f"/v1/resources/{resource['id']}/ingest-token", headers=resource["auth"])
    assert issued.status_code == 200 and issued.headers["Cache-Control"] == "no-store"
    token = issued.json["token"]
    assert token != resource["token"] and token in issued.json["command"]
    assert issued.json["header"] == "X-Forgedrain-Ingest-Token" and issued.json["url"].endswith(PATH)
    assert post(web, resource["token"], body).status_code == 401
    assert post(web, token, body).status_code == 200
    view = web.get(f"/v1/resources/{resource['id']}", headers=resource["auth"]).json["otlp_ingest"]
    assert view["header"] == "X-Forgedrain-Ingest-Token" and "<ingest token>" in view["command"]
    assert token not in json.dumps(view)
    assert web.delete(f"/heroku/resources/{resource['id']}", headers=heroku_headers()).status_code == 204
    assert post(web, token, body).status_code == 401
    assert batches(conn, resource["id"]) == 1


def test_wrong_content_types_and_encodings_are_refused_415(web, conn, resource):
    assert post(web, resource["token"], protobuf_request("x"), "text/plain").status_code == 415
    assert post(web, resource["token"], protobuf_request("x"), **{"Content-Encoding": "br"}).status_code == 415
    assert batches(conn) == 0


@pytest.fixture
def limited(env):
    """An app whose basic plan admits 6 records (and ~6 KB) a minute per resource."""
    application = make_app(env, INGEST_LIMIT_SCALE="0.0001")
    yield application
    application.extensions["forgedrain"].db.close()


def test_a_resource_over_its_ingest_volume_gets_429_with_retry_after_and_nothing_is_stored(limited, conn):
    web = limited.test_client()
    resource = provision(web)
    assert post(web, resource["token"], protobuf_request(*"abcdef")).status_code == 200
    for kind, data in (("application/x-protobuf", protobuf_request("g")),
                       ("application/json", orjson.dumps(json_request("h")))):
        refused = post(web, resource["token"], data, kind)
        assert refused.status_code == 429 and refused.content_type == kind
        assert 1 <= int(refused.headers["Retry-After"]) <= 120
    assert refused.json["error"] == "rate_limited"
    assert [r["body"]["kvlistValue"]["values"][0]["value"]["stringValue"] for r in stored(conn, resource["id"])] == \
        list("abcdef")
    view = web.get(f"/v1/resources/{resource['id']}", headers=resource["auth"]).json
    assert view["otlp_ingest"]["received"]["batches"] == 1 and view["ingest"]["refused_frames"] == 1


def test_an_unavailable_database_is_answered_503_with_retry_after(env, resource):
    down = make_app(env, DATABASE_URL="postgresql://postgres@127.0.0.1:1/nothing")
    try:
        answer = post(down.test_client(), resource["token"], protobuf_request("x"))
    finally:
        down.extensions["forgedrain"].db.close()
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "5"
    assert answer.data[:2] == b"\x08\x0e"  # google.rpc.Status UNAVAILABLE


def test_over_real_http_the_sdk_gets_the_documented_answers(app, conn, resource):
    """The answers as an OTLP client reads them off the wire (werkzeug serving the app)."""
    with LocalServer(app) as server:
        url = f"{server.url}{PATH}"
        ok = requests.post(url, data=protobuf_request("z"), timeout=10, headers={
            "Content-Type": "application/x-protobuf", "X-Forgedrain-Ingest-Token": resource["token"]})
        assert ok.status_code == 200 and ok.headers["Content-Type"] == "application/x-protobuf"
        bad = requests.post(url, data=b"\xff", timeout=10, headers={
            "Content-Type": "application/x-protobuf", "X-Forgedrain-Ingest-Token": resource["token"]})
        assert bad.status_code == 400
    assert len(stored(conn, resource["id"])) == 1


# --- the formats: what came in goes out the same ---------------------------------------------------

def rich_request() -> ExportLogsServiceRequest:
    """Two resources, two scopes, typed attributes everywhere, a nested body, an id of a wrong length."""
    message = ExportLogsServiceRequest()
    for service in ("web", "worker"):
        resource_logs = message.resource_logs.add()
        resource_logs.resource.attributes.add(key="service.name", value={"string_value": service})
        resource_logs.resource.attributes.add(key="host.cpus", value={"int_value": 2})
        for scope_name in ("a", "b"):
            scope_logs = resource_logs.scope_logs.add()
            scope_logs.scope.name, scope_logs.scope.version = scope_name, "9"
            scope_logs.scope.attributes.add(key="lib.debug", value={"bool_value": True})
            log = scope_logs.log_records.add()
            log.time_unix_nano, log.observed_time_unix_nano = 1_763_700_000_123_456_789, 1_763_700_001_000_000_000
            log.severity_number, log.severity_text = 10, "info"
            log.body.kvlist_value.values.add(key="order", value={"array_value": {"values": [
                {"int_value": -3}, {"double_value": 1.5}, {"bytes_value": b"\x00\xff"}]}})
            log.attributes.add(key="ratio", value={"double_value": 0.25})
            log.trace_id, log.span_id = bytes.fromhex(TRACE), b"\x01\x02"
    return message


def test_records_received_over_otlp_leave_through_otlp_drains_as_they_came():
    from google.protobuf import json_format

    from broker.formats import otlp, otlp_ingest

    sent = rich_request()
    parsed = otlp_ingest.parse(sent.SerializeToString(), "protobuf")
    assert (parsed.records, parsed.own) == (4, 0)
    records = otlp_ingest.records(parsed.payload, 1)
    origin = otlp.Origin(app_id="", environment_id="", drain_token="d.out")
    export = otlp.request(records, origin, 5)
    out = json_format.ParseDict(otlp.hex_ids_to_base64(orjson.loads(otlp.to_json(export))), ExportLogsServiceRequest())
    assert ExportLogsServiceRequest.FromString(otlp.to_protobuf(export)) == out
    assert ExportLogsServiceRequest.FromString(otlp.protobuf_request(records, origin, 5)) == out
    assert len(out.resource_logs) == 4  # one per resource and scope
    for got, (resource_logs, scope_logs) in zip(out.resource_logs, [(r, s) for r in sent.resource_logs
                                                                     for s in r.scope_logs]):
        assert list(got.resource.attributes)[:-1] == list(resource_logs.resource.attributes)
        assert got.resource.attributes[-1].key == "forgedrain.drain.token"
        (got_scope,) = got.scope_logs
        assert got_scope.scope == scope_logs.scope
        (log,), (want,) = got_scope.log_records, scope_logs.log_records
        assert (log.time_unix_nano, log.observed_time_unix_nano) == (want.time_unix_nano, 5)
        assert (log.severity_number, log.severity_text) == (10, "info")  # OTLP's number kept, not the text's 9
        assert log.body == want.body and log.trace_id == want.trace_id and not log.span_id
        assert list(log.attributes) == list(want.attributes) + [
            type(want.attributes[0])(key="otlp.span_id", value={"string_value": "0102"})]


@pytest.mark.parametrize("encoding", ["json", "protobuf"])
def test_a_real_collector_rotel_gets_the_ingested_records_with_their_resource_and_scope(
        web, conn, resource, settings, encoding):
    from tests.fakes.rotel import rotel_receiver
    from tests.support.markers import rotel_after_marker

    vault = Vault(settings.fernet_keys)
    sent = json_request("first ✓", "second", service="acme-api", severity=13)
    with rotel_receiver() as rotel:
        drain_id = add_drain(conn, vault, resource["id"], "otlp", rotel.url, {"encoding": encoding})
        assert post(web, resource["token"], orjson.dumps(sent), "application/json").status_code == 200
        deliver_all(make_deliverer(settings.database_url, vault), conn)
        received = rotel_after_marker(rotel)
    row = drain_row(conn, drain_id)
    assert (row["delivered"], row["rejected"], row["dropped"]) == (2, 0, 0), row["last_error"]
    assert [r.record.body.string_value for r in received] == ["first ✓", "second"]
    for r in received:
        assert r.resource["service.name"] == "acme-api" and r.resource["deployment.environment.name"] == "prod"
        assert (r.scope_name, r.scope_version) == ("otel-cli", "0.4.5")
        assert (r.record.severity_number, r.record.severity_text) == (13, "INFO")  # the number is OTLP's word
        assert r.attributes == {"http.route": "/checkout", "retries": 3, "cached": False}
        assert (r.record.trace_id.hex(), r.record.span_id.hex()) == (TRACE, SPAN)
