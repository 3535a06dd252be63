"""The Forge App logs fake refuses what Atlassian refuses and serves realistic, deterministic logs.

Everything goes over real HTTP (``LocalServer`` + ``requests``); time is an injected clock.
"""

from __future__ import annotations

import base64
import collections
import email.utils
import json
import math
import re
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson
import pytest
import requests

from tests.fakes.forge import AWKWARD_KINDS, NON_ASCII, SEVERITY_NUMBER, ForgeFake, format_date
from tests.fakes.server import LocalServer

T0 = 1_707_825_600.0  # 2024-02-13T12:00:00Z
NOW = datetime.fromtimestamp(T0, timezone.utc)
APP = "yibeb59-d217-58d3-a3a7-0a888b3bc5ef"
ENV, ENV2 = "0129990-850f-1a19-a013-12cdefe2fa19", "staging-4b1e"
SECOND_APP, SECOND_ENV = "second-app-of-the-same-user", "second-env"
OTHER_APP, OTHER_ENV = "app-of-someone-else", "other-env"
EMAIL, TOKEN = "bot@example.com", "api-token-1"
OTHER_EMAIL, OTHER_TOKEN = "other@example.com", "api-token-2"
ROUTE_HEADER = "X-Test-Fake"
HEX16, HEX32 = re.compile(r"[0-9a-f]{16}"), re.compile(r"[0-9a-f]{32}")


