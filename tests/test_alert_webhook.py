"""The alert webhook and the alerts in the resource API (issue 16 item 2, SPEC §10).

Alerts and notices are written here straight into their tables (the alert engine that writes
them is another part of the product); the webhook is set through the API, its job runs as the
worker runs it, and the receiver checks every signature with the README's own recipe.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid

import pytest

from broker import config, jobs, ratelimit, redisconn, resources
from broker.vault import Vault
from tests.fakes.server import LocalServer
from tests.fakes.webhook import readme_verify, webhook_receiver
from tests.support.partner import heroku_headers, provision_body
from tests.test_drains_api import api_factory  # noqa: F401 (a fixture)
from worker import alert_webhook as job
from worker import context


def load(env, allow_private: bool) -> config.Settings:
    return config.load({**env, "ALLOW_PRIVATE_DRAINS": "true" if allow_private else "false"}, testing=True)


@pytest.fixture
def api(api_factory):  # noqa: F811
    """The resource API with receivers on loopback allowed (they are all on loopback here)."""
    return api_factory(allow_private=True)


def provision(api) -> tuple[str, dict]:
    body = provision_body(plan="test")
    token = api.post("/heroku/resources", data=json.dumps(body),
                     headers=heroku_headers()).get_json(force=True)["config"]["FORGEDRAIN_TOKEN"]
    return body["uuid"], {"Authorization": f"Bearer {token}"}


@pytest.fixture
def resource(api):
    return provision(api)


def put(api, resource, body) -> object:
    rid, auth = resource
    return api.put(f"/v1/resources/{rid}/alert-webhook", data=body if isinstance(body, str) else json.dumps(body),
                   headers=auth)


def raise_alert(conn, resource_id, message: str, condition: str = "drain_failing",
                subject_name: str = "papertrail", detail: str | None = "HTTP 503") -> tuple[int, int]:
    """An alert raised now, with its notice: (alert id, notice id)."""
    alert = conn.execute(
        "INSERT INTO alerts (resource_id, condition, subject_id, subject_name, detail) VALUES (%s, %s, %s, %s, %s) "
        "RETURNING id", (resource_id, condition, uuid.uuid4(), subject_name, detail)).fetchone()["id"]
    return alert, notice(conn, resource_id, alert, "raised", condition, message)


def recover_alert(conn, resource_id, alert_id: int, message: str) -> int:
    row = conn.execute("UPDATE alerts SET recovered_at = now() WHERE id = %s RETURNING condition",
                       (alert_id,)).fetchone()
    return notice(conn, resource_id, alert_id, "recovered", row["condition"], message)


def notice(conn, resource_id, alert_id: int, change: str, condition: str, message: str) -> int:
    return conn.execute(
        "INSERT INTO alert_notices (resource_id, alert_id, change, condition, message) VALUES (%s, %s, %s, %s, %s) "
        "RETURNING id", (resource_id, alert_id, change, condition, message)).fetchone()["id"]


def run_job(env, allow_private: bool = True) -> dict:
    """The job as a worker runs it (in-process, as RQ's SimpleWorker would)."""
    context.install(load(env, allow_private))
    try:
        return job.run(budget_seconds=30)
    finally:
        context.install(None)


def webhook_row(conn, resource_id) -> dict | None:
    return conn.execute("SELECT * FROM alert_webhooks WHERE resource_id = %s", (resource_id,)).fetchone()


def due_now(conn) -> None:
    """Time passes: every webhook's back-off is over."""
    conn.execute("UPDATE alert_webhooks SET next_attempt_at = now()")


def audit_actions(conn) -> list[str]:
    return [r["action"] for r in conn.execute("SELECT action FROM audit_log WHERE action LIKE 'alert%%' ORDER BY id")]


# --- configuration ----------------------------------------------------------------------

def test_the_secret_is_shown_once_stored_encrypted_and_get_shows_only_the_host(api, resource, conn, settings):
    rid, auth = resource
    url = "https://bot:pa55word@hooks.example.com/services/T0001/B0002/abcdefghijklmnopqrstuvwx?key=k3y"
    created = put(api, resource, {"url": url})
    assert created.status_code == 201, created.json
    secret = created.json["secret"]
    assert secret.startswith("fdwh_") and len(secret) > 40
    assert created.headers["Cache-Control"] == "no-store"
    assert created.json["host"] == "hooks.example.com"
    assert created.json["delivery"]["pending"] == 0
    shown = api.get(f"/v1/resources/{rid}/alert-webhook", headers=auth)
    assert shown.status_code == 200
    assert "secret" not in shown.json and shown.json["host"] == "hooks.example.com"
    text = shown.get_data(as_text=True) + created.get_data(as_text=True).replace(secret, "")
    for leak in ("pa55word", "bot", "k3y", "abcdefghijklmnopqrstuvwx", secret):
        assert leak not in text
    row = webhook_row(conn, rid)
    dump = json.dumps([dict(r) for r in conn.execute("SELECT * FROM alert_webhooks")], default=str)
    dump += json.dumps([dict(r) for r in conn.execute("SELECT * FROM audit_log")], default=str)
    assert "pa55word" not in dump and secret not in dump
    vault = Vault(settings.fernet_keys)
    assert (vault.decrypt(row["url_enc"]), vault.decrypt(row["secret_enc"])) == (url, secret)
    replaced = put(api, resource, {"url": "https://other.example.com:8443/hook"})
    assert replaced.status_code == 200 and replaced.json["host"] == "other.example.com:8443"
    assert replaced.json["secret"] != secret  # every PUT issues a new secret; the old one signs nothing more
    assert api.delete(f"/v1/resources/{rid}/alert-webhook", headers=auth).status_code == 204
    assert webhook_row(conn, rid) is None
    assert api.get(f"/v1/resources/{rid}/alert-webhook", headers=auth).status_code == 404
    assert api.delete(f"/v1/resources/{rid}/alert-webhook", headers=auth).status_code == 404
    assert audit_actions(conn) == ["alert_webhook.set", "alert_webhook.set", "alert_webhook.deleted"]


@pytest.mark.parametrize("body, status, field", [
    ("not json", 400, "body"),
    ("[]", 400, "body"),
    ({}, 422, "url"),
    ({"url": 5}, 422, "url"),
    ({"url": "http://hooks.example.com/x"}, 422, "url"),  # plain http only where private drains are allowed
    ({"url": "ftp://hooks.example.com/x"}, 422, "url"),
    ({"url": "https://hooks.example.com/x#top"}, 422, "url"),
    ({"url": "https:///nohost"}, 422, "url"),
    ({"url": "https://hooks.example.com/a\nb"}, 422, "url"),
    ({"url": "https://hooks.example.com/x", "secret": "mine"}, 422, "secret"),
])
def test_bad_input_is_answered_precisely_and_changes_nothing(api_factory, conn, body, status, field):
    api = api_factory(allow_private=False)
    resource = provision(api)
    rid, auth = resource
    first = put(api, resource, {"url": "https://hooks.example.com/first"})
    assert first.status_code == 201
    before = dict(webhook_row(conn, rid))
    refused = put(api, resource, body)
    assert refused.status_code == status, refused.json
    assert refused.json["error"] == "invalid" and refused.json["field"] == field and refused.json["message"]
    assert dict(webhook_row(conn, rid)) == before
    assert audit_actions(conn) == ["alert_webhook.set"]
    bad_test = api.post(f"/v1/resources/{rid}/alert-webhook/test", data=json.dumps({"message": ""}), headers=auth)
    assert bad_test.status_code == 422 and bad_test.json["field"] == "message"
    assert audit_actions(conn) == ["alert_webhook.set"]


def test_without_a_webhook_reads_and_tests_are_404_and_changes_of_a_failed_resource_409(api, resource, conn):
    rid, auth = resource
    assert api.get(f"/v1/resources/{rid}/alert-webhook", headers=auth).status_code == 404
    missing = api.post(f"/v1/resources/{rid}/alert-webhook/test", headers=auth)
    assert missing.status_code == 404 and missing.json["error"] == "not_found"
    conn.execute("UPDATE resources SET state = 'failed' WHERE id = %s", (rid,))
    frozen = put(api, resource, {"url": "https://hooks.example.com/x"})
    assert frozen.status_code == 409 and frozen.json["error"] == "resource_failed"
    assert webhook_row(conn, rid) is None and audit_actions(conn) == []


def test_deprovision_and_failed_provisioning_remove_the_webhook_and_its_secrets(api, conn):
    rid, _ = resource = provision(api)
    assert put(api, resource, {"url": "https://hooks.example.com/x"}).status_code == 201
    assert api.delete(f"/heroku/resources/{rid}", headers=heroku_headers()).status_code == 204
    assert webhook_row(conn, rid) is None
    other, _ = resource = provision(api)
    assert put(api, resource, {"url": "https://hooks.example.com/y"}).status_code == 201
    conn.execute("UPDATE resources SET state = 'provisioning' WHERE id = %s", (other,))
    with conn.transaction():
        assert resources.provision_failed(conn, other, "Heroku refused the grant")
    assert webhook_row(conn, other) is None
    columns = [r["column_name"] for r in conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'alert_webhooks' "
        "AND column_name LIKE %s", ("%\\_enc",))]
    assert sorted(columns) == ["secret_enc", "url_enc"]
    for column in columns:
        assert conn.execute(f"SELECT count(*) AS n FROM alert_webhooks WHERE {column} IS NOT NULL").fetchone()["n"] == 0


