"""Client for Atlassian's App logs API (seed 000; research otlp-syslog-forge.md §4).

``GET {FORGE_API_URL}/v1/app/logs/<appId>?environmentId=…&startDate=…&endDate=…``
with Basic ``email:api_token`` (UTF-8, :func:`basic_authorization`); ``level`` and ``installationContext`` are
repeated parameters; dates are UTC with milliseconds (``2026-11-21T10:00:00.000Z``);
the answer is ``{"appLogs": [OTLP LogRecord JSON…], "cursor": "…"}`` and the
next page is asked for with ``cursor`` until none comes back.

Documented limits, checked here before any call is made: a window is at most
one hour and lies within the last 14 days. Every outcome that is not a page
becomes one of a few :class:`ForgeError` kinds, so the poller can decide
between "retry later", "wait for the rate limit" and "pause the source".
Error messages never include the email or token. A ``Retry-After`` is read as
seconds or an HTTP date and capped at :data:`RETRY_AFTER_CAP_SECONDS`.

Decoding a page (:func:`decode_page`, giving a :class:`Page`)
-------------------------------------------------------------
One bad record never fails a page (PITFALLS: JavaScript apps log lone
surrogates and numbers beyond float range, which orjson refuses).

* Fast path: ``orjson.loads`` of the whole page, then one cheap check per
  record that it already has the common shape (string time of digits,
  string severity text, ``{"stringValue": str}`` body and attribute values,
  only LogRecord keys with scalar values). Such records are kept as they are.
* Tolerant path, only when orjson refuses the page: invalid UTF-8 bytes are
  replaced by U+FFFD, the page is parsed by the standard library with every
  number orjson cannot hold kept as its original text (``1e400``, ``NaN``,
  ``Infinity``; an integer beyond float range), and every string's lone
  surrogates become U+FFFD. An entry of ``appLogs`` nested deeper than the
  parser's recursion limit (~1,000 levels) makes the entries be read one by
  one, and that entry is unreadable. A page that is still not JSON (cut off,
  not an object, no ``appLogs`` list, a cursor that is not a string) is
  :class:`MalformedPage`, as before.

Either way, a record not of the common shape is *repaired* when possible:

* ``timeUnixNano``: a string of ASCII digits, or missing. A non-negative
  integral number becomes its digits; anything else (negative, text, null)
  is removed (the record still delivers, with no timestamp).
* ``severityText``: a string or missing; null removed; any other value its
  compact JSON text.
* ``severityNumber``: an int in int64, or missing (null removed); an integral
  finite float becomes an int; anything else (``1e400``, a string, a bool)
  is kept as its text, which the formats carry as ``forge.severity_number``.
* ``body``: an OTLP AnyValue (:func:`broker.formats.fields.any_value`): a
  bare string becomes ``stringValue``, a number ``intValue``/``doubleValue``,
  a bool ``boolValue``, an array ``arrayValue``, an object that is not an
  AnyValue ``kvlistValue``; values no AnyValue type can hold (an int beyond
  int64, a double beyond float range) become a ``stringValue`` of their text;
  nesting beyond ``fields.MAX_DEPTH`` levels becomes the JSON text of the rest.
  A null body is removed.
* ``attributes``: a list of ``{"key": str, "value": AnyValue}``. An object
  instead of a list becomes its members; an entry that is not an object or
  has no key is dropped; a non-string key becomes its JSON text.
* ``traceId``, ``spanId``, ``eventName``, ``observedTimeUnixNano``: strings
  (others become their text; null removed); ``flags`` and
  ``droppedAttributesCount`` ints (others removed); any other key is kept when
  its value is a scalar, else as its compact JSON text.

A record is *unreadable* — dropped, counted in :attr:`Page.unreadable`, and
the first one described in :attr:`Page.sample` — when it is not a JSON object
at all (a string, number, array or null in ``appLogs``) or is an object with
none of the LogRecord fields (``{}``, ``{"error": …}``). Every record a page
returns can be written by ``orjson.dumps`` (the poller fingerprints and stores
records with it) and gives the same result whichever path decoded it, so
fingerprints match when a window is re-read.

The sample is for the owner's eyes, so it carries the shape, not the
content: ``entry 3 (array): [1,"<5 chars>",{"a":"<12 chars>"}]`` — every string
value replaced by its length, object keys cut to 24 characters, at most 8
members per level and 3 levels, printable ASCII, at most 300 characters.
"""