class Clock:
    def __init__(self, t: float = T0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class Harness:
    def __init__(self, fake: ForgeFake, url: str, clock: Clock, fake_id: str):
        self.fake, self.url, self.clock = fake, url, clock
        self.session = requests.Session()
        self.session.headers[ROUTE_HEADER] = fake_id

    def get(self, app_id: str = APP, auth=(EMAIL, TOKEN), headers=None, **params) -> requests.Response:
        params = {"environmentId": ENV, "startDate": format_date(NOW - timedelta(hours=1)),
                  "endDate": format_date(NOW), **params}
        params = {k: v for k, v in params.items() if v is not None}
        return self.session.get(f"{self.url}/v1/app/logs/{app_id}", params=params, auth=auth,
                                headers=headers, timeout=10)

    def all_pages(self, **params) -> list[dict]:
        pages, cursor = [], None
        while True:
            response = self.get(cursor=cursor, **params)
            assert response.status_code == 200, response.text
            page = response.json()
            pages.append(page)
            cursor = page.get("cursor")
            if cursor is None:
                assert "cursor" not in page  # the last page has no cursor key at all
                return pages


class Router:
    """One WSGI app in front of many fakes, picked by a request header.

    Stopping a ``LocalServer`` takes up to half a second (werkzeug's poll interval), so the
    module shares one server and gives every test its own fresh fake behind it.
    """

    def __init__(self):
        self.fakes: dict[str, object] = {}

    def __call__(self, environ, start_response):
        return self.fakes[environ[f"HTTP_{ROUTE_HEADER.upper().replace('-', '_')}"]](environ, start_response)


@pytest.fixture(scope="module")
def server():
    router = Router()
    with LocalServer(router) as local:
        local.router = router
        yield local


@pytest.fixture
def forge(server):
    """forge(**ForgeFake options) → a Harness for a fresh fake served over HTTP."""
    started: list[str] = []

    def start(seed: int = 7, clock: Clock | None = None, late_fraction: float = 0.05, **options) -> Harness:
        clock = clock or Clock()
        options.setdefault("rate_limit", 10_000)
        fake = ForgeFake(seed, clock=clock, **options)
        fake.add_app(APP, [ENV, ENV2], EMAIL, TOKEN, late_fraction=late_fraction)
        fake.add_app(SECOND_APP, [SECOND_ENV], EMAIL, "api-token-1b")
        fake.add_app(OTHER_APP, [OTHER_ENV], OTHER_EMAIL, OTHER_TOKEN)
        fake_id = uuid.uuid4().hex
        server.router.fakes[fake_id] = fake.wsgi()
        started.append(fake_id)
        return Harness(fake, server.url, clock, fake_id)

    yield start
    for fake_id in started:
        del server.router.fakes[fake_id]


def refused(response: requests.Response, status: int) -> bool:
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert isinstance(body["message"], str) and body["message"]
    return True


def canon(records: list[dict]) -> list[str]:
    return sorted(json.dumps(r, sort_keys=True) for r in records)


def attrs(record: dict) -> dict[str, str]:
    return {a["key"]: a["value"]["stringValue"] for a in record["attributes"]}


def test_it_refuses_missing_or_wrong_credentials(forge):
    h = forge()
    assert h.get().status_code == 200
    for auth in (None, (EMAIL, "wrong"), ("nobody@example.com", TOKEN), (OTHER_EMAIL, TOKEN), ("", TOKEN)):
        assert refused(h.get(auth=auth), 401)
    assert refused(h.get(auth=None, headers={"Authorization": f"Bearer {TOKEN}"}), 401)
    assert refused(h.get(auth=None, headers={"Authorization": "Basic not-base64!"}), 401)
    # Auth comes before existence: strangers can't probe which app ids exist.
    assert refused(h.get(app_id="no-such-app", auth=None), 401)
    assert refused(h.get(app_id="no-such-app", auth=(EMAIL, "wrong")), 401)


def test_it_answers_404_for_unknown_apps_and_environments(forge):
    h = forge()
    assert h.get(environmentId=ENV2).status_code == 200
    assert h.get(app_id=SECOND_APP, environmentId=SECOND_ENV).status_code == 200  # any token of the user
    assert refused(h.get(app_id="no-such-app"), 404)
    assert refused(h.get(app_id=OTHER_APP, environmentId=OTHER_ENV), 404)  # exists, not this user's
    assert refused(h.get(environmentId="no-such-env"), 404)
    assert refused(h.get(environmentId=OTHER_ENV), 404)  # an environment of another app
    assert refused(h.session.post(f"{h.url}/v1/app/logs/{APP}", auth=(EMAIL, TOKEN)), 405)


def test_it_requires_environment_and_dates_exactly_once(forge):
    h = forge()
    for name in ("environmentId", "startDate", "endDate"):
        assert refused(h.get(**{name: None}), 400)
        assert refused(h.get(**{name: ""}), 400)
    start, end = format_date(NOW - timedelta(minutes=5)), format_date(NOW)
    assert refused(h.get(startDate=[start, start], endDate=end), 400)
    assert refused(h.get(environmentId=[ENV, ENV]), 400)
    assert h.get(startDate=start, endDate=end).status_code == 200


@pytest.mark.parametrize("bad", [
    "2024-02-13T11:00:00Z",            # no milliseconds
    "2024-02-13T11:00:00.00Z",         # 2 fractional digits
    "2024-02-13T11:00:00.0000Z",       # 4 fractional digits
    "2024-02-13T11:00:00.000000Z",     # microseconds
    "2024-02-13T11:00:00.000+00:00",   # offset instead of Z
    "2024-02-13T11:00:00.000",         # no zone
    "2024-02-13T11:00:00.000z",        # lower-case z
    "2024-02-13 11:00:00.000Z",        # space separator
    "2024-2-13T11:00:00.000Z",         # unpadded month
    "2024-02-30T11:00:00.000Z",        # no such day
    "2024-02-13T24:00:00.000Z",        # no such hour
    "1707822000000",                   # epoch millis
    "2024-02-13T11:00:00.000Z ",       # trailing space
    "２０２４-02-13T11:00:00.000Z",     # non-ASCII digits
])
def test_it_refuses_badly_formatted_dates(forge, bad):
    h = forge()
    good_start, good_end = "2024-02-13T11:00:00.000Z", "2024-02-13T11:30:00.000Z"
    assert h.get(startDate=good_start, endDate=good_end).status_code == 200
    assert refused(h.get(startDate=bad, endDate=good_end), 400)
    assert refused(h.get(startDate=good_start, endDate=bad.replace("11:00", "11:30")), 400)


def test_it_refuses_an_end_not_after_the_start(forge):
    h = forge()
    start = NOW - timedelta(minutes=30)
    one_ms = timedelta(milliseconds=1)
    assert h.get(startDate=format_date(start), endDate=format_date(start + one_ms)).status_code == 200
    assert refused(h.get(startDate=format_date(start), endDate=format_date(start)), 400)
    assert refused(h.get(startDate=format_date(start), endDate=format_date(start - timedelta(milliseconds=1))), 400)


def test_it_limits_the_window_to_one_hour(forge):
    h = forge()
    end = NOW - timedelta(minutes=1)
    assert h.get(startDate=format_date(end - timedelta(hours=1)), endDate=format_date(end)).status_code == 200
    too_long = end - timedelta(hours=1, milliseconds=1)
    assert refused(h.get(startDate=format_date(too_long), endDate=format_date(end)), 400)


def test_it_accepts_only_the_last_14_days_and_not_the_future(forge):
    h = forge()
    oldest = NOW - timedelta(days=14)
    assert h.get(startDate=format_date(oldest), endDate=format_date(oldest + timedelta(hours=1))).status_code == 200
    too_old = oldest - timedelta(seconds=1)
    assert refused(h.get(startDate=format_date(too_old), endDate=format_date(too_old + timedelta(minutes=30))), 400)
    assert refused(h.get(startDate=format_date(NOW), endDate=format_date(NOW + timedelta(milliseconds=1))), 400)
    h.clock.advance(1)  # a second later the same window is fine again...
    assert h.get(startDate=format_date(NOW), endDate=format_date(NOW + timedelta(milliseconds=1))).status_code == 200
    # ...and the oldest one has dropped out.
    assert refused(h.get(startDate=format_date(oldest), endDate=format_date(oldest + timedelta(hours=1))), 400)


@pytest.mark.parametrize("bad", ["info", "Error", "WARNING", "CRITICAL", "", "INFO,ERROR", " INFO"])
def test_it_refuses_unknown_levels(forge, bad):
    h = forge()
    assert h.get(level=["TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL"]).status_code == 200
    assert refused(h.get(level=["INFO", bad]), 400)


def test_it_allows_at_most_50_installation_contexts(forge):
    h = forge()
    contexts = [f"ari:cloud:jira::site/{i:08d}-0000-4000-8000-000000000000" for i in range(51)]
    assert h.get(installationContext=contexts[:50]).status_code == 200
    assert refused(h.get(installationContext=contexts), 400)
    assert refused(h.get(installationContext=[contexts[0], ""]), 400)


def test_it_refuses_a_cursor_reused_with_another_query(forge):
    h = forge(page_size=5)
    site = h.fake.installation_contexts(APP)[0]
    query = {"startDate": format_date(NOW - timedelta(minutes=50)), "endDate": format_date(NOW - timedelta(minutes=10)),
             "level": ["INFO", "ERROR"]}
    cursor = h.get(**query).json()["cursor"]
    assert h.get(cursor=cursor, **query).status_code == 200
    assert h.get(cursor=cursor, **{**query, "level": ["ERROR", "INFO"]}).status_code == 200  # same set
    one_ms = timedelta(milliseconds=1)
    for change in (
        {"environmentId": ENV2},
        {"startDate": format_date(NOW - timedelta(minutes=50) + one_ms)},
        {"endDate": format_date(NOW - timedelta(minutes=10) - one_ms)},
        {"level": ["INFO"]},
        {"level": None},
        {"installationContext": [site]},
        {"message": "page"},
    ):
        assert refused(h.get(cursor=cursor, **{**query, **change}), 400), change
    assert refused(h.get(app_id=SECOND_APP, environmentId=SECOND_ENV, cursor=cursor, **query), 400)


def test_it_refuses_tampered_cursors(forge):
    h = forge(page_size=5)
    cursor = h.get().json()["cursor"]
    assert "+" in cursor and "/" in cursor and cursor.endswith("=")
    raw = base64.b64decode(cursor)
    flipped = base64.b64encode(raw[:5] + bytes([raw[5] ^ 1]) + raw[6:]).decode()
    payload = raw[16:]
    bigger = payload.replace(b'"o":5', b'"o":0')
    assert bigger != payload
    other = forge(page_size=5).get().json()["cursor"]  # same seed, another server
    for bad in (
        flipped,
        base64.b64encode(raw[:16] + bigger).decode(),   # edited offset, old signature
        base64.b64encode(payload).decode(),             # unsigned
        cursor[:-8],                                    # truncated
        cursor.replace("+", " "),                       # what an unencoded URL turns it into
        cursor + "AAAA",
        other,
        "someString",
        "",
    ):
        assert refused(h.get(cursor=bad), 400), bad
    assert h.get(cursor=cursor).status_code == 200


def test_it_rate_limits_per_app_and_recovers(forge):
    h = forge(rate_limit=5, rate_period=60.0)
    for _ in range(10):  # unauthenticated calls don't eat the app's budget
        assert h.get(auth=None).status_code == 401
    assert [h.get().status_code for _ in range(4)] == [200] * 4
    assert refused(h.get(level="nope"), 400)  # refused calls count
    assert refused(h.get(), 429)
    assert h.get(app_id=OTHER_APP, environmentId=OTHER_ENV, auth=(OTHER_EMAIL, OTHER_TOKEN)).status_code == 200
    assert "Retry-After" not in h.get().headers
    h.clock.advance(30)
    for _ in range(10):  # 429s don't count: waiting as told always works
        assert refused(h.get(), 429)
    h.clock.advance(29.5)
    assert refused(h.get(), 429)
    h.clock.advance(0.5)  # 60 s after the first five
    assert [h.get().status_code for _ in range(5)] == [200] * 5
    assert refused(h.get(), 429)


def test_it_sends_retry_after_only_when_configured(forge):
    plain = forge(rate_limit=1)
    assert plain.get().status_code == 200
    assert "Retry-After" not in plain.get().headers

    h = forge(rate_limit=2, retry_after=True)
    assert h.get().status_code == 200
    h.clock.advance(10)
    assert h.get().status_code == 200
    h.clock.advance(10.5)
    response = h.get()
    assert refused(response, 429)
    assert response.headers["Retry-After"] == "40"  # ceil(60 - 20.5): the first call leaves the window
    h.clock.advance(39)
    assert h.get().headers["Retry-After"] == "1"
    h.clock.advance(1)
    assert h.get().status_code == 200
    assert h.get().headers["Retry-After"] == "10"


def test_it_pages_to_exactly_the_expected_records_from_one_snapshot(forge):
    h = forge(page_size=37, late_fraction=0.3)
    start, end = NOW - timedelta(hours=1), NOW
    expected = h.fake.records(APP, ENV, start, end, now=T0)
    pages, cursor = [], None
    while True:
        page = h.get(startDate=format_date(start), endDate=format_date(end), cursor=cursor).json()
        pages.append(page)
        h.clock.advance(60)  # late records land meanwhile, but paging serves the first snapshot
        if "cursor" not in page:
            break
        cursor = page["cursor"]
    got = [r for p in pages for r in p["appLogs"]]
    assert len(expected) > 37 * 10
    assert [len(p["appLogs"]) for p in pages[:-1]] == [37] * (len(pages) - 1)
    assert 0 < len(pages[-1]["appLogs"]) <= 37
    assert canon(got) == canon(expected)
    assert len({(r["timeUnixNano"], r["spanId"]) for r in got}) == len(got)
    later = h.fake.records(APP, ENV, start, end)
    assert len(later) > len(expected) and canon(got) != canon(later)
    # A fresh query now sees the late arrivals.
    fresh = [r for p in h.all_pages(startDate=format_date(start), endDate=format_date(end)) for r in p["appLogs"]]
    assert canon(fresh) == canon(h.fake.records(APP, ENV, start, end))


def test_it_ends_with_a_cursorless_page_even_when_empty(forge):
    h = forge(page_size=5)
    page = h.get(message="no record says this").json()
    assert page == {"appLogs": []}


def test_it_includes_the_start_and_excludes_the_end_of_the_window(forge):
    h = forge()
    record = h.fake.records(APP, ENV, NOW - timedelta(minutes=30), NOW - timedelta(minutes=20))[0]
    at = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(milliseconds=int(record["timeUnixNano"]) // 1_000_000)
    before = [r for p in h.all_pages(startDate=format_date(at - timedelta(minutes=1)), endDate=format_date(at))
              for r in p["appLogs"]]
    after = [r for p in h.all_pages(startDate=format_date(at), endDate=format_date(at + timedelta(minutes=1)))
             for r in p["appLogs"]]
    assert before and record not in before
    assert record in after


def test_it_returns_records_out_of_time_order(forge):
    h = forge()
    times = [int(r["timeUnixNano"]) for r in h.get().json()["appLogs"]]
    assert len(times) == 100
    assert times != sorted(times) and times != sorted(times, reverse=True)


def test_it_is_deterministic_per_seed(forge):
    a, b, c = forge(seed=7), forge(seed=7), forge(seed=8)
    page_a, page_b, page_c = (h.get().json()["appLogs"] for h in (a, b, c))
    assert page_a == page_b and len(page_a) == 100
    assert canon(page_a) != canon(page_c)
    start, end = NOW - timedelta(hours=1), NOW
    assert a.fake.records(APP, ENV, start, end) == b.fake.records(APP, ENV, start, end)

    def spans(h: Harness, env: str) -> set[str]:
        return {r["spanId"] for r in h.fake.records(APP, env, start, end)}
    assert len(spans(a, ENV)) > 500
    assert not spans(a, ENV) & spans(c, ENV)   # another seed: other records, not just another order
    assert not spans(a, ENV) & spans(a, ENV2)  # another environment: other records too


def test_it_honours_repeated_level_context_and_message_filters(forge):
    h = forge()
    start, end = NOW - timedelta(hours=1), NOW
    everything = h.fake.records(APP, ENV, start, end)

    levels = ["INFO", "ERROR"]
    got = [r for p in h.all_pages(level=levels) for r in p["appLogs"]]
    assert {r["severityText"] for r in got} == set(levels)
    assert canon(got) == canon(h.fake.records(APP, ENV, start, end, levels=levels))
    assert canon(got) == canon([r for r in everything if r["severityText"] in levels])

    sites = h.fake.installation_contexts(APP)[:2]
    got = [r for p in h.all_pages(installationContext=sites) for r in p["appLogs"]]
    assert {attrs(r).get("installationContext") for r in got} == set(sites)
    assert canon(got) == canon([r for r in everything if attrs(r).get("installationContext") in sites])

    got = [r for p in h.all_pages(message="Updated page", level="INFO") for r in p["appLogs"]]
    assert got and all("Updated page" in r["body"]["stringValue"] and r["severityText"] == "INFO" for r in got)
    assert len(got) < len(everything)


def test_it_hides_late_records_until_their_delay(forge):
    h = forge(late_fraction=0.5)
    start, end = NOW - timedelta(minutes=15), NOW - timedelta(minutes=5)
    window = {"startDate": format_date(start), "endDate": format_date(end)}
    early = h.fake.records(APP, ENV, start, end, now=T0)
    final = h.fake.records(APP, ENV, start, end, now=T0 + 900)  # past every delay (≤ 600 s)
    late = {json.dumps(r, sort_keys=True) for r in final} - {json.dumps(r, sort_keys=True) for r in early}
    assert late and set(canon(early)) < set(canon(final))
    assert canon(final) == canon(h.fake.records(APP, ENV, start, end, now=T0 + 10**6))

    seen_early = {json.dumps(r, sort_keys=True) for p in h.all_pages(**window) for r in p["appLogs"]}
    assert seen_early == set(canon(early)) and not seen_early & late
    h.clock.advance(900)
    seen_final = {json.dumps(r, sort_keys=True) for p in h.all_pages(**window) for r in p["appLogs"]}
    assert late <= seen_final and seen_final == set(canon(final))


def test_it_generates_realistic_and_awkward_records(forge):
    h = forge()
    records = [r for hours in range(3)
               for r in h.fake.records(APP, ENV, NOW - timedelta(hours=hours + 1), NOW - timedelta(hours=hours),
                                       now=T0 + 3600)]
    assert len(records) > 1000
    bodies = [r["body"]["stringValue"] for r in records]
    attributes = [attrs(r) for r in records]
    for r, a in zip(records, attributes):
        assert str(int(r["timeUnixNano"])) == r["timeUnixNano"]
        assert r["severityNumber"] == SEVERITY_NUMBER[r["severityText"]]
        assert HEX16.fullmatch(r["spanId"]) and (HEX32.fullmatch(r["traceId"]) or HEX16.fullmatch(r["traceId"]))
        assert all(set(x) == {"key", "value"} and set(x["value"]) == {"stringValue"} for x in r["attributes"])
        assert a["appId"] == APP and a["environmentId"] == ENV
        assert {"invocationId", "appVersion", "functionKey", "moduleType"} <= set(a)
        if "installationContext" in a:
            assert re.fullmatch(r"ari:cloud:(jira|confluence)::site/[0-9a-f-]{36}", a["installationContext"])
    assert {r["severityNumber"] for r in records if r["severityText"] == "INFO"} == {30}
    assert {r["severityText"] for r in records} == set(SEVERITY_NUMBER)
    assert any("\n" in b and "    at " in b for b in bodies)            # JS stack trace
    assert any("\r\n" in b and "Traceback" in b for b in bodies)       # Python, CRLF
    assert any(NON_ASCII in b for b in bodies)
    assert any("" == b for b in bodies)
    assert any("\x1b[" in b for b in bodies)
    assert any(len(b) > 8000 for b in bodies)
    assert any("installationContext" not in a for a in attributes)
    assert any("arguments" not in a for a in attributes)
    assert all(json.loads(a["arguments"]) is not None for a in attributes if "arguments" in a)
    assert any(len(r["traceId"]) == 16 for r in records)
    assert max(collections.Counter(a["invocationId"] for a in attributes).values()) >= 3
    assert 2 <= len({a["installationContext"] for a in attributes if "installationContext" in a}) <= 10
    # Non-ASCII survives the wire in both directions (the message filter and the body).
    got = [r for p in h.all_pages(message="Ünïcødé ✓ 日本語") for r in p["appLogs"]]
    assert got and all(NON_ASCII in r["body"]["stringValue"] for r in got)


def test_it_injects_failures_and_malformed_bodies(forge):
    h = forge()
    h.fake.fail(503, times=2)
    assert refused(h.get(auth=None), 401)  # refused before the backend: the failure is not used up
    assert [h.get().status_code for _ in range(3)] == [503, 503, 200]
    h.fake.fail(malformed=True)
    response = h.get()
    assert response.status_code == 200
    with pytest.raises(ValueError):
        response.json()
    assert "appLogs" in h.get().json()
    h.fake.fail(500)
    h.fake.fail(502)
    assert [h.get().status_code for _ in range(3)] == [500, 502, 200]


def test_it_records_every_call(forge):
    h = forge()
    h.get(level=["INFO", "ERROR"])
    h.clock.advance(5)
    h.get(auth=None)
    first, second = h.fake.calls
    assert (first.method, first.path, first.email, first.status, first.time) == (
        "GET", f"/v1/app/logs/{APP}", EMAIL, 200, T0)
    assert first.args == [("environmentId", ENV), ("startDate", format_date(NOW - timedelta(hours=1))),
                          ("endDate", format_date(NOW)), ("level", "INFO"), ("level", "ERROR")]
    assert (second.email, second.status, second.time) == (None, 401, T0 + 5)


def test_it_sleeps_its_latency_on_every_call(forge):
    h = forge(latency=0.1)
    started = time.monotonic()
    assert h.get(auth=None).status_code == 401
    assert h.get().status_code == 200
    assert time.monotonic() - started >= 0.2


class SlowClock(Clock):
    """Takes a while to answer and notes whether two threads ever asked at once."""

    def __init__(self):
        super().__init__()
        self.inside = 0
        self.most_inside = 0
        self.guard = threading.Lock()

    def __call__(self) -> float:
        with self.guard:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
        time.sleep(0.002)
        with self.guard:
            self.inside -= 1
        return self.t


def test_it_serves_concurrent_calls_one_at_a_time(forge):
    clock = SlowClock()
    h = forge(rate_limit=30, clock=clock)
    h.fake.fail(503, times=10)
    url = f"{h.url}/v1/app/logs/{APP}"
    params = {"environmentId": ENV, "startDate": format_date(NOW - timedelta(minutes=5)), "endDate": format_date(NOW)}
    headers = dict(h.session.headers)
    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(
            lambda _: requests.get(url, params=params, auth=(EMAIL, TOKEN), headers=headers, timeout=10).status_code,
            range(60)))
    assert collections.Counter(statuses) == {503: 10, 200: 20, 429: 30}
    assert len(h.fake.calls) == 60
    assert clock.most_inside == 1  # every read of the clock (and of the state) happened under the fake's lock


def test_it_runs_as_a_demo_server():
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.forge", "--port", "0", "--app-id", APP, "--environment", ENV,
         "--email", EMAIL, "--api-token", TOKEN, "--records-per-minute", "50"],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent)
    try:
        url = process.stdout.readline().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url)
        end = datetime.now(timezone.utc) - timedelta(minutes=1)
        response = requests.get(f"{url}/v1/app/logs/{APP}", auth=(EMAIL, TOKEN), timeout=10, params={
            "environmentId": ENV, "startDate": format_date(end - timedelta(minutes=5)), "endDate": format_date(end)})
        assert response.status_code == 200 and len(response.json()["appLogs"]) > 50
    finally:
        process.terminate()
        process.wait(timeout=10)


