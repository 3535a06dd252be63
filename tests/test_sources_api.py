"""Forge sources through the resource API, verified against the Forge fake (SPEC §2–3)."""

from __future__ import annotations

import json

import pytest

from broker import config
from tests.fakes.forge import ForgeFake
from tests.fakes.server import LocalServer
from tests.support.partner import heroku_headers, provision_body
from web import create_app

APP = "5f0f8a4e-1f5a-4c3e-9d7b-1a2b3c4d5e6f"
ENV = "0d1e2f30-4152-6374-8596-a7b8c9d0e1f2"
EMAIL = "bot@acme.test"
TOKEN = "ATATT3xFfGF0-secret-token-0123456789"


@pytest.fixture
def forge_fake():
    fake = ForgeFake(seed=5)
    fake.add_app(APP, [ENV, "staging-env"], EMAIL, TOKEN)
    with LocalServer(fake.wsgi()) as server:
        fake.url = server.url
        yield fake


@pytest.fixture
def api(env, forge_fake):
    env["FORGE_API_URL"] = forge_fake.url
    app = create_app(config.load(env, testing=True))
    yield app.test_client()
    app.extensions["forgedrain"].db.close()


@pytest.fixture
def resource(api):
    body = provision_body(plan="basic")
    response = api.post("/heroku/resources", data=json.dumps(body), headers=heroku_headers())
    token = response.get_json(force=True)["config"]["FORGEDRAIN_TOKEN"]
    return body["uuid"], {"Authorization": f"Bearer {token}"}


def source(**overrides) -> dict:
    body = {"app_id": APP, "environment_id": ENV, "email": EMAIL, "api_token": TOKEN,
            "levels": ["ERROR", "INFO"], "service_name": "acme-jira-app"}
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


def create(api, resource, **overrides):
    rid, auth = resource
    return api.post(f"/v1/resources/{rid}/sources", data=json.dumps(source(**overrides)), headers=auth)


def count(conn, table="sources") -> int:
    return conn.execute(f"SELECT count(*) AS n FROM {table}").fetchone()["n"]


def test_it_verifies_and_registers_a_source_with_the_token_masked(api, resource, conn, forge_fake):
    response = create(api, resource)
    assert response.status_code == 201
    data = response.json
    assert data["app_id"] == APP and data["environment_id"] == ENV and data["email"] == EMAIL
    assert data["api_token"] == "…" + TOKEN[-4:]
    assert data["levels"] == ["INFO", "ERROR"]  # in severity order, deduplicated
    assert data["state"] == "active" and data["verified_at"]
    assert response.headers["Location"].endswith(f"/sources/{data['id']}")
    assert len(forge_fake.calls) == 1 and forge_fake.calls[0].email == EMAIL
    rid, auth = resource
    listed = api.get(f"/v1/resources/{rid}/sources", headers=auth).json["sources"]
    assert [s["id"] for s in listed] == [data["id"]]
    single = api.get(f"/v1/resources/{rid}/sources/{data['id']}", headers=auth).json
    assert single.pop("gaps") == []
    assert single == data
    entry = conn.execute("SELECT actor, action, detail FROM audit_log ORDER BY id DESC LIMIT 1").fetchone()
    assert entry["actor"] == "api-token" and entry["action"] == "source.created"
    assert entry["detail"]["app_id"] == APP


def test_the_token_is_in_no_table_in_plain_text(api, resource, conn):
    assert create(api, resource).status_code == 201
    dump = conn.execute(
        "SELECT string_agg(t::text, ' ') AS all FROM ("
        " SELECT row_to_json(s)::text AS t FROM sources s UNION ALL"
        " SELECT row_to_json(a)::text FROM audit_log a UNION ALL"
        " SELECT row_to_json(r)::text FROM resources r) x"
    ).fetchone()["all"]
    assert EMAIL in dump  # the dump is real
    assert TOKEN not in dump and TOKEN[:20] not in dump


@pytest.mark.parametrize("overrides, field", [
    ({"app_id": None}, "app_id"),
    ({"email": "not-an-email"}, "email"),
    ({"api_token": "has space"}, "api_token"),
    ({"levels": ["LOUD"]}, "levels"),
    ({"installation_contexts": ["https://site"]}, "installation_contexts"),
    ({"installation_contexts": [f"ari:cloud:jira::site/{i}" for i in range(51)]}, "installation_contexts"),
    ({"include_arguments": "yes"}, "include_arguments"),
    ({"colour": "blue"}, "colour"),
])
def test_invalid_fields_are_named_and_nothing_is_called_or_saved(api, resource, conn, forge_fake,
                                                                 overrides, field):
    response = create(api, resource, **overrides)
    assert response.status_code == 422
    assert response.json["field"] == field
    assert field in response.json["message"]
    assert count(conn) == 0 and forge_fake.calls == []