from __future__ import annotations

import base64
import email.utils
import json
import logging
import math
import re
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable, Iterator
from urllib.parse import quote

import orjson
import requests

from broker.formats import fields

log = logging.getLogger(__name__)

MAX_WINDOW = timedelta(hours=1)
MAX_AGE = timedelta(days=14)
LEVELS = ("TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL")
MAX_CONTEXTS = 50
# Connect fast; a page of a busy app can take a while to assemble server-side.
TIMEOUT = (3.05, 30)
# A page is read whole into memory: bound it. Real pages are a few MB at most;
# the bound counts bytes after requests un-gzips them.
MAX_PAGE_BYTES = 64 * 1024 * 1024
# The read timeout is per socket read: a trickled answer is cut off after this long in all.
PAGE_DEADLINE_SECONDS = 60.0
USER_AGENT = "forgedrain/1 (+log-drain broker)"
# The longest wait a Retry-After may impose: one bogus header must not block an app for days.
RETRY_AFTER_CAP_SECONDS = 900
SAMPLE_CHARS = 300


class ForgeError(Exception):
    """Base of every App logs API failure; ``kind`` names the class of outcome."""

    kind = "error"

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class AuthError(ForgeError):
    kind = "auth"  # 401/403: the email or API token is wrong, revoked, or lacks log access


class NotFound(ForgeError):
    kind = "not_found"  # 404: no such app, or no such environment of it


class BadWindow(ForgeError):
    kind = "bad_request"  # 400 (or refused before the call): window or parameters


class RateLimited(ForgeError):
    kind = "rate_limited"  # 429

    def __init__(self, message: str, retry_after: float | None):
        super().__init__(message, 429)
        self.retry_after = retry_after


class ServerError(ForgeError):
    kind = "server"  # 5xx and unexpected statuses


class NetworkError(ForgeError):
    kind = "network"  # connect/read timeouts, resets, DNS


class MalformedPage(ForgeError):
    kind = "malformed"  # a 200 whose body is not a page


@dataclass(frozen=True)
class Credentials:
    email: str
    api_token: str

    def __repr__(self) -> str:  # keep the token out of tracebacks and logs
        return f"Credentials(email={self.email!r}, api_token=<hidden>)"


def basic_authorization(credentials: Credentials) -> str:
    """``Basic base64(email:api_token)`` with both encoded as UTF-8 (RFC 7617 §2.1 ``charset="UTF-8"``,
    what curl and Node send). requests' own ``auth=`` encodes Latin-1: an RFC 6531 address such as
    ``用户@例子.测试`` would raise, and ``bjørn@…`` would reach Atlassian as bytes it cannot read."""
    pair = f"{credentials.email}:{credentials.api_token}".encode("utf-8")
    return "Basic " + base64.b64encode(pair).decode("ascii")


@dataclass(frozen=True)
class Query:
    app_id: str
    environment_id: str
    start: datetime
    end: datetime
    levels: tuple[str, ...] = ()
    contexts: tuple[str, ...] = ()