# ------------------------------------------------------------------ switches


def ms_of(record: dict) -> int:
    return int(record["timeUnixNano"]) // 1_000_000


def served(pages: list[dict]) -> list[dict]:
    return [r for p in pages for r in p["appLogs"]]


def test_it_keeps_its_defaults_for_every_switch():
    fake = ForgeFake()
    assert (fake.page_size, fake.order, fake.cursor_ttl, fake.stale_cursor_status, fake.empty_pages,
            fake.retry_after, fake.prompt_delay_seconds) == (100, "shuffled", None, 400, 0, False, 30.0)
    for bad in ({"order": "random"}, {"cursor_ttl": -1}, {"stale_cursor_status": 200}, {"empty_pages": 1},
                {"empty_pages": -1}, {"retry_after": "http-date"}, {"prompt_delay_seconds": -1}):
        with pytest.raises(ValueError):
            ForgeFake(**bad)
    with pytest.raises(ValueError):
        fake.add_app(APP, [ENV], EMAIL, TOKEN, awkward_fraction=1.5)


@pytest.mark.parametrize("order", ["shuffled", "oldest", "newest"])
def test_it_orders_records_as_switched_and_records_follows(forge, order):
    h = forge(order=order, page_size=23)
    start, end = NOW - timedelta(minutes=40), NOW - timedelta(minutes=10)
    raws = []
    for minutes in (15, 25, 35):  # injected records take their place in the order too
        ts = NOW - timedelta(minutes=minutes, milliseconds=7)
        nanos = str(int(ts.timestamp() * 1000) * 1_000_000)
        raws.append(json.dumps({"timeUnixNano": nanos, "body": {"intValue": "1"}}))
        h.fake.inject_raw(APP, ENV, ts, raws[-1])
    got = served(h.all_pages(startDate=format_date(start), endDate=format_date(end)))
    assert got == h.fake.records(APP, ENV, start, end) and len(got) > 23 * 10
    times = [ms_of(r) for r in got]
    if order == "oldest":
        assert times == sorted(times)
    elif order == "newest":
        assert times == sorted(times, reverse=True)
    else:
        assert times != sorted(times) and times != sorted(times, reverse=True)
    # The same records whatever the order.
    assert canon(got) == canon(forge().fake.records(APP, ENV, start, end) + [json.loads(raw) for raw in raws])