# --- delivery ---------------------------------------------------------------------------

def test_notices_reach_the_receiver_in_order_signed_and_once_each(api, resource, conn, env):
    rid, auth = resource
    raise_alert(conn, rid, "an old alert, from before the webhook")  # not replayed to a new webhook
    app, inbox = webhook_receiver()
    with LocalServer(app) as server:
        created = put(api, resource, {"url": f"{server.url}/hooks/forgedrain"})
        app.config["secret"] = created.json["secret"]
        alert, raised = raise_alert(conn, rid, "Drain papertrail has been failing for 15 minutes (HTTP 503).")
        _, other = raise_alert(conn, rid, "Source acme/prod is paused: Atlassian refused the token.",
                               condition="source_paused", subject_name="acme/prod", detail="auth_failed")
        recovered = recover_alert(conn, rid, alert, "Drain papertrail delivers again.")
        assert api.get(f"/v1/resources/{rid}/alert-webhook", headers=auth).json["delivery"]["pending"] == 3
        assert run_job(env)["delivered"] == 3
        assert run_job(env)["delivered"] == 0  # nothing is sent twice
    assert inbox.refused == []  # every signature verified with the README's recipe
    bodies = [r["body"] for r in inbox.requests]
    assert [b["forgedrain"]["notice_id"] for b in bodies] == [raised, other, recovered]
    assert [b["text"] for b in bodies] == ["Drain papertrail has been failing for 15 minutes (HTTP 503).",
                                           "Source acme/prod is paused: Atlassian refused the token.",
                                           "Drain papertrail delivers again."]
    first = bodies[0]["forgedrain"]
    assert first["resource_id"] == rid and first["alert_id"] == alert and first["change"] == "raised"
    assert first["condition"] == "drain_failing" and first["subject"]["name"] == "papertrail"
    assert first["detail"] == "HTTP 503" and first["time"].endswith("Z")
    assert bodies[2]["forgedrain"]["change"] == "recovered"
    assert [r["headers"]["X-Forgedrain-Notice-Id"] for r in inbox.requests] == [str(raised), str(other),
                                                                                 str(recovered)]
    assert {r["path"] for r in inbox.requests} == {"/hooks/forgedrain"}
    row = webhook_row(conn, rid)
    assert (row["cursor"], row["delivered"], row["dropped"], row["lease_token"]) == (recovered, 3, 0, None)
    shown = api.get(f"/v1/resources/{rid}/alert-webhook", headers=auth).json["delivery"]
    assert shown["pending"] == 0 and shown["delivered"] == 3 and shown["last_delivery_at"]