def format_date(moment: datetime) -> str:
    """UTC with exactly three fractional digits and a Z, as the API documents."""
    utc = moment.astimezone(timezone.utc)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def check_query(query: Query, now: datetime) -> None:
    """Refuse, before spending a call, what the API would refuse with 400."""
    if query.start.tzinfo is None or query.end.tzinfo is None:
        raise BadWindow("window times must carry a time zone")
    if query.end <= query.start:
        raise BadWindow("window end must be after its start")
    if query.end - query.start > MAX_WINDOW:
        raise BadWindow("window is longer than one hour")
    if query.start < now - MAX_AGE:
        raise BadWindow("window starts more than 14 days ago")
    if any(level not in LEVELS for level in query.levels):
        raise BadWindow("unknown log level")
    if len(query.contexts) > MAX_CONTEXTS:
        raise BadWindow(f"more than {MAX_CONTEXTS} installation contexts")


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date.

    A date in the past is 0; anything else unreadable is None (the caller backs
    off on its own). The result is capped at :data:`RETRY_AFTER_CAP_SECONDS`,
    with a warning, so one bogus header cannot block an app for days.
    """
    if not value:
        return None
    value = value.strip()
    if re.fullmatch(r"[0-9]+", value, re.ASCII):
        seconds = float(int(value))
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:  # "-0000" (RFC 5322: UTC, origin unknown)
            when = when.replace(tzinfo=timezone.utc)
        try:
            seconds = max(0.0, when.timestamp() - (time.time() if now is None else now))
        except (OverflowError, OSError, ValueError):
            return None
    if seconds > RETRY_AFTER_CAP_SECONDS:
        shown = "".join(c if c.isprintable() else "?" for c in value[:40])
        log.warning("Retry-After %r asks for %.0f s; waiting the cap of %d s instead",
                    shown, seconds, RETRY_AFTER_CAP_SECONDS)
        return float(RETRY_AFTER_CAP_SECONDS)
    return seconds


# --- decoding pages (see the module docstring) -----------------------------------------

@dataclass(frozen=True)
class Page:
    """One decoded page of the App logs API."""

    records: list[dict]       # the readable records, normalised (module docstring)
    cursor: str | None        # the next page's cursor; None on the last page
    unreadable: int = 0       # records dropped because they cannot be read at all
    sample: str | None = None  # the first unreadable record's shape, redacted, ≤ 300 printable chars
    repaired: int = 0         # records kept after a repair (not of the common shape)


# LogRecord fields (OTLP/JSON names): a record with none of them is not a log record.
LOG_RECORD_KEYS = frozenset({
    "timeUnixNano", "observedTimeUnixNano", "severityNumber", "severityText", "body", "attributes",
    "droppedAttributesCount", "flags", "traceId", "spanId", "eventName",
})
_STRING_KEYS = ("traceId", "spanId", "eventName", "observedTimeUnixNano")
_INT_KEYS = ("flags", "droppedAttributesCount")
_SCALARS = (str, int, float, bool, type(None))
_NO_BODY = {"stringValue": ""}
_NO_ATTRIBUTES: list = []
_TOO_DEEP = object()  # an entry nested too deeply to walk: unreadable
_SURROGATE = re.compile("[\ud800-\udfff]")


def _common(record) -> bool:
    """Whether a record (from orjson) already has the common shape, so it is kept untouched."""
    if type(record) is not dict or not record or not record.keys() <= LOG_RECORD_KEYS:
        return False
    value = record.get("timeUnixNano", "0")
    if type(value) is not str or not value.isdigit() or not value.isascii():
        return False
    if type(record.get("severityText", "")) is not str:
        return False
    value = record.get("severityNumber", 0)
    if type(value) is not int or not -2**63 <= value < 2**63:
        return False
    value = record.get("body", _NO_BODY)
    if type(value) is not dict or len(value) != 1 or type(value.get("stringValue")) is not str:
        return False
    for key in _STRING_KEYS:
        if type(record.get(key, "")) is not str:
            return False
    for key in _INT_KEYS:
        if type(record.get(key, 0)) is not int:
            return False
    items = record.get("attributes", _NO_ATTRIBUTES)
    if type(items) is not list:
        return False
    try:  # indexing, with the odd shapes caught, costs less than checking each type first
        for item in items:
            value = item["value"]
            if type(item["key"]) is not str or type(value["stringValue"]) is not str or len(item) != 2 \
                    or len(value) != 1:
                return False
    except (KeyError, TypeError, IndexError):
        return False
    return True


def _repair(record: dict) -> dict | None:
    """A record not of the common shape, normalised; None when it is no log record at all."""
    if not record.keys() & LOG_RECORD_KEYS:
        return None
    out: dict = {}
    for key, value in record.items():
        if value is None:
            continue
        if key == "timeUnixNano":
            if type(value) is str and value.isascii() and value.isdigit():
                out[key] = value
            elif type(value) is int and value >= 0:
                out[key] = str(value)
            elif type(value) is float and math.isfinite(value) and value >= 0 and value.is_integer():
                out[key] = str(int(value))
        elif key == "severityText":
            out[key] = value if type(value) is str else fields.json_text(value)
        elif key == "severityNumber":
            if type(value) is float and math.isfinite(value) and value.is_integer():
                value = int(value)
            out[key] = value if type(value) is int and -2**63 <= value < 2**63 else (
                value if type(value) is str else fields.json_text(value))
        elif key == "body":
            out[key] = fields.any_value(value)
        elif key == "attributes":
            items = ([{"key": k, "value": v} for k, v in value.items()] if type(value) is dict
                     else value if type(value) is list else ())
            out[key] = [pair for item in items if (pair := fields.key_value(item, 1)) is not None]
        elif key in _STRING_KEYS:
            out[key] = value if type(value) is str else fields.json_text(value)
        elif key in _INT_KEYS:
            if type(value) is int and -2**63 <= value < 2**64:
                out[key] = value
        elif type(value) in _SCALARS and (type(value) is not int or -2**63 <= value < 2**64):
            out[key] = value
        else:
            out[key] = fields.json_text(value)
    return out


def _clean(value):
    """A tolerantly parsed value with lone surrogates replaced, so orjson can write it."""
    kind = type(value)
    if kind is str:
        return value if value.isascii() or not _SURROGATE.search(value) else _SURROGATE.sub("\ufffd", value)
    if kind is list:
        return [_clean(item) for item in value]
    if kind is dict:
        return {_clean(key): _clean(item) for key, item in value.items()}
    return value


def _clean_entry(entry):
    try:
        return _clean(entry)
    except RecursionError:
        return _TOO_DEEP


def _number_text(text: str):
    """parse_float/parse_int/parse_constant: a number orjson would read alike, or its text."""
    if text[-1].isdigit() and "." not in text and "e" not in text and "E" not in text:
        number = int(text)
        if -2**63 <= number < 2**64:
            return number
        # orjson reads integers beyond 64 bits as floats
    try:
        number = float(text)
    except (ValueError, OverflowError):
        return text
    return number if math.isfinite(number) else text


def _loads(text: str):
    return json.loads(text, parse_float=_number_text, parse_int=_number_text, parse_constant=_number_text)


def _tolerant_loads(content: bytes, status: int):
    """The page parsed by the standard library (module docstring); entries cleaned one by one,
    so one too deep to walk is unreadable rather than the page."""
    text = content.decode("utf-8", "replace").removeprefix("\ufeff")
    try:
        page = _loads(text)
    except ValueError:
        raise MalformedPage("page is not JSON", status) from None
    except RecursionError:  # one entry nested beyond the parser: read the entries one by one
        page = _entry_by_entry(text, status)
    if type(page) is not dict:
        return page
    records = page.get("appLogs")
    cursor = page.get("cursor")
    return {"appLogs": [_clean_entry(entry) for entry in records] if type(records) is list else records,
            "cursor": _clean(cursor) if type(cursor) is str else cursor}


_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{},]')


def _entry_by_entry(text: str, status: int) -> dict:
    """A page whose whole parse hit the recursion limit: the ``appLogs`` entries found by a scan
    of strings and brackets and parsed one by one (one too deep is :data:`_TOO_DEEP`); the rest
    of the page, with ``appLogs`` emptied, parsed as usual."""
    stack: list[str] = []
    last_key = ""
    spans: list[tuple[int, int]] = []
    array_start = array_end = -1
    start = -1
    for match in _TOKEN.finditer(text):
        token = match.group()
        depth = len(stack)
        if token[0] == '"':
            if depth == 1:
                last_key = token
        elif token in "[{":
            if depth == 1 and token == "[" and last_key == '"appLogs"' and array_start < 0:
                array_start, start = match.end(), match.end()
            stack.append(token)
        elif token in "]}":
            if not stack or "[]{}".index(token) - "[]{}".index(stack.pop()) != 1:
                break
            if depth == 2 and token == "]" and start >= 0 and array_end < 0 and stack == ["{"]:
                if spans or text[start:match.start()].strip():  # not an empty array
                    spans.append((start, match.start()))
                array_end = match.start()
        elif token == "," and depth == 2 and start >= 0 and array_end < 0 and stack == ["{", "["]:
            spans.append((start, match.start()))
            start = match.end()
    if stack or array_start < 0 or array_end < 0:
        raise MalformedPage("page is not JSON", status)
    try:
        page = _loads(text[:array_start] + text[array_end:])
    except (ValueError, RecursionError):
        raise MalformedPage("page is not JSON", status) from None
    entries = []
    for first, last in spans:
        try:
            entries.append(_loads(text[first:last]))
        except RecursionError:
            entries.append(_TOO_DEEP)
        except ValueError:
            raise MalformedPage("page is not JSON", status) from None
    if type(page) is dict:
        page["appLogs"] = entries
    return page


def _redact(value, depth: int = 0):
    kind = type(value)
    if kind is str:
        return f"<{len(value)} chars>"
    if kind in (int, float, bool) or value is None:
        return value if kind is not float or math.isfinite(value) else str(value)
    if depth >= 3:
        return "<…>" if kind not in (list, dict) or value else value
    if kind is list:
        out = [_redact(item, depth + 1) for item in value[:8]]
        return out + ([f"<{len(value) - 8} more>"] if len(value) > 8 else [])
    if kind is dict:
        out = {str(key)[:24]: _redact(item, depth + 1) for key, item in list(value.items())[:8]}
        if len(value) > 8:
            out["<more>"] = len(value) - 8
        return out
    return f"<{kind.__name__}>"


def sample_of(index: int, entry) -> str:
    """The owner's view of an unreadable entry: its kind and shape, no content (module docstring)."""
    if entry is _TOO_DEEP:
        return f"entry {index} (nested too deeply to read)"
    kind = {dict: "object without LogRecord fields", list: "array", str: "string", bool: "bool",
            int: "number", float: "number", type(None): "null"}.get(type(entry), type(entry).__name__)
    try:
        shape = json.dumps(_redact(entry), separators=(",", ":"), ensure_ascii=True)
    except (TypeError, ValueError, RecursionError):
        shape = "?"
    text = f"entry {index} ({kind}): {shape}"
    text = "".join(c if " " <= c <= "~" else "?" for c in text)
    return text if len(text) <= SAMPLE_CHARS else text[:SAMPLE_CHARS - 3] + "..."