@pytest.mark.parametrize("status", [400, 404, 410, 500])
def test_it_refuses_a_cursor_after_its_ttl_with_the_configured_status(forge, status):
    h = forge(page_size=5, cursor_ttl=30, stale_cursor_status=status)
    first = h.get().json()
    h.clock.advance(29.999)
    second = h.get(cursor=first["cursor"])  # just inside its lifetime
    assert second.status_code == 200 and second.json()["cursor"]
    h.clock.advance(0.001)
    assert refused(stale := h.get(cursor=first["cursor"]), status)
    assert stale.json() == {"code": status, "message": "Cursor expired"}
    assert h.get(cursor=second.json()["cursor"]).status_code == 200  # each cursor has its own lifetime
    h.clock.advance(30)
    assert refused(h.get(cursor=second.json()["cursor"]), status)
    bad = base64.b64encode(b"x" * 40).decode()
    assert refused(h.get(cursor=bad), 400)  # a forged cursor is still "invalid", not "expired"
    assert h.get().status_code == 200  # a fresh query starts over


def test_it_accepts_cursors_forever_by_default(forge):
    h = forge(page_size=5)
    cursor = h.get().json()["cursor"]
    h.clock.advance(13 * 86_400)  # the window itself is still within the 14 days
    assert h.get(cursor=cursor).status_code == 200


