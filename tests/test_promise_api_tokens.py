"""README promises (Security, HTTP interface, Configuration): after a rotation the previous
FORGEDRAIN_TOKEN reads, and only reads, for 2 hours; and ``SECRET_KEY`` signs the dashboard's
session cookies and CSRF tokens, so a new key ends every session and form the old one signed.

The 2 hours are simulated by moving the grace's end back in PostgreSQL; two apps on one database
with different ``SECRET_KEY``s are the deploy before and after the key changed.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta

import pytest

from broker import config
from tests.support.partner import heroku_headers, provision_body, user_scoped_token
from web import create_app

GRACE = timedelta(hours=2)
OLD_KEY = "old-secret-key-" + "a" * 32
NEW_KEY = "new-secret-key-" + "b" * 32


@pytest.fixture
def apps(env):
    """The web app under the old SECRET_KEY and under the new one, on the same database."""
    made = {name: create_app(config.load({**env, "SECRET_KEY": key}, testing=True))
            for name, key in (("old", OLD_KEY), ("new", NEW_KEY))}
    yield made
    for app in made.values():
        app.extensions["forgedrain"].db.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def provision(client) -> tuple[str, str]:
    body = provision_body()
    answer = client.post("/heroku/resources", data=json.dumps(body), headers=heroku_headers())
    assert answer.status_code == 200
    return body["uuid"], answer.get_json(force=True)["config"]["FORGEDRAIN_TOKEN"]


def has_passed(conn, rid: str, elapsed: timedelta) -> None:
    """As if ``elapsed`` had passed since the rotation: its grace's end moves back that much."""
    conn.execute("UPDATE resources SET api_token_previous_until = api_token_previous_until - %s WHERE id = %s",
                 (elapsed, rid))


def test_the_previous_token_reads_for_2_hours_and_no_longer(apps, conn):
    client = apps["old"].test_client()
    rid, old = provision(client)
    rotated = client.post(f"/v1/resources/{rid}/token", headers=bearer(old))
    assert rotated.status_code == 200
    new = rotated.json["token"]
    at = conn.execute("SELECT at FROM audit_log WHERE resource_id = %s AND action = 'resource.token_rotated'",
                      (rid,)).fetchone()["at"]
    until = datetime.fromisoformat(rotated.json["previous_token_valid_until"])
    assert until - at == GRACE  # both from the rotation's transaction clock
    stored = conn.execute("SELECT api_token_previous_until FROM resources WHERE id = %s", (rid,)).fetchone()
    assert stored["api_token_previous_until"] == until

    has_passed(conn, rid, GRACE - timedelta(minutes=1))
    assert client.get(f"/v1/resources/{rid}", headers=bearer(old)).status_code == 200  # a running app reads on
    change = client.post(f"/v1/resources/{rid}/drains", headers=bearer(old),
                         json={"kind": "logplex", "url": "https://logs.example.com/x"})
    assert change.status_code == 403 and change.json["error"] == "previous_token"

    has_passed(conn, rid, timedelta(minutes=1, seconds=1))  # 2 h and a second since the rotation
    expired = client.get(f"/v1/resources/{rid}", headers=bearer(old))
    assert expired.status_code == 401 and expired.json["error"] == "unauthorized"
    assert client.get(f"/v1/resources/{rid}", headers=bearer(new)).status_code == 200
    assert conn.execute("SELECT count(*) AS n FROM drains WHERE resource_id = %s AND kind <> 'heroku'",
                        (rid,)).fetchone()["n"] == 0


def sign_in(client, rid: str) -> str:
    stamp, token = user_scoped_token(rid, "u-1", "owner@acme.test")
    answer = client.post("/sso/login", data={"resource_id": rid, "user_scoped_resource_token": token,
                                              "timestamp": stamp, "app": "acme", "email": "owner@acme.test",
                                              "user_id": "u-1"})
    assert answer.status_code == 302
    page = client.get(f"/dashboard/{rid}")
    assert page.status_code == 200
    return re.search(r'name="csrf_token" value="([^"]+)"', page.get_data(as_text=True)).group(1)


def test_changing_the_secret_key_ends_every_dashboard_session_and_csrf_token_it_signed(apps, conn):
    before = apps["old"].test_client()
    rid, _ = provision(before)
    csrf = sign_in(before, rid)
    cookie = before.get_cookie("forgedrain_session").value

    after = apps["new"].test_client()  # the same database, deployed with a new SECRET_KEY
    after.set_cookie("forgedrain_session", cookie)  # the browser still holds the old session
    assert after.get(f"/dashboard/{rid}").status_code == 403
    drain = after.post(f"/dashboard/{rid}/drains", data={"kind": "logplex", "url": "https://logs.example.com/x",
                                                          "csrf_token": csrf})
    assert drain.status_code == 403
    assert conn.execute("SELECT count(*) AS n FROM drains WHERE kind <> 'heroku'").fetchone()["n"] == 0
    # A new sign-in under the new key works; the old cookie still opens the dashboard under the old key.
    assert sign_in(after, rid)
    assert before.get(f"/dashboard/{rid}").status_code == 200

def test_changing_the_secret_key_invalidates_every_token_and_session_it_signed(apps, conn):
    before = apps["old"].test_client()
    rid, first = provision(before)
    current = before.post(f"/v1/resources/{rid}/token", headers=bearer(first)).json["token"]  # first: in grace
    other_rid, other = provision(before)
    csrf = sign_in(before, rid)
    cookie = before.get_cookie("forgedrain_session").value
    rows = conn.execute("SELECT id, api_token_hash, api_token_previous_hash FROM resources ORDER BY id").fetchall()

    after = apps["new"].test_client()  # the same database, deployed with a new SECRET_KEY
    for token, resource in ((current, rid), (first, rid), (other, other_rid)):
        refused = after.get(f"/v1/resources/{resource}", headers=bearer(token))
        assert refused.status_code == 401 and refused.json["error"] == "unauthorized"
    after.set_cookie("forgedrain_session", cookie)  # the browser still holds the old session
    assert after.get(f"/dashboard/{rid}").status_code == 403
    drain = after.post(f"/dashboard/{rid}/drains", data={"kind": "logplex", "url": "https://logs.example.com/x",
                                                          "csrf_token": csrf})
    assert drain.status_code == 403
    assert conn.execute("SELECT id, api_token_hash, api_token_previous_hash FROM resources ORDER BY id"
                        ).fetchall() == rows  # nothing was changed: the key alone decides
    assert conn.execute("SELECT count(*) AS n FROM drains WHERE kind <> 'heroku'").fetchone()["n"] == 0
    # The same tokens and cookie still open everything under the key that made them.
    assert before.get(f"/v1/resources/{rid}", headers=bearer(current)).status_code == 200
    assert before.get(f"/v1/resources/{other_rid}", headers=bearer(other)).status_code == 200
    assert before.get(f"/dashboard/{rid}").status_code == 200