def test_a_body_that_is_not_json_gets_400(api, resource, conn):
    rid, auth = resource
    response = api.post(f"/v1/resources/{rid}/sources", data=b"{oops", headers=auth)
    assert response.status_code == 400
    assert count(conn) == 0


@pytest.mark.parametrize("overrides, fragment", [
    ({"api_token": "ATATT-wrong"}, "refused the email and API token"),
    ({"email": "other@acme.test"}, "refused the email and API token"),
    ({"app_id": "11111111-2222-3333-4444-555555555555"}, "check the app id and the environment id"),
    ({"environment_id": "production-typo"}, "environment production-typo"),
])
def test_refused_credentials_get_422_saying_what_is_wrong_and_save_nothing(api, resource, conn,
                                                                           overrides, fragment):
    before = count(conn, "audit_log")
    response = create(api, resource, **overrides)
    assert response.status_code == 422
    assert response.json["error"] == "verification_failed"
    assert fragment in response.json["message"]
    assert "ATATT-wrong" not in response.get_data(as_text=True)
    assert count(conn) == 0 and count(conn, "audit_log") == before


def test_atlassian_down_or_throttling_saves_nothing(api, resource, conn, forge_fake):
    forge_fake.fail(status=503)
    down = create(api, resource)
    assert down.status_code == 502 and down.json["error"] == "forge_unavailable"
    forge_fake.fail(status=429)
    throttled = create(api, resource)
    assert throttled.status_code == 503 and throttled.json["error"] == "rate_limited"
    assert count(conn) == 0


def test_the_plan_limit_is_enforced(api, resource, conn, forge_fake):
    rid, _ = resource
    api.put(f"/heroku/resources/{rid}", data=json.dumps({"plan": "test"}), headers=heroku_headers())
    assert create(api, resource).status_code == 201
    second = create(api, resource, environment_id="staging-env")
    assert second.status_code == 422
    assert second.json["error"] == "plan_limit"
    assert "plan test allows 1 source" in second.json["message"]
    assert count(conn) == 1
    # and a downgrade now counts the source
    api.put(f"/heroku/resources/{rid}", data=json.dumps({"plan": "pro"}), headers=heroku_headers())
    create(api, resource, environment_id="staging-env")
    refused = api.put(f"/heroku/resources/{rid}", data=json.dumps({"plan": "test"}), headers=heroku_headers())
    assert refused.status_code == 422
    assert "remove 1 source" in refused.get_json(force=True)["message"]


def test_the_same_app_environment_twice_is_409(api, resource, conn):
    assert create(api, resource).status_code == 201
    again = create(api, resource)
    assert again.status_code == 409
    assert count(conn) == 1


def test_an_update_reverifies_changed_credentials_and_keeps_the_old_ones_on_refusal(
        api, resource, conn, forge_fake, settings):
    from broker.vault import Vault

    rid, auth = resource
    sid = create(api, resource).json["id"]
    calls = len(forge_fake.calls)
    cosmetic = api.patch(f"/v1/resources/{rid}/sources/{sid}",
                         data=json.dumps({"service_name": "renamed", "levels": []}), headers=auth)
    assert cosmetic.status_code == 200
    assert cosmetic.json["service_name"] == "renamed" and cosmetic.json["levels"] == []
    assert len(forge_fake.calls) == calls  # nothing to verify
    refused = api.patch(f"/v1/resources/{rid}/sources/{sid}",
                        data=json.dumps({"api_token": "ATATT-revoked"}), headers=auth)
    assert refused.status_code == 422
    stored = conn.execute("SELECT api_token_enc FROM sources").fetchone()["api_token_enc"]
    assert Vault(settings.fernet_keys).decrypt(stored) == TOKEN
    moved = api.patch(f"/v1/resources/{rid}/sources/{sid}",
                      data=json.dumps({"environment_id": "staging-env"}), headers=auth)
    assert moved.status_code == 200 and moved.json["environment_id"] == "staging-env"
    actions = [r["detail"].get("changed") for r in conn.execute(
        "SELECT detail FROM audit_log WHERE action = 'source.updated' ORDER BY id")]
    assert actions == [["levels", "service_name"], ["environment_id"]] or \
        actions == [["service_name", "levels"], ["environment_id"]]


