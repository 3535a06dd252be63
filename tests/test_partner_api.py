"""The Add-on Partner API v3 as Heroku and integrators call it (SPEC §1)."""

from __future__ import annotations

import json
import threading
import uuid

import pytest

from broker import partners, tokens
from broker.vault import Vault
from tests.support.partner import VENDOR_TYPE, basic, heroku_headers, provision_body


def count(conn, table: str) -> int:
    return conn.execute(f"SELECT count(*) AS n FROM {table}").fetchone()["n"]


def provision(client, body: dict, headers: dict | None = None):
    return client.post("/heroku/resources", data=json.dumps(body),
                       headers=headers or heroku_headers())


def test_it_provisions_a_resource_and_answers_as_heroku_expects(client, conn, settings):
    body = provision_body()
    response = provision(client, body)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == VENDOR_TYPE
    data = response.get_json(force=True)
    assert data["id"] == body["uuid"]
    assert set(data["config"]) == {"FORGEDRAIN_URL", "FORGEDRAIN_TOKEN"}
    assert all(isinstance(v, str) for v in data["config"].values())
    assert data["config"]["FORGEDRAIN_URL"] == f"http://127.0.0.1:5000/v1/resources/{body['uuid']}"
    assert data["log_drain_url"] == "http://127.0.0.1:5000/ingest/logplex"
    assert data["message"]
    assert "log_drain_token" not in data  # Heroku's own token is not echoed back
    row = conn.execute("SELECT * FROM resources WHERE id = %s", (body["uuid"],)).fetchone()
    assert row["plan"] == "basic" and row["state"] == "provisioned"
    assert row["log_drain_token"] == body["log_drain_token"]
    assert row["partner_id"] == "forgedrain"
    # the token is stored only as a digest
    assert bytes(row["api_token_hash"]) == tokens.digest(data["config"]["FORGEDRAIN_TOKEN"])
    assert data["config"]["FORGEDRAIN_TOKEN"].encode() not in json.dumps(
        {k: str(v) for k, v in row.items()}).encode()
    audit = conn.execute("SELECT actor, action FROM audit_log").fetchall()
    assert audit == [{"actor": "partner:forgedrain", "action": "resource.provisioned"}]


def test_the_answer_is_the_vendor_type_whatever_accept_says(client):
    for accept in ("application/json", "text/html", "*/*"):
        response = provision(client, provision_body(), heroku_headers(Accept=accept))
        assert response.status_code == 200
        assert response.headers["Content-Type"] == VENDOR_TYPE


def test_log_input_url_becomes_an_encrypted_heroku_drain(client, conn, settings):
    body = provision_body()
    provision(client, body)
    drain = conn.execute("SELECT * FROM drains WHERE resource_id = %s", (body["uuid"],)).fetchone()
    assert drain["kind"] == "heroku"
    assert drain["token"].startswith("d.")
    assert "logplex.io" not in drain["url_enc"]
    assert Vault(settings.fernet_keys).decrypt(drain["url_enc"]) == body["log_input_url"]


@pytest.mark.parametrize("token", ["d.0b9c6b2e-52f8-4f5c-9c1b-0e7f3c2a1d10", "8ab3f1c2d4e5f60718293a4b5c6d7e8f"])
def test_the_drain_token_is_stored_verbatim(client, conn, token):
    body = provision_body(log_drain_token=token)
    assert provision(client, body).status_code == 200
    stored = conn.execute("SELECT log_drain_token FROM resources").fetchone()["log_drain_token"]
    assert stored == token


def test_a_replay_returns_the_same_answer_and_creates_nothing(client, conn):
    body = provision_body()
    first = provision(client, body)
    second = provision(client, body)
    assert second.status_code == 200
    assert second.get_json(force=True) == first.get_json(force=True)
    assert count(conn, "resources") == 1
    assert count(conn, "drains") == 1
    assert count(conn, "audit_log") == 1


