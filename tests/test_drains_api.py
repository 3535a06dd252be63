"""Drains through the resource API (SPEC §2, §4)."""

from __future__ import annotations

import json

import pytest

from broker import config
from broker.vault import Vault
from tests.support.partner import heroku_headers, provision_body
from web import create_app


@pytest.fixture
def api_factory(env):
    apps = []

    def make(allow_private: bool = False):
        app = create_app(config.load({**env, "ALLOW_PRIVATE_DRAINS": "true" if allow_private else "false"},
                                     testing=True))
        apps.append(app)
        return app.test_client()

    yield make
    for app in apps:
        app.extensions["forgedrain"].db.close()


@pytest.fixture
def api(api_factory):
    return api_factory()


@pytest.fixture
def resource(api):
    body = provision_body(plan="test")
    token = api.post("/heroku/resources", data=json.dumps(body),
                     headers=heroku_headers()).get_json(force=True)["config"]["FORGEDRAIN_TOKEN"]
    return body["uuid"], {"Authorization": f"Bearer {token}"}


def create(api, resource, **body):
    rid, auth = resource
    return api.post(f"/v1/resources/{rid}/drains", data=json.dumps(body), headers=auth)


def count(conn) -> int:
    return conn.execute("SELECT count(*) AS n FROM drains WHERE kind <> 'heroku'").fetchone()["n"]


def test_it_creates_each_kind_with_secrets_encrypted_and_masked(api, resource, conn, settings):
    logplex = create(api, resource, kind="logplex", url="https://user:s3cret@logs.example.com/drain",
                     name="papertrail")
    assert logplex.status_code == 201
    assert logplex.json["url"] == "https://user:****@logs.example.com/drain"
    assert logplex.json["token"].startswith("d.") and logplex.json["token"] != resource[0]
    otlp = create(api, resource, kind="otlp", url="https://otlp.example.com", encoding="json",
                  headers={"DD-API-KEY": "k3y-value"})
    assert otlp.status_code == 201
    assert otlp.json["settings"] == {"encoding": "json", "gzip": True}
    assert otlp.json["headers"] == {"DD-API-KEY": "****"}
    dump = json.dumps([dict(r) for r in conn.execute("SELECT * FROM drains")], default=str)
    assert "s3cret" not in dump and "k3y-value" not in dump
    row = conn.execute("SELECT url_enc FROM drains WHERE kind = 'logplex'").fetchone()
    assert Vault(settings.fernet_keys).decrypt(row["url_enc"]) == "https://user:s3cret@logs.example.com/drain"
    entry = conn.execute("SELECT action FROM audit_log ORDER BY id DESC LIMIT 1").fetchone()
    assert entry["action"] == "drain.created"


@pytest.mark.parametrize("body, field", [
    ({"kind": "smoke", "url": "https://x.example.com"}, "kind"),
    ({"kind": "logplex"}, "url"),
    ({"kind": "logplex", "url": "http://x.example.com"}, "url"),
    ({"kind": "logplex", "url": "ftp://x.example.com"}, "url"),
    ({"kind": "syslog", "url": "syslog://x.example.com:6514"}, "url"),
    ({"kind": "syslog", "url": "syslog+tls://x.example.com"}, "url"),
    ({"kind": "syslog", "url": "syslog+tls://x.example.com:6514", "sd_id": "forge"}, "sd_id"),
    ({"kind": "otlp", "url": "https://o.example.com", "encoding": "xml"}, "encoding"),
    ({"kind": "otlp", "url": "https://o.example.com", "headers": {"Content-Type": "x"}}, "headers"),
    ({"kind": "logplex", "url": "https://x.example.com", "encoding": "json"}, "encoding"),
    ({"kind": "heroku", "url": "https://x.example.com"}, "kind"),
    ({"kind": "logplex", "url": "https://x.example.com", "colour": 1}, "colour"),
])
def test_invalid_drains_are_refused_and_nothing_is_saved(api, resource, conn, body, field):
    response = create(api, resource, **body)
    assert response.status_code == 422
    assert response.json["field"] == field
    assert count(conn) == 0


def test_plain_http_is_allowed_only_for_private_drains(api_factory, resource, conn):
    private = api_factory(allow_private=True)
    assert create(private, resource, kind="logplex", url="http://127.0.0.1:9999/logs").status_code == 201


def test_the_plan_limit_counts_owned_drains_not_the_heroku_one(api, resource, conn):
    for i in range(2):
        assert create(api, resource, kind="logplex", url=f"https://d{i}.example.com").status_code == 201
    third = create(api, resource, kind="logplex", url="https://d3.example.com")
    assert third.status_code == 422 and third.json["error"] == "plan_limit"
    assert count(conn) == 2


