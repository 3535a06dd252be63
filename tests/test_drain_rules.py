"""Per-drain rules at delivery, against real receivers (issue 16): what is filtered never arrives, what is
redacted is in no byte a receiver got, counters add up, and positions stay raw record positions."""

from __future__ import annotations

import contextlib
import functools
import gzip
import ssl
import uuid
from collections import Counter

import orjson
import pytest
from flask import request

from broker import config, db, delivery, operations, outbox, rules
from broker.formats import logplex
from broker.senders import Wire
from broker.sinks import http
from tests.fakes.receivers import logplex_receiver, otlp_receiver
from tests.fakes.rsyslog import Rsyslog
from tests.fakes.server import LocalServer
from tests.support.polling import add_resource, add_source, api_token
from tests.test_delivery import add_drain, claim_due, deliver_all, drain_row, forge_record, make_deliverer, store, vault, world  # noqa: F401
from tests.test_metrics import METRICS_TOKEN, scrape, value


def set_rules(conn, drain_id, spec: dict) -> None:
    conn.execute("UPDATE drains SET rules = %s WHERE id = %s", (orjson.dumps(rules.validate(spec)).decode(), drain_id))


def leveled(i: int, level: str, body: str | None = None) -> dict:
    record = forge_record(i, body)
    record["severityText"] = level
    return record


def store_heroku(conn, resource_id, lines: list[tuple[str, str, int, str]]) -> int:
    """A batch of the Heroku app's own logs as drain ingest stores it: (APP-NAME, PROCID, PRI, message)."""
    frames = []
    for app, dyno, pri, message in lines:
        text = f"<{pri}>1 2026-11-21T08:00:00.000000+00:00 host {app} {dyno} - {message}".encode()
        frames.append(b"%d %b" % (len(text), text))
    with conn.transaction():
        return outbox.append_frames(conn, resource_id, frames, len(frames))


def messages(inbox) -> list[str]:
    return [e["message"] for r in inbox.requests for e in r["events"]]


def capturing(app) -> list[bytes]:
    """Every request body ``app`` (a Flask receiver) gets, as it came on the wire."""
    raw: list[bytes] = []
    app.before_request(lambda: raw.append(request.get_data()) and None)
    return raw


@pytest.fixture
def client(env):
    from web import create_app

    app = create_app(config.load({**env, "METRICS_TOKEN": METRICS_TOKEN}, testing=True))
    yield app.test_client()
    app.extensions["forgedrain"].db.close()


def auth(resource_id) -> dict:
    return {"Authorization": f"Bearer {api_token(resource_id)}"}  # add_resource's token


# --- filtering -------------------------------------------------------------------------------

def test_filtered_records_never_reach_the_receiver_and_an_all_filtered_batch_settles(
        conn, vault, database_url, world):
    resource_id, source_id = world
    other_source = add_source(conn, vault, resource_id, app_id="other-app")
    app, inbox = logplex_receiver()
    with LocalServer(app) as server:
        drain_id = add_drain(conn, vault, resource_id, "logplex", f"http://127.0.0.1:{server.port}/")
        set_rules(conn, drain_id, {"min_severity": "WARN", "processes": ["router"], "sources": [str(source_id)]})
        store(conn, resource_id, source_id, [leveled(1, "DEBUG", "debug, filtered"), leveled(2, "ERROR", "error")])
        store(conn, resource_id, source_id, [leveled(3, "INFO", "all of this batch"), leveled(4, "TRACE", "is out")])
        store_heroku(conn, resource_id, [("app", "web.1", 188, "web warning, filtered"),
                                         ("heroku", "router", 188, "router warning"),
                                         ("heroku", "router", 190, "router info, filtered")])
        store(conn, resource_id, other_source, [leveled(5, "FATAL", "another source, filtered")])
        marker = store(conn, resource_id, source_id, [leveled(6, "FATAL", "marker")])
        (outcome,) = deliver_all(make_deliverer(database_url, vault), conn)
    assert outcome.result == "caught-up"
    # The marker went out after everything else: what is not here was never sent.
    assert messages(inbox) == ["error", "router warning", "marker"]
    row = drain_row(conn, drain_id)
    assert (row["cursor"], row["partial_batch"], row["delivered"], row["filtered"], row["redacted"]) == (
        marker, None, 3, 6, 0)
    assert outbox.backlog(conn, resource_id, drain_id).records == 0
    assert (outcome.delivered, outcome.filtered) == (3, 6)