def test_identical_requests_racing_create_one_resource(app, conn):
    body = provision_body()
    barrier = threading.Barrier(8)
    answers: list = []

    def send() -> None:
        client = app.test_client()
        barrier.wait()
        response = provision(client, body)
        answers.append((response.status_code, response.get_json(force=True)))

    threads = [threading.Thread(target=send) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(answers) == 8
    assert {status for status, _ in answers} == {200}
    assert len({json.dumps(data, sort_keys=True) for _, data in answers}) == 1
    assert count(conn, "resources") == 1
    assert count(conn, "drains") == 1


def test_unknown_fields_are_ignored(client, conn):
    body = provision_body(heroku_id="app123@heroku.com", logplex_token=None, something_new={"x": [1]})
    body["logplex_token"] = None
    assert provision(client, body).status_code == 200
    assert count(conn, "resources") == 1


@pytest.mark.parametrize("method, path", [
    ("post", "/heroku/resources"),
    ("put", "/heroku/resources/{id}"),
    ("delete", "/heroku/resources/{id}"),
])
@pytest.mark.parametrize("headers", [
    {},
    basic("wrong", "secret"),
    basic("forgedrain", "not-the-password"),
    {"Authorization": "Bearer forgedrain-dev-password"},
    {"Authorization": "Basic !!!notbase64"},
])
def test_wrong_or_missing_credentials_get_401_and_change_nothing(client, conn, method, path, headers):
    body = provision_body()
    provision(client, body)
    before = count(conn, "audit_log")
    response = getattr(client, method)(path.format(id=body["uuid"]),
                                       data=json.dumps(provision_body(plan="pro")), headers=headers)
    assert response.status_code == 401
    assert response.headers["Content-Type"] == VENDOR_TYPE
    assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert response.get_json(force=True)["message"]
    assert count(conn, "resources") == 1
    assert count(conn, "audit_log") == before
    assert conn.execute("SELECT plan, state FROM resources").fetchone() == {"plan": "basic", "state": "provisioned"}


def test_every_configured_password_works_during_a_rotation(app, env, conn):
    from broker import config
    from web import create_app

    env["ADDON_PASSWORDS"] = "new-password-2026,forgedrain-dev-password"
    rotated = create_app(config.load(env, testing=True))
    try:
        client = rotated.test_client()
        assert provision(client, provision_body(), {**basic("forgedrain", "new-password-2026")}).status_code == 200
        assert provision(client, provision_body(), heroku_headers()).status_code == 200
        assert provision(client, provision_body(), basic("forgedrain", "retired-password")).status_code == 401
    finally:
        rotated.extensions["forgedrain"].db.close()


@pytest.mark.parametrize("raw, status, message", [
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "must be a JSON object"),
    (b"", 400, "must be a JSON object"),
    (json.dumps({"plan": "basic"}).encode(), 422, "uuid is required"),
    (json.dumps({"uuid": "nope", "plan": "basic"}).encode(), 422, "uuid must be a UUID"),
    (json.dumps({"uuid": 12, "plan": "basic"}).encode(), 422, "uuid must be a UUID"),
    (json.dumps({"uuid": str(uuid.uuid4())}).encode(), 422, "plan is required"),
    (json.dumps({"uuid": str(uuid.uuid4()), "plan": "gold"}).encode(), 422, "unknown plan 'gold'"),
    (json.dumps({"uuid": str(uuid.uuid4()), "plan": ["test"]}).encode(), 422, "unknown plan"),
    (json.dumps(provision_body(region="mars::olympus-1")).encode(), 422, "region is not supported"),
    (json.dumps(provision_body(log_drain_token="has space")).encode(), 422, "log_drain_token"),
    (json.dumps(provision_body(log_input_url="ftp://x/y")).encode(), 422, "log_input_url"),
    (json.dumps(provision_body(oauth_grant="code")).encode(), 422, "oauth_grant must be an object"),
    (json.dumps(provision_body(oauth_grant={"code": "c", "expires_at": "soon"})).encode(), 422, "expires_at"),
    (json.dumps(provision_body(options=["x"])).encode(), 422, "options must be an object"),
    (json.dumps(provision_body(name="x" * 300)).encode(), 422, "name must be printable text"),
])
def test_bad_input_gets_a_precise_error_and_writes_nothing(client, conn, raw, status, message):
    response = client.post("/heroku/resources", data=raw, headers=heroku_headers())
    assert response.status_code == status
    assert response.headers["Content-Type"] == VENDOR_TYPE
    assert message in response.get_json(force=True)["message"]
    assert count(conn, "resources") == 0
    assert count(conn, "audit_log") == 0


def test_a_body_over_1_mib_gets_413(client, conn):
    body = provision_body(padding="x" * (1024 * 1024))
    response = provision(client, body)
    assert response.status_code == 413
    assert response.headers["Content-Type"] == VENDOR_TYPE
    assert "1 MiB" in response.get_json(force=True)["message"]
    assert count(conn, "resources") == 0


def test_a_drain_token_already_in_use_is_refused(client, conn):
    token = f"d.{uuid.uuid4()}"
    assert provision(client, provision_body(log_drain_token=token)).status_code == 200
    response = provision(client, provision_body(log_drain_token=token))
    assert response.status_code == 422
    assert count(conn, "resources") == 1


# --- integrator partners ---------------------------------------------------------

@pytest.fixture
def integrator(conn, settings):
    password = partners.create(conn, settings, "acme-cloud", "Acme Cloud")
    return basic("acme-cloud", password)