def test_the_heroku_drain_can_be_disabled_not_deleted_or_redirected(api, resource, conn):
    rid, auth = resource
    listed = api.get(f"/v1/resources/{rid}/drains", headers=auth).json["drains"]
    (heroku,) = [d for d in listed if d["kind"] == "heroku"]
    assert heroku["url"] is None  # Heroku's log_input_url carries a token
    path = f"/v1/resources/{rid}/drains/{heroku['id']}"
    assert api.delete(path, headers=auth).status_code == 422
    assert api.patch(path, data=json.dumps({"url": "https://elsewhere.example.com"}), headers=auth).status_code == 422
    disabled = api.patch(path, data=json.dumps({"enabled": False}), headers=auth)
    assert disabled.status_code == 200 and disabled.json["enabled"] is False


def test_update_rotate_and_delete(api, resource, conn):
    rid, auth = resource
    drain = create(api, resource, kind="otlp", url="https://o.example.com/v1/logs").json
    path = f"/v1/resources/{rid}/drains/{drain['id']}"
    changed = api.patch(path, data=json.dumps({"encoding": "json", "gzip": False}), headers=auth)
    assert changed.json["settings"] == {"encoding": "json", "gzip": False}
    assert api.patch(path, data=json.dumps({"kind": "logplex"}), headers=auth).status_code == 422
    rotated = api.post(f"{path}/token", headers=auth).json
    assert rotated["token"] != drain["token"] and rotated["token"].startswith("d.")
    read = api.get(path, headers=auth).json
    assert read["delivery"]["backlog"] == 0
    assert api.delete(path, headers=auth).status_code == 204
    assert api.get(path, headers=auth).status_code == 404
    actions = [r["action"] for r in conn.execute("SELECT action FROM audit_log WHERE action LIKE 'drain.%%' ORDER BY id")]
    assert actions == ["drain.created", "drain.updated", "drain.token_rotated", "drain.deleted"]


def test_another_resources_drains_are_404(api, resource):
    rid, auth = resource
    drain = create(api, resource, kind="logplex", url="https://d.example.com").json
    other = provision_body()
    token = api.post("/heroku/resources", data=json.dumps(other),
                     headers=heroku_headers()).get_json(force=True)["config"]["FORGEDRAIN_TOKEN"]
    theirs = {"Authorization": f"Bearer {token}"}
    assert api.get(f"/v1/resources/{other['uuid']}/drains/{drain['id']}", headers=theirs).status_code == 404
    assert api.delete(f"/v1/resources/{rid}/drains/{drain['id']}", headers=theirs).status_code == 404


# --- send a test record ----------------------------------------------------------------


def test_a_test_record_reaches_a_logplex_receiver_in_the_drains_format(api_factory, resource, conn):
    from tests.fakes.receivers import logplex_receiver
    from tests.fakes.server import LocalServer

    api = api_factory(allow_private=True)
    rid, auth = resource
    app, inbox = logplex_receiver()
    with LocalServer(app) as server:
        drain = create(api, resource, kind="logplex", url=f"http://127.0.0.1:{server.port}/logs").json
        path = f"/v1/resources/{rid}/drains/{drain['id']}/test"
        first = api.post(path, headers=auth)
        second = api.post(path, data=json.dumps({"message": "hello from the owner ✓"}), headers=auth)
        inbox.fail(400)
        refused = api.post(path, headers=auth)
    assert first.status_code == 200 and first.json["delivered"] is True and first.json["status"] == 200
    assert second.status_code == 200
    assert [e["message"] for r in inbox.requests for e in r["events"]] == [
        first.json["record"]["message"], "hello from the owner ✓"]
    assert {r["token"] for r in inbox.requests} == {drain["token"]}
    frame_ids = [r["frame_id"] for r in inbox.requests]
    assert len(set(frame_ids)) == 2  # receivers that drop repeated Frame-Ids keep every test
    assert refused.status_code == 502 and refused.json["delivered"] is False
    assert refused.json["retryable"] is False and "HTTP 400" in refused.json["message"]
    row = conn.execute("SELECT cursor, delivered, dropped FROM drains WHERE id = %s", (drain["id"],)).fetchone()
    assert (row["delivered"], row["dropped"]) == (0, 0)  # outside the drain's delivery
    outcomes = [r["detail"]["outcome"] for r in conn.execute(
        "SELECT detail FROM audit_log WHERE action = 'drain.tested' ORDER BY id")]
    assert outcomes == ["delivered", "delivered", "drop"]


def test_a_test_record_reaches_rsyslog_over_tls(api_factory, resource, tmp_path, monkeypatch):
    from tests.fakes.rsyslog import Rsyslog

    api = api_factory(allow_private=True)
    rid, auth = resource
    with Rsyslog(tmp_path) as receiver:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(receiver.cert))  # the trust store every sink reads
        drain = create(api, resource, kind="syslog", url=receiver.tls_url).json
        sent = api.post(f"/v1/resources/{rid}/drains/{drain['id']}/test",
                        data=json.dumps({"message": "syslog test"}), headers=auth)
        (message,) = receiver.wait_for(1)
    assert sent.status_code == 200, sent.json
    assert (message["msg"], message["hostname"], message["procid"]) == ("syslog test", drain["token"],
                                                                       "forgedrain-test")