def store_undecodable(conn, resource_id, source_id, origin: str, count: int) -> int:
    """A batch whose payload nothing can decode: a drain that decoded it would fail on it."""
    return conn.execute(
        "INSERT INTO outbox (resource_id, source_id, origin, record_count, min_ts, max_ts, payload) "
        "VALUES (%s, %s, %s, %s, now(), now(), %s) RETURNING id",
        (resource_id, source_id, origin, count, b"not a zlib stream"),
    ).fetchone()["id"]


def test_a_batch_excluded_whole_by_origin_or_source_is_never_decoded_and_counts_as_filtered(
        conn, vault, database_url, world):
    resource_id, source_id = world
    other_source = add_source(conn, vault, resource_id, app_id="other-app")
    app, inbox = logplex_receiver()
    with LocalServer(app) as server:
        drain_id = add_drain(conn, vault, resource_id, "logplex", f"http://127.0.0.1:{server.port}/")
        set_rules(conn, drain_id, {"origins": ["forge"], "sources": [str(source_id)]})
        # The drain stands inside this one: 4 of its 10 records are settled already.
        partly = store_undecodable(conn, resource_id, other_source, "forge", 10)
        conn.execute("UPDATE drains SET cursor = %s, partial_batch = %s, partial_records = 4 WHERE id = %s",
                     (partly - 1, partly, drain_id))
        store_undecodable(conn, resource_id, other_source, "forge", 7)
        store_undecodable(conn, resource_id, None, "heroku", 5)
        marker = store(conn, resource_id, source_id, [leveled(1, "INFO", "marker")])
        # The backlog counts what the rules will filter out (README: known only at delivery).
        assert outbox.backlog(conn, resource_id, drain_id).records == 6 + 7 + 5 + 1
        (outcome,) = deliver_all(make_deliverer(database_url, vault), conn)
    assert outcome.result == "caught-up", outcome
    assert outbox.backlog(conn, resource_id, drain_id).records == 0
    assert messages(inbox) == ["marker"]
    row = drain_row(conn, drain_id)
    assert (row["cursor"], row["partial_batch"], row["delivered"], row["filtered"]) == (marker, None, 1, 6 + 7 + 5)
    assert outcome.filtered == 18


def test_origins_pick_forge_records_or_the_apps_own_logs(conn, vault, database_url, world):
    resource_id, source_id = world
    app, inbox = logplex_receiver()
    with LocalServer(app) as server:
        heroku_only = add_drain(conn, vault, resource_id, "logplex", f"http://127.0.0.1:{server.port}/h")
        set_rules(conn, heroku_only, {"origins": ["heroku"]})
        store(conn, resource_id, source_id, [forge_record(1, "from forge")])
        store_heroku(conn, resource_id, [("app", "web.1", 190, "from the app")])
        deliver_all(make_deliverer(database_url, vault), conn)
    assert messages(inbox) == ["from the app"]
    assert drain_row(conn, heroku_only)["filtered"] == 1


