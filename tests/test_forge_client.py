"""The App logs API client against the Forge fake, over real HTTP."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import requests

from broker import forge
from broker.forge import Credentials, ForgeClient, Query
from tests.fakes.forge import ForgeFake
from tests.fakes.server import LocalServer

APP = "5f0f8a4e-1f5a-4c3e-9d7b-1a2b3c4d5e6f"
ENV = "0d1e2f30-4152-6374-8596-a7b8c9d0e1f2"
EMAIL = "bot@acme.test"
TOKEN = "ATATT3xFfGF0-test-token"
CREDS = Credentials(EMAIL, TOKEN)


class Clock:
    def __init__(self, start: float):
        self.now = start

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock(datetime(2026, 11, 21, 12, 0, tzinfo=timezone.utc).timestamp())


@pytest.fixture
def fake(clock):
    fake = ForgeFake(seed=3, page_size=100, clock=clock, retry_after=True)
    fake.add_app(APP, [ENV], EMAIL, TOKEN, records_per_minute=20)
    return fake


@pytest.fixture
def client(fake):
    with LocalServer(fake.wsgi()) as server, requests.Session() as session:
        yield ForgeClient(server.url, session, timeout=(2, 5))


def at(clock) -> datetime:
    return datetime.fromtimestamp(clock.now, timezone.utc)


def window(clock, minutes_back: float = 62, length: float = 60) -> Query:
    end = at(clock) - timedelta(minutes=minutes_back - length)
    return Query(APP, ENV, end - timedelta(minutes=length), end)


def fingerprint(record: dict) -> tuple:
    return (record["timeUnixNano"], record.get("spanId"), record["body"].get("stringValue"))


def test_it_follows_the_cursor_to_the_last_page_and_gets_every_record(client, fake, clock):
    query = window(clock)
    pages = list(client.pages(CREDS, query, now=at(clock)))
    assert len(pages) > 3
    assert all(isinstance(page, forge.Page) and page.unreadable == 0 and page.sample is None for page in pages)
    assert [page.cursor is None for page in pages] == [False] * (len(pages) - 1) + [True]
    got = [r for page in pages for r in page.records]
    expected = fake.records(APP, ENV, query.start, query.end, now=clock.now)
    assert len(got) == len(expected) > 100
    assert sorted(map(fingerprint, got)) == sorted(map(fingerprint, expected))
    # later pages carried the cursor, with the same query around it
    cursors = [dict(c.args).get("cursor") for c in fake.calls]
    assert cursors[0] is None and all(cursors[1:])


def test_it_builds_the_request_exactly_as_documented(client, fake, clock):
    end = at(clock).replace(microsecond=0) - timedelta(minutes=2, microseconds=-123456)
    query = Query(APP, ENV, end - timedelta(minutes=10), end, levels=("INFO", "ERROR"),
                  contexts=("ari:cloud:jira::site/1", "ari:cloud:confluence::site/2"))
    list(client.pages(CREDS, query, now=at(clock)))
    call = fake.calls[0]
    assert call.path == f"/v1/app/logs/{APP}"
    assert call.email == EMAIL
    assert [v for k, v in call.args if k == "level"] == ["INFO", "ERROR"]
    assert [v for k, v in call.args if k == "installationContext"] == [
        "ari:cloud:jira::site/1", "ari:cloud:confluence::site/2"]
    args = dict(call.args)
    assert args["environmentId"] == ENV
    assert args["endDate"] == forge.format_date(end)
    assert args["endDate"].endswith(".123Z") and len(args["endDate"]) == 24


def test_filters_reach_the_fake_and_narrow_the_records(client, fake, clock):
    query = window(clock)
    only_errors = Query(query.app_id, query.environment_id, query.start, query.end, levels=("ERROR",))
    got = [r for page in client.pages(CREDS, only_errors, now=at(clock)) for r in page.records]
    assert got and {r["severityText"] for r in got} == {"ERROR"}


def test_a_window_over_an_hour_or_older_than_14_days_is_refused_before_any_call(client, fake, clock):
    now = at(clock)
    too_long = Query(APP, ENV, now - timedelta(hours=2), now - timedelta(minutes=59, seconds=59))
    too_old = Query(APP, ENV, now - timedelta(days=14, seconds=1), now - timedelta(days=13, hours=23, minutes=30))
    backwards = Query(APP, ENV, now - timedelta(minutes=5), now - timedelta(minutes=10))
    for query, reason in ((too_long, "longer than one hour"), (too_old, "14 days"),
                          (backwards, "after its start")):
        with pytest.raises(forge.BadWindow, match=reason):
            list(client.pages(CREDS, query, now=now))
    assert fake.calls == []


@pytest.mark.parametrize("creds, app_id, env_id, error", [
    (Credentials(EMAIL, "wrong"), APP, ENV, forge.AuthError),
    (Credentials("someone@else.test", TOKEN), APP, ENV, forge.AuthError),
    (CREDS, "no-such-app", ENV, forge.NotFound),
    (CREDS, APP, "no-such-env", forge.NotFound),
])
def test_refusals_become_typed_errors(client, clock, creds, app_id, env_id, error):
    query = window(clock)
    with pytest.raises(error) as info:
        list(client.pages(creds, Query(app_id, env_id, query.start, query.end), now=at(clock)))
    assert TOKEN not in str(info.value) and "wrong" not in str(info.value)


def test_a_400_from_the_api_is_a_bad_window_with_its_detail(client, clock):
    # fetch_page does not pre-check: the API itself refuses a window 15 days old.
    stale_now = at(clock) - timedelta(days=15)
    old = Query(APP, ENV, stale_now - timedelta(minutes=30), stale_now)
    with pytest.raises(forge.BadWindow) as info:
        client.fetch_page(CREDS, old)
    assert info.value.status == 400
    assert str(info.value).startswith("HTTP 400")


def test_rate_limiting_is_carried_up_with_retry_after(client, fake, clock):
    fake.rate_limit = 3
    query = window(clock, minutes_back=10, length=1)
    for _ in range(3):
        client.fetch_page(CREDS, query)
    with pytest.raises(forge.RateLimited) as info:
        client.fetch_page(CREDS, query)
    assert info.value.retry_after is not None and 0 < info.value.retry_after <= 60
    clock.now += 61
    client.fetch_page(CREDS, Query(APP, ENV, query.start + timedelta(seconds=61),
                                   query.end + timedelta(seconds=61)))


def test_rate_limiting_without_retry_after_has_none(fake, clock):
    fake.retry_after = False
    fake.rate_limit = 1
    with LocalServer(fake.wsgi()) as server, requests.Session() as session:
        client = ForgeClient(server.url, session)
        query = window(clock, minutes_back=10, length=1)
        client.fetch_page(CREDS, query)
        with pytest.raises(forge.RateLimited) as info:
            client.fetch_page(CREDS, query)
    assert info.value.retry_after is None


@pytest.mark.parametrize("status, error", [(500, forge.ServerError), (503, forge.ServerError),
                                           (502, forge.ServerError)])
def test_server_errors_are_typed(client, fake, clock, status, error):
    fake.fail(status=status)
    with pytest.raises(error) as info:
        client.fetch_page(CREDS, window(clock))
    assert info.value.status == status


def test_a_malformed_page_is_typed(client, fake, clock):
    fake.fail(malformed=True)
    with pytest.raises(forge.MalformedPage):
        client.fetch_page(CREDS, window(clock))


def test_a_failure_mid_window_stops_the_pages(client, fake, clock):
    query = window(clock)
    pages = client.pages(CREDS, query, now=at(clock))
    next(pages)
    fake.fail(status=500)
    with pytest.raises(forge.ServerError):
        next(pages)


def test_network_failures_are_typed():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with requests.Session() as session:
        client = ForgeClient(f"http://127.0.0.1:{port}", session, timeout=(1, 1))
        now = datetime.now(timezone.utc)
        with pytest.raises(forge.NetworkError):
            client.fetch_page(CREDS, Query(APP, ENV, now - timedelta(minutes=5), now))


def test_a_slow_api_times_out_as_a_network_error(fake, clock):
    fake.latency = 1.5
    with LocalServer(fake.wsgi()) as server, requests.Session() as session:
        client = ForgeClient(server.url, session, timeout=(1, 0.5))
        with pytest.raises(forge.NetworkError, match="in time"):
            client.fetch_page(CREDS, window(clock))


def test_before_call_runs_once_per_http_call(client, fake, clock):
    calls = []
    pages = list(client.pages(CREDS, window(clock), now=at(clock), before_call=lambda: calls.append(1)))
    assert len(calls) == len(pages) == len(fake.calls)


def test_verify_makes_one_small_call(client, fake, clock):
    count = client.verify(CREDS, APP, ENV, now=at(clock))
    assert count >= 0
    assert len(fake.calls) == 1
    args = dict(fake.calls[0].args)
    start = datetime.fromisoformat(args["startDate"].replace("Z", "+00:00"))
    end = datetime.fromisoformat(args["endDate"].replace("Z", "+00:00"))
    assert end - start == timedelta(minutes=1)
    assert at(clock) - end == timedelta(minutes=2)


@pytest.mark.parametrize("value, expected", [
    ("7", 7.0), (" 30 ", 30.0), ("0", 0.0), ("900", 900.0), ("", None), (None, None), ("soon", None),
    ("-5", None), ("1.5", None), ("7 seconds", None), ("٣", None),
    ("Sat, 21 Nov 2026 12:00:10 GMT", 10.0),
    ("Sat, 21 Nov 2026 13:00:00 +0100", 0.0),    # the same moment as now, another zone
    ("Sat, 21 Nov 2026 11:59:00 GMT", 0.0),      # a date in the past: go now
    ("Sat, 21 Nov 2026 12:14:59 GMT", 899.0),
    ("Sat, 21 Nov 2026 12:00:10 -0000", 10.0),   # no zone given: UTC
    ("Sun, 32 Nov 2026 12:00:10 GMT", None),
])
def test_retry_after_is_read_as_seconds_or_a_date(value, expected):
    now = datetime(2026, 11, 21, 12, 0, tzinfo=timezone.utc).timestamp()
    assert forge.parse_retry_after(value, now) == expected


@pytest.mark.parametrize("value", ["901", "86400", "99999999999999999999999", "Sat, 21 Nov 2026 12:15:01 GMT",
                                   "Fri, 31 Dec 9999 23:59:59 GMT"])
def test_retry_after_is_capped_at_15_minutes_and_the_cap_is_logged(value, caplog):
    now = datetime(2026, 11, 21, 12, 0, tzinfo=timezone.utc).timestamp()
    with caplog.at_level("WARNING", logger="broker.forge"):
        assert forge.parse_retry_after(value, now) == forge.RETRY_AFTER_CAP_SECONDS == 900
    (logged,) = [r for r in caplog.records if r.name == "broker.forge"]
    assert logged.levelname == "WARNING" and "900" in logged.getMessage()


def test_a_capped_retry_after_reaches_the_rate_limited_error(clock):
    from flask import Flask

    app = Flask("capped")
    app.get("/v1/app/logs/<app_id>")(lambda app_id: ("slow down", 429, {"Retry-After": "604800"}))
    with LocalServer(app) as server, requests.Session() as session:
        client = ForgeClient(server.url, session, timeout=(2, 5))
        with pytest.raises(forge.RateLimited) as info:
            client.fetch_page(CREDS, window(clock))
    assert info.value.retry_after == 900


def test_credentials_never_show_the_token():
    assert TOKEN not in repr(CREDS)


def test_a_page_larger_than_the_bound_is_a_network_error_not_a_memory_spike(clock, monkeypatch):
    from flask import Flask

    monkeypatch.setattr(forge, "MAX_PAGE_BYTES", 1024)
    app = Flask("huge")
    app.get("/v1/app/logs/<app_id>")(lambda app_id: ('{"appLogs": [' + '{"body": {}},' * 500 + "{}]}", 200))
    with LocalServer(app) as server, requests.Session() as session:
        client = ForgeClient(server.url, session, timeout=(2, 5))
        with pytest.raises(forge.NetworkError, match="more than"):
            client.fetch_page(CREDS, window(clock))


@pytest.mark.parametrize("email", ["bjørn@acme.test", "用户@例子.测试", "δοκιμή@παράδειγμα.δοκιμή"])
def test_an_internationalised_email_goes_out_as_utf8_basic_credentials(clock, email):
    """RFC 6531 addresses are Atlassian account emails too. requests would encode Basic credentials
    as Latin-1: 'ø' became one byte Atlassian (and the fake) cannot read, and '用' raised before any
    call. The client sends UTF-8, as RFC 7617 §2.1 (charset="UTF-8"), curl and Node do."""
    fake = ForgeFake(seed=3, page_size=100, clock=clock)
    fake.add_app(APP, [ENV], email, TOKEN, records_per_minute=20)
    with LocalServer(fake.wsgi()) as server, requests.Session() as session:
        client = ForgeClient(server.url, session, timeout=(2, 5))
        pages = list(client.pages(Credentials(email, TOKEN), window(clock), now=at(clock)))
    assert sum(len(page.records) for page in pages) > 0
    assert [call.email for call in fake.calls] == [email] * len(pages)
    assert {call.status for call in fake.calls} == {200}