def decode_page(content: bytes, status: int = 200) -> Page:
    """A page's records and cursor from the body of a 200 (module docstring for the rules)."""
    try:
        page = orjson.loads(content)
    except orjson.JSONDecodeError:
        page = _tolerant_loads(content, status)
    records = page.get("appLogs") if type(page) is dict else None
    cursor = page.get("cursor") if type(page) is dict else None
    if type(records) is not list:
        raise MalformedPage("page has no appLogs list of records", status)
    if cursor is not None and type(cursor) is not str:
        raise MalformedPage("page cursor is not a string", status)
    cursor = cursor or None
    common = _common
    for index, record in enumerate(records):
        if not common(record):
            break
    else:
        return Page(records, cursor)
    kept = records[:index]
    unreadable = repaired = 0
    sample = None
    for index in range(index, len(records)):
        record = records[index]
        if common(record):
            kept.append(record)
            continue
        fixed = None
        if type(record) is dict:
            try:
                fixed = _repair(record)
            except (RecursionError, ValueError, TypeError):
                fixed = None
        if fixed is None:
            unreadable += 1
            if sample is None:
                sample = sample_of(index, record)
            continue
        repaired += 1
        kept.append(fixed)
    return Page(kept, cursor, unreadable, sample, repaired)


def _detail(content: bytes, reason: str | None) -> str:
    """A short, printable reason from an error body (Atlassian documents no error schema)."""
    try:
        body = orjson.loads(content)
        text = body.get("message") or body.get("error") if isinstance(body, dict) else None
    except orjson.JSONDecodeError:
        text = None
    if not isinstance(text, str):
        text = reason or ""
    text = "".join(c if c.isprintable() else " " for c in text)
    return text[:200]