def test_the_heroku_drains_rules_come_after_it_skips_the_apps_own_logs(conn, vault, database_url, world):
    resource_id, source_id = world
    app, inbox = logplex_receiver()
    with LocalServer(app) as server:
        heroku = add_drain(conn, vault, resource_id, "heroku", f"http://token:t.abc@127.0.0.1:{server.port}/logs")
        set_rules(conn, heroku, {"min_severity": "ERROR"})
        store_heroku(conn, resource_id, [("app", "web.1", 187, "the app's own error")])
        store(conn, resource_id, source_id, [leveled(1, "INFO", "forge info"), leveled(2, "ERROR", "forge error")])
        deliver_all(make_deliverer(database_url, vault), conn)
    assert messages(inbox) == ["forge error"]
    row = drain_row(conn, heroku)
    # The app's own line was never the heroku drain's to receive: not counted as filtered.
    assert (row["delivered"], row["filtered"]) == (1, 1)


# --- redaction: no byte of a secret reaches a receiver ----------------------------------------

SECRETS = ["bob.smith@example.com", "s3cr3tT0kenABCDEFGHIJ", "4111111111111111", "203.0.113.77",
           "CUST-99812", "ari:cloud:jira::site/very-private-site"]
REDACTING = {"redact": {"detectors": ["email", "bearer", "card", "ipv4"],
                        "patterns": [{"name": "customer", "regex": r"CUST-[0-9]+"}],
                        "drop_attributes": ["forge.installation_context"]}}


def secret_records(start: int) -> list[dict]:
    records = []
    for i in range(start, start + 20):
        record = forge_record(i, f"{i}: login bob.smith@example.com from 203.0.113.77 with Authorization: "
                                 f"Bearer s3cr3tT0kenABCDEFGHIJ\npaid 4111111111111111 for CUST-99812")
        record["attributes"] += [
            {"key": "installationContext", "value": {"stringValue": "ari:cloud:jira::site/very-private-site"}},
            {"key": "appVersion", "value": {"stringValue": "2.1 by bob.smith@example.com"}},
            {"key": "customer", "value": {"kvlistValue": {"values": [
                {"key": "id", "value": {"stringValue": "CUST-99812"}},
                {"key": "card", "value": {"intValue": "4111111111111111"}}]}}},
        ]
        records.append(record)
    return records


def assert_no_secret(data: bytes) -> None:
    for secret in SECRETS:
        assert secret.encode() not in data, secret


@pytest.mark.parametrize("encoding", ["json", "protobuf"])
def test_otlp_requests_hold_no_byte_of_a_redacted_value(conn, vault, database_url, world, encoding):
    resource_id, source_id = world
    app, inbox = otlp_receiver()
    raw = capturing(app)
    with LocalServer(app) as server:
        drain_id = add_drain(conn, vault, resource_id, "otlp", f"http://127.0.0.1:{server.port}",
                             {"encoding": encoding, "gzip": True})
        set_rules(conn, drain_id, REDACTING)
        store(conn, resource_id, source_id, secret_records(0))
        deliver_all(make_deliverer(database_url, vault), conn)
    assert inbox.refused == [] and raw
    for body in raw:
        assert_no_secret(gzip.decompress(body))
    logs = [log for r in inbox.requests for rl in r["message"].resource_logs for sl in rl.scope_logs
            for log in sl.log_records]
    assert len(logs) == 20
    assert "[redacted:email]" in logs[0].body.string_value and "[redacted:customer]" in logs[0].body.string_value
    assert "forge.installation_context" not in {a.key for a in logs[0].attributes}
    # per record: 5 in the body (email, ipv4, bearer, card, customer), 1 in appVersion, 2 nested, 1 dropped
    row = drain_row(conn, drain_id)
    assert (row["delivered"], row["redacted"], row["filtered"]) == (20, 20 * 9, 0)


