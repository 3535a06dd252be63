"""The Forge App logs fake refuses what Atlassian refuses and serves realistic, deterministic logs.

Everything goes over real HTTP (``LocalServer`` + ``requests``); time is an injected clock.
"""

from __future__ import annotations

import base64
import collections
import json
import re
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests

from tests.fakes.forge import NON_ASCII, SEVERITY_NUMBER, ForgeFake, format_date
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