def test_a_paused_source_resumes_when_its_credentials_are_fixed(api, resource, conn):
    rid, auth = resource
    sid = create(api, resource).json["id"]
    conn.execute("UPDATE sources SET state = 'paused', pause_reason = 'auth_failed', "
                 "last_error = 'HTTP 401'")
    paused = api.get(f"/v1/resources/{rid}/sources/{sid}", headers=auth).json
    assert paused["state"] == "paused" and paused["pause_reason"] == "auth_failed"
    fixed = api.patch(f"/v1/resources/{rid}/sources/{sid}",
                      data=json.dumps({"api_token": TOKEN + "x"}), headers=auth)
    assert fixed.status_code == 422  # the fake knows only TOKEN
    fixed = api.patch(f"/v1/resources/{rid}/sources/{sid}",
                      data=json.dumps({"email": EMAIL, "api_token": TOKEN,
                                       "app_id": APP, "environment_id": "staging-env"}), headers=auth)
    assert fixed.status_code == 200
    assert fixed.json["state"] == "active" and fixed.json["pause_reason"] is None
    assert fixed.json["last_error"] is None


def test_verify_now_pauses_on_refusal_and_resumes_on_success(api, resource, conn, forge_fake, settings):
    from broker.vault import Vault

    rid, auth = resource
    sid = create(api, resource).json["id"]
    vault = Vault(settings.fernet_keys)
    conn.execute("UPDATE sources SET api_token_enc = %s", (vault.encrypt("ATATT-rotated-away"),))
    failed = api.post(f"/v1/resources/{rid}/sources/{sid}/verify", headers=auth)
    assert failed.status_code == 200
    assert failed.json["verification"]["ok"] is False
    assert failed.json["source"]["state"] == "paused"
    assert failed.json["source"]["pause_reason"] == "auth_failed"
    conn.execute("UPDATE sources SET api_token_enc = %s", (vault.encrypt(TOKEN),))
    ok = api.post(f"/v1/resources/{rid}/sources/{sid}/verify", headers=auth)
    assert ok.json["verification"]["ok"] is True
    assert ok.json["source"]["state"] == "active"
    forge_fake.fail(status=500)
    unavailable = api.post(f"/v1/resources/{rid}/sources/{sid}/verify", headers=auth)
    assert unavailable.status_code == 502
    assert api.get(f"/v1/resources/{rid}/sources/{sid}", headers=auth).json["state"] == "active"


def test_delete_removes_the_source_and_is_audited(api, resource, conn):
    rid, auth = resource
    sid = create(api, resource).json["id"]
    assert api.delete(f"/v1/resources/{rid}/sources/{sid}", headers=auth).status_code == 204
    assert count(conn) == 0
    assert api.delete(f"/v1/resources/{rid}/sources/{sid}", headers=auth).status_code == 404
    last = conn.execute("SELECT action FROM audit_log ORDER BY id DESC LIMIT 1").fetchone()["action"]
    assert last == "source.deleted"


def test_sources_of_another_resource_are_404(api, resource):
    rid, auth = resource
    sid = create(api, resource).json["id"]
    other = provision_body()
    token = api.post("/heroku/resources", data=json.dumps(other),
                     headers=heroku_headers()).get_json(force=True)["config"]["FORGEDRAIN_TOKEN"]
    theirs = {"Authorization": f"Bearer {token}"}
    assert api.get(f"/v1/resources/{rid}/sources/{sid}", headers=theirs).status_code == 404
    assert api.get(f"/v1/resources/{other['uuid']}/sources/{sid}", headers=theirs).status_code == 404
    assert api.delete(f"/v1/resources/{other['uuid']}/sources/{sid}", headers=theirs).status_code == 404


def test_deprovision_erases_source_tokens(api, resource, conn):
    rid, _ = resource
    create(api, resource)
    api.delete(f"/heroku/resources/{rid}", headers=heroku_headers())
    row = conn.execute("SELECT api_token_enc, state FROM sources").fetchone()
    assert row == {"api_token_enc": None, "state": "paused"}


# --- provisioning options ----------------------------------------------------------

def test_provisioning_options_register_a_first_source(api, conn):
    body = provision_body(options={"app_id": APP, "environment_id": ENV, "email": EMAIL,
                                   "api_token": TOKEN})
    response = api.post("/heroku/resources", data=json.dumps(body), headers=heroku_headers())
    assert response.status_code == 200
    row = conn.execute("SELECT resource_id, app_id, state FROM sources").fetchone()
    assert str(row["resource_id"]) == body["uuid"] and row["app_id"] == APP
    # a replay neither calls Atlassian again nor adds a source
    again = api.post("/heroku/resources", data=json.dumps(body), headers=heroku_headers())
    assert again.status_code == 200 and count(conn) == 1