def test_logplex_request_bodies_hold_no_byte_of_a_redacted_value(conn, vault, database_url, world):
    resource_id, source_id = world
    app, inbox = logplex_receiver()
    raw = capturing(app)
    with LocalServer(app) as server:
        drain_id = add_drain(conn, vault, resource_id, "logplex", f"http://127.0.0.1:{server.port}/")
        set_rules(conn, drain_id, REDACTING)
        store(conn, resource_id, source_id, secret_records(0))
        deliver_all(make_deliverer(database_url, vault), conn)
    assert inbox.refused == [] and raw
    for body in raw:
        assert_no_secret(body)
    assert messages(inbox)[0] == ("0: login [redacted:email] from [redacted:ipv4] with Authorization: "
                                  "[redacted:bearer]")
    assert drain_row(conn, drain_id)["redacted"] == 20 * 9


def test_rsyslog_writes_no_byte_of_a_redacted_value(conn, vault, database_url, world, tmp_path):
    resource_id, source_id = world
    with Rsyslog(tmp_path) as receiver:
        drain_id = add_drain(conn, vault, resource_id, "syslog", receiver.tls_url, {"sd_id": "forge@32473"})
        set_rules(conn, drain_id, REDACTING)
        store(conn, resource_id, source_id, secret_records(0))
        store(conn, resource_id, source_id, [forge_record(99, "marker")])

        @contextlib.contextmanager
        def connect():
            with db.connect(database_url, "forgedrain-tests") as connection:
                yield connection

        session = http.new_session(allow_private=True)
        context = ssl.create_default_context(cafile=str(receiver.cert))
        (outcome,) = deliver_all(delivery.Deliverer(connect, Wire(lambda: session, True, context), vault), conn)
        assert outcome.result == "caught-up"
        written = receiver.wait_for(21)
        assert written[-1]["msg"] == "marker"  # everything before the marker has been written
    assert len(written) == 21
    assert_no_secret(receiver.out.read_bytes())
    assert written[0]["params"]["forge@32473"]["appVersion"] == "2.1 by [redacted:email]"
    assert drain_row(conn, drain_id)["redacted"] == 20 * 9


# --- counters: the API and /metrics -----------------------------------------------------------

def test_rules_and_their_counters_show_in_the_api_and_in_metrics(client, conn, vault, database_url, world):
    resource_id, source_id = world
    app, inbox = logplex_receiver()
    with LocalServer(app) as server:
        created = client.post(f"/v1/resources/{resource_id}/drains", headers=auth(resource_id), json={
            "kind": "logplex", "url": f"http://127.0.0.1:{server.port}/",
            "rules": {"min_severity": "warn", "redact": {"detectors": ["email"]}}})
        assert created.status_code == 201, created.json
        drain = created.json
        assert drain["rules"] == {"min_severity": "WARN", "redact": {"detectors": ["email"]}}
        assert (drain["delivery"]["filtered"], drain["delivery"]["redacted"]) == (0, 0)
        store(conn, resource_id, source_id, [leveled(1, "INFO", "a@example.com"), leveled(2, "WARN", "b@example.com"),
                                             leveled(3, "ERROR", "c@example.com and d@example.com")])
        deliver_all(make_deliverer(database_url, vault), conn)
    assert messages(inbox) == ["[redacted:email]", "[redacted:email] and [redacted:email]"]
    read = client.get(f"/v1/resources/{resource_id}/drains/{drain['id']}", headers=auth(resource_id)).json
    assert (read["delivery"]["delivered"], read["delivery"]["filtered"], read["delivery"]["redacted"]) == (2, 1, 3)
    listed = client.get(f"/v1/resources/{resource_id}/drains", headers=auth(resource_id)).json["drains"]
    assert [(d["rules"], d["delivery"]["filtered"]) for d in listed] == [(drain["rules"], 1)]
    samples, _ = scrape(client)
    assert value(samples, "forgedrain_drain_records_filtered_total", kind="logplex") == 1
    assert value(samples, "forgedrain_drain_values_redacted_total", kind="logplex") == 3
    assert value(samples, "forgedrain_drain_records_filtered_total", kind="otlp") == 0
    # Deleting the drain keeps the fleet's counters where they were (retired_counters).
    assert client.delete(f"/v1/resources/{resource_id}/drains/{drain['id']}",
                         headers=auth(resource_id)).status_code == 204
    samples, _ = scrape(client)
    assert value(samples, "forgedrain_drain_records_filtered_total", kind="logplex") == 1
    assert value(samples, "forgedrain_drain_values_redacted_total", kind="logplex") == 3