def test_a_test_to_a_private_address_is_refused_with_the_reason(api, resource):
    rid, auth = resource
    drain = create(api, resource, kind="otlp", url="https://localhost:9/").json
    refused = api.post(f"/v1/resources/{rid}/drains/{drain['id']}/test", headers=auth)
    assert refused.status_code == 502 and "private, loopback" in refused.json["message"]
    assert refused.json["retryable"] is True  # a delivery would wait, not drop
    bad = api.post(f"/v1/resources/{rid}/drains/{drain['id']}/test", data=json.dumps({"message": ""}),
                   headers=auth)
    assert bad.status_code == 422 and bad.json["field"] == "message"
    unknown = api.post(f"/v1/resources/{rid}/drains/{drain['id']}/test", data=json.dumps({"x": 1}), headers=auth)
    assert unknown.status_code == 422


def test_a_test_record_waits_while_another_call_of_the_resource_is_out(api_factory, resource, conn, redis_url):
    from broker import ratelimit, redisconn
    from tests.fakes.receivers import logplex_receiver
    from tests.fakes.server import LocalServer

    api, (rid, auth) = api_factory(allow_private=True), resource
    app, inbox = logplex_receiver()
    with LocalServer(app) as receiver:
        drain = create(api, resource, kind="logplex", url=f"{receiver.url}/drain").json
        held, _, _ = ratelimit.OwnerCalls(redisconn.connect(redis_url)).take(rid, 60)  # a verification, say
        assert held is not None
        refused = api.post(f"/v1/resources/{rid}/drains/{drain['id']}/test", headers=auth)
        assert refused.status_code == 429 and refused.json["error"] == "busy", refused.json
        assert 1 <= int(refused.headers["Retry-After"]) <= 5
        assert inbox.requests == []
    assert conn.execute("SELECT count(*) AS n FROM audit_log WHERE action = 'drain.tested'").fetchone()["n"] == 0


def test_list_and_read_show_each_drains_backlog(api, resource, conn, settings):
    from tests.support.polling import add_source
    from tests.test_delivery import forge_record, store

    rid, auth = resource
    source_id = add_source(conn, Vault(settings.fernet_keys), rid)
    store(conn, rid, source_id, [forge_record(i) for i in range(4)])  # before the drain: not its backlog
    drain = create(api, resource, kind="logplex", url="https://d.example.com").json
    store(conn, rid, source_id, [forge_record(i) for i in range(6)])
    listed = {d["id"]: d["delivery"]["backlog"] for d in api.get(f"/v1/resources/{rid}/drains", headers=auth).json["drains"]}
    heroku = conn.execute("SELECT id FROM drains WHERE resource_id = %s AND kind = 'heroku'", (rid,)).fetchone()
    assert listed[drain["id"]] == 6 and listed[str(heroku["id"])] == 10
    assert api.get(f"/v1/resources/{rid}/drains/{drain['id']}", headers=auth).json["delivery"]["backlog"] == 6


def test_shown_urls_mask_passwords_and_query_values():
    from broker import drains

    assert drains.masked_url("https://u:p%40ss@logs.example.com:8443/in?api-key=s3cret&x") == (
        "https://u:****@logs.example.com:8443/in?api-key=****&x")
    assert drains.masked_url("https://otlp.example.com/v1/logs?dd-api-key=abc") == (
        "https://otlp.example.com/v1/logs?dd-api-key=****")
    assert drains.masked_url("syslog+tls://logs.example.com:6514") == "syslog+tls://logs.example.com:6514"
    # a user name without a password is a key; so is a long opaque path segment
    assert drains.masked_url("https://k3yABCDEF@logs.example.com/in") == "https://****@logs.example.com/in"
    assert drains.masked_url(
        "https://endpoint1.collection.us2.sumologic.com/receiver/v1/http/ZaVnC4dhaV3uTKlva1XzWn9c2xq0yJ8PV==") == (
        "https://endpoint1.collection.us2.sumologic.com/receiver/v1/http/****")
    assert drains.masked_url("https://logs-01.loggly.com/inputs/b2c4a1e0-1234-4abc-9def-0123456789ab/tag/http/") == (
        "https://logs-01.loggly.com/inputs/****/tag/http/")
    # ordinary paths stay readable
    assert drains.masked_url("https://otlp.example.com/v1/logs") == "https://otlp.example.com/v1/logs"
    assert drains.masked_url("https://h.example.com/drains/production-eu-west") == (
        "https://h.example.com/drains/production-eu-west")


@pytest.mark.parametrize("body, field", [
    ({"kind": "otlp", "url": "https://o.example.com", "headers": {"DD-API-KEY": "clé"}}, "headers"),
    ({"kind": "syslog", "url": "syslog+tls://l.example.com:6514", "sd_id": "a" * 28 + "@32473"}, "sd_id"),
])
def test_values_receivers_cannot_take_are_refused_up_front(api, resource, conn, body, field):
    answer = create(api, resource, **body)
    assert answer.status_code == 422 and answer.json["field"] == field
    assert count(conn) == 0
