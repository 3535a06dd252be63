"""The owner's dashboard through Flask's test client: CSRF, one resource per session, no secrets,
the chart's totals and markers, the audit log, and forms that keep what was typed (SPEC §7, §8)."""

from __future__ import annotations

import json
import re
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest

from broker import activity, config
from tests.fakes.forge import ForgeFake
from tests.fakes.receivers import logplex_receiver
from tests.fakes.server import LocalServer
from tests.support.partner import heroku_headers, provision_body, sso_token, user_scoped_token
from web import create_app

APP = "5f0f8a4e-1f5a-4c3e-9d7b-1a2b3c4d5e6f"
ENV = "0d1e2f30-4152-6374-8596-a7b8c9d0e1f2"
EMAIL = "bot@acme.test"
TOKEN = "ATATT3xFfGF0-secret-token-0123456789"
OWNER = "owner@acme.test"


@pytest.fixture
def forge_fake():
    fake = ForgeFake(seed=7)
    fake.add_app(APP, [ENV], EMAIL, TOKEN)
    with LocalServer(fake.wsgi()) as server:
        fake.url = server.url
        yield fake


@pytest.fixture
def client(env, forge_fake):
    env["FORGE_API_URL"] = forge_fake.url
    app = create_app(config.load(env, testing=True))
    yield app.test_client()
    app.extensions["forgedrain"].db.close()


@pytest.fixture
def resource(client):
    body = provision_body(name="acme-forgedrain", plan="basic")
    response = client.post("/heroku/resources", data=json.dumps(body), headers=heroku_headers())
    assert response.status_code == 200
    body["api_token"] = response.get_json(force=True)["config"]["FORGEDRAIN_TOKEN"]
    return body


def sign_in(client, rid: str):
    stamp, token = user_scoped_token(rid, "u-1", OWNER)
    response = client.post("/sso/login", data={"resource_id": rid, "user_scoped_resource_token": token,
                                                "timestamp": stamp,
                                                "app": "acme", "email": OWNER, "user_id": "u-1"})
    assert response.status_code == 302
    return response


def page(client, rid: str) -> str:
    response = client.get(f"/dashboard/{rid}")
    assert response.status_code == 200
    return response.get_data(as_text=True)