def test_invalid_rules_answer_422_with_every_problem_and_change_nothing(client, conn, world):
    resource_id, source_id = world
    body = {"kind": "logplex", "url": "http://127.0.0.1:9/", "rules": {
        "origins": ["forge", "email"], "sources": [str(source_id), str(uuid.uuid4())],
        "min_severity": "WARN", "levels": ["ERROR"],
        "redact": {"detectors": ["email", "ssn"], "patterns": [{"name": "bad", "regex": r"(\w+)\1"}]}}}
    refused = client.post(f"/v1/resources/{resource_id}/drains", headers=auth(resource_id), json=body)
    assert refused.status_code == 422
    assert refused.json["error"] == "invalid_rules"
    assert [p["field"] for p in refused.json["problems"]] == [
        "rules.origins", "rules", "rules.redact.detectors", "rules.redact.patterns[0].regex"]
    assert "backreferences are not supported" in refused.json["problems"][-1]["message"]
    # Whether the sources are the resource's is asked once the rules are well formed, under its lock.
    refused = client.post(f"/v1/resources/{resource_id}/drains", headers=auth(resource_id), json={
        **body, "rules": {"sources": [str(source_id), str(uuid.uuid4())]}})
    assert refused.status_code == 422 and refused.json["error"] == "invalid_rules"
    assert refused.json["problems"] == [{"field": "rules.sources[1]",
                                         "message": "no source with this id on this resource"}]
    assert conn.execute("SELECT count(*) AS n FROM drains").fetchone()["n"] == 0

    made = client.post(f"/v1/resources/{resource_id}/drains", headers=auth(resource_id),
                       json={"kind": "logplex", "url": "http://127.0.0.1:9/", "rules": {"levels": ["ERROR"]}}).json
    path = f"/v1/resources/{resource_id}/drains/{made['id']}"
    again = client.patch(path, headers=auth(resource_id), json={"name": "renamed", "rules": {"levels": ["LOUD"]}})
    assert again.status_code == 422 and again.json["problems"] == [
        {"field": "rules.levels", "message": "unknown level 'LOUD'; levels are TRACE, DEBUG, INFO, WARN, ERROR, FATAL"}]
    row = drain_row(conn, made["id"])
    assert (row["name"], row["rules"]) == (None, {"levels": ["ERROR"]})
    # null clears the rules; a source of this resource is accepted
    assert client.patch(path, headers=auth(resource_id), json={"rules": None}).json["rules"] == {}
    changed = client.patch(path, headers=auth(resource_id), json={"rules": {"sources": [str(source_id)]}})
    assert changed.status_code == 200 and changed.json["rules"] == {"sources": [str(source_id)]}
    # Each change of rules alone is audited (SPEC §7); the same rules again are no change.
    assert client.patch(path, headers=auth(resource_id), json={"rules": {"sources": [str(source_id)]}}).status_code == 200
    audited = [(r["action"], r["detail"]) for r in conn.execute(
        "SELECT action, detail FROM audit_log WHERE action = 'drain.updated' ORDER BY id")]
    assert len(audited) == 2 and all("rules" in str(detail) for _, detail in audited), audited