@pytest.mark.parametrize("status", [400, 410])
def test_it_refuses_the_cursor_past_a_sessions_page_count_whatever_the_time(forge, status):
    h = forge(page_size=5, cursor_pages=3, stale_cursor_status=status)
    first = h.get().json()
    second = h.get(cursor=first["cursor"]).json()
    h.clock.advance(13 * 86_400)  # no time bound: only the count
    third = h.get(cursor=second["cursor"])
    assert third.status_code == 200 and third.json()["cursor"]  # the third page, the last allowed
    assert refused(stale := h.get(cursor=third.json()["cursor"]), status)
    assert stale.json() == {"code": status, "message": "Cursor expired"}
    assert h.get(cursor=second["cursor"]).status_code == 200  # an earlier cursor still fetches its page
    assert len(h.get().json()["appLogs"]) == 5  # a fresh query starts a session of its own
    with pytest.raises(ValueError):
        ForgeFake(cursor_pages=0)


def test_it_pages_through_expiring_cursors_when_quick_enough(forge):
    h = forge(page_size=7, cursor_ttl=1)
    pages, cursor = [], None
    while True:
        page = h.get(startDate=format_date(NOW - timedelta(minutes=20)), cursor=cursor).json()
        pages.append(page)
        h.clock.advance(0.9)
        if "cursor" not in page:
            break
        cursor = page["cursor"]
    assert len(pages) > 10
    assert served(pages) == h.fake.records(APP, ENV, NOW - timedelta(minutes=20), NOW, now=T0)


