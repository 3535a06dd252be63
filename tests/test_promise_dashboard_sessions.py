"""Dashboard sessions: they last 8 hours from sign-in (``PERMANENT_SESSION_LIFETIME``: "a working day;
SSO starts a new one any time"), however often they are used, and a session whose resource is
deprovisioned shows nothing of it any more and ends (README, "Deprovisioned means frozen and erased").

Time is never waited for: a session cookie as the browser would hold it some hours later is made by
signing the session the broker issued with an earlier timestamp and an earlier sign-in time (the
cookie is the broker's own signed, timestamped value; nothing of the broker is patched).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from email.utils import parsedate_to_datetime

import pytest
from itsdangerous import TimestampSigner, URLSafeTimedSerializer

from broker import config
from tests.fakes.forge import ForgeFake
from tests.fakes.server import LocalServer
from tests.support.partner import heroku_headers, provision_body, user_scoped_token
from web import create_app

COOKIE = "forgedrain_session"
LIFETIME = 8 * 3600
APP = "5b7d9f1a-3c5e-4a7b-8d0f-2a4c6e8a0b1c"
ENV = "prod"
EMAIL = "bot@acme.test"
TOKEN = "ATATT-sessions-promise-token"
OWNER = "owner@acme.test"


@pytest.fixture
def forge():
    fake = ForgeFake(seed=43, rate_limit=10_000)
    fake.add_app(APP, [ENV], EMAIL, TOKEN)
    with LocalServer(fake.wsgi()) as server:
        fake.url = server.url
        yield fake


@pytest.fixture
def app(env, forge):
    application = create_app(config.load({**env, "FORGE_API_URL": forge.url}, testing=True))
    yield application
    application.extensions["forgedrain"].db.close()


def provision(client) -> str:
    body = provision_body(options={"app_id": APP, "environment_id": ENV, "email": EMAIL, "api_token": TOKEN})
    assert client.post("/heroku/resources", data=json.dumps(body), headers=heroku_headers()).status_code == 200
    return body["uuid"]


def sign_in(client, rid: str):
    stamp, token = user_scoped_token(rid, "u-1", OWNER)
    answer = client.post("/sso/login", data={"resource_id": rid, "user_scoped_resource_token": token,
                                              "timestamp": stamp, "app": "acme", "email": OWNER, "user_id": "u-1"})
    assert answer.status_code == 302
    return answer


def issued_cookie(answer) -> tuple[str, str]:
    """The session cookie a response sets: (value, its Set-Cookie header)."""
    [header] = [h for h in answer.headers.getlist("Set-Cookie") if h.startswith(f"{COOKIE}=")]
    return header.split(";", 1)[0].split("=", 1)[1], header


def cookie_value(client) -> str:
    return client.get_cookie(COOKIE).value


def signed(app, data: dict, seconds_ago: int = 0) -> str:
    """``data`` as a session cookie the broker would have issued ``seconds_ago``."""
    current = app.session_interface.get_signing_serializer(app)

    class Earlier(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time()) - seconds_ago

    return URLSafeTimedSerializer(app.secret_key, salt=current.salt, serializer=current.serializer,
                                  signer=Earlier, signer_kwargs=current.signer_kwargs).dumps(data)


def session_of(app, value: str) -> dict:
    return app.session_interface.get_signing_serializer(app).loads(value)


def aged(app, value: str, seconds: int) -> str:
    """The same session as the browser holds it ``seconds`` later: issued, and signed in, that much earlier
    (a cookie re-issued by a later request keeps its sign-in time)."""
    data = session_of(app, value)
    data["signed_in_at"] = data.get("signed_in_at", int(time.time())) - seconds
    return signed(app, data, seconds)


def holding(app, value: str):
    """A browser holding this session cookie and nothing else."""
    client = app.test_client()
    client.set_cookie(COOKIE, value)
    return client


# --- 8 hours ----------------------------------------------------------------------------------------

def test_a_session_cookie_is_issued_for_8_hours(app):
    client = app.test_client()
    rid = provision(client)
    before = int(time.time())
    value, header = issued_cookie(sign_in(client, rid))
    after = time.time()
    expires = parsedate_to_datetime(re.search(r"Expires=([^;]+)", header).group(1)).timestamp()
    assert before + LIFETIME <= expires <= after + LIFETIME
    assert "HttpOnly" in header and "SameSite=Lax" in header


def test_a_session_left_for_8_hours_is_refused_and_one_just_younger_is_not(app):
    client = app.test_client()
    rid = provision(client)
    sign_in(client, rid)
    assert client.get(f"/dashboard/{rid}").status_code == 200
    value = cookie_value(client)
    younger = holding(app, aged(app, value, LIFETIME - 60)).get(f"/dashboard/{rid}")
    assert younger.status_code == 200 and OWNER in younger.get_data(as_text=True)
    for age in (LIFETIME + 1, LIFETIME + 3600, 30 * 86400):
        expired = holding(app, aged(app, value, age)).get(f"/dashboard/{rid}")
        assert expired.status_code == 403, age
        assert "you are not signed in to this add-on" in expired.get_data(as_text=True)
    # An expired session cannot change anything either (its CSRF token is in the same expired cookie).
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', client.get(f"/dashboard/{rid}").get_data(as_text=True))
    stale = holding(app, aged(app, cookie_value(client), LIFETIME + 1))
    source = stale.post(f"/dashboard/{rid}/sources", data={"csrf_token": csrf.group(1), "app_id": APP,
                                                           "environment_id": ENV, "email": EMAIL,
                                                           "api_token": TOKEN})
    assert source.status_code == 403
    # SSO starts a new one at any time.
    sign_in(stale, rid)
    assert stale.get(f"/dashboard/{rid}").status_code == 200


def test_a_session_in_use_still_ends_8_hours_after_sign_in(app):
    client = app.test_client()
    rid = provision(client)
    sign_in(client, rid)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', client.get(f"/dashboard/{rid}").get_data(as_text=True))
    # Used now and then through the day: the last visit 7 h 59 min after signing in re-issues the cookie...
    late = holding(app, aged(app, cookie_value(client), LIFETIME - 60))
    assert late.get(f"/dashboard/{rid}").status_code == 200
    reissued = cookie_value(late)
    assert session_of(app, reissued)["signed_in_at"] <= time.time() - (LIFETIME - 60)  # the sign-in time stays
    # ...and two minutes later the working day since sign-in is over, though that cookie is two minutes old.
    over = holding(app, aged(app, reissued, 120))
    refused = over.get(f"/dashboard/{rid}")
    assert refused.status_code == 403
    assert "you are not signed in to this add-on" in refused.get_data(as_text=True)
    assert over.get_cookie(COOKIE) is None  # the session was ended, not just refused
    form = holding(app, aged(app, reissued, 120)).post(f"/dashboard/{rid}/drains/{uuid.uuid4()}/enabled",
                                                       data={"csrf_token": csrf.group(1), "enabled": "true"})
    assert form.status_code == 403
    # SSO starts a new working day.
    sign_in(over, rid)
    assert over.get(f"/dashboard/{rid}").status_code == 200


def test_a_session_signed_in_before_sign_in_times_were_kept_has_ended(app):
    client = app.test_client()
    rid = provision(client)
    sign_in(client, rid)
    data = session_of(app, cookie_value(client))
    del data["signed_in_at"]
    older = holding(app, signed(app, data))  # as the broker issued it before sign-in times were kept
    assert older.get(f"/dashboard/{rid}").status_code == 403
    assert older.get_cookie(COOKIE) is None


# --- deprovisioned ------------------------------------------------------------------------------------

def test_a_session_whose_resource_is_deprovisioned_sees_nothing_of_it_and_ends(app, conn):
    client = app.test_client()
    rid = provision(client)
    sign_in(client, rid)
    page = client.get(f"/dashboard/{rid}")
    assert page.status_code == 200
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.get_data(as_text=True)).group(1)
    source_id = conn.execute("SELECT id FROM sources").fetchone()["id"]
    drain_id = conn.execute("SELECT id FROM drains WHERE kind = 'heroku'").fetchone()["id"]
    assert client.delete(f"/heroku/resources/{rid}", headers=heroku_headers()).status_code == 204

    gone = client.get(f"/dashboard/{rid}")
    assert gone.status_code == 404
    assert APP not in gone.get_data(as_text=True) and EMAIL not in gone.get_data(as_text=True)
    # The session ended with it: every page of the dashboard is refused to this browser from now on.
    for path in ("", f"/sources/{source_id}/edit", f"/drains/{drain_id}/edit"):
        assert client.get(f"/dashboard/{rid}{path}").status_code == 403, path
    assert client.post(f"/dashboard/{rid}/drains/{drain_id}/enabled",
                       data={"csrf_token": csrf, "enabled": "true"}).status_code == 403
    # Heroku's SSO will not open it again either.
    stamp, token = user_scoped_token(rid, "u-1", OWNER)
    assert client.post("/sso/login", data={"resource_id": rid, "user_scoped_resource_token": token,
                                            "timestamp": stamp, "app": "acme", "email": OWNER,
                                            "user_id": "u-1"}).status_code == 403



def test_the_edit_pages_of_a_deprovisioned_resource_are_gone_too_and_end_the_session(app, conn):
    client = app.test_client()
    rid = provision(client)
    sign_in(client, rid)
    assert client.get(f"/dashboard/{rid}").status_code == 200
    source_id = conn.execute("SELECT id FROM sources").fetchone()["id"]
    drain_id = conn.execute("SELECT id FROM drains WHERE kind = 'heroku'").fetchone()["id"]
    tabs = [holding(app, cookie_value(client)) for _ in range(2)]  # tabs left open, not reloaded since
    assert client.delete(f"/heroku/resources/{rid}", headers=heroku_headers()).status_code == 204
    for tab, path in zip(tabs, (f"/sources/{source_id}/edit", f"/drains/{drain_id}/edit")):
        answer = tab.get(f"/dashboard/{rid}{path}")
        assert answer.status_code == 404, (path, answer.status_code)
        assert APP not in answer.get_data(as_text=True) and EMAIL not in answer.get_data(as_text=True), path
        assert tab.get(f"/dashboard/{rid}").status_code == 403, path  # the session ended with it


def test_a_refused_form_of_a_deprovisioned_resource_shows_nothing_of_it_and_ends_the_session(app, conn):
    """A form refused for what was typed is rendered again over the page: not once the add-on is gone."""
    client = app.test_client()
    rid = provision(client)
    sign_in(client, rid)
    page = client.get(f"/dashboard/{rid}").get_data(as_text=True)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    source_id = conn.execute("SELECT id FROM sources").fetchone()["id"]
    tabs = [holding(app, cookie_value(client)) for _ in range(3)]
    assert client.delete(f"/heroku/resources/{rid}", headers=heroku_headers()).status_code == 204
    refused = {
        "add source": tabs[0].post(f"/dashboard/{rid}/sources", data={"csrf_token": csrf, "app_id": "not an id"}),
        "add drain": tabs[1].post(f"/dashboard/{rid}/drains", data={"csrf_token": csrf, "kind": "logplex",
                                                                    "url": "not a url"}),
        "backfill": tabs[2].post(f"/dashboard/{rid}/sources/{source_id}/backfill",
                                 data={"csrf_token": csrf, "from": "yesterday"}),
    }
    for (form, answer), tab in zip(refused.items(), tabs):
        text = answer.get_data(as_text=True)
        assert answer.status_code == 410 and "Nothing was changed" in text, (form, answer.status_code)
        assert APP not in text and EMAIL not in text, form
        assert tab.get(f"/dashboard/{rid}").status_code == 403, form  # the session ended with it