@pytest.mark.parametrize("options, status, fragment", [
    ({"app_id": APP, "environment_id": ENV, "email": EMAIL, "api_token": "ATATT-wrong"}, 422,
     "refused the email and API token"),
    ({"app_id": APP, "environment_id": "nope", "email": EMAIL, "api_token": TOKEN}, 422, "environment nope"),
    ({"app_id": APP, "email": EMAIL}, 422, "missing: environment_id, api_token"),
    ({"app_id": APP, "environment_id": ENV, "email": "x", "api_token": TOKEN}, 422, "email"),
])
def test_bad_provisioning_options_refuse_the_provision_and_create_nothing(api, conn, options, status,
                                                                           fragment):
    body = provision_body(options=options)
    response = api.post("/heroku/resources", data=json.dumps(body), headers=heroku_headers())
    assert response.status_code == status
    assert fragment in response.get_json(force=True)["message"]
    assert "ATATT-wrong" not in response.get_data(as_text=True)
    assert count(conn, "resources") == 0 and count(conn) == 0


def test_a_backfill_re_polls_from_a_past_time_with_visible_progress(api, resource, conn, forge_fake,
                                                                    database_url, redis_url, settings):
    from collections import Counter
    from datetime import datetime, timedelta, timezone

    from broker import polling
    from broker.vault import Vault
    from tests.support.polling import identity, make_poller, outbox_records

    rid, auth = resource
    sid = create(api, resource).json["id"]
    forge_fake.rate_limit = 10_000  # the budget is not under test here
    poller = make_poller(database_url, redis_url, forge_fake.url, Vault(settings.fernet_keys))

    def poll_until_caught_up() -> None:
        for _ in range(10):  # what poll jobs do
            conn.execute("UPDATE sources SET next_poll_at = now() - interval '1 second'")
            if poller.poll(polling.claim(conn, 1, 180)[0]).result == "caught-up":
                return
        raise AssertionError("the source never caught up")

    created = conn.execute("SELECT checkpoint FROM sources").fetchone()["checkpoint"]  # where polling began
    poll_until_caught_up()  # the source is live: the hour before it was added is stored
    polled_from = conn.execute("SELECT backfill_from, checkpoint FROM sources").fetchone()
    assert polled_from["backfill_from"] is None
    stored_before = conn.execute("SELECT COALESCE(max(id), 0) AS id FROM outbox").fetchone()["id"]
    path = f"/v1/resources/{rid}/sources/{sid}/backfill"
    now = datetime.now(timezone.utc)
    for bad in ({"from": (now - timedelta(days=15)).isoformat()}, {"from": (now + timedelta(hours=1)).isoformat()},
                {"from": "yesterday"}, {"from": "2026-11-20T08:00:00"}, {}):
        refused = api.post(path, data=json.dumps(bad), headers=auth)
        assert refused.status_code == 422 and refused.json["field"] == "from"
    start = now - timedelta(hours=3)
    response = api.post(path, data=json.dumps({"from": start.isoformat()}), headers=auth)
    assert response.status_code == 202
    backfill = response.json["polling"]["backfill"]
    assert backfill["progress"] == 0.0
    assert datetime.fromisoformat(response.json["polling"]["checkpoint"]) == start
    until = conn.execute("SELECT backfill_until FROM sources").fetchone()["backfill_until"]
    assert until >= polled_from["checkpoint"]  # it runs up to where the source had got
    poll_until_caught_up()
    after = api.get(f"/v1/resources/{rid}/sources/{sid}", headers=auth).json["polling"]
    assert after["backfill"] is None  # done: the checkpoint passed where it was
    assert datetime.fromisoformat(after["checkpoint"]) > now - timedelta(minutes=3)
    entry = conn.execute("SELECT action FROM audit_log WHERE action = 'source.backfill_started'").fetchone()
    assert entry is not None

    # The backfilled stretch, record by record (the source's levels only). What the backfill stored
    # is each record once, each one Forge has; it holds every record from the backfill's start to
    # where polling began (never stored before), and with what was stored before it, every record
    # up to where the source had been polled to.
    levels = ["ERROR", "INFO"]
    backfilled = Counter(map(identity, outbox_records(conn, sid, after=stored_before)))
    assert max(backfilled.values()) == 1, "the backfill stored a record twice"
    final = conn.execute("SELECT checkpoint FROM sources").fetchone()["checkpoint"]
    assert set(backfilled) <= set(map(identity, forge_fake.records(APP, ENV, start, final, levels=levels)))
    never_polled = forge_fake.records(APP, ENV, start, created, levels=levels)
    assert len(never_polled) > 1000  # two hours of the app's records
    assert set(map(identity, never_polled)) <= set(backfilled)
    everything = set(map(identity, outbox_records(conn, sid)))
    assert set(map(identity, forge_fake.records(APP, ENV, start, until, levels=levels))) <= everything
