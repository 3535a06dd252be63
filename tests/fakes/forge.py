"""A faithful local fake of Atlassian's Forge App logs API (``GET /v1/app/logs/<appId>``).

What Atlassian documents (seed page "Export app logs"; research otlp-syslog-forge.md §4.1) is
implemented and enforced; where the docs are silent (§4.2) the fake makes a choice, written
down here, that is at least as hard on a client as any plausible real behaviour. Where several
silent choices are plausible, a switch picks one (see "Switches" below): a client must cope
with every setting.

Request checks, in this order (every refusal is JSON ``{"code": <status>, "message": ...}``;
Atlassian documents no error body, this mimics its API gateway's usual shape):

1. Basic auth ``email:api_token`` of a user registered with ``add_app`` → else **401**.
   Auth is checked *before* the app lookup: answering 404 to an unauthenticated caller would
   tell anyone which app ids exist.
2. ``appId`` known and accessible to that user → else **404** (the same answer for "no such
   app" and "an app you can't see", so existence does not leak to other users either).
3. Rate limit, sliding window per appId: a call is refused **429** when ``rate_limit`` calls
   were already *accepted* for that appId within the last ``rate_period`` seconds. Every call
   that gets this far and is not itself answered 429 counts, whatever it is answered later
   (200, 400, 404 for the environment, stale cursors, injected failures); 429s do not count,
   so a client that waits as told always recovers. ``retry_after`` (see Switches) adds a
   ``Retry-After`` header naming the moment a slot frees (oldest counted call + rate_period).
   Without it there is no header (Atlassian documents none).
4. Injected failures (``fail()``) answer here: they model faults behind the gateway, so they
   only hit calls that are authenticated, name a visible app and are under the rate limit.
5. Query parameters → **400**: ``environmentId``, ``startDate``, ``endDate`` required, each at
   most once; dates exactly ``yyyy-MM-dd'T'HH:mm:ss.SSS'Z'`` (ASCII digits, 3 fractional
   digits, literal ``Z``, a real calendar date); endDate strictly after startDate; at most
   1 hour apart; both not older than 14 days by the fake's clock and — our choice, the docs
   say "within the last 14 days" — not in the future. ``level`` repeated, each exactly one of
   TRACE DEBUG INFO WARN ERROR FATAL (upper case). ``installationContext`` repeated, non-empty,
   at most 50 values. ``message`` optional case-sensitive substring of the body (empty = no
   filter). Unknown parameters are ignored.
6. ``environmentId`` not an environment of the app → **404**.
7. ``cursor``: must be one this fake issued (HMAC-signed) for the *same* query — same appId,
   environment, dates, level set, context set, message — else **400** (tampered, truncated,
   from another query, or empty). A genuine cursor older than ``cursor_ttl`` is then refused
   with ``stale_cursor_status`` (see Switches).

Responses: ``{"appLogs": [...], "cursor": "..."}`` while more records remain; the last page
(or an empty result) has **no ``cursor`` key at all**. A full last page carries no cursor.
Cursors are standard base64 and deliberately always contain ``+``, ``/`` and ``=``: a client
that pastes them into a URL without encoding sends a corrupted cursor and gets 400.
The first page fixes a snapshot (the clock at that call, and the records injected so far);
later pages serve that same snapshot, so paging to the end returns exactly
``records(..., now=<first call's time>)`` as it was then (``records()`` sees every injection
made so far). Pages are built as text by joining each record's JSON text, which is what lets
``inject_raw`` serve JSON that ``json.dumps`` would never write.

Window: ``startDate <= timeUnixNano < endDate`` (start inclusive, end exclusive; ms precision).

Records are generated deterministically from (seed, appId, environmentId, minute bucket) and
look like the documented sample. severityNumber keeps the sample's non-OTLP scale (INFO → 30,
the pino/bunyan scale): TRACE 10, DEBUG 20, INFO 30, WARN 40, ERROR 50, FATAL 60.
Awkward cases occur at steady small rates: multi-line stack traces (JS and Python, some with
CRLF), non-ASCII text incl. an astral-plane emoji, empty bodies, ANSI escapes and tabs,
long (8-16 KB) bodies, records without installationContext or arguments, 16-hex traceIds,
invocations with several records sharing one invocationId (and sometimes one millisecond).
Generation is cached per (app, environment, minute bucket), so an app logging ~5,000
records/minute is served without the fake being the bottleneck.

Late delivery: each record has a delay, U(0, ``prompt_delay_seconds``) normally (30 s unless
set); ``late_fraction`` of records get U(``prompt_delay_seconds``, ``max_delay_seconds``). A
record is visible only to a query made at clock ≥ timestamp + delay.

Switches
--------
Atlassian documents none of page size, order within a window, cursor lifetime, the answer to a
stale cursor, the form of ``Retry-After``, how late records land or what an app may log. Each
is a switch; the defaults are the fake's historical behaviour.

``ForgeFake(...)`` keyword arguments (and ``main()`` flags):

* ``page_size: int = 100`` (``--page-size``): records per page, ≥ 1.
* ``order: str = "shuffled"`` (``--order``): order of records within a window's pages.
  ``"shuffled"``: a deterministic shuffle (not by time, not stable per bucket);
  ``"oldest"``: by timestamp ascending; ``"newest"``: by timestamp descending (ties within a
  millisecond: the shuffle). ``records()`` returns the order the pages serve.
* ``cursor_ttl: float | None = None`` (``--cursor-ttl``): seconds, by ``clock``, for which a
  cursor is accepted after the call that issued it (each page's cursor has its own lifetime):
  accepted while ``clock < issued + cursor_ttl``, refused from then on. ``None``: forever.
* ``cursor_pages: int | None = None`` (``--cursor-pages``): a cursor lifetime counted in pages, not
  time: a paging session serves at most this many pages, and the cursor for the next one is
  refused as stale (``stale_cursor_status``). ``None``: no bound. With a clock compressed for a
  test, how many pages a time-based ``cursor_ttl`` lets a session read depends on how fast the
  machine answers them (a loaded machine spreads the calls so far apart that the budget never
  runs out); a page count does not.
* ``stale_cursor_status: int = 400`` (``--stale-cursor-status``): the status of that refusal,
  400..599, body ``{"code": <status>, "message": "Cursor expired"}``. 400 is the documented
  "bad request"; 404, 410, 500 … test a client against an undocumented answer.
* ``empty_pages: int = 0`` (``--empty-pages``): 0 = off; N ≥ 2 = every Nth page of a paging
  session (the first page is page 1) is ``{"appLogs": [], "cursor": ...}``. The empty page's
  cursor points at the same offset, so every record is still served exactly once; the last
  page is never an extra empty one. (N = 1 would never progress and is refused.)
* ``retry_after: bool | str = False`` (``--retry-after [seconds|date]``): ``False`` no header;
  ``True`` or ``"seconds"``: ``Retry-After: <int>`` = ceil(seconds until a slot frees), ≥ 1;
  ``"date"``: an HTTP date (``Tue, 13 Feb 2024 12:01:00 GMT``) of the moment a slot frees,
  rounded *up* to the next whole second, so a client that waits until then is never early.
  Read at every 429, so it may be changed on a live fake.
* ``prompt_delay_seconds: float = 30.0`` (``--prompt-delay-seconds``): upper bound of the
  normal visibility delay, for apps that don't set their own.
* ``latency: float = 0.0``: seconds every call sleeps (outside the lock).

Observing and pausing calls (for tests of concurrency, no switch of Atlassian's behaviour):
``hold()`` makes every call that arrives from then on wait before it is answered, until
``release()``; ``held`` is how many calls wait now (a test waits for it instead of sleeping).
``in_flight_peak(app_id, environment_id)`` is the most calls for that app and environment that
were ever being answered at once (arrival to answer, the hold and ``latency`` included): 1 for a
source that only one poller at a time reads.

``add_app(...)`` keyword arguments, per app: ``records_per_minute=20.0``,
``late_fraction=0.05``, ``max_delay_seconds=600.0``, ``prompt_delay_seconds=None`` (None =
the constructor's), ``awkward_fraction=0.0`` (``--awkward-fraction``): that fraction of the
generated records, chosen deterministically from the seed by a separate random stream (the
records themselves — times, ids, order, visibility — are the same as with 0), is rewritten
into one of the awkward shapes below (``AWKWARD_KINDS``, equally likely). A rewritten record
whose body is no longer a ``stringValue`` no longer matches a ``message`` filter. For load
tests of a client's tolerance.

Awkward records (``inject_raw`` and ``awkward_fraction``): JSON text spliced *verbatim* into
pages, the kind real JavaScript apps produce and strict parsers (orjson) refuse: a lone
surrogate escape (``"\\ud800"``) in the body or in an attribute; ``1e400`` (beyond float
range) as severityNumber or as an attribute's ``doubleValue``; a non-string body
(``{"intValue": "5"}``, ``{"kvlistValue": …}``, ``{"arrayValue": …}``, a bare JSON string or
number); typed attribute values (intValue, doubleValue, boolValue, kvlistValue, arrayValue);
deeply nested bodies (a few hundred JSON levels). ``inject_raw(app_id, environment_id, ts,
raw_json, level="INFO", *, visible_at=None)`` adds one: it obeys windows (by ``ts``, not by
whatever the text says), filters (``level`` as given; installationContext read from the
text's attributes; a ``message`` filter matches only a ``body.stringValue``), visibility
(``visible_at`` on the fake's clock; None = the clock at injection: "visible at once"),
order, pagination, empty pages and snapshots (a session started before the injection does
not see it). ``raw_json`` is served byte for byte (whitespace included) and must be one
JSON value that ``json.loads`` accepts (else ValueError: it would break the page), written as
text that is valid UTF-8 (write lone surrogates as the escape ``\\ud800``, never as a
character). ``records()`` parses every record with ``json.loads`` — the tolerant parse:
lone surrogate escapes become lone surrogate characters in ``str``, ``1e400`` becomes
``float('inf')``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import email.utils
import hashlib
import hmac
import json
import math
import random
import re
import secrets
import threading
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from operator import attrgetter
from typing import Callable, Iterable, NamedTuple

from flask import Flask, Response, g, request

LEVELS = ("TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL")
# Atlassian's sample shows INFO as 30; the rest follow the same (pino/bunyan) scale.
SEVERITY_NUMBER = {"TRACE": 10, "DEBUG": 20, "INFO": 30, "WARN": 40, "ERROR": 50, "FATAL": 60}
LEVEL_WEIGHTS = (3, 12, 55, 15, 12, 3)
MAX_WINDOW_MS = 3_600_000
MAX_AGE_MS = 14 * 86_400_000
MAX_CONTEXTS = 50
BUCKET_MS = 60_000
NORMAL_DELAY_S = 30.0
ORDERS = ("shuffled", "oldest", "newest")
RETRY_AFTER_FORMS = ("seconds", "date")
AWKWARD_KINDS = ("surrogate_body", "surrogate_attribute", "huge_severity", "huge_double", "int_body",
                 "kvlist_body", "array_body", "bare_string_body", "bare_number_body", "typed_attributes",
                 "deep_body")
DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z", re.ASCII)
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
MALFORMED_BODY = '{"appLogs": [{"timeUnixNano": "17078214449'  # a page cut off mid-way
NON_ASCII = "Ünïcødé ✓ 日本語 — Grüße aus Zürich 🚀"
MAX_CACHED_BUCKETS = 20_000
MAX_CACHED_CHARS = 512 * 1024 * 1024  # of record JSON text across cached buckets
SURROGATE_RE = re.compile("[\ud800-\udfff]")
# A placeholder json.dumps writes as "\u0000raw:<text>\u0000"; replaced by <text> verbatim.
RAW_RE = re.compile(r'"\\u0000raw:([^"\\]*)\\u0000"')

FUNCTIONS = (
    ("updateStatusTitle", "core:function"),
    ("issue-panel-resolver", "jira:issuePanel"),
    ("content-action", "confluence:contentAction"),
    ("nightly-sync", "scheduledTrigger"),
    ("issue-updated", "trigger"),
    ("incoming-webhook", "webtrigger"),
    ("queue-consumer", "consumer"),
)
MESSAGES = {
    "TRACE": ("entering {fn}", "storage.get key=config:{n}", "resolver args parsed in {n} µs"),
    "DEBUG": ("cache miss for key site-config:{n}", "fetched {n} issues from /rest/api/3/search",
              "request headers: {{\"x-b3-traceid\": \"{hex}\"}}"),
    "INFO": ("This is simple log message", "Updated page {n} title", "Processed {n} events",
             "Webhook received: avi:jira:updated:issue", "Fetched issue PROJ-{n} in {n} ms"),
    "WARN": ("Slow storage query: {n} ms", "Retrying request to https://api.example.com (attempt 2)",
             "Deprecated API used: /rest/api/2/issue/{n}"),
    "ERROR": ("Request failed with status code 500", "Failed to update page {n}: 409 Conflict",
              "Invocation timed out after 25000 ms"),
    "FATAL": ("Unrecoverable error: storage quota exceeded", "Out of memory in {fn}"),
}
JS_TRACE = (
    "TypeError: Cannot read properties of undefined (reading 'fields')\n"
    "    at getIssue (webpack://forge-app/src/resolvers/index.js:42:17)\n"
    "    at async Object.handler (webpack://forge-app/src/index.js:12:5)\n"
    "    at async Runtime.handle (/var/task/runtime.js:1:2345)"
)
PY_TRACE = (
    "Traceback (most recent call last):\r\n"
    '  File "/var/task/app/handler.py", line 27, in handle\r\n'
    "    issue = payload[\"issue\"][\"fields\"]\r\n"
    "KeyError: 'fields'"
)


def format_date(dt: datetime) -> str:
    """Format a datetime the way the API wants it: ``2024-02-13T10:30:44.939Z`` (UTC, ms)."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    dt = dt.astimezone(timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def _to_ms(dt: datetime) -> int:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return (dt - EPOCH) // timedelta(milliseconds=1)


