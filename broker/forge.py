"""Client for Atlassian's App logs API (seed 000; research otlp-syslog-forge.md §4).

``GET {FORGE_API_URL}/v1/app/logs/<appId>?environmentId=…&startDate=…&endDate=…``
with Basic ``email:api_token``; ``level`` and ``installationContext`` are
repeated parameters; dates are UTC with milliseconds (``2026-11-21T10:00:00.000Z``);
the answer is ``{"appLogs": [OTLP LogRecord JSON…], "cursor": "…"}`` and the
next page is asked for with ``cursor`` until none comes back.

Documented limits, checked here before any call is made: a window is at most
one hour and lies within the last 14 days. Every outcome that is not a page
becomes one of a few :class:`ForgeError` kinds, so the poller can decide
between "retry later", "wait for the rate limit" and "pause the source".
Error messages never include the email or token.

Pages are decoded with orjson: it parses these OTLP pages several times faster
than the standard library, and the poller spends its CPU here.
"""

from __future__ import annotations

import email.utils
import re
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable, Iterator
from urllib.parse import quote

import orjson
import requests

MAX_WINDOW = timedelta(hours=1)
MAX_AGE = timedelta(days=14)
LEVELS = ("TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL")
MAX_CONTEXTS = 50
# Connect fast; a page of a busy app can take a while to assemble server-side.
TIMEOUT = (3.05, 30)
USER_AGENT = "forgedrain/1 (+log-drain broker)"


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
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), if usable."""
    if not value:
        return None
    value = value.strip()
    if re.fullmatch(r"\d{1,7}", value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _detail(response: requests.Response) -> str:
    """A short, printable reason from an error body (Atlassian documents no error schema)."""
    try:
        body = orjson.loads(response.content)
        text = body.get("message") or body.get("error") if isinstance(body, dict) else None
    except orjson.JSONDecodeError:
        text = None
    if not isinstance(text, str):
        text = response.reason or ""
    text = "".join(c if c.isprintable() else " " for c in text)
    return text[:200]


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
                   cursor: str | None = None) -> tuple[list[dict], str | None]:
        """One call: the page's records and the next cursor (None on the last page)."""
        url = f"{self.base_url}/v1/app/logs/{quote(query.app_id, safe='')}"
        try:
            response = self.session.get(
                url, params=self._params(query, cursor),
                auth=(credentials.email, credentials.api_token),
                headers={"Accept": "application/json", "User-Agent": USER_AGENT},
                timeout=self.timeout,
            )
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
            raise BadWindow(f"HTTP 400: {_detail(response)}", status)
        if status == 429:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            raise RateLimited("HTTP 429: rate limited", retry_after)
        if status != 200:
            raise ServerError(f"HTTP {status}", status)
        try:
            page = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise MalformedPage("page is not JSON", status) from None
        records = page.get("appLogs") if isinstance(page, dict) else None
        next_cursor = page.get("cursor") if isinstance(page, dict) else None
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise MalformedPage("page has no appLogs list of records", status)
        if next_cursor is not None and not isinstance(next_cursor, str):
            raise MalformedPage("page cursor is not a string", status)
        return records, next_cursor or None

    def pages(self, credentials: Credentials, query: Query, *, now: datetime | None = None,
              before_call: Callable[[], None] | None = None) -> Iterator[list[dict]]:
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
            records, cursor = self.fetch_page(credentials, query, cursor)
            yield records
            if cursor is None:
                return

    def verify(self, credentials: Credentials, app_id: str, environment_id: str,
               now: datetime | None = None) -> int:
        """One small query proving the credentials open this app's environment.

        Asks for the minute that ended two minutes ago (inside Atlassian's own
        ingestion lag) and reads the first page only; returns its record count.
        """
        now = now or datetime.now(timezone.utc)
        end = now - timedelta(minutes=2)
        query = Query(app_id, environment_id, end - timedelta(minutes=1), end)
        check_query(query, now)
        records, _ = self.fetch_page(credentials, query)
        return len(records)