def test_rules_naming_another_resources_source_are_refused_for_every_caller_and_change_nothing(
        conn, vault, database_url, world):
    """The check lives in operations, so the dashboard's forms get it as the API does."""
    resource_id, source_id = world
    stranger = str(add_source(conn, vault, add_resource(conn), app_id="stranger-app"))
    connect = functools.partial(db.connect, database_url, "forgedrain-tests")
    payload = {"kind": "logplex", "url": "http://127.0.0.1:9/", "rules": {"sources": [str(source_id), stranger]}}
    with pytest.raises(rules.RulesInvalid) as refused:
        operations.create_drain(connect, vault, resource_id, payload, actor="owner@example.com", allow_private=True)
    assert refused.value.problems == [("rules.sources[1]", "no source with this id on this resource")]
    assert conn.execute("SELECT count(*) AS n FROM drains").fetchone()["n"] == 0
    made = operations.create_drain(connect, vault, resource_id, {**payload, "rules": {"sources": [str(source_id)]}},
                                   actor="owner@example.com", allow_private=True)
    with pytest.raises(rules.RulesInvalid) as refused:
        operations.update_drain(connect, vault, resource_id, made["id"],
                                {"name": "renamed", "rules": {"sources": [stranger]}},
                                actor="owner@example.com", allow_private=True)
    assert refused.value.problems == [("rules.sources[0]", "no source with this id on this resource")]
    row = drain_row(conn, made["id"])
    assert (row["name"], row["rules"]) == (None, {"sources": [str(source_id)]})


def test_a_drain_parked_by_rules_that_no_longer_compile_goes_again_as_soon_as_the_owner_saves_rules(
        conn, vault, database_url, world):
    resource_id, source_id = world
    app, inbox = logplex_receiver()
    connect = functools.partial(db.connect, database_url, "forgedrain-tests")
    with LocalServer(app) as server:
        drain_id = add_drain(conn, vault, resource_id, "logplex", f"http://127.0.0.1:{server.port}/")
        # As another version might have stored them: a lookahead RE2 refuses.
        conn.execute("UPDATE drains SET rules = %s WHERE id = %s",
                     ('{"redact": {"patterns": [{"name": "x", "regex": "a(?=b)"}]}}', drain_id))
        store(conn, resource_id, source_id, [leveled(1, "WARN", "waited")])
        deliverer = make_deliverer(database_url, vault)
        (outcome,) = deliver_all(deliverer, conn)
        assert outcome.result == "rules-invalid"
        assert deliver_all(deliverer, conn) == []  # parked for an hour
        operations.update_drain(connect, vault, resource_id, drain_id, {"rules": {"min_severity": "WARN"}},
                                actor="owner@example.com", allow_private=True)
        (outcome,) = deliver_all(deliverer, conn)
    assert outcome.result == "caught-up"
    assert messages(inbox) == ["waited"]


def test_any_edit_makes_a_drain_waiting_out_a_back_off_due_now(conn, vault, database_url, world):
    resource_id, source_id = world
    connect = functools.partial(db.connect, database_url, "forgedrain-tests")
    drain_id = add_drain(conn, vault, resource_id, "logplex", "http://127.0.0.1:9/")
    store(conn, resource_id, source_id, [leveled(1, "WARN")])
    conn.execute("UPDATE drains SET next_attempt_at = now() + interval '5 minutes', consecutive_failures = 4 "
                 "WHERE id = %s", (drain_id,))
    assert delivery.count_due(conn, 10) == 0
    operations.update_drain(connect, vault, resource_id, drain_id, {"name": "renamed"}, actor="owner@example.com",
                            allow_private=True)
    assert delivery.count_due(conn, 10) == 1


def test_an_edit_that_changes_nothing_leaves_a_drains_back_off_alone(conn, vault, database_url, world):
    resource_id, _ = world
    connect = functools.partial(db.connect, database_url, "forgedrain-tests")
    drain_id = add_drain(conn, vault, resource_id, "logplex", "http://127.0.0.1:9/")
    set_rules(conn, drain_id, {"min_severity": "WARN"})
    conn.execute("UPDATE drains SET next_attempt_at = now() + interval '5 minutes' WHERE id = %s", (drain_id,))
    before = drain_row(conn, drain_id)["next_attempt_at"]
    operations.update_drain(connect, vault, resource_id, drain_id, {"rules": {"min_severity": "warn"}},
                            actor="owner@example.com", allow_private=True)
    assert drain_row(conn, drain_id)["next_attempt_at"] == before