def test_an_integrator_without_a_drain_token_gets_one_issued(client, conn, integrator):
    body = provision_body(log_drain_token=None, log_input_url=None)
    response = provision(client, body, integrator)
    assert response.status_code == 200
    data = response.get_json(force=True)
    assert data["log_drain_token"].startswith("d.")
    uuid.UUID(data["log_drain_token"][2:])
    assert data["log_drain_url"].endswith("/ingest/logplex")
    stored = conn.execute("SELECT log_drain_token, partner_id FROM resources").fetchone()
    assert stored == {"log_drain_token": data["log_drain_token"], "partner_id": "acme-cloud"}
    # a replay returns the token issued the first time
    assert provision(client, body, integrator).get_json(force=True) == data


def test_a_partner_sees_only_its_own_resources(client, conn, integrator):
    heroku_body = provision_body()
    provision(client, heroku_body)
    for method in ("put", "delete"):
        response = getattr(client, method)(f"/heroku/resources/{heroku_body['uuid']}",
                                           data=json.dumps({"plan": "pro"}), headers=integrator)
        assert response.status_code == 404
    collision = provision(client, heroku_body, integrator)
    assert collision.status_code == 409
    assert conn.execute("SELECT plan, state, partner_id FROM resources").fetchone() == {
        "plan": "basic", "state": "provisioned", "partner_id": "forgedrain"}


def test_integrator_passwords_rotate_without_downtime(client, conn, settings):
    first = partners.create(conn, settings, "acme-cloud", "Acme Cloud")
    second = partners.add_password(conn, "acme-cloud")
    assert provision(client, provision_body(), basic("acme-cloud", first)).status_code == 200
    assert provision(client, provision_body(), basic("acme-cloud", second)).status_code == 200
    partners.remove_password(conn, "acme-cloud", first)
    assert provision(client, provision_body(), basic("acme-cloud", first)).status_code == 401
    assert provision(client, provision_body(), basic("acme-cloud", second)).status_code == 200


def test_the_heroku_id_cannot_be_taken_by_an_integrator(conn, settings):
    with pytest.raises(partners.PartnerError, match="ADDON_ID"):
        partners.create(conn, settings, "forgedrain", "Impostor")
    with pytest.raises(partners.PartnerError, match="lowercase"):
        partners.create(conn, settings, "Bad Id", "x")


# --- plan changes ----------------------------------------------------------------

def change(client, resource_id: str, plan, headers=None):
    return client.put(f"/heroku/resources/{resource_id}", data=json.dumps({"plan": plan}),
                      headers=headers or heroku_headers())


def add_drains(conn, resource_id: str, n: int) -> None:
    for _ in range(n):
        conn.execute("INSERT INTO drains (resource_id, kind, token) VALUES (%s, 'logplex', %s)",
                     (resource_id, tokens.new_drain_token()))


def test_a_plan_change_is_applied_and_audited(client, conn):
    body = provision_body(plan="test")
    provision(client, body)
    response = change(client, body["uuid"], "pro")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == VENDOR_TYPE
    assert response.get_json(force=True)["message"] == "plan changed to pro"
    assert conn.execute("SELECT plan FROM resources").fetchone()["plan"] == "pro"
    last = conn.execute("SELECT action, detail FROM audit_log ORDER BY id DESC LIMIT 1").fetchone()
    assert last == {"action": "resource.plan_changed", "detail": {"from": "test", "to": "pro"}}


def test_the_same_plan_is_a_no_op(client, conn):
    body = provision_body(plan="basic")
    provision(client, body)
    response = change(client, body["uuid"], "basic")
    assert response.status_code == 200
    assert count(conn, "audit_log") == 1


@pytest.mark.parametrize("plan, message", [("foo", "unknown plan 'foo'"), (None, "plan is required"),
                                           (7, "unknown plan")])
def test_an_unknown_plan_is_refused(client, conn, plan, message):
    body = provision_body()
    provision(client, body)
    response = change(client, body["uuid"], plan)
    assert response.status_code == 422
    assert message in response.get_json(force=True)["message"]
    assert conn.execute("SELECT plan FROM resources").fetchone()["plan"] == "basic"


def test_a_downgrade_the_resource_does_not_fit_says_what_to_remove(client, conn):
    body = provision_body(plan="pro")
    provision(client, body)
    add_drains(conn, body["uuid"], 4)
    response = change(client, body["uuid"], "test")
    assert response.status_code == 422
    message = response.get_json(force=True)["message"]
    assert "remove 2 drains (plan test allows 2, the resource has 4)" in message
    assert conn.execute("SELECT plan FROM resources").fetchone()["plan"] == "pro"
    # the heroku drain does not count: 5 drains + heroku fit basic
    add_drains(conn, body["uuid"], 1)
    assert change(client, body["uuid"], "basic").status_code == 200