@pytest.mark.parametrize("every", [2, 3, 5])
def test_it_serves_empty_pages_with_cursors_and_loses_nothing(forge, every):
    window = {"startDate": format_date(NOW - timedelta(minutes=7)), "endDate": format_date(NOW - timedelta(minutes=2))}
    n = len(forge().fake.records(APP, ENV, NOW - timedelta(minutes=7), NOW - timedelta(minutes=2)))
    assert n > 50
    for page_size in (1, 9, n - 1, n, n + 1):
        h = forge(page_size=page_size, empty_pages=every)
        pages = h.all_pages(**window)
        got = served(pages)
        assert got == h.fake.records(APP, ENV, NOW - timedelta(minutes=7), NOW - timedelta(minutes=2))
        assert len(got) == n and len({(r["timeUnixNano"], r["spanId"]) for r in got}) == n
        full = [p for p in pages if p["appLogs"]]
        assert len(full) == math.ceil(n / page_size)
        for number, page in enumerate(pages, start=1):
            if number % every == 0:
                assert page["appLogs"] == [] and page["cursor"], (page_size, number)
            else:
                assert page["appLogs"], (page_size, number)
                assert len(page["appLogs"]) == page_size or page is pages[-1]
        assert pages[-1]["appLogs"] and "cursor" not in pages[-1]


def test_it_ends_an_empty_result_without_an_empty_page_switch_in_the_way(forge):
    h = forge(page_size=5, empty_pages=2)
    assert h.get(message="no record says this").json() == {"appLogs": []}


@pytest.mark.parametrize("form", [True, "seconds"])
def test_it_sends_retry_after_in_seconds(forge, form):
    h = forge(rate_limit=1, retry_after=form)
    assert h.get().status_code == 200
    h.clock.advance(20.5)
    assert h.get().headers["Retry-After"] == "40"


def test_it_sends_retry_after_as_an_http_date_rounded_up(forge):
    h = forge(rate_limit=2, retry_after="date", clock=Clock(T0 + 0.25))
    assert h.get().status_code == 200
    h.clock.advance(10)
    assert h.get().status_code == 200
    h.clock.advance(10.5)
    response = h.get()
    assert refused(response, 429)
    header = response.headers["Retry-After"]
    assert re.fullmatch(r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
                        r"\d{4} \d\d:\d\d:\d\d GMT", header), header
    told = email.utils.parsedate_to_datetime(header).timestamp()
    frees = T0 + 0.25 + 60  # the first call leaves the window
    assert told == math.ceil(frees) > frees  # rounded up: never early
    h.clock.t = frees - 0.001
    assert refused(h.get(), 429)
    h.clock.t = told  # waiting as told is never early
    assert h.get().status_code == 200
    h.fake.retry_after = False  # read at every 429
    assert "Retry-After" not in h.get().headers


def visible_set(h: Harness, app_id: str, env: str, start: datetime, end: datetime) -> list[dict]:
    return served(h.all_pages(app_id=app_id, environmentId=env, startDate=format_date(start), endDate=format_date(end)))


def test_it_honours_the_prompt_delay_per_app_and_from_the_constructor(forge):
    h = forge(prompt_delay_seconds=2)
    h.fake.add_app("prompt-5", ["p5"], EMAIL, TOKEN, records_per_minute=600, late_fraction=0, prompt_delay_seconds=5)
    h.fake.add_app("prompt-default", ["pd"], EMAIL, TOKEN, records_per_minute=600, late_fraction=0)
    h.fake.add_app("prompt-0", ["p0"], EMAIL, TOKEN, records_per_minute=600, late_fraction=0, prompt_delay_seconds=0)
    start = NOW - timedelta(minutes=2)
    now_ms = int(T0 * 1000)
    for app_id, env, delay in (("prompt-5", "p5", 5), ("prompt-default", "pd", 2)):
        got = visible_set(h, app_id, env, start, NOW)
        final = h.fake.records(app_id, env, start, NOW, now=T0 + 3600)
        assert set(canon(got)) < set(canon(final))
        assert set(canon(got)) >= set(canon([r for r in final if ms_of(r) <= now_ms - delay * 1000]))
        recent = [r for r in final if ms_of(r) > now_ms - delay * 1000]
        assert len(recent) > 5
        shown = set(canon(got)) & set(canon(recent))
        assert 0 < len(shown) < len(recent)  # some already visible, some not yet
    final = h.fake.records("prompt-0", "p0", start, NOW, now=T0 + 3600)
    assert canon(visible_set(h, "prompt-0", "p0", start, NOW)) == canon(final)  # no delay at all