def test_a_signature_checks_out_only_with_the_right_secret_body_and_a_fresh_timestamp():
    import time

    from broker import alert_webhook

    verify = readme_verify()
    body = b'{"text":"hi"}'
    now = str(int(time.time()))
    headers = {"X-Forgedrain-Timestamp": now, "X-Forgedrain-Signature": alert_webhook.signature("s3", now, body)}
    assert verify("s3", headers, body)
    assert not verify("s4", headers, body)
    assert not verify("s3", headers, body + b" ")
    old = str(int(time.time()) - 600)
    assert not verify("s3", {**headers, "X-Forgedrain-Timestamp": old,
                             "X-Forgedrain-Signature": alert_webhook.signature("s3", old, body)}, body)


def test_a_500_and_a_429_are_retried_with_back_off_and_hold_the_notices_behind(api, resource, conn, env):
    rid, _ = resource
    app, inbox = webhook_receiver()
    with LocalServer(app) as server:
        app.config["secret"] = put(api, resource, {"url": server.url}).json["secret"]
        notices = [raise_alert(conn, rid, f"alert {i}")[1] for i in range(3)]
        inbox.fail(500)
        assert run_job(env)["retries"] == 1
        row = webhook_row(conn, rid)
        assert (row["cursor"], row["consecutive_failures"], row["retried"]) == (notices[0] - 1, 1, 1)
        assert row["last_error"] == "HTTP 500" and row["lease_token"] is None
        waits = conn.execute("SELECT extract(epoch FROM next_attempt_at - now()) AS s FROM alert_webhooks").fetchone()
        assert 0 < waits["s"] <= 4  # the drains' back-off: 2^(failures + 1) s at most, with jitter
        assert run_job(env)["webhooks"] == 0  # backing off: not due
        due_now(conn)
        inbox.fail(429, retry_after="120")
        assert run_job(env)["retries"] == 1
        waits = conn.execute("SELECT extract(epoch FROM next_attempt_at - now()) AS s FROM alert_webhooks").fetchone()
        assert 100 < waits["s"] <= 120  # Retry-After honoured
        assert webhook_row(conn, rid)["consecutive_failures"] == 2
        due_now(conn)
        assert run_job(env)["delivered"] == 3
    assert inbox.refused == []
    assert [r["body"]["forgedrain"]["notice_id"] for r in inbox.requests] == notices
    row = webhook_row(conn, rid)
    assert (row["cursor"], row["delivered"], row["consecutive_failures"], row["retried"]) == (notices[-1], 3, 0, 2)