def _digest_int(*parts: object) -> int:
    text = "|".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.sha256(text).digest(), "big")


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    args: list[tuple[str, str]]
    email: str | None
    status: int
    time: float


@dataclass
class _App:
    app_id: str
    environments: list[str]
    records_per_minute: float
    late_fraction: float
    max_delay_seconds: float
    sites: list[str]
    versions: list[str]
    prompt_delay_seconds: float = NORMAL_DELAY_S
    awkward_fraction: float = 0.0


@dataclass(frozen=True, slots=True)
class _Record:
    ts_ms: int
    visible_at: float
    order: int
    level: str
    context: str | None
    body: str | None            # what a message filter searches; None: not a string body
    text: str = field(compare=False, hash=False, repr=False)  # the record's JSON text, as served
    seq: int = -1               # injection number (snapshots see seq < their count); -1: generated


@dataclass(frozen=True)
class _Query:
    app_id: str
    environment_id: str
    start_ms: int
    end_ms: int
    levels: frozenset[str] | None
    contexts: frozenset[str] | None
    message: str | None

    def fingerprint(self) -> str:
        canonical = json.dumps([
            self.app_id, self.environment_id, self.start_ms, self.end_ms,
            sorted(self.levels) if self.levels else None,
            sorted(self.contexts) if self.contexts else None,
            self.message,
        ], ensure_ascii=False)
        return hashlib.sha256(canonical.encode()).hexdigest()[:32]

    def matches(self, r: _Record) -> bool:
        return (self.start_ms <= r.ts_ms < self.end_ms
                and (not self.levels or r.level in self.levels)
                and (not self.contexts or r.context in self.contexts)
                and (not self.message or (r.body is not None and self.message in r.body)))