def csrf(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def source_form(**overrides) -> dict:
    form = {"app_id": APP, "environment_id": ENV, "email": EMAIL, "api_token": TOKEN, "levels": ["ERROR", "INFO"],
            "service_name": "acme-jira-app", "environment_label": "production"}
    form.update(overrides)
    return form


@pytest.fixture
def signed_in(client, resource):
    sign_in(client, resource["uuid"])
    return resource["uuid"], csrf(page(client, resource["uuid"]))


def count(conn, table: str, where: str = "true") -> int:
    return conn.execute(f"SELECT count(*) AS n FROM {table} WHERE {where}").fetchone()["n"]


def add_source(client, rid, token, **overrides):
    return client.post(f"/dashboard/{rid}/sources", data={**source_form(**overrides), "csrf_token": token})


def test_posts_without_the_right_csrf_token_get_400_and_change_nothing(client, signed_in, conn):
    rid, token = signed_in
    before = count(conn, "audit_log")
    for form in (source_form(), {**source_form(), "csrf_token": "x" * 43}, {**source_form(), "csrf_token": ""}):
        response = client.post(f"/dashboard/{rid}/sources", data=form)
        assert response.status_code == 400
        assert "Nothing was changed" in response.get_data(as_text=True)
    assert count(conn, "sources") == 0
    drain = client.post(f"/dashboard/{rid}/drains", data={"kind": "logplex", "url": "https://logs.example.com/x",
                                                          "csrf_token": token[:-1] + ("A" if token[-1] != "A" else "B")})
    assert drain.status_code == 400
    heroku_drain = conn.execute("SELECT id FROM drains WHERE kind = 'heroku'").fetchone()["id"]
    assert client.post(f"/dashboard/{rid}/drains/{heroku_drain}/enabled", data={"enabled": "false"}).status_code == 400
    assert conn.execute("SELECT enabled FROM drains WHERE id = %s", (heroku_drain,)).fetchone()["enabled"]
    assert count(conn, "drains", "kind <> 'heroku'") == 0
    assert count(conn, "audit_log") == before
    # the right token works
    assert add_source(client, rid, token).status_code == 303
    assert count(conn, "sources") == 1


def test_another_resource_is_refused_with_403(client, signed_in, conn):
    rid, token = signed_in
    other = provision_body(name="someone-else", plan="basic")
    client.post("/heroku/resources", data=json.dumps(other), headers=heroku_headers())
    oid = other["uuid"]
    other_drain = conn.execute("SELECT id FROM drains WHERE resource_id = %s", (oid,)).fetchone()["id"]
    assert client.get(f"/dashboard/{oid}").status_code == 403
    assert add_source(client, oid, token).status_code == 403
    for path in (f"/dashboard/{oid}/drains/{other_drain}/enabled", f"/dashboard/{oid}/drains/{other_drain}/token",
                 f"/dashboard/{oid}/drains/{other_drain}/edit"):
        response = client.post(path, data={"csrf_token": token, "enabled": "false"}) if not path.endswith("edit") \
            else client.get(path)
        assert response.status_code == 403, path
        assert "someone-else" not in response.get_data(as_text=True)
    # the other resource's drain through this resource's URLs: not found, not changed
    response = client.post(f"/dashboard/{rid}/drains/{other_drain}/enabled",
                           data={"csrf_token": token, "enabled": "false"})
    assert response.status_code == 404
    assert conn.execute("SELECT enabled FROM drains WHERE id = %s", (other_drain,)).fetchone()["enabled"]
    assert count(conn, "sources") == 0


def test_no_secret_appears_in_any_page(client, resource, signed_in, conn):
    rid, token = signed_in
    assert add_source(client, rid, token).status_code == 303
    assert client.post(f"/dashboard/{rid}/drains", data={
        "kind": "logplex", "url": "https://drainuser:dr41n-p4ss@logs.example.com/drain", "name": "papertrail",
        "csrf_token": token}).status_code == 303
    assert client.post(f"/dashboard/{rid}/drains", data={
        "kind": "otlp", "url": "https://otlp.example.com", "encoding": "json", "gzip": "on",
        "headers": "DD-API-KEY: k3y-v4lue-secret\nX-Other: 0th3r-s3cret", "csrf_token": token}).status_code == 303
    # a refused form is shown again without the secrets typed into it
    refused = client.post(f"/dashboard/{rid}/drains", data={
        "kind": "logplex", "url": "ftp://u:typed-pass@x.example.com", "csrf_token": token})
    assert refused.status_code == 422
    refused_source = add_source(client, rid, token, api_token="typed-t0ken-secret", app_id="bad app id")
    assert refused_source.status_code == 422
    source_id = conn.execute("SELECT id FROM sources").fetchone()["id"]
    drain_ids = [r["id"] for r in conn.execute("SELECT id FROM drains ORDER BY created_at")]
    pages = [page(client, rid), refused.get_data(as_text=True), refused_source.get_data(as_text=True),
             client.get(f"/dashboard/{rid}/sources/{source_id}/edit").get_data(as_text=True)]
    pages += [client.get(f"/dashboard/{rid}/drains/{d}/edit").get_data(as_text=True) for d in drain_ids]
    for html in pages:
        for secret in (resource["api_token"], TOKEN, "dr41n-p4ss", "k3y-v4lue-secret", "0th3r-s3cret",
                       "typed-pass", "typed-t0ken-secret", "t.5f1d6c0e", "logplex.io", resource["log_drain_token"]):
            assert secret not in html
    main = pages[0]
    assert "…6789" in main  # the API token's last four, enough to tell tokens apart
    assert "https://drainuser:****@logs.example.com/drain" in main
    assert "DD-API-KEY" in pages[-1] and "X-Other" in pages[-1]  # header names only


def test_the_chart_shows_totals_gaps_and_drops(client, signed_in, conn):
    rid, token = signed_in
    assert add_source(client, rid, token).status_code == 303
    assert client.post(f"/dashboard/{rid}/drains", data={"kind": "logplex", "url": "https://logs.example.com/d",
                                                         "csrf_token": token}).status_code == 303
    source_id = conn.execute("SELECT id FROM sources").fetchone()["id"]
    drain_id = conn.execute("SELECT id FROM drains WHERE kind = 'logplex'").fetchone()["id"]
    now = conn.execute("SELECT date_trunc('minute', now()) AS m").fetchone()["m"]
    stored = Counter({now - timedelta(minutes=m): 100 + m for m in range(0, 600, 10)})  # 60 minutes
    activity.add(conn, rid, source_id, "stored", stored)
    activity.add(conn, rid, source_id, "stored", Counter({now - timedelta(hours=30): 999}))  # too old to show
    activity.add(conn, rid, drain_id, "delivered", Counter({now - timedelta(minutes=m): 50 for m in range(30)}))
    activity.add(conn, rid, drain_id, "dropped", Counter({now - timedelta(minutes=90): 7, now - timedelta(minutes=5): 3}))
    conn.execute("INSERT INTO source_gaps (source_id, gap_from, gap_until, reason) VALUES (%s, %s, %s, %s)",
                 (source_id, now - timedelta(hours=5), now - timedelta(hours=4), "older than the App logs API's 14 days"))
    html = page(client, rid)
    total_stored = sum(stored.values())
    source_svg = re.search(r'<svg class="chart" id="chart-source-.*?</svg>', html, re.S).group(0)
    drain_svg = re.search(r'<svg class="chart" id="chart-drain-' + str(drain_id)[:8] + r'.*?</svg>', html, re.S).group(0)
    assert f"Total: {total_stored:,} stored · 1 gap" in source_svg
    assert f"{total_stored:,} records stored in the last 24 hours" in source_svg  # <desc>, for screen readers
    assert '<rect class="gap"' in source_svg and "could not be fetched" in source_svg
    assert "<title id=" in source_svg and 'role="img"' in source_svg and ">now<" in source_svg
    assert "Total: 1,500 delivered · 10 dropped" in drain_svg
    assert drain_svg.count('<path class="drop"') == 2
    assert "7 records dropped at" in drain_svg
    assert f'class="records-24h">{total_stored:,}<' in html
    assert "1 recorded gap" in html


def test_audit_entries_show_who_did_what(client, signed_in, conn):
    rid, token = signed_in
    assert add_source(client, rid, token).status_code == 303
    source_id = conn.execute("SELECT id FROM sources").fetchone()["id"]
    assert client.post(f"/dashboard/{rid}/sources/{source_id}/verify", data={"csrf_token": token}).status_code == 303
    assert client.post(f"/dashboard/{rid}/sources/{source_id}/backfill",
                       data={"csrf_token": token, "from": (datetime.now(timezone.utc) - timedelta(days=2))
                             .strftime("%Y-%m-%dT%H:%M")}).status_code == 303
    html = page(client, rid)
    assert "Backfill started" in html
    rows = re.findall(r'<td class="who">([^<]*)</td><td class="what"><span class="action">([^<]*)</span>', html)
    assert (OWNER, "source.backfill_started") in rows
    assert (OWNER, "source.verified") in rows
    assert (OWNER, "source.created") in rows
    assert ("sso:" + OWNER, "sso.login") in rows
    assert "added source " + APP in html
    actors = {r["actor"] for r in conn.execute("SELECT actor FROM audit_log WHERE action LIKE 'source.%'")}
    assert actors == {OWNER}


def test_changes_after_a_sign_in_that_signs_no_user_are_recorded_under_the_partner(client, resource, conn):
    """A resource_token signs no user: the email posted beside it is not who the audit log names."""
    rid = resource["uuid"]
    stamp, token = sso_token(rid)
    assert client.post("/sso/login", data={"resource_id": rid, "resource_token": token, "timestamp": stamp,
                                           "email": "ceo@victim.test", "user_id": "u-ceo"}).status_code == 302
    assert client.post(f"/dashboard/{rid}/drains", data={"kind": "logplex", "url": "https://logs.example.com/d",
                                                         "csrf_token": csrf(page(client, rid))}).status_code == 303
    actors = {r["actor"] for r in conn.execute("SELECT actor FROM audit_log WHERE action LIKE 'drain.%'")}
    assert actors == {"sso:forgedrain"}


def test_a_refused_source_form_keeps_what_was_typed_but_the_token(client, signed_in, conn, forge_fake):
    rid, token = signed_in
    response = add_source(client, rid, token, api_token="wrong-token-value-1234")
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert "Atlassian refused the email and API token" in html
    assert f'value="{APP}"' in html and f'value="{EMAIL}"' in html and 'value="acme-jira-app"' in html
    assert re.search(r'name="api_token" type="password" value=""', html)
    assert "wrong-token-value-1234" not in html
    assert count(conn, "sources") == 0
    bad = add_source(client, rid, token, email="not-an-email")
    assert bad.status_code == 422 and "email must be an email address" in bad.get_data(as_text=True)


def test_source_edit_keeps_the_token_when_left_empty_and_pauses_show_what_to_do(client, signed_in, conn):
    rid, token = signed_in
    assert add_source(client, rid, token).status_code == 303
    source_id = conn.execute("SELECT id FROM sources").fetchone()["id"]
    response = client.post(f"/dashboard/{rid}/sources/{source_id}", data={
        **source_form(api_token="", service_name="renamed-app"), "csrf_token": token})
    assert response.status_code == 303
    html = page(client, rid)
    assert "Service name changed" in html and "renamed-app" in html
    conn.execute("UPDATE sources SET state = 'paused', pause_reason = 'auth_failed', "
                 "last_error = 'HTTP 401: email or API token refused'")
    html = page(client, rid)
    assert "paused: credentials refused" in html
    assert "What to do: Create a new API token" in html


def test_drain_forms_test_rotate_disable_and_delete(client, signed_in, conn):
    rid, token = signed_in
    app, inbox = logplex_receiver()
    with LocalServer(app) as receiver:
        assert client.post(f"/dashboard/{rid}/drains", data={
            "kind": "logplex", "url": f"{receiver.url}/drain", "name": "local", "csrf_token": token}).status_code == 303
        drain = conn.execute("SELECT id, token FROM drains WHERE kind = 'logplex'").fetchone()
        base = f"/dashboard/{rid}/drains/{drain['id']}"
        assert client.post(f"{base}/test", data={"csrf_token": token}).status_code == 303
        assert len(inbox.requests) == 1 and inbox.requests[0]["token"] == drain["token"]
        assert "Test record delivered" in page(client, rid)
        inbox.fail(500)
        client.post(f"{base}/test", data={"csrf_token": token})
        assert "Test record not delivered (HTTP 500)" in page(client, rid)
    assert client.post(f"{base}/token", data={"csrf_token": token}).status_code == 303
    new_token = conn.execute("SELECT token FROM drains WHERE id = %s", (drain["id"],)).fetchone()["token"]
    assert new_token != drain["token"] and new_token in page(client, rid)
    assert client.post(f"{base}/enabled", data={"csrf_token": token, "enabled": "false"}).status_code == 303
    assert not conn.execute("SELECT enabled FROM drains WHERE id = %s", (drain["id"],)).fetchone()["enabled"]
    edit = client.post(base, data={"csrf_token": token, "name": "renamed", "url": "ftp://nope"})
    assert edit.status_code == 422 and "must start with https://" in edit.get_data(as_text=True)
    assert client.post(base, data={"csrf_token": token, "name": "renamed", "url": ""}).status_code == 303
    assert conn.execute("SELECT name FROM drains WHERE id = %s", (drain["id"],)).fetchone()["name"] == "renamed"
    assert client.post(f"{base}/delete", data={"csrf_token": token}).status_code == 303
    assert count(conn, "drains", "kind = 'logplex'") == 0
    heroku = conn.execute("SELECT id FROM drains WHERE kind = 'heroku'").fetchone()["id"]
    client.post(f"/dashboard/{rid}/drains/{heroku}/delete", data={"csrf_token": token})
    assert count(conn, "drains", "kind = 'heroku'") == 1
    assert "disable it instead" in page(client, rid)


def test_the_test_button_waits_while_another_call_of_the_resource_is_out(client, signed_in, conn, redis_url):
    from broker import ratelimit, redisconn

    rid, token = signed_in
    app, inbox = logplex_receiver()
    with LocalServer(app) as receiver:
        client.post(f"/dashboard/{rid}/drains", data={"kind": "logplex", "url": f"{receiver.url}/drain",
                                                       "csrf_token": token})
        drain_id = conn.execute("SELECT id FROM drains WHERE kind = 'logplex'").fetchone()["id"]
        assert ratelimit.OwnerCalls(redisconn.connect(redis_url)).take(rid, 60)[0] is not None
        refused = client.post(f"/dashboard/{rid}/drains/{drain_id}/test", data={"csrf_token": token})
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
        assert "still running" in refused.get_data(as_text=True)
        assert inbox.requests == []
    assert count(conn, "audit_log", "action = 'drain.tested'") == 0


def test_a_button_refused_for_want_of_redis_says_why_on_the_page(client, signed_in, conn, env):
    rid, token = signed_in
    client.post(f"/dashboard/{rid}/drains", data={"kind": "logplex", "url": "https://logs.example.com/drain",
                                                   "csrf_token": token})
    drain_id = conn.execute("SELECT id FROM drains WHERE kind = 'logplex'").fetchone()["id"]
    # The same deployment with its Redis gone (nothing listens on port 1): the browser keeps its session.
    app = create_app(config.load({**env, "REDIS_URL": "redis://127.0.0.1:1/0"}, testing=True))
    try:
        browser = app.test_client()
        browser.set_cookie("forgedrain_session", client.get_cookie("forgedrain_session").value)
        answer = browser.post(f"/dashboard/{rid}/drains/{drain_id}/test", data={"csrf_token": token})
        assert answer.status_code == 303 and answer.headers["Location"].endswith(f"#drain-{drain_id}")
        assert "cannot count this add-on&#39;s calls out right now" in page(browser, rid)
    finally:
        app.extensions["forgedrain"].db.close()
    assert count(conn, "audit_log", "action = 'drain.tested'") == 0


def test_a_refused_backfill_and_the_plan_limit_say_why(client, signed_in, conn):
    rid, token = signed_in
    assert add_source(client, rid, token).status_code == 303
    source_id = conn.execute("SELECT id FROM sources").fetchone()["id"]
    typed = (datetime.now(timezone.utc) - timedelta(days=20)).strftime("%Y-%m-%dT%H:%M")
    response = client.post(f"/dashboard/{rid}/sources/{source_id}/backfill", data={"csrf_token": token, "from": typed})
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert "more than 14 days ago" in html and f'value="{typed}"' in html
    assert conn.execute("SELECT backfill_from FROM sources").fetchone()["backfill_from"] is None
    conn.execute("UPDATE resources SET plan = 'test' WHERE id = %s", (rid,))
    second = add_source(client, rid, token, environment_id="staging-env")
    assert second.status_code == 422
    assert "plan test allows 1 source; delete one or change plan first" in second.get_data(as_text=True)
    assert count(conn, "sources") == 1


# --- issue 19: the owner's view tells the truth -------------------------------------------------

def verdict_of(html: str) -> str:
    found = re.search(r'<div class="verdict verdict-(\w+)">(.*?)</div>', html, re.S)
    return found.group(1) + ": " + re.sub(r"<[^>]+>|\s+", " ", found.group(2)).strip()


def card_of(html: str, anchor: str) -> str:
    return re.search(rf'<article [^>]*id="{anchor}">(.*?)</article>', html, re.S).group(1)


def test_the_verdict_comes_from_the_cards_and_names_each_thing_needing_a_look(client, signed_in, conn, monkeypatch):
    from tests.support.resolver import loopback_only

    loopback_only(monkeypatch)
    rid, token = signed_in
    assert add_source(client, rid, token).status_code == 303
    assert client.post(f"/dashboard/{rid}/drains", data={"kind": "logplex", "url": "https://logs.invalid.example/d",
                                                         "name": "archive", "csrf_token": token}).status_code == 303
    drain_id = conn.execute("SELECT id FROM drains WHERE kind = 'logplex'").fetchone()["id"]
    html = page(client, rid)
    assert "delivering" not in card_of(html, f"drain-{drain_id}")
    assert "no delivery yet" in card_of(html, f"drain-{drain_id}")
    # (the Heroku app's own log stream, provisioned with the add-on, has delivered nothing either)
    assert verdict_of(html).startswith("idle: Not yet delivering: 1 source polling, 2 drains with no delivery yet")

    # a failed test: the card (in view after the redirect) says so, and the verdict names and links it
    answer = client.post(f"/dashboard/{rid}/drains/{drain_id}/test", data={"csrf_token": token})
    assert answer.headers["Location"].endswith(f"#drain-{drain_id}")
    html = page(client, rid)
    card = card_of(html, f"drain-{drain_id}")
    assert 'role="alert">Test record not delivered: no such host name: logs.invalid.example' in card
    assert "test record not delivered</span>" in card and "gaierror" not in html
    assert f'<a href="#drain-{drain_id}">Drain archive</a>' in html
    assert verdict_of(html).startswith("warn: 1 thing needs a look:")

    # the delivery job's failures, as the worker records them: the state words and the verdict agree
    conn.execute("UPDATE drains SET consecutive_failures = 3, last_error = %s WHERE id = %s",
                 ("destination refused: cannot resolve 'logs.invalid.example' (gaierror)", drain_id))
    html = page(client, rid)
    card = card_of(html, f"drain-{drain_id}")
    assert "failing: the last 3 attempts failed" in card and "failures)" not in card
    assert "Deliveries are failing: no such host name" in card
    assert "Drain archive</a>: Deliveries are failing" in html

    # disabled: says so, no "retries" text, and it needs no look
    client.post(f"/dashboard/{rid}/drains/{drain_id}/enabled", data={"csrf_token": token, "enabled": "false"})
    html = page(client, rid)
    card = card_of(html, f"drain-{drain_id}")
    assert '<span class="pill pill-disabled">disabled</span>' in card
    assert "retries" not in card and "tries again" not in card and "This drain is disabled" in card
    assert 'role="status">Drain disabled' in card
    assert "1 drain disabled" in verdict_of(html)
    assert "disabled drain logplex" in html  # the audit log's word, not "edited … (enabled)"

    # one that delivered: "Yes"
    conn.execute("UPDATE drains SET enabled = true, consecutive_failures = 0, last_error = NULL, delivered = 5, "
                 "last_delivery_at = now() WHERE id = %s", (drain_id,))
    assert verdict_of(page(client, rid)) == "ok: Yes: 1 source polling, 1 drain delivering, 1 drain with no " \
                                           "delivery yet."


def test_a_refused_form_shows_every_error_at_once_in_words_with_focus_on_the_first(client, signed_in, conn):
    rid, token = signed_in
    empty = client.post(f"/dashboard/{rid}/sources", data={"csrf_token": token, "app_id": "", "email": ""})
    assert empty.status_code == 422
    html = empty.get_data(as_text=True)
    for words in ("Enter the Forge app id", "Enter the environment id", "Enter the Atlassian account email",
                  "Enter an Atlassian API token"):
        assert words in html
    assert "app_id is required" not in html
    assert re.search(r'<div class="error-summary" role="alert"[^>]*>\s*<p[^>]*><strong>The source was not added: '
                     r'4 things to fix', html)
    assert re.search(r'id="s-app_id" name="app_id"[^>]*autofocus', html, re.S)
    assert len(re.findall(r"\bautofocus\b", html)) == 1
    assert '<a href="#s-environment_id">Enter the environment id</a>' in html

    drain = client.post(f"/dashboard/{rid}/drains", data={"csrf_token": token, "kind": "logplex", "url": ""})
    assert drain.status_code == 422
    assert "Enter the drain&#39;s URL" in drain.get_data(as_text=True)
    assert "has no host" not in drain.get_data(as_text=True)
    assert count(conn, "drains", "kind = 'logplex'") == 0

    assert add_source(client, rid, token).status_code == 303
    source_id = conn.execute("SELECT id FROM sources").fetchone()["id"]
    old = (datetime.now(timezone.utc) - timedelta(days=20)).strftime("%Y-%m-%dT%H:%M")
    refused = client.post(f"/dashboard/{rid}/sources/{source_id}/backfill", data={"csrf_token": token, "from": old})
    assert "The start is more than 14 days ago" in refused.get_data(as_text=True)


def test_a_backfill_says_how_many_records_go_again_and_that_receivers_see_them_twice(client, signed_in, conn):
    rid, token = signed_in
    assert add_source(client, rid, token).status_code == 303
    source_id = conn.execute("SELECT id FROM sources").fetchone()["id"]
    conn.execute("UPDATE sources SET checkpoint = now() WHERE id = %s", (source_id,))
    now = conn.execute("SELECT date_trunc('minute', now()) AS m").fetchone()["m"]
    activity.add(conn, rid, source_id, "stored", Counter({now - timedelta(minutes=m): 100 for m in range(0, 300, 10)}))
    start = (now - timedelta(minutes=95)).strftime("%Y-%m-%dT%H:%M")  # ten of the minutes above are since then
    answer = client.post(f"/dashboard/{rid}/sources/{source_id}/backfill", data={"csrf_token": token, "from": start})
    assert answer.status_code == 303
    card = card_of(page(client, rid), f"source-{source_id}")
    expected_from = start.replace("T", " ") + " UTC"
    assert f"Backfill started from {expected_from}" in card
    assert "1,000 records stored since then will be sent to your drains again, and receivers will see them a " \
           "second time" in card


def test_the_add_forms_are_replaced_by_the_plan_limit_when_it_is_reached(client, signed_in, conn):
    rid, token = signed_in
    conn.execute("UPDATE resources SET plan = 'test' WHERE id = %s", (rid,))
    assert 'id="add-drain"' in page(client, rid) and "Add a drain" in page(client, rid)
    for n in range(2):
        assert client.post(f"/dashboard/{rid}/drains", data={"kind": "logplex", "url": "https://logs.example.com/d",
                                                             "csrf_token": token}).status_code == 303
    html = page(client, rid)
    assert "Add a drain" not in html and "allows 2 drains besides the app's own log stream" in html
    assert add_source(client, rid, token).status_code == 303
    html = page(client, rid)
    assert "Add a Forge source" not in html and "allows 1 Forge source:" in html


def test_browser_addresses_answer_pages_with_a_way_back_and_the_api_keeps_json(client, signed_in, conn):
    rid, token = signed_in
    missing = "00000000-0000-4000-8000-000000000000"
    for path in (f"/dashboard/{rid}/drains/{missing}/edit", f"/dashboard/{rid}/nothing-here", "/", "/favicon.ico"):
        answer = client.get(path)
        assert answer.status_code == 404, path
        assert answer.mimetype == "text/html", path
        assert f'href="/dashboard/{rid}"' in answer.get_data(as_text=True), path
    # a form's address opened or reloaded: back where the form is, never a 405 in JSON
    for path, where in ((f"/dashboard/{rid}/drains", f"/dashboard/{rid}#add-drain"),
                        (f"/dashboard/{rid}/sources", f"/dashboard/{rid}#add-source")):
        answer = client.get(path)
        assert answer.status_code == 303 and answer.headers["Location"] == where
    heroku = conn.execute("SELECT id FROM drains WHERE kind = 'heroku'").fetchone()["id"]
    answer = client.get(f"/dashboard/{rid}/drains/{heroku}/test")
    assert answer.status_code == 303 and answer.headers["Location"].endswith(f"/drains/{heroku}/edit")
    expired = client.post(f"/dashboard/{rid}/drains", data={"kind": "logplex", "url": "https://x.example.com"})
    assert expired.status_code == 400 and f'href="/dashboard/{rid}"' in expired.get_data(as_text=True)
    # the APIs' errors are unchanged
    api = client.get("/v1/nothing-here")
    assert api.status_code == 404 and api.get_json() == {"error": "not_found", "message": "not found"}
    assert client.get("/heroku/resources").mimetype == "application/json"


def test_signing_in_again_within_a_session_adds_no_audit_row(client, resource, conn):
    rid = resource["uuid"]
    sign_in(client, rid)
    sign_in(client, rid)
    assert count(conn, "audit_log", "action = 'sso.login'") == 1
    fresh = client.application.test_client()  # another browser: a session of its own
    sign_in(fresh, rid)
    assert count(conn, "audit_log", "action = 'sso.login'") == 2


# --- issue 16 item 1: rules in the drain forms ---------------------------------------------------

def test_rules_are_set_in_the_drain_forms_refused_in_words_and_shown_on_the_card(client, signed_in, conn):
    rid, token = signed_in
    assert add_source(client, rid, token).status_code == 303
    source_id = str(conn.execute("SELECT id FROM sources").fetchone()["id"])
    form = {"csrf_token": token, "kind": "logplex", "url": "https://logs.example.com/d", "name": "archive",
            "origins": ["forge"], "sources": [source_id], "min_severity": "WARN", "rule_levels": ["ERROR"],
            "services": "acme-*\n" + "x" * 101, "detectors": ["email", "card"],
            "patterns": "order_ref: ORD-[0-9]{6}\nbad: (a)\\1\nno colon here", "drop_attributes": "http.client_ip"}
    refused = client.post(f"/dashboard/{rid}/drains", data=form)
    assert refused.status_code == 422
    html = refused.get_data(as_text=True)
    assert "Choose a minimum severity or a set of levels, not both" in html
    assert "Services, line 2: must be 1 to 100 printable characters" in html
    assert "Line 3: write a name, a colon, then the pattern" in html
    assert "Your patterns, line 2: pattern &#39;bad&#39;: backreferences are not supported" in html
    assert "rules." not in re.sub(r"<(script|style).*?</\1>", "", html, flags=re.S)  # no paths from the inside
    assert 'value="order_ref: ORD-[0-9]{6}' not in html and "order_ref: ORD-[0-9]{6}" in html  # kept, in the textarea
    assert len(re.findall(r"\bautofocus\b", html)) == 1
    assert count(conn, "drains", "kind = 'logplex'") == 0

    form.update({"rule_levels": [], "services": "acme-*", "patterns": "order_ref: ORD-[0-9]{6}"})
    assert client.post(f"/dashboard/{rid}/drains", data=form).status_code == 303
    drain = conn.execute("SELECT id, rules FROM drains WHERE kind = 'logplex'").fetchone()
    assert drain["rules"] == {"origins": ["forge"], "sources": [source_id], "min_severity": "WARN",
                              "services": ["acme-*"],
                              "redact": {"detectors": ["email", "card"],
                                         "patterns": [{"name": "order_ref", "regex": "ORD-[0-9]{6}"}],
                                         "drop_attributes": ["http.client_ip"]}}
    conn.execute("UPDATE drains SET filtered = 1234, redacted = 56 WHERE id = %s", (drain["id"],))
    card = card_of(page(client, rid), f"drain-{drain['id']}")
    assert "Severity WARN and above" in card and "Redacts: email addresses, card numbers" in card
    assert "1,234 records filtered out" in card and "56 values redacted" in card

    # the edit form shows them as stored, and clearing them all leaves a drain that takes everything
    edit = client.get(f"/dashboard/{rid}/drains/{drain['id']}/edit").get_data(as_text=True)
    assert 'value="WARN" selected' in edit and "order_ref: ORD-[0-9]{6}</textarea>" in edit
    assert re.search(r'value="email" checked', edit)
    assert client.post(f"/dashboard/{rid}/drains/{drain['id']}", data={"csrf_token": token, "name": "archive"}
                       ).status_code == 303
    assert conn.execute("SELECT rules FROM drains WHERE id = %s", (drain["id"],)).fetchone()["rules"] == {}
    assert "Rules changed" in page(client, rid)
    # the heroku drain takes rules too
    heroku = conn.execute("SELECT id FROM drains WHERE kind = 'heroku'").fetchone()["id"]
    assert client.post(f"/dashboard/{rid}/drains/{heroku}", data={"csrf_token": token, "processes": "router web"}
                       ).status_code == 303
    assert conn.execute("SELECT rules FROM drains WHERE id = %s", (heroku,)).fetchone()["rules"] == {
        "processes": ["router", "web"]}


def test_an_open_alert_is_a_banner_at_the_top_until_it_is_recovered(client, signed_in, conn):
    from broker import alerts

    rid, token = signed_in
    assert add_source(client, rid, token).status_code == 303
    assert "open alert" not in page(client, rid)
    conn.execute("UPDATE sources SET state = 'paused', pause_reason = 'auth_failed', "
                 "last_error = 'HTTP 401: email or API token refused'")
    alerts.evaluate(conn, rid)
    raised = alerts.open_for(conn, rid)
    assert [a.condition for a in raised] == ["source_paused"]
    html = page(client, rid)
    banner = html[html.index('class="alerts-banner"'):html.index("</section>", html.index('class="alerts-banner"'))]
    assert 'role="alert"' in html[html.index('<section class="alerts-banner"'):][:80]
    assert "1 open alert" in banner and raised[0].message in banner.replace("&#39;", "'").replace("&#34;", '"')
    assert html.index('class="alerts-banner"') < html.index('id="overview-h"')
    # Recovered (the owner fixed it long enough ago): the banner goes.
    conn.execute("UPDATE sources SET state = 'active', pause_reason = NULL, last_error = NULL")
    conn.execute("UPDATE alerts SET raised_at = now() - interval '1 hour', clear_since = now() - interval '1 hour'")
    alerts.evaluate(conn, rid)
    assert alerts.open_for(conn, rid) == []
    assert 'class="alerts-banner"' not in page(client, rid)


def test_the_overview_shows_the_exact_command_to_send_logs_over_otlp_without_a_token(client, signed_in):
    rid, _ = signed_in
    html = page(client, rid)
    assert "heroku telemetry:add http://127.0.0.1:5000/ingest/otlp --signals logs --transport http" in html
    assert "X-Forgedrain-Ingest-Token" in html and "&lt;ingest token&gt;" in html
    assert "fdi_" not in html