def test_a_400_drops_that_notice_counted_and_the_rest_go_on(api, resource, conn, env):
    rid, auth = resource
    app, inbox = webhook_receiver()
    with LocalServer(app) as server:
        app.config["secret"] = put(api, resource, {"url": server.url}).json["secret"]
        notices = [raise_alert(conn, rid, f"alert {i}")[1] for i in range(3)]
        inbox.fail(400)
        assert run_job(env) == {"webhooks": 1, "delivered": 2, "dropped": 1, "retries": 0}
    assert [r["body"]["forgedrain"]["notice_id"] for r in inbox.requests] == notices[1:]
    row = webhook_row(conn, rid)
    assert (row["cursor"], row["delivered"], row["dropped"], row["retried"]) == (notices[-1], 2, 1, 0)
    assert "HTTP 400" in row["last_error"]
    shown = api.get(f"/v1/resources/{rid}/alert-webhook", headers=auth).json["delivery"]
    assert shown["dropped"] == 1 and "HTTP 400" in shown["last_error"]


def test_a_webhook_whose_name_points_at_a_private_address_is_refused_and_its_notices_wait(
        api_factory, conn, env, monkeypatch):
    from tests.support.resolver import ScriptedResolver

    api = api_factory(allow_private=False)
    resource = rid, auth = provision(api)
    app, inbox = webhook_receiver()
    with LocalServer(app) as server:
        # A public-looking name re-pointed at this machine (DNS rebinding): the guard resolves at send time.
        ScriptedResolver(monkeypatch, "hooks.example.com", ["127.0.0.1"])
        app.config["secret"] = put(api, resource, {"url": f"https://hooks.example.com:{server.port}/x"}).json["secret"]
        tested = api.post(f"/v1/resources/{rid}/alert-webhook/test", headers=auth)
        assert tested.status_code == 502 and tested.json["error"] == "test_failed"
        assert "private, loopback" in tested.json["message"] and tested.json["retryable"] is True
        (waiting,) = [raise_alert(conn, rid, "an alert")[1]]
        assert run_job(env, allow_private=False)["retries"] == 1
    assert inbox.requests == [] and inbox.refused == []  # nothing reached the receiver
    row = webhook_row(conn, rid)
    assert row["cursor"] == waiting - 1 and row["delivered"] == 0
    assert row["last_error"].startswith("destination refused") and "private, loopback" in row["last_error"]