RAW_RECORDS = [
    '{"timeUnixNano":"1","severityText":"INFO","body":{"stringValue":"half a pair \\ud800 here"}}',
    '{"body":{"stringValue":"x"},"attributes":[{"key":"user","value":{"stringValue":"\\udc00\\ud83d"}}]}',
    '{"severityNumber":1e400,"severityText":"INFO","body":{"stringValue":"huge"}}',
    '{"body":{"stringValue":"d"},"attributes":[{"key":"ms","value":{"doubleValue":1e400}}]}',
    '{"body":{"intValue":"5"}}',
    '{"body":{"kvlistValue":{"values":[{"key":"a","value":{"boolValue":true}}]}}}',
    '{"body":{"arrayValue":{"values":[{"intValue":"1"},{"doubleValue":2.5}]}}}',
    '{"body":"a bare string"}',
    '{"body":42}',
    '{"body":{"stringValue":"t"},"attributes":[{"key":"i","value":{"intValue":"9007199254740993"}},'
    '{"key":"b","value":{"boolValue":false}},{"key":"k","value":{"kvlistValue":{"values":[]}}},'
    '{"key":"l","value":{"arrayValue":{"values":[{"stringValue":"s"}]}}}]}',
    '{"body":' + '{"kvlistValue":{"values":[{"key":"k","value":' * 60 + '{"stringValue":"deep"}' + '}]}}' * 60 + '}',
    '  {"body": {"stringValue": "spaced out"},\n "severityText" : "WARN"}  ',
]


def test_it_serves_injected_raw_records_verbatim_inside_the_window_only(forge):
    h = forge(page_size=4)
    start, end = NOW - timedelta(minutes=30), NOW - timedelta(minutes=29)
    inside = [start + timedelta(seconds=5 * i) for i in range(len(RAW_RECORDS) - 1)] + [start]
    for ts, raw in zip(inside, RAW_RECORDS):
        h.fake.inject_raw(APP, ENV, ts, raw)
    outside = ['{"body":{"stringValue":"too early \\ud800"}}', '{"body":{"stringValue":"too late \\ud800"}}']
    h.fake.inject_raw(APP, ENV, start - timedelta(milliseconds=1), outside[0])
    h.fake.inject_raw(APP, ENV, end, outside[1])  # the end is exclusive
    window = {"startDate": format_date(start), "endDate": format_date(end)}
    texts, cursor = [], None
    while True:
        response = h.get(cursor=cursor, **window)
        assert response.status_code == 200
        texts.append(response.text)
        cursor = json.loads(response.text).get("cursor")
        if cursor is None:
            break
    everything = "".join(texts)
    for raw in RAW_RECORDS:
        assert everything.count(raw) == 1, raw  # verbatim, whitespace and all
    assert "too early" not in everything and "too late" not in everything
    # A strict parser (orjson) refuses some of these pages; json.loads reads them all.
    refusals = 0
    for text in texts:
        try:
            orjson.loads(text)
        except orjson.JSONDecodeError:
            refusals += 1
    assert refusals > 0
    got = [r for text in texts for r in json.loads(text)["appLogs"]]
    expected = h.fake.records(APP, ENV, start, end)
    assert canon(got) == canon(expected)
    parsed = [json.loads(raw) for raw in RAW_RECORDS]
    assert all(p in expected for p in parsed[:2] + parsed[4:])  # (1e400 parses to inf, equal to itself)
    assert expected[[json.dumps(r) for r in expected].index(json.dumps(parsed[2]))]["severityNumber"] == math.inf
    assert any(r.get("body") == {"stringValue": "half a pair \ud800 here"} for r in expected)
    # Outside the window only where they belong.
    before = h.all_pages(startDate=format_date(start - timedelta(minutes=1)), endDate=format_date(start))
    after = h.all_pages(startDate=format_date(end), endDate=format_date(end + timedelta(minutes=1)))
    strays = lambda pages: [r["body"]["stringValue"] for r in served(pages)  # noqa: E731
                            if r["body"]["stringValue"].startswith("too ")]
    assert strays(before) == ["too early \ud800"] and strays(after) == ["too late \ud800"]


def test_it_applies_visibility_filters_and_snapshots_to_injected_records(forge):
    h = forge(page_size=3)
    start, end = NOW - timedelta(minutes=10), NOW - timedelta(minutes=9)
    window = {"startDate": format_date(start), "endDate": format_date(end)}
    site = h.fake.installation_contexts(APP)[0]
    later = '{"body":{"stringValue":"needle later"}}'
    h.fake.inject_raw(APP, ENV, start + timedelta(seconds=1), later, visible_at=T0 + 100)
    error = ('{"body":{"stringValue":"needle error"},"attributes":[{"key":"installationContext",'
             '"value":{"stringValue":"%s"}}]}' % site)
    h.fake.inject_raw(APP, ENV, start + timedelta(seconds=2), error, level="ERROR")
    h.fake.inject_raw(APP, ENV, start + timedelta(seconds=3), '{"body":{"intValue":"7"}}', level="ERROR")
    assert "needle later" not in json.dumps(served(h.all_pages(**window)))
    assert "needle error" in json.dumps(served(h.all_pages(**window, level="ERROR")))
    assert "needle error" not in json.dumps(served(h.all_pages(**window, level="INFO")))
    assert [r["body"] for r in served(h.all_pages(**window, message="needle"))] == [{"stringValue": "needle error"}]
    assert "needle error" in json.dumps(served(h.all_pages(**window, installationContext=site)))
    assert {"intValue": "7"} in [r["body"] for r in served(h.all_pages(**window, level="ERROR"))]
    # A paging session started before an injection keeps its snapshot.
    first = h.get(**window).json()
    h.fake.inject_raw(APP, ENV, start + timedelta(seconds=4), '{"body":{"stringValue":"needle mid-way"}}')
    rest, cursor = [], first["cursor"]
    while cursor:
        page = h.get(cursor=cursor, **window).json()
        rest += page["appLogs"]
        cursor = page.get("cursor")
    assert "needle mid-way" not in json.dumps(first["appLogs"] + rest)
    assert canon(first["appLogs"] + rest) == canon(
        [r for r in h.fake.records(APP, ENV, start, end) if r.get("body") != {"stringValue": "needle mid-way"}])
    assert "needle mid-way" in json.dumps(served(h.all_pages(**window)))  # a fresh query sees it
    h.clock.advance(100)
    assert "needle later" in json.dumps(served(h.all_pages(**window)))