class _Refusal(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


_SORT_KEYS: dict[str, Callable[[_Record], object]] = {
    "shuffled": attrgetter("order"),
    "oldest": lambda r: (r.ts_ms, r.order),
    "newest": lambda r: (-r.ts_ms, r.order),
}


class ForgeFake:
    """State of the fake; ``wsgi()`` serves it. All public methods are thread-safe.

    Every keyword argument is a switch described in the module docstring."""

    def __init__(self, seed: int = 1, *, rate_limit: int = 30, rate_period: float = 60.0,
                 page_size: int = 100, latency: float = 0.0, retry_after: bool | str = False,
                 order: str = "shuffled", cursor_ttl: float | None = None,
                 cursor_pages: int | None = None, stale_cursor_status: int = 400, empty_pages: int = 0,
                 prompt_delay_seconds: float = NORMAL_DELAY_S,
                 clock: Callable[[], float] = time.time):
        if page_size < 1 or rate_limit < 1 or rate_period <= 0:
            raise ValueError("page_size and rate_limit must be >= 1, rate_period > 0")
        if order not in ORDERS:
            raise ValueError(f"order must be one of {', '.join(ORDERS)}")
        if cursor_ttl is not None and cursor_ttl < 0:
            raise ValueError("cursor_ttl must be None or >= 0")
        if cursor_pages is not None and cursor_pages < 1:
            raise ValueError("cursor_pages must be None or >= 1")
        if not 400 <= stale_cursor_status <= 599:
            raise ValueError("stale_cursor_status must be an error status, 400..599")
        if empty_pages < 0 or empty_pages == 1:
            raise ValueError("empty_pages must be 0 (off) or >= 2 (every page empty never progresses)")
        if prompt_delay_seconds < 0:
            raise ValueError("prompt_delay_seconds must be >= 0")
        _retry_after_form(retry_after)
        self.seed = seed
        self.rate_limit = rate_limit
        self.rate_period = rate_period
        self.page_size = page_size
        self.latency = latency
        self.retry_after = retry_after
        self.order = order
        self.cursor_ttl = cursor_ttl
        self.cursor_pages = cursor_pages
        self.stale_cursor_status = stale_cursor_status
        self.empty_pages = empty_pages
        self.prompt_delay_seconds = prompt_delay_seconds
        self.clock = clock
        self.calls: list[Call] = []
        self._lock = threading.RLock()
        self._apps: dict[str, _App] = {}
        self._tokens: dict[str, set[str]] = {}   # email -> api tokens
        self._access: dict[str, set[str]] = {}   # email -> app ids
        self._windows: dict[str, deque[float]] = {}
        self._failures: deque[list] = deque()    # [status, remaining, malformed]
        self._key = secrets.token_bytes(32)
        self._buckets: OrderedDict[tuple, list[_Record]] = OrderedDict()
        self._bucket_chars: dict[tuple, int] = {}
        self._cached_chars = 0
        self._injected: dict[tuple, list[_Record]] = {}  # (app, env, bucket) -> injected records
        self._injections = 0
        self._selections: OrderedDict[tuple, list[_Record]] = OrderedDict()
        self._app: Flask | None = None
        self._gate = threading.Event()
        self._gate.set()
        self._held = 0
        self._in_flight: dict[tuple, int] = {}
        self._in_flight_peaks: dict[tuple, int] = {}

    # ------------------------------------------------------------- observing

    def hold(self) -> None:
        """Make calls arriving from now on wait, unanswered, until :meth:`release`."""
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    @property
    def held(self) -> int:
        """Calls waiting at the hold now."""
        with self._lock:
            return self._held

    def in_flight_peak(self, app_id: str, environment_id: str) -> int:
        """The most calls for this app and environment ever being answered at once."""
        with self._lock:
            return self._in_flight_peaks.get((app_id, environment_id), 0)

    # ------------------------------------------------------------------ setup

    def add_app(self, app_id: str, environments: list[str], email: str, api_token: str,
                records_per_minute: float = 20.0, late_fraction: float = 0.05,
                max_delay_seconds: float = 600.0, prompt_delay_seconds: float | None = None,
                awkward_fraction: float = 0.0) -> None:
        if not environments:
            raise ValueError("an app needs at least one environment")
        if prompt_delay_seconds is not None and prompt_delay_seconds < 0:
            raise ValueError("prompt_delay_seconds must be >= 0")
        if not 0 <= awkward_fraction <= 1:
            raise ValueError("awkward_fraction must be within 0..1")
        rng = _rng(self.seed, "app", app_id)
        sites = [f"ari:cloud:{product}::site/{_uuid(rng)}"
                 for product in ("jira", "confluence", "jira", "jira", "confluence", "jira")]
        major = rng.randrange(1, 3)
        minor = rng.randrange(100, 300)
        versions = [f"{major}.{minor}.0", f"{major}.{minor + 1}.0", f"{major}.{minor + 1}.1"]
        with self._lock:
            if app_id in self._apps:
                raise ValueError(f"app {app_id!r} already added")
            prompt = self.prompt_delay_seconds if prompt_delay_seconds is None else prompt_delay_seconds
            self._apps[app_id] = _App(app_id, list(environments), records_per_minute,
                                      late_fraction, max_delay_seconds, sites, versions,
                                      prompt, awkward_fraction)
            self._tokens.setdefault(email, set()).add(api_token)
            self._access.setdefault(email, set()).add(app_id)

    def installation_contexts(self, app_id: str) -> list[str]:
        """The site ARIs this app's records use (for installationContext filters in tests)."""
        with self._lock:
            return list(self._apps[app_id].sites)

    def fail(self, status: int = 500, times: int = 1, malformed: bool = False) -> None:
        """The next ``times`` calls that reach the backend (see module doc, step 4) answer
        ``status`` with a JSON error, or 200 with a truncated JSON body if ``malformed``."""
        with self._lock:
            self._failures.append([200 if malformed else status, times, malformed])

    def inject_raw(self, app_id: str, environment_id: str, ts: datetime, raw_json: str,
                   level: str = "INFO", *, visible_at: float | None = None) -> None:
        """Add one record whose JSON text ``raw_json`` is served verbatim (module doc,
        "Awkward records"). ``ts`` places it in windows; ``level`` is what level filters see;
        ``visible_at`` (fake clock) defaults to the clock now."""
        if level not in LEVELS:
            raise ValueError(f"level must be one of {', '.join(LEVELS)}")
        try:
            raw_json.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("raw_json must be valid UTF-8: write lone surrogates as the escape \\ud800") from None
        parsed = json.loads(raw_json)  # ValueError if not one JSON value: it would break the page
        context = body = None
        if isinstance(parsed, dict):
            for attribute in parsed.get("attributes") or ():
                if isinstance(attribute, dict) and attribute.get("key") == "installationContext":
                    value = attribute.get("value")
                    if isinstance(value, dict) and isinstance(value.get("stringValue"), str):
                        context = value["stringValue"]
            if isinstance(parsed.get("body"), dict) and isinstance(parsed["body"].get("stringValue"), str):
                body = parsed["body"]["stringValue"]
        ts_ms = _to_ms(ts)
        with self._lock:
            if environment_id not in self._apps[app_id].environments:
                raise KeyError(f"{environment_id!r} is not an environment of {app_id!r}")
            seq = self._injections
            self._injections += 1
            record = _Record(ts_ms, self.clock() if visible_at is None else visible_at,
                             _digest_int(self.seed, "raw", app_id, environment_id, seq) >> 192,
                             level, context, body, raw_json, seq)
            self._injected.setdefault((app_id, environment_id, ts_ms // BUCKET_MS), []).append(record)

    # --------------------------------------------------------------- records

    def records(self, app_id: str, environment_id: str, start: datetime, end: datetime, *,
                levels: Iterable[str] | None = None, contexts: Iterable[str] | None = None,
                message: str | None = None, now: float | None = None) -> list[dict]:
        """Exactly the records a query made at ``now`` (default: the clock) returns over all
        its pages, in the order the pages return them, each parsed from the JSON text served
        with ``json.loads`` (fresh objects on every call)."""
        query = _Query(app_id, environment_id, _to_ms(start), _to_ms(end),
                       frozenset(levels) if levels else None,
                       frozenset(contexts) if contexts else None, message or None)
        with self._lock:
            if environment_id not in self._apps[app_id].environments:
                raise KeyError(f"{environment_id!r} is not an environment of {app_id!r}")
            selected = self._select(query, self.clock() if now is None else now, self._injections)
            text = "[" + ",".join([r.text for r in selected]) + "]"
        return json.loads(text)

    def _select(self, query: _Query, asof: float, injections: int) -> list[_Record]:
        """The records of ``query`` visible at ``asof`` (with the first ``injections``
        injected ones), in serving order. Cached: pages of one snapshot share one list."""
        key = (query, asof, injections, self.order)
        cached = self._selections.get(key)
        if cached is not None:
            self._selections.move_to_end(key)
            return cached
        app = self._apps[query.app_id]
        env = query.environment_id
        matches = query.matches
        out = []
        for bucket in range(query.start_ms // BUCKET_MS, (query.end_ms - 1) // BUCKET_MS + 1):
            out.extend(r for r in self._bucket(app, env, bucket) if r.visible_at <= asof and matches(r))
            for r in self._injected.get((app.app_id, env, bucket), ()):
                if r.seq < injections and r.visible_at <= asof and matches(r):
                    out.append(r)
        out.sort(key=_SORT_KEYS[self.order])
        self._selections[key] = out
        while len(self._selections) > 64:
            self._selections.popitem(last=False)
        return out

    def _bucket(self, app: _App, env: str, bucket: int) -> list[_Record]:
        key = (app.app_id, env, bucket)
        cached = self._buckets.get(key)
        if cached is not None:
            self._buckets.move_to_end(key)
            return cached
        records = _generate(self.seed, app, env, bucket)
        chars = sum(len(r.text) for r in records)
        self._buckets[key] = records
        self._bucket_chars[key] = chars
        self._cached_chars += chars
        while len(self._buckets) > 1 and (len(self._buckets) > MAX_CACHED_BUCKETS
                                          or self._cached_chars > MAX_CACHED_CHARS):
            old, _ = self._buckets.popitem(last=False)
            self._cached_chars -= self._bucket_chars.pop(old)
        return records

    # ------------------------------------------------------------------- HTTP

    def wsgi(self) -> Flask:
        with self._lock:
            if self._app is None:
                self._app = self._build_app()
            return self._app

    def _build_app(self) -> Flask:
        app = Flask("fake-forge-app-logs")

        @app.before_request
        def arrive():
            flight = ((request.view_args or {}).get("app_id"), request.args.get("environmentId"))
            with self._lock:  # the clock is only ever consulted under the lock
                g.arrived = self.clock()
                g.flight = flight
                self._in_flight[flight] = self._in_flight.get(flight, 0) + 1
                self._in_flight_peaks[flight] = max(self._in_flight_peaks.get(flight, 0), self._in_flight[flight])
                held = not self._gate.is_set()
                self._held += held
            if held:
                self._gate.wait()
                with self._lock:
                    self._held -= 1
            if self.latency:
                time.sleep(self.latency)

        @app.teardown_request
        def leave(exc):
            flight = g.pop("flight", None)
            if flight is not None:
                with self._lock:
                    self._in_flight[flight] -= 1

        @app.after_request
        def record(response: Response):
            email = _basic_auth(request.headers.get("Authorization"))
            with self._lock:
                arrived = g.arrived if "arrived" in g else self.clock()
                self.calls.append(Call(request.method, request.path, list(request.args.items(multi=True)),
                                       email[0] if email else None, response.status_code, arrived))
            return response

        @app.get("/v1/app/logs/<app_id>")
        def logs(app_id: str):
            return self._serve(app_id)

        @app.errorhandler(404)
        def not_found(exc):
            return _error(404, "Not Found")

        @app.errorhandler(405)
        def not_allowed(exc):
            return _error(405, "Method Not Allowed")

        return app

    def _serve(self, app_id: str) -> Response:
        credentials = _basic_auth(request.headers.get("Authorization"))
        args = request.args
        with self._lock:
            now = self.clock()
            # Auth before existence: a 404 to strangers would reveal which app ids exist.
            if credentials is None or not any(
                    hmac.compare_digest(credentials[1], t)
                    for t in self._tokens.get(credentials[0], ())):
                return _error(401, "Unauthorized")
            app = self._apps.get(app_id)
            if app is None or app_id not in self._access.get(credentials[0], set()):
                return _error(404, "App not found")
            window = self._windows.setdefault(app_id, deque())
            while window and window[0] <= now - self.rate_period:
                window.popleft()
            if len(window) >= self.rate_limit:
                return self._too_many(window, now)
            window.append(now)
            if self._failures:
                failure = self._failures[0]
                failure[1] -= 1
                if failure[1] <= 0:
                    self._failures.popleft()
                if failure[2]:
                    return Response(MALFORMED_BODY, 200, mimetype="application/json")
                if failure[0] == 429:
                    return self._too_many(window, now)
                return _error(failure[0], "Injected failure")
            try:
                query = _parse_query(app, args, now)
                if query.environment_id not in app.environments:
                    raise _Refusal(404, "Environment not found")
                snapshot = _Snapshot(now, 0, 1, self._injections)
                if "cursor" in args:
                    snapshot = self._open_cursor(args.getlist("cursor"), query, now)
            except _Refusal as refusal:
                return _error(refusal.status, refusal.message)
            selected = self._select(query, snapshot.asof, snapshot.injections)
            offset, page_number = snapshot.offset, snapshot.page
            if self.empty_pages and page_number % self.empty_pages == 0:
                # Only ever reached through a cursor, i.e. while records remain: same offset.
                page, next_offset = [], offset
            else:
                page, next_offset = selected[offset:offset + self.page_size], offset + self.page_size
            parts = ['{"appLogs":[', ",".join([r.text for r in page]), "]"]
            if next_offset < len(selected):
                cursor = self._issue_cursor(query, snapshot._replace(offset=next_offset, page=page_number + 1), now)
                parts.append(f',"cursor":"{cursor}"')  # base64: nothing to escape
            parts.append("}")
            text = "".join(parts)
        return Response(text, 200, mimetype="application/json")

    def _too_many(self, window: deque[float], now: float) -> Response:
        response = _error(429, "Rate limit exceeded")
        form = _retry_after_form(self.retry_after)
        free_at = window[0] + self.rate_period if window else now + 1
        if form == "seconds":
            response.headers["Retry-After"] = str(max(1, math.ceil(free_at - now)))
        elif form == "date":
            moment = datetime.fromtimestamp(math.ceil(free_at), timezone.utc)
            response.headers["Retry-After"] = email.utils.format_datetime(moment, usegmt=True)
        return response

    def _issue_cursor(self, query: _Query, snapshot: "_Snapshot", now: float) -> str:
        for n in range(10_000):
            payload = json.dumps({"q": query.fingerprint(), "o": snapshot.offset, "a": snapshot.asof,
                                  "p": snapshot.page, "g": snapshot.injections, "i": now, "n": n},
                                 separators=(",", ":")).encode()
            mac = hmac.new(self._key, payload, hashlib.sha256).digest()[:16]
            token = base64.b64encode(mac + payload).decode()
            if "+" in token and "/" in token and token.endswith("="):
                return token
        return token  # pragma: no cover - practically unreachable

    def _open_cursor(self, values: list[str], query: _Query, now: float) -> "_Snapshot":
        if len(values) != 1 or not values[0]:
            raise _Refusal(400, "Invalid cursor")
        try:
            raw = base64.b64decode(values[0], validate=True)
        except (binascii.Error, ValueError):
            raise _Refusal(400, "Invalid cursor") from None
        mac, payload = raw[:16], raw[16:]
        expected = hmac.new(self._key, payload, hashlib.sha256).digest()[:16]
        if len(raw) <= 16 or not hmac.compare_digest(mac, expected):
            raise _Refusal(400, "Invalid cursor")
        data = json.loads(payload)
        if data["q"] != query.fingerprint():
            raise _Refusal(400, "Cursor does not match the query")
        if self.cursor_ttl is not None and now >= float(data["i"]) + self.cursor_ttl:
            raise _Refusal(self.stale_cursor_status, "Cursor expired")
        if self.cursor_pages is not None and int(data["p"]) > self.cursor_pages:
            raise _Refusal(self.stale_cursor_status, "Cursor expired")
        return _Snapshot(float(data["a"]), int(data["o"]), int(data["p"]), int(data["g"]))


class _Snapshot(NamedTuple):
    """Where a paging session stands: its snapshot (clock, injections) and its next page."""
    asof: float
    offset: int
    page: int         # 1-based number of the page this cursor fetches (for empty_pages)
    injections: int


# ------------------------------------------------------------------- helpers


def _error(status: int, message: str) -> Response:
    return Response(json.dumps({"code": status, "message": message}), status,
                    mimetype="application/json")


def _basic_auth(header: str | None) -> tuple[str, str] | None:
    if not header:
        return None
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    email, sep, token = decoded.partition(":")
    return (email, token) if sep and email else None


def _one(args, name: str) -> str:
    values = args.getlist(name)
    if not values or values == [""]:
        raise _Refusal(400, f"{name} is required")
    if len(values) > 1:
        raise _Refusal(400, f"{name} must be given once")
    return values[0]


def _parse_date(name: str, value: str) -> int:
    if not DATE_RE.fullmatch(value):
        raise _Refusal(400, f"{name} must be in format yyyy-MM-dd'T'HH:mm:ss.SSS'Z'")
    try:
        dt = datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    except ValueError:
        raise _Refusal(400, f"{name} is not a valid date") from None
    return _to_ms(dt)


def _parse_query(app: _App, args, now: float) -> _Query:
    environment_id = _one(args, "environmentId")
    start_ms = _parse_date("startDate", _one(args, "startDate"))
    end_ms = _parse_date("endDate", _one(args, "endDate"))
    if end_ms <= start_ms:
        raise _Refusal(400, "endDate must be after startDate")
    if end_ms - start_ms > MAX_WINDOW_MS:
        raise _Refusal(400, "endDate must not exceed 1 hour after startDate")
    now_ms = now * 1000
    if start_ms < now_ms - MAX_AGE_MS or end_ms < now_ms - MAX_AGE_MS:
        raise _Refusal(400, "startDate and endDate must be within the last 14 days")
    if start_ms > now_ms or end_ms > now_ms:
        raise _Refusal(400, "startDate and endDate must not be in the future")
    levels = args.getlist("level")
    for level in levels:
        if level not in LEVELS:
            raise _Refusal(400, f"level must be one of {', '.join(LEVELS)}")
    contexts = args.getlist("installationContext")
    if len(contexts) > MAX_CONTEXTS:
        raise _Refusal(400, f"at most {MAX_CONTEXTS} installationContext values are allowed")
    if any(not c for c in contexts):
        raise _Refusal(400, "installationContext must not be empty")
    messages = args.getlist("message")
    if len(messages) > 1:
        raise _Refusal(400, "message must be given once")
    return _Query(app.app_id, environment_id, start_ms, end_ms,
                  frozenset(levels) or None, frozenset(contexts) or None,
                  messages[0] if messages and messages[0] else None)


def _rng(*parts: object) -> random.Random:
    return random.Random(_digest_int(*parts))


def _uuid(rng) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _poisson(rng, mean: float) -> int:
    if mean <= 0:
        return 0
    if mean > 50:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, k, p = math.exp(-mean), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def _body(rng, level: str, fn: str) -> tuple[str, str]:
    """(level, body): the awkward kinds at steady small rates, else a templated message."""
    r = rng.random()
    if r < 0.03:
        return ("FATAL" if level == "FATAL" else "ERROR"), (JS_TRACE if rng.random() < 0.6 else PY_TRACE)
    if r < 0.06:
        return level, f"{NON_ASCII} (user {rng.randrange(1000)})"
    if r < 0.08:
        return level, ""
    if r < 0.09:
        return level, "\tstatus:\x1b[31m failed \x1b[0m\tcode=E" + str(rng.randrange(100))
    if r < 0.095:
        blob = json.dumps({"items": [{"id": i, "value": "x" * 40} for i in range(rng.randrange(120, 240))]})
        return level, f"payload dump: {blob}"
    template = rng.choice(MESSAGES[level])
    return level, template.format(n=rng.randrange(1, 100_000), fn=fn, hex=f"{rng.getrandbits(64):016x}")


def _retry_after_form(value: bool | str | None) -> str | None:
    if value is None or value is False:
        return None
    if value is True:
        return "seconds"
    if isinstance(value, str) and value in RETRY_AFTER_FORMS:
        return value
    raise ValueError(f"retry_after must be False, True, {' or '.join(map(repr, RETRY_AFTER_FORMS))}")


def _raw(text: str) -> str:
    """A placeholder that ``_awkward`` swaps for ``text`` verbatim after json.dumps."""
    return f"\x00raw:{text}\x00"


def _awkward(rng, data: dict, body: str) -> tuple[str, str | None]:
    """(JSON text, message-filter body) of ``data`` rewritten into one awkward shape."""
    kind = rng.choice(AWKWARD_KINDS)
    data = dict(data)
    attributes = data["attributes"] = list(data["attributes"])
    filter_body: str | None = body
    if kind == "surrogate_body":  # a JS string cut inside a surrogate pair, or a reversed pair
        filter_body = body + " " + rng.choice(("\ud800", "\udfff", "\udc00\ud83d", "cut \ud83d"))
        data["body"] = {"stringValue": filter_body}
    elif kind == "surrogate_attribute":
        attributes.append({"key": "userName", "value": {"stringValue": f"Jos\u00e9 \ud83d{rng.randrange(100)}"}})
    elif kind == "huge_severity":
        data["severityNumber"] = _raw(rng.choice(("1e400", "-1e400", "1E+999")))
    elif kind == "huge_double":
        attributes.append({"key": "durationMs", "value": {"doubleValue": _raw("1e400")}})
    elif kind == "int_body":
        data["body"] = {"intValue": str(rng.randrange(-2**63, 2**63))}
        filter_body = None
    elif kind == "kvlist_body":
        data["body"] = {"kvlistValue": {"values": [
            {"key": "event", "value": {"stringValue": body}},
            {"key": "count", "value": {"intValue": str(rng.randrange(1000))}},
            {"key": "ok", "value": {"boolValue": rng.random() < 0.5}}]}}
        filter_body = None
    elif kind == "array_body":
        data["body"] = {"arrayValue": {"values": [
            {"stringValue": body}, {"intValue": str(rng.randrange(1000))}, {"doubleValue": 0.5},
            {"boolValue": False}]}}
        filter_body = None
    elif kind == "bare_string_body":
        data["body"] = body
        filter_body = None
    elif kind == "bare_number_body":
        data["body"] = rng.choice((42, -1, 0, 3.25, 1e300))
        filter_body = None
    elif kind == "typed_attributes":
        attributes += [
            {"key": "retries", "value": {"intValue": str(rng.randrange(10))}},
            {"key": "ratio", "value": {"doubleValue": rng.random()}},
            {"key": "cached", "value": {"boolValue": rng.random() < 0.5}},
            {"key": "labels", "value": {"arrayValue": {"values": [{"stringValue": "a"}, {"intValue": "2"}]}}},
            {"key": "user", "value": {"kvlistValue": {"values": [{"key": "id", "value": {"intValue": "7"}}]}}},
        ]
    else:  # deep_body: 4 JSON levels per kvlist level
        value: dict = {"stringValue": body}
        depth = rng.randrange(40, 80)
        for i in range(depth):
            value = {"kvlistValue": {"values": [{"key": f"level{depth - i}", "value": value}]}}
        data["body"] = value
        filter_body = None
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    text = SURROGATE_RE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
    return RAW_RE.sub(lambda m: m.group(1), text), filter_body


def _generate(seed: int, app: _App, env: str, bucket: int) -> list[_Record]:
    rng = _rng(seed, app.app_id, env, bucket)
    # A stream of its own: awkward_fraction changes which records are awkward, nothing else.
    awkward = _rng(seed, "awkward", app.app_id, env, bucket) if app.awkward_fraction > 0 else None
    count = _poisson(rng, app.records_per_minute)
    start_ms = bucket * BUCKET_MS
    low = min(app.prompt_delay_seconds, app.max_delay_seconds)
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    records: list[_Record] = []
    while len(records) < count:
        size = min(count - len(records), rng.choices((1, 2, 3, 5, 8), (50, 20, 15, 10, 5))[0])
        fn, module = rng.choice(FUNCTIONS)
        invocation = _uuid(rng)
        trace = f"{rng.getrandbits(64):016x}" if rng.random() < 0.05 else f"{rng.getrandbits(128):032x}"
        context = None if rng.random() < 0.04 else rng.choice(app.sites)
        arguments = None if rng.random() < 0.10 else json.dumps(
            [{"randomData": rng.random()}] if rng.random() < 0.5
            else [{"payload": {"issue": {"key": f"PROJ-{rng.randrange(1, 999)}"}},
                   "context": {"cloudId": _uuid(rng)}}], separators=(",", ":"))
        version = rng.choice(app.versions)
        licensed = rng.random() < 0.5
        ts = start_ms + rng.randrange(BUCKET_MS)
        for _ in range(size):
            ts = min(start_ms + BUCKET_MS - 1, ts + rng.choice((0, 1, 3, 25, 180, 400)))
            level, body = _body(rng, rng.choices(LEVELS, LEVEL_WEIGHTS)[0], fn)
            attributes = [("appId", app.app_id), ("environmentId", env), ("invocationId", invocation)]
            if context is not None:
                attributes.append(("installationContext", context))
            attributes += [("appVersion", version), ("functionKey", fn), ("moduleType", module)]
            if arguments is not None:
                attributes.append(("arguments", arguments))
            if licensed:
                attributes += [("licenseState", "ACTIVE"), ("edition", "standard")]
            data = {
                "timeUnixNano": str(ts * 1_000_000),
                "severityNumber": SEVERITY_NUMBER[level],
                "severityText": level,
                "body": {"stringValue": body},
                "traceId": trace,
                "spanId": f"{rng.getrandbits(64):016x}",
                "attributes": [{"key": k, "value": {"stringValue": v}} for k, v in attributes],
            }
            late = rng.random() < app.late_fraction
            delay = rng.uniform(low, app.max_delay_seconds) if late else rng.uniform(0, low)
            order = _digest_int(seed, app.app_id, env, bucket, len(records)) >> 192
            if awkward is not None and awkward.random() < app.awkward_fraction:
                text, filter_body = _awkward(awkward, data, body)
            else:
                text, filter_body = dumps(data), body
            records.append(_Record(ts, ts / 1000 + delay, order, level, context, filter_body, text))
    return records


def main(argv: list[str] | None = None) -> None:
    from werkzeug.serving import make_server

    parser = argparse.ArgumentParser(description="Serve a fake Forge App logs API for local demos.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8701)
    parser.add_argument("--app-id", required=True)
    parser.add_argument("--environment", action="append", required=True,
                        help="an environment id of the app (repeat for several)")
    parser.add_argument("--email", required=True)
    parser.add_argument("--api-token", required=True)
    parser.add_argument("--records-per-minute", type=float, default=20.0)
    parser.add_argument("--late-fraction", type=float, default=0.05)
    parser.add_argument("--max-delay-seconds", type=float, default=600.0)
    parser.add_argument("--prompt-delay-seconds", type=float, default=NORMAL_DELAY_S,
                        help="upper bound of the normal visibility delay")
    parser.add_argument("--awkward-fraction", type=float, default=0.0,
                        help="fraction of records served in an awkward JSON shape")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--page-size", type=int, default=100)
    parser.add_argument("--order", choices=ORDERS, default="shuffled")
    parser.add_argument("--cursor-ttl", type=float, default=None, help="seconds a cursor is accepted")
    parser.add_argument("--cursor-pages", type=int, default=None, help="pages a paging session serves")
    parser.add_argument("--stale-cursor-status", type=int, default=400)
    parser.add_argument("--empty-pages", type=int, default=0, help="every Nth page is empty (N >= 2)")
    parser.add_argument("--rate-limit", type=int, default=30)
    parser.add_argument("--retry-after", nargs="?", const="seconds", default=False, choices=RETRY_AFTER_FORMS,
                        help="send Retry-After on 429, in seconds (the default form) or as an HTTP date")
    opts = parser.parse_args(argv)

    fake = ForgeFake(opts.seed, page_size=opts.page_size, rate_limit=opts.rate_limit,
                     retry_after=opts.retry_after, order=opts.order, cursor_ttl=opts.cursor_ttl,
                     cursor_pages=opts.cursor_pages, stale_cursor_status=opts.stale_cursor_status, empty_pages=opts.empty_pages,
                     prompt_delay_seconds=opts.prompt_delay_seconds)
    fake.add_app(opts.app_id, opts.environment, opts.email, opts.api_token,
                 records_per_minute=opts.records_per_minute, late_fraction=opts.late_fraction,
                 max_delay_seconds=opts.max_delay_seconds, awkward_fraction=opts.awkward_fraction)
    server = make_server(opts.host, opts.port, fake.wsgi(), threaded=True)
    url = f"http://{opts.host}:{server.server_port}"
    end = datetime.now(timezone.utc) - timedelta(minutes=1)
    print(url, flush=True)
    print(f"try: curl -u '{opts.email}:<api-token>' '{url}/v1/app/logs/{opts.app_id}"
          f"?environmentId={opts.environment[0]}&startDate={format_date(end - timedelta(minutes=5))}"
          f"&endDate={format_date(end)}'", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