def test_plan_changes_for_unknown_or_removed_resources(client):
    assert change(client, str(uuid.uuid4()), "pro").status_code == 404
    assert change(client, "not-a-uuid", "pro").status_code == 404
    body = provision_body()
    provision(client, body)
    client.delete(f"/heroku/resources/{body['uuid']}", headers=heroku_headers())
    assert change(client, body["uuid"], "pro").status_code == 410


# --- deprovisioning --------------------------------------------------------------

def test_deprovision_erases_secrets_and_a_repeat_gets_410(client, conn):
    body = provision_body()
    data = provision(client, body).get_json(force=True)
    created = client.post(f"/v1/resources/{body['uuid']}/drains",
                          headers={"Authorization": f"Bearer {data['config']['FORGEDRAIN_TOKEN']}"},
                          json={"kind": "otlp", "url": "https://otlp.example.com", "headers": {"DD-API-KEY": "k3y"}})
    assert created.status_code == 201, created.get_data(as_text=True)
    response = client.delete(f"/heroku/resources/{body['uuid']}", headers=heroku_headers())
    assert response.status_code == 204
    assert response.headers["Content-Type"] == VENDOR_TYPE
    # every encrypted column of the resource's rows is erased (OTLP headers included)
    for table in ("resources", "drains", "sources"):
        columns = [r["column_name"] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = %s AND column_name LIKE %s",
            (table, "%\\_enc"))]
        assert columns or table == "sources"
        for column in columns:
            assert conn.execute(f"SELECT count(*) AS n FROM {table} WHERE {column} IS NOT NULL").fetchone()["n"] == 0, (
                table, column)
    row = conn.execute("SELECT * FROM resources").fetchone()
    assert row["state"] == "deprovisioned" and row["deprovisioned_at"] is not None
    for secret in ("log_drain_token", "api_token_hash", "oauth_access_token_enc",
                   "oauth_refresh_token_enc", "oauth_grant_code_enc"):
        assert row[secret] is None
    assert [dict(r) for r in conn.execute("SELECT url_enc, enabled FROM drains")] == [
        {"url_enc": None, "enabled": False}] * 2
    token = data["config"]["FORGEDRAIN_TOKEN"]
    assert client.get(f"/v1/resources/{body['uuid']}",
                      headers={"Authorization": f"Bearer {token}"}).status_code == 401
    again = client.delete(f"/heroku/resources/{body['uuid']}", headers=heroku_headers())
    assert again.status_code == 410
    assert again.headers["Content-Type"] == VENDOR_TYPE
    # a late replay of the provision does not bring it back
    assert provision(client, body).status_code == 410
    actions = [r["action"] for r in conn.execute("SELECT action FROM audit_log ORDER BY id")]
    assert actions == ["resource.provisioned", "drain.created", "resource.deprovisioned"]


def test_deprovisioning_an_unknown_resource_is_404(client):
    assert client.delete(f"/heroku/resources/{uuid.uuid4()}", headers=heroku_headers()).status_code == 404


def test_a_plain_http_log_input_url_is_refused_where_private_drains_are(env, conn):
    """Like every drain, the heroku drain takes plain http only where private drains are allowed."""
    from broker import config
    from web import create_app

    app = create_app(config.load({**env, "ALLOW_PRIVATE_DRAINS": "false"}, testing=True))
    try:
        web = app.test_client()
        for url in ("http://token:t.x@1.us.logplex.io/logs", "https://1.us.logplex.io/lo gs",
                    "https://1.us.logplex.io/logs\n"):
            answer = provision(web, provision_body(log_input_url=url))
            assert answer.status_code == 422 and "log_input_url" in answer.get_data(as_text=True), url
        assert conn.execute("SELECT count(*) AS n FROM resources").fetchone()["n"] == 0
        assert provision(web, provision_body()).status_code in (200, 202)  # https, as Heroku sends
    finally:
        app.extensions["forgedrain"].db.close()


@pytest.mark.parametrize("field, raw", [
    ("name", '"acme\\ud800"'),
    ("name", '"acme\\nforged"'),
    ("callback_url", '"https://api.heroku.com/addons/\\ud800"'),
    ("callback_url", '"https://api.heroku.com/ a\\u0001"'),
    ("callback_url", '"not a url"'),
    ("oauth_grant", '{"code": "c\\ud800", "expires_at": "2030-01-01T00:00:00Z"}'),
])
def test_a_provision_field_that_is_not_storable_text_is_a_422_and_stores_nothing(client, conn, field, raw):
    """A lone surrogate is valid JSON but not text PostgreSQL (or the vault) can take: it used to be a 500."""
    body = provision_body()
    body.pop(field, None)
    text = json.dumps(body)[:-1] + f', "{field}": {raw}}}'
    response = client.post("/heroku/resources", data=text, headers=heroku_headers())
    assert response.status_code == 422, response.get_data(as_text=True)
    assert field in response.get_json(force=True)["message"]
    assert count(conn, "resources") == 0