def test_a_crash_between_send_and_cursor_sends_that_one_notice_again(api, resource, conn, env, redis_url):
    """At-least-once: the receiver has the notice, the worker dies before it moves the cursor."""
    from tests.test_poll_jobs import start_worker

    rid, _ = resource
    app, inbox = webhook_receiver(hold_first=True)
    with LocalServer(app) as server:
        app.config["secret"] = put(api, resource, {"url": server.url}).json["secret"]
        notices = [raise_alert(conn, rid, f"alert {i}")[1] for i in range(3)]
        assert jobs.enqueue_alert_webhooks(redisconn.connect(redis_url), 5) is not None
        worker = start_worker(env, ALLOW_PRIVATE_DRAINS="true")
        try:
            arrived = app.config["arrived"].wait(60)
            assert arrived, worker.communicate(timeout=5)[0] if worker.poll() is not None else "no request"
            horses = subprocess.run(["pgrep", "-P", str(worker.pid)], capture_output=True, text=True).stdout.split()
            for pid in horses:
                os.killpg(int(pid), signal.SIGKILL)
            os.killpg(worker.pid, signal.SIGKILL)
            worker.communicate(timeout=30)
        finally:
            app.config["release"].set()
        row = webhook_row(conn, rid)
        assert row["cursor"] == notices[0] - 1 and row["lease_token"] is not None  # the dead job still holds it
        assert run_job(env)["webhooks"] == 0  # leased: nobody else sends meanwhile
        conn.execute("UPDATE alert_webhooks SET lease_expires_at = now() - interval '1 second'")  # it runs out
        assert run_job(env)["delivered"] == 3
    assert inbox.refused == []
    assert [r["body"]["forgedrain"]["notice_id"] for r in inbox.requests] == [notices[0]] + notices
    row = webhook_row(conn, rid)
    assert (row["cursor"], row["delivered"], row["lease_token"]) == (notices[-1], 3, None)