def test_a_test_record_is_redacted_by_the_drains_rules_and_one_they_would_filter_is_sent_anyway_and_said(
        client, conn, world):
    resource_id, _ = world
    app, inbox = logplex_receiver()
    raw = capturing(app)
    with LocalServer(app) as server:
        made = client.post(f"/v1/resources/{resource_id}/drains", headers=auth(resource_id), json={
            "kind": "logplex", "url": f"http://127.0.0.1:{server.port}/",
            "rules": {"redact": {"detectors": ["email"]}}}).json
        path = f"/v1/resources/{resource_id}/drains/{made['id']}"
        sent = client.post(f"{path}/test", headers=auth(resource_id), json={"message": "mail bob@example.com"})
        assert sent.status_code == 200, sent.json
        assert sent.json["rules"] == {"filtered": False, "redacted": 1}
        assert sent.json["record"]["message"] == "mail [redacted:email]"
        # INFO, the test record's level, is below what the drain now takes: sent anyway, and said.
        assert client.patch(path, headers=auth(resource_id), json={"rules": {
            "min_severity": "ERROR", "redact": {"detectors": ["email"]}}}).status_code == 200
        sent = client.post(f"{path}/test", headers=auth(resource_id), json={"message": "mail bob@example.com"})
        assert sent.status_code == 200 and sent.json["rules"] == {"filtered": True, "redacted": 1}
        # Stored rules that no longer compile: 422, nothing sent (deliveries hold back too).
        conn.execute("UPDATE drains SET rules = %s WHERE id = %s",
                     ('{"redact": {"patterns": [{"name": "x", "regex": "a(?=b)"}]}}', made["id"]))
        refused = client.post(f"{path}/test", headers=auth(resource_id), json={"message": "mail bob@example.com"})
        assert refused.status_code == 422 and refused.json["error"] == "invalid_rules", refused.json
    assert messages(inbox) == ["mail [redacted:email]"] * 2
    assert len(raw) == 2 and not any(b"bob@" in body for body in raw)


def test_the_heroku_drain_takes_rules_but_still_no_url(client, conn, vault, world):
    resource_id, _ = world
    heroku = add_drain(conn, vault, resource_id, "heroku", "https://token:t@logs.heroku.test/logs")
    path = f"/v1/resources/{resource_id}/drains/{heroku}"
    ok = client.patch(path, headers=auth(resource_id), json={"rules": {"min_severity": "ERROR"}})
    assert ok.status_code == 200 and ok.json["rules"] == {"min_severity": "ERROR"}
    refused = client.patch(path, headers=auth(resource_id), json={"url": "https://elsewhere.test/"})
    assert refused.status_code == 422 and refused.json["field"] == "url"


# --- positions stay raw -----------------------------------------------------------------------

BIG = 1500  # bytes of body: about 66 records a logplex request


def alternating(count: int) -> list[dict]:
    """Even records INFO, odd ones DEBUG; bodies start with the record's index."""
    return [leveled(i, "INFO" if i % 2 == 0 else "DEBUG", f"{i:04d} " + "x" * BIG) for i in range(count)]


@pytest.mark.parametrize("before, after", [({"min_severity": "INFO"}, {}), ({}, {"min_severity": "INFO"})],
                         ids=["rules-removed", "rules-added"])