def _read_bounded(response: requests.Response) -> bytes:
    """The body, at most MAX_PAGE_BYTES and PAGE_DEADLINE_SECONDS in all, else NetworkError."""
    deadline = time.monotonic() + PAGE_DEADLINE_SECONDS
    chunks, size = [], 0
    for chunk in response.iter_content(64 * 1024):
        size += len(chunk)
        if size > MAX_PAGE_BYTES:
            raise NetworkError(f"App logs API answered more than {MAX_PAGE_BYTES // (1024 * 1024)} MiB")
        if time.monotonic() > deadline:
            raise NetworkError(f"App logs API took more than {PAGE_DEADLINE_SECONDS:.0f} s to answer")
        chunks.append(chunk)
    return b"".join(chunks)


class ForgeClient:
    def __init__(self, base_url: str, session: requests.Session,
                 timeout: tuple[float, float] = TIMEOUT):
        self.base_url = base_url.rstrip("/")
        self.session = session
        self.timeout = timeout

    def _params(self, query: Query, cursor: str | None) -> list[tuple[str, str]]:
        params = [
            ("environmentId", query.environment_id),
            ("startDate", format_date(query.start)),
            ("endDate", format_date(query.end)),
        ]
        params += [("level", level) for level in query.levels]
        params += [("installationContext", context) for context in query.contexts]
        if cursor:
            params.append(("cursor", cursor))
        return params

    def fetch_page(self, credentials: Credentials, query: Query,
                   cursor: str | None = None) -> Page:
        """One call: the page's readable records, the next cursor (None on the last page)
        and what could not be read (:func:`decode_page`)."""
        url = f"{self.base_url}/v1/app/logs/{quote(query.app_id, safe='')}"
        try:
            response = self.session.get(
                url, params=self._params(query, cursor),
                headers={"Authorization": basic_authorization(credentials), "Accept": "application/json",
                         "User-Agent": USER_AGENT},
                timeout=self.timeout, stream=True,
            )
            with response:
                content = _read_bounded(response)
        except requests.Timeout:
            raise NetworkError("App logs API did not answer in time") from None
        except requests.RequestException as exc:
            raise NetworkError(f"App logs API unreachable ({type(exc).__name__})") from None
        status = response.status_code
        if status in (401, 403):
            raise AuthError(f"HTTP {status}: email or API token refused", status)
        if status == 404:
            raise NotFound("HTTP 404: app or environment not found", status)
        if status == 400:
            raise BadWindow(f"HTTP 400: {_detail(content, response.reason)}", status)
        if status == 429:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            raise RateLimited("HTTP 429: rate limited", retry_after)
        if status != 200:
            raise ServerError(f"HTTP {status}", status)
        return decode_page(content, status)

    def pages(self, credentials: Credentials, query: Query, *, now: datetime | None = None,
              before_call: Callable[[], None] | None = None) -> Iterator[Page]:
        """Every page of ``query``, following ``cursor``; memory stays at one page.

        ``before_call`` runs before each HTTP call (the poller's rate limiter).
        A failure mid-way raises; the caller restarts the window, since a cursor
        is only good for the query that produced it.
        """
        check_query(query, now or datetime.now(timezone.utc))
        cursor: str | None = None
        while True:
            if before_call is not None:
                before_call()
            page = self.fetch_page(credentials, query, cursor)
            yield page
            cursor = page.cursor
            if cursor is None:
                return

    def verify(self, credentials: Credentials, app_id: str, environment_id: str,
               now: datetime | None = None) -> int:
        """One small query proving the credentials open this app's environment.

        Asks for the minute that ended two minutes ago (inside Atlassian's own
        ingestion lag) and reads the first page only; returns its count of readable records.
        """
        now = now or datetime.now(timezone.utc)
        end = now - timedelta(minutes=2)
        query = Query(app_id, environment_id, end - timedelta(minutes=1), end)
        check_query(query, now)
        return len(self.fetch_page(credentials, query).records)