def test_it_refuses_raw_records_it_could_not_serve(forge):
    h = forge()
    for bad in ('{"body":', '{"a":1} {"b":2}', '{"body":{"stringValue":"\ud800"}}'):  # last: a real surrogate
        with pytest.raises(ValueError):
            h.fake.inject_raw(APP, ENV, NOW - timedelta(minutes=1), bad)
    with pytest.raises(ValueError):
        h.fake.inject_raw(APP, ENV, NOW - timedelta(minutes=1), "{}", level="info")
    with pytest.raises(KeyError):
        h.fake.inject_raw(APP, OTHER_ENV, NOW - timedelta(minutes=1), "{}")


def kind_of(record: dict) -> str | None:
    body = record.get("body")
    text = json.dumps(record)
    attributes = {a["key"]: a["value"] for a in record["attributes"]}
    if isinstance(body, str):
        return "bare_string_body"
    if isinstance(body, (int, float)):
        return "bare_number_body"
    if "intValue" in body:
        return "int_body"
    if "arrayValue" in body:
        return "array_body"
    if "kvlistValue" in body:
        return "deep_body" if text.count("kvlistValue") >= 40 else "kvlist_body"
    if math.isinf(record["severityNumber"]):
        return "huge_severity"
    if "durationMs" in attributes and math.isinf(attributes["durationMs"]["doubleValue"]):
        return "huge_double"
    if "retries" in attributes:
        return "typed_attributes"
    if re.search(r"[\ud800-\udfff]", body["stringValue"]):
        return "surrogate_body"
    if re.search(r"[\ud800-\udfff]", attributes.get("userName", {}).get("stringValue", "")):
        return "surrogate_attribute"
    return None


def test_it_makes_a_deterministic_fraction_of_generated_records_awkward(forge):
    awkward, again, plain = forge(page_size=1000), forge(page_size=1000), forge(page_size=1000)
    for h, fraction in ((awkward, 0.3), (again, 0.3), (plain, 0.0)):
        h.fake.add_app("loud-app", ["loud-env"], EMAIL, TOKEN, records_per_minute=100, awkward_fraction=fraction)
    start, end = NOW - timedelta(hours=1), NOW
    window = {"app_id": "loud-app", "environmentId": "loud-env"}
    texts, cursor = [], None
    while True:
        text = awkward.get(cursor=cursor, **window).text
        texts.append(text)
        cursor = json.loads(text).get("cursor")
        if cursor is None:
            break
    got = [r for text in texts for r in json.loads(text)["appLogs"]]
    records = awkward.fake.records("loud-app", "loud-env", start, end)
    assert canon(got) == canon(records) and len(records) > 5000
    assert canon(records) == canon(again.fake.records("loud-app", "loud-env", start, end))
    baseline = plain.fake.records("loud-app", "loud-env", start, end)
    # The same records (times, ids, order, visibility), a fraction of them rewritten.
    assert [(r["timeUnixNano"], r["spanId"]) for r in records] == [(r["timeUnixNano"], r["spanId"]) for r in baseline]
    kinds = collections.Counter(kind_of(r) for r in records)
    assert set(kinds) == set(AWKWARD_KINDS) | {None}
    changed = sum(json.dumps(a) != json.dumps(b) for a, b in zip(records, baseline))
    assert changed == len(records) - kinds[None]
    assert 0.25 < changed / len(records) < 0.35
    assert all(kind_of(r) is None for r in baseline)
    assert any(_refused_by_orjson(text) for text in texts)


def _refused_by_orjson(text: str) -> bool:
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError:
        return True
    return False


def test_it_serves_every_record_of_a_busy_app(forge):
    h = forge(page_size=1000)
    h.fake.add_app("busy", ["busy-env"], EMAIL, TOKEN, records_per_minute=5000, awkward_fraction=0.01)
    start, end = NOW - timedelta(minutes=6), NOW - timedelta(minutes=1)
    pages = h.all_pages(app_id="busy", environmentId="busy-env", startDate=format_date(start), endDate=format_date(end))
    assert sum(len(p["appLogs"]) for p in pages) > 20_000


def test_it_runs_as_a_demo_server_with_its_switches():
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.forge", "--port", "0", "--app-id", APP, "--environment", ENV,
         "--email", EMAIL, "--api-token", TOKEN, "--records-per-minute", "50", "--page-size", "100",
         "--order", "oldest", "--empty-pages", "2", "--cursor-ttl", "600", "--stale-cursor-status", "410",
         "--retry-after", "date", "--rate-limit", "2", "--prompt-delay-seconds", "0", "--awkward-fraction", "0.5"],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent)
    try:
        url = process.stdout.readline().strip()
        end = datetime.now(timezone.utc) - timedelta(minutes=1)
        params = {"environmentId": ENV, "startDate": format_date(end - timedelta(minutes=10)),
                  "endDate": format_date(end)}
        first = requests.get(f"{url}/v1/app/logs/{APP}", auth=(EMAIL, TOKEN), timeout=10, params=params)
        page = json.loads(first.text)
        times = [int(r["timeUnixNano"]) for r in page["appLogs"]]
        assert len(times) == 100 and times == sorted(times)
        assert _refused_by_orjson(first.text)
        second = requests.get(f"{url}/v1/app/logs/{APP}", auth=(EMAIL, TOKEN), timeout=10,
                              params={**params, "cursor": page["cursor"]}).json()
        assert second["appLogs"] == [] and second["cursor"]
        third = requests.get(f"{url}/v1/app/logs/{APP}", auth=(EMAIL, TOKEN), timeout=10, params=params)
        assert third.status_code == 429 and third.headers["Retry-After"].endswith(" GMT")
    finally:
        process.terminate()
        process.wait(timeout=10)