def test_changing_rules_inside_a_batch_loses_and_repeats_nothing(conn, vault, database_url, world, before, after):
    resource_id, source_id = world
    app, inbox = logplex_receiver()
    with LocalServer(app) as server:
        drain_id = add_drain(conn, vault, resource_id, "logplex", f"http://127.0.0.1:{server.port}/")
        set_rules(conn, drain_id, before)
        first = store(conn, resource_id, source_id, [leveled(9000 + i, "INFO", f"first {i}") for i in range(3)])
        middle = store(conn, resource_id, source_id, alternating(200))
        last = store(conn, resource_id, source_id, [leveled(9100 + i, "INFO", f"last {i}") for i in range(3)])
        deliverer = make_deliverer(database_url, vault)
        deliverer.turn_seconds = 0  # one send a turn: the turn ends inside the middle batch
        for _ in range(5):
            (drain,) = claim_due(conn, 10)
            deliverer.deliver(drain)
            row = drain_row(conn, drain_id)
            if row["partial_batch"] == middle:
                break
        assert row["partial_batch"] == middle
        sent = [m for m in messages(inbox) if not m.startswith(("first", "last"))]
        position = row["partial_records"]
        # partial_records is the raw position after the last record sent, whatever the rules kept
        assert position == int(sent[-1][:4]) + 1
        assert len(sent) == ((position + 1) // 2 if before else position)
        requests_before = len(inbox.requests)
        set_rules(conn, drain_id, after)
        for _ in range(20):
            (drain,) = claim_due(conn, 10)
            if deliverer.deliver(drain).result == "caught-up" or drain_row(conn, drain_id)["cursor"] == last:
                break
    got = messages(inbox)
    assert Counter(got) == Counter(set(got)), "a record was sent twice"
    assert [m for m in got if m.startswith("first")] == [f"first {i}" for i in range(3)]
    assert [m for m in got if m.startswith("last")] == [f"last {i}" for i in range(3)]
    indexes = [int(m[:4]) for m in got if not m.startswith(("first", "last"))]
    expected = [i for i in range(200) if not ((before if i < position else after) and i % 2)]
    assert indexes == expected
    # The first request under the new rules names the raw position of its first record.
    resumed_at = next(i for i in expected if i >= position)
    assert inbox.requests[requests_before]["frame_id"] == delivery.frame_id(drain_id, middle, resumed_at)
    row = drain_row(conn, drain_id)
    filtered_before = sum(1 for i in range(position) if i % 2) if before else 0
    filtered_after = sum(1 for i in range(position, 200) if i % 2) if after else 0
    assert (row["cursor"], row["partial_batch"], row["delivered"], row["filtered"]) == (
        last, None, 6 + len(expected), filtered_before + filtered_after)
    assert first < middle < last


# --- a drain without rules is untouched ------------------------------------------------------

def test_a_drain_without_rules_sends_byte_for_byte_what_the_formats_write(conn, vault, database_url, world):
    resource_id, source_id = world
    app, inbox = logplex_receiver()
    raw = capturing(app)
    records = [forge_record(i, body=f"line {i}\nsecond line of {i} bob@example.com") for i in range(40)]
    with LocalServer(app) as server:
        plain = add_drain(conn, vault, resource_id, "logplex", f"http://127.0.0.1:{server.port}/plain")
        keeps_all = add_drain(conn, vault, resource_id, "logplex", f"http://127.0.0.1:{server.port}/kept")
        set_rules(conn, keeps_all, {"origins": ["forge", "heroku"], "min_severity": "TRACE"})
        batch = store(conn, resource_id, source_id, records)
        deliver_all(make_deliverer(database_url, vault), conn)
    by_path = {r["path"]: r for r in inbox.requests}
    bodies = dict(zip([r["path"] for r in inbox.requests], raw))
    for path, drain_id in (("/plain", plain), ("/kept", keeps_all)):
        token = drain_row(conn, drain_id)["token"]
        expected, count = logplex.batch(records, logplex.Identity(host=token, app_name="acme-app"))
        assert bodies[path] == expected and len(by_path[path]["frames"]) == count == 80
        assert by_path[path]["frame_id"] == delivery.frame_id(drain_id, batch, 0)
    assert drain_row(conn, keeps_all)["filtered"] == drain_row(conn, plain)["filtered"] == 0