def test_the_tick_helper_queues_one_job_only_while_a_webhook_has_notices_due(api, resource, conn, redis_url):
    from broker import alert_webhook

    rid, _ = resource
    connection = redisconn.connect(redis_url)
    assert put(api, resource, {"url": "http://127.0.0.1:9/x"}).status_code == 201
    assert alert_webhook.count_due(conn, 10) == 0
    raise_alert(conn, rid, "an alert")
    assert alert_webhook.count_due(conn, 10) == 1
    assert jobs.enqueue_alert_webhooks(connection, 5) is not None
    assert jobs.enqueue_alert_webhooks(connection, 5) is None  # still queued: not queued twice
    queued = jobs.queue("deliver", connection).jobs
    assert [(j.id, j.func_name, list(j.args)) for j in queued] == [("alert-webhooks", "worker.alert_webhook.run", [])]


# --- the test notice --------------------------------------------------------------------

def test_a_test_notice_is_signed_leaves_the_cursor_alone_is_throttled_and_audited(api, resource, conn, redis_url):
    rid, auth = resource
    app, inbox = webhook_receiver()
    with LocalServer(app) as server:
        app.config["secret"] = put(api, resource, {"url": server.url}).json["secret"]
        before = dict(webhook_row(conn, rid))
        sent = api.post(f"/v1/resources/{rid}/alert-webhook/test", data=json.dumps({"message": "hello ✓"}),
                        headers=auth)
        assert sent.status_code == 200 and sent.json == {"delivered": True, "status": 200}
        inbox.fail(400)
        refused = api.post(f"/v1/resources/{rid}/alert-webhook/test", headers=auth)
        assert refused.status_code == 502 and refused.json["retryable"] is False
        assert "HTTP 400" in refused.json["message"]
        held, _, _ = ratelimit.OwnerCalls(redisconn.connect(redis_url)).take(rid, 60)  # a verification, say
        assert held is not None
        busy = api.post(f"/v1/resources/{rid}/alert-webhook/test", headers=auth)
        assert busy.status_code == 429 and busy.json["error"] == "busy" and busy.headers["Retry-After"]
    assert inbox.refused == []
    (got,) = inbox.requests
    assert got["body"]["text"] == "hello ✓"
    assert got["body"]["forgedrain"]["change"] == "test" and got["body"]["forgedrain"]["notice_id"] is None
    assert dict(webhook_row(conn, rid)) == before
    outcomes = [r["detail"]["outcome"] for r in conn.execute(
        "SELECT detail FROM audit_log WHERE action = 'alert_webhook.tested' ORDER BY id")]
    assert outcomes == ["delivered", "drop"]


# --- alerts in the API ------------------------------------------------------------------

def test_alerts_lists_open_and_recent_alerts_with_their_latest_words(api, resource, conn):
    rid, auth = resource
    other, _ = provision(api)
    raise_alert(conn, other, "someone else's alert")
    fixed, _ = raise_alert(conn, rid, "Drain papertrail has been failing for 15 minutes.")
    recover_alert(conn, rid, fixed, "Drain papertrail delivers again.")
    conn.execute("UPDATE alerts SET raised_at = now() - interval '1 hour' WHERE id = %s", (fixed,))
    still, _ = raise_alert(conn, rid, "Source acme/prod is paused.", condition="source_paused",
                           subject_name="acme/prod", detail="auth_failed")
    answer = api.get(f"/v1/resources/{rid}/alerts", headers=auth)
    assert answer.status_code == 200
    assert [a["id"] for a in answer.json["open"]] == [still]
    assert [a["id"] for a in answer.json["recent"]] == [still, fixed]
    opened = answer.json["open"][0]
    assert set(opened) == {"id", "condition", "subject_id", "subject_name", "detail", "raised_at", "recovered_at",
                           "message"}
    assert (opened["condition"], opened["subject_name"], opened["detail"], opened["recovered_at"],
            opened["message"]) == ("source_paused", "acme/prod", "auth_failed", None, "Source acme/prod is paused.")
    recovered = answer.json["recent"][1]
    assert recovered["recovered_at"] and recovered["message"] == "Drain papertrail delivers again."
    empty = api.get(f"/v1/resources/{other}/alerts", headers=auth)
    assert empty.status_code == 404  # another resource's token opens nothing here
