"""Polling Forge sources: lease, windows, checkpoint, outbox (SPEC §3, §6).

Atlassian documents neither the App logs API's page size, nor the order of
records within a window, nor how long a cursor lives, nor what a stale
cursor answers. Polling must progress whatever they are, so it never needs a
cursor to outlive one poll, never assumes an order, and never throws away
what it read. One poll of one source, holding its lease:

1. **Windows sized to the budget.** A window is any ``[start, end)`` up to an
   hour. Each source keeps an estimate of its density (records per minute of
   log time, from the windows it read) and of the API's page size (the most
   records seen on a page that carried a cursor). A new window is sized so
   that its expected pages fit in a share of the calls the app's budget has
   free now (:data:`WINDOW_FILL`), so it is read to its last page in one go,
   long before any plausible cursor lifetime. A source with no estimate yet
   starts with a :data:`PROBE_WINDOW`.
2. **Shrink, never restart.** A window that cannot finish (its cursor refused
   with a 4xx, failing twice in a row with a 5xx, or 40 pages read without an
   end) is cut to its first half and read again from its start without a
   cursor; what was read is already stored, and its fingerprints drop the
   re-read copies. The records it stored raise the density estimate, so the
   next windows are smaller still. A window cut off by the time box or the
   budget keeps its cursor for the next poll, which resumes it or, if the
   cursor is refused, shrinks it. Windows halve down to a millisecond; a
   millisecond no poll can read to its end is recorded as a gap.
3. **Two passes over the log, each record read about twice at the live edge.**
   A *fresh* window runs from the checkpoint to ``lag`` before now, so records
   reach drains soon after Atlassian has them. Records that reach the API
   late are caught by the *sweep*: every part of the log is read once more
   when it is ``overlap`` old, from ``settled_until`` (everything before it has
   been read at least ``overlap`` after its time) towards the checkpoint.
   While a source is behind by more than ``overlap``, one read settles a
   window at once: catching up reads every record once. Sweeps come first,
   so an app whose budget cannot pay for two passes falls behind until its
   fresh windows are settled when read, and degrades to one pass. Each
   source learns its lag from the sweep (:meth:`Poller._adapted_lag`).
4. **Over capacity is a state.** When the app's density (every source of it
   shares its budget) exceeds what the budget can export (calls per minute ×
   records per page) and the source is behind,
   ``over_capacity_since`` is set with the figures, shown to the owner; it
   keeps polling as fast as the budget allows, and what falls past the API's
   14 days is recorded as a gap.
5. Each page is stored in one transaction, fenced by the lease: the records'
   fingerprints go into ``forge_seen`` (those already there are dropped), new
   records into one compressed outbox batch, the window's cursor onto the
   source; the last page of a window moves the checkpoint (and the settled
   horizon) in the same transaction. Records the decoder could not read are
   counted (``unreadable``) and the window completes.
6. Errors: 429 blocks the app for its (bounded) Retry-After; 5xx, network and
   malformed pages back off with jitter, checkpoint unchanged; 401/403, 404
   and 400 on a window's first page pause the source with the reason (but a
   400 for a window ending near now lengthens the source's lag: the API's
   clock may be behind ours).

Every write checks ``lease_token`` and ``state = 'active'``: a poller that
outlived its lease, or whose source was edited, deleted, paused or
deprovisioned meanwhile, changes nothing.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable, ContextManager

import orjson
import psycopg

from broker import activity, forge, outbox, plans
from broker.forge import Credentials, ForgeClient, Query
from broker.ratelimit import RateLimiter
from broker.vault import Vault

log = logging.getLogger(__name__)

MAX_WINDOW = forge.MAX_WINDOW
# The shortest window: the API's dates are in milliseconds.
MIN_WINDOW = timedelta(milliseconds=1)
# A source whose density is unknown reads this much first, then sizes from what it saw.
PROBE_WINDOW = timedelta(minutes=10)
# A window's expected pages fill this share of the calls free for it: Poisson
# noise and a rising rate then rarely push it past the budget.
WINDOW_FILL = 0.75
# At most this many pages are planned for one window, whatever the budget: a
# page every ~0.5 s from Atlassian finishes it well inside a 30 s cursor.
MAX_WINDOW_PAGES = 20
# Weight of the newest window in the density estimate, for a window of at least
# DENSITY_SPAN of log; shorter windows weigh in proportion.
DENSITY_WEIGHT = 0.5
DENSITY_SPAN = timedelta(minutes=5)
# Stay this far inside the API's 14 days so clock skew never earns a 400.
AGE_MARGIN = timedelta(minutes=5)
# A 400 for a window ending this close to now is taken for the API's clock
# being behind ours (the end in its future): the source's lag grows, it is not
# paused.
CLOCK_SKEW_SUSPECT = timedelta(minutes=5)
# A source caught up is due again one interval after its claim, less this: the
# clock's tick that falls on the due time runs a moment after it, and would
# otherwise find the source not yet due and leave it a whole tick.
DUE_EARLY_SECONDS = 2.0
# A sweep that re-read at least LAG_SAMPLE records adjusts the source's lag: up
# when more than LAG_RAISE_AT of them had been missed by the fresh window, back
# down when fewer than LAG_EASE_AT had.
LAG_SAMPLE = 20
LAG_RAISE_AT = 0.1
LAG_EASE_AT = 0.02
# Waiting this long for budget is cheaper than giving the source back.
MAX_BUDGET_WAIT_SECONDS = 1.0
FAILURE_BACKOFF_BASE_SECONDS = 15
FAILURE_BACKOFF_MAX_SECONDS = 600

Connect = Callable[[], ContextManager[psycopg.Connection]]


@dataclass
class PollSettings:
    lag: timedelta
    overlap: timedelta
    # Stop starting windows for one source after this long (the lease is longer)...
    time_box_seconds: float = 20.0
    # ...and stop reading an open window's pages after this long; its cursor is
    # kept for the next poll.
    window_box_seconds: float = 40.0
    lease_seconds: int = 180


@dataclass
class Outcome:
    """What one poll did (for logs, metrics and tests)."""

    source_id: uuid.UUID
    calls: int = 0
    stored: int = 0
    dropped_as_seen: int = 0
    unreadable: int = 0
    windows: int = 0
    shrunk: int = 0
    result: str = "idle"
    errors: list[str] = field(default_factory=list)


# Sources of these resources are polled; a failed or deprovisioned resource's never are, whatever
# state a source was left in.
LIVE_STATES = ("provisioning", "provisioned")

CLAIM = """
WITH due AS (
    SELECT id FROM sources
    WHERE state = 'active' AND next_poll_at <= now()
      AND (lease_expires_at IS NULL OR lease_expires_at < now())
      AND EXISTS (SELECT 1 FROM resources r WHERE r.id = sources.resource_id AND r.state = ANY(%(live)s))
    ORDER BY next_poll_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE sources s
SET lease_token = gen_random_uuid(),
    lease_expires_at = now() + make_interval(secs => %(lease)s),
    last_poll_at = now()
FROM due, resources r
WHERE s.id = due.id AND r.id = s.resource_id
RETURNING s.id, s.resource_id, s.app_id, s.environment_id, s.email, s.api_token_enc, s.levels,
          s.installation_contexts, s.checkpoint, COALESCE(s.settled_until, s.checkpoint) AS settled_until,
          s.window_start, s.window_end, s.window_cursor, s.window_opened_at, s.window_pages,
          s.window_records, s.density_per_minute, s.page_records, s.over_capacity_since, s.lag_seconds, s.lag_changed_at,
          s.lease_token, s.consecutive_failures, r.plan, now() AS db_now
"""


def claim(conn: psycopg.Connection, limit: int, lease_seconds: int) -> list[dict]:
    """Lease up to ``limit`` due sources (never one another poller holds)."""
    with conn.transaction():
        return conn.execute(CLAIM, {"limit": limit, "lease": lease_seconds, "live": list(LIVE_STATES)}).fetchall()


def count_due(conn: psycopg.Connection, cap: int) -> int:
    """How many active sources are due and unleased, counting at most ``cap``."""
    return conn.execute(
        """
        SELECT count(*) AS n FROM (
            SELECT 1 FROM sources
            WHERE state = 'active' AND next_poll_at <= now()
              AND (lease_expires_at IS NULL OR lease_expires_at < now())
              AND EXISTS (SELECT 1 FROM resources r WHERE r.id = sources.resource_id AND r.state = ANY(%s))
            LIMIT %s) due
        """,
        (list(LIVE_STATES), cap),
    ).fetchone()["n"]


def seconds_until_due(conn: psycopg.Connection) -> float | None:
    """Seconds until the next source that :func:`claim` could lease falls due (0 or less: due now);
    None when there is none."""
    row = conn.execute(
        """
        SELECT EXTRACT(EPOCH FROM next_poll_at - now())::float AS wait FROM sources
        WHERE state = 'active' AND (lease_expires_at IS NULL OR lease_expires_at < now())
          AND EXISTS (SELECT 1 FROM resources r WHERE r.id = sources.resource_id AND r.state = ANY(%s))
        ORDER BY next_poll_at LIMIT 1
        """,
        (list(LIVE_STATES),),
    ).fetchone()
    return None if row is None else row["wait"]


def fingerprint(record: dict) -> bytes:
    """Identity of a record across re-reads: timestamp, invocation, severity, ids and body."""
    invocation = ""
    for attribute in record.get("attributes") or ():
        if isinstance(attribute, dict) and attribute.get("key") == "invocationId":
            value = attribute.get("value")
            invocation = value.get("stringValue", "") if isinstance(value, dict) else ""
            break
    body = record.get("body")
    parts = (
        str(record.get("timeUnixNano", "")), str(invocation), str(record.get("severityText", "")),
        str(record.get("traceId", "")), str(record.get("spanId", "")),
        orjson.dumps(body, option=orjson.OPT_SORT_KEYS).decode() if body is not None else "",
    )
    return hashlib.blake2b("\x1f".join(parts).encode("utf-8", "surrogatepass"), digest_size=16).digest()


def record_time(record: dict, fallback: datetime) -> datetime:
    try:
        nanos = int(record["timeUnixNano"])
        return datetime.fromtimestamp(nanos / 1e9, timezone.utc)
    except (KeyError, TypeError, ValueError, OverflowError, OSError):
        return fallback


def _to_millis(moment: datetime) -> datetime:
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def failure_backoff(failures: int, rng: random.Random | None = None) -> float:
    ceiling = min(FAILURE_BACKOFF_MAX_SECONDS, FAILURE_BACKOFF_BASE_SECONDS * 2 ** min(failures, 10))
    return ceiling * (0.5 + (rng or random).random() / 2)


class LostLease(Exception):
    """The lease is gone (expired and taken, or the source edited, deleted, paused, deprovisioned)."""


FENCE = """
SELECT 1 FROM sources WHERE id = %(id)s AND lease_token = %(lease)s AND state = 'active' FOR UPDATE
"""


def window_length(density: float | None, page_records: int | None, pages: float) -> timedelta:
    """Log time a new window covers so that it is expected to take ``pages`` pages.

    Unknown density: a probe. Known density but no page with a cursor seen yet
    (every window so far fit in one page): as long as the API allows.
    """
    if density is None:
        return PROBE_WINDOW
    if not page_records or density <= 0:
        return MAX_WINDOW
    minutes = pages * page_records / density
    return min(MAX_WINDOW, max(MIN_WINDOW, timedelta(minutes=minutes)))


def _minutes(delta: timedelta) -> float:
    return max(delta.total_seconds(), 0.001) / 60




class Poller:
    def __init__(self, connect: Connect, client_for: Callable[[], ForgeClient], limiter: RateLimiter,
                 vault: Vault, settings: PollSettings, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.connect = connect
        self.client_for = client_for
        self.limiter = limiter
        self.vault = vault
        self.settings = settings
        self.clock = clock
        self.sleep = sleep
        # Records per minute one pass can export: calls per minute x records per page.
        self.calls_per_minute = (limiter.limit - limiter.reserve) * 60 / (limiter.period_us / 1_000_000)

    # --- fenced writes -------------------------------------------------------

    def _fenced(self, conn: psycopg.Connection, source: dict) -> None:
        if conn.execute(FENCE, {"id": source["id"], "lease": source["lease_token"]}).fetchone() is None:
            raise LostLease(str(source["id"]))

    def _store_page(self, source: dict, page: forge.Page, window: tuple[datetime, datetime],
                    asked_at: datetime, target_end: datetime, interval: timedelta, outcome: Outcome) -> None:
        start, end = window
        records, cursor = page.records, page.cursor
        returned = len(records) + page.unreadable
        prints, times, keep = [], [], []
        for record in records:
            prints.append(fingerprint(record))
            # A record without a time is filed at the window's end: its print must
            # outlive every window that can serve it again.
            times.append(record_time(record, end))
        done = cursor is None
        swept = source.setdefault("swept", [0, 0])  # this window's, in this poll
        with self.connect() as conn, conn.transaction():
            self._fenced(conn, source)
            fresh: set[bytes] = set()
            if prints:
                rows = conn.execute(
                    "INSERT INTO forge_seen (source_id, fingerprint, ts) "
                    "SELECT %s, f, t FROM unnest(%s::bytea[], %s::timestamptz[]) AS x(f, t) "
                    "ON CONFLICT DO NOTHING RETURNING fingerprint",
                    (source["id"], prints, times),
                ).fetchall()
                fresh = {bytes(r["fingerprint"]) for r in rows}
            checkpoint = source["checkpoint"]
            for record, fp, ts in zip(records, prints, times):
                new = fp in fresh
                if new:
                    fresh.discard(fp)  # a twin later in the same page is a duplicate
                    keep.append((record, ts))
                if ts < checkpoint:  # re-read by the sweep: was it there for the fresh window?
                    swept[new] += 1
            if keep:
                outbox.append_forge(conn, source["resource_id"], source["id"], [r for r, _ in keep],
                                    [t for _, t in keep])
                activity.add(conn, source["resource_id"], source["id"], "stored",
                             activity.minutes([t for _, t in keep]))
            if page.unreadable:
                conn.execute(
                    "UPDATE sources SET unreadable = unreadable + %s, unreadable_at = now(), "
                    "unreadable_sample = COALESCE(%s, unreadable_sample) WHERE id = %s",
                    (page.unreadable, page.sample, source["id"]),
                )
            if not done:
                conn.execute(
                    """
                    UPDATE sources SET window_start = %(start)s, window_end = %(end)s, window_cursor = %(cursor)s,
                        window_opened_at = COALESCE(window_opened_at, %(asked)s),
                        window_pages = window_pages + 1, window_records = window_records + %(n)s,
                        page_records = GREATEST(COALESCE(page_records, 0), %(n)s)
                    WHERE id = %(id)s
                    """,
                    {"start": start, "end": end, "cursor": cursor, "asked": asked_at, "n": returned,
                     "id": source["id"]},
                )
            else:
                progress = self._completion(source, window, asked_at, returned, target_end, interval, swept)
                progress["over"] = self._over_capacity(conn, source, progress)
                conn.execute(
                    """
                    UPDATE sources SET checkpoint = %(checkpoint)s, settled_until = %(settled)s,
                        window_start = NULL, window_end = NULL, window_cursor = NULL, window_opened_at = NULL,
                        window_pages = 0, window_records = 0, density_per_minute = %(density)s,
                        capacity_per_minute = %(capacity)s, lag_seconds = %(lag)s,
                        lag_changed_at = CASE WHEN lag_seconds IS DISTINCT FROM %(lag)s THEN %(asked)s
                                              ELSE lag_changed_at END,
                        over_capacity_since = CASE WHEN %(over)s THEN COALESCE(over_capacity_since, now()) END,
                        consecutive_failures = 0, last_error = NULL, last_success_at = now(),
                        backfill_from = CASE WHEN backfill_until <= %(checkpoint)s THEN NULL ELSE backfill_from END,
                        backfill_until = CASE WHEN backfill_until <= %(checkpoint)s THEN NULL ELSE backfill_until END
                    WHERE id = %(id)s
                    """,
                    {**progress, "id": source["id"]},
                )
                # Every later window starts at or after the settled horizon: older prints are never needed.
                conn.execute("DELETE FROM forge_seen WHERE source_id = %s AND ts < %s",
                             (source["id"], progress["settled"]))
        outcome.stored += len(keep)
        outcome.dropped_as_seen += len(records) - len(keep)
        outcome.unreadable += page.unreadable
        if done:
            was_over = source["over_capacity_since"] is not None
            source.update(checkpoint=progress["checkpoint"], settled_until=progress["settled"],
                          window_start=None, window_end=None, window_cursor=None, window_opened_at=None,
                          window_pages=0, window_records=0, density_per_minute=progress["density"],
                          over_capacity_since=(source["over_capacity_since"] or asked_at) if progress["over"] else None,
                          swept=[0, 0])
            outcome.windows += 1
            if progress["lag"] != source["lag_seconds"]:
                log.info("source=%s lag=%s s (the sweep found %d of %d records new)", source["id"],
                         progress["lag"], swept[1], sum(swept))
                source["lag_seconds"] = progress["lag"]
                source["lag_changed_at"] = asked_at
            if progress["over"] != was_over:
                log.warning("source=%s over_capacity=%s density=%.1f/min capacity=%s/min", source["id"],
                            progress["over"], progress["density"], progress["capacity"])
        else:
            source.update(window_start=start, window_end=end, window_cursor=cursor,
                          window_opened_at=source["window_opened_at"] or asked_at,
                          window_pages=source["window_pages"] + 1,
                          window_records=source["window_records"] + returned,
                          page_records=max(source["page_records"] or 0, returned))

    def _completion(self, source: dict, window: tuple[datetime, datetime], asked_at: datetime, returned: int,
                    target_end: datetime, interval: timedelta, swept: list[int]) -> dict:
        """Where a finished window leaves the source: checkpoint, settled horizon, density, capacity."""
        start, end = window
        opened = source["window_opened_at"] or asked_at
        checkpoint = max(source["checkpoint"], end)
        settled = source["settled_until"]
        if start <= settled:
            # Read at ``opened``: records up to ``overlap`` late were all visible before this.
            settled = max(settled, _to_millis(min(end, opened - self.settings.overlap)))
        settled = min(settled, checkpoint)
        sample = (source["window_records"] + returned) / _minutes(end - start)
        density = source["density_per_minute"]
        if density is None:
            density = sample
        else:
            # A window weighs by what it could show: a few seconds of a quiet log say little,
            # but a window sized to many pages that came back nearly empty says the
            # estimate is too high (after a burst, say), however short it was.
            expected_pages = density * _minutes(end - start) / (source["page_records"] or 20)
            weight = DENSITY_WEIGHT * min(1.0, max((end - start) / DENSITY_SPAN, expected_pages))
            density = weight * sample + (1 - weight) * density
        capacity = self.calls_per_minute * source["page_records"] if source["page_records"] else None
        behind = target_end - checkpoint > max(2 * interval, timedelta(minutes=5))
        return {"checkpoint": checkpoint, "settled": settled, "density": density, "capacity": capacity,
                "behind": behind, "over": False, "lag": self._adapted_lag(source, window, swept),
                "asked": asked_at}

    def _adapted_lag(self, source: dict, window: tuple[datetime, datetime], swept: list[int]) -> float | None:
        """The source's lag after a sweep: longer when most records reached the API after it.

        Atlassian documents no ingestion delay. A fresh window that ends before
        records are visible leaves them to the sweep, an overlap later; so when
        the sweep finds that most of what it re-read was new to it, fresh windows
        end earlier before now (twice the lag, up to half the overlap), and
        when it finds almost nothing new, the lag eases back towards the
        configured one. A late tail of a few per cent moves nothing: a longer
        lag would not catch it either.
        """
        base = self.settings.lag.total_seconds()
        lag = source["lag_seconds"] if source["lag_seconds"] is not None else base
        seen, missed = swept
        changed = source["lag_changed_at"]
        if seen + missed < LAG_SAMPLE or (changed is not None and window[0] < changed):
            return source["lag_seconds"]  # too few, or read fresh before the lag last changed
        if missed > LAG_RAISE_AT * (seen + missed):
            lag = min(max(lag * 2, 1.0), max(base, self.settings.overlap.total_seconds() / 2))
        elif missed < LAG_EASE_AT * (seen + missed):
            lag = max(base, lag * 0.75)
        return None if lag <= base else lag

    def _over_capacity(self, conn: psycopg.Connection, source: dict, progress: dict) -> bool:
        """Whether the app logs more than its budget can export, counting every source that shares it."""
        if progress["capacity"] is None or not progress["behind"]:
            return False
        others = conn.execute(
            "SELECT COALESCE(sum(density_per_minute), 0) AS d FROM sources "
            "WHERE app_id = %s AND id <> %s AND state = 'active'",
            (source["app_id"], source["id"]),
        ).fetchone()["d"]
        threshold = 0.9 if source["over_capacity_since"] is not None else 1.0  # hysteresis
        return progress["density"] + float(others) > threshold * progress["capacity"]

    def _shrink(self, source: dict, window: tuple[datetime, datetime], exc: forge.ForgeError | None,
                outcome: Outcome) -> None:
        """The window cannot finish: keep what was read, read its first half again from the start."""
        start, end = window
        if end - start <= MIN_WINDOW:
            self._skip(source, window, exc, outcome)
            return
        pages, records = source["window_pages"], source["window_records"]
        density = source["density_per_minute"]
        if pages:
            # ``pages`` pages did not finish it: it holds at least that many records.
            per_page = source["page_records"] or records / pages
            density = max(density or 0.0, pages * per_page / _minutes(end - start))
        half = _to_millis(start + max((end - start) / 2, MIN_WINDOW))
        new_end = min(end, half)
        if exc is None:
            why = f"window needed more than {pages} pages"
        elif source["window_cursor"] is not None:
            why = f"cursor refused after {pages} page(s) ({exc})"
        else:
            why = f"window refused ({exc})"
        message = (f"{why}; window {start:%Y-%m-%d %H:%M:%S}–{end:%H:%M:%S} UTC cut to end "
                   f"{new_end:%H:%M:%S} and read again, nothing lost")
        with self.connect() as conn, conn.transaction():
            self._fenced(conn, source)
            # The records of the window already stored tell its density better than a bound
            # when the API served them in time order (a stretch read end to end); served
            # shuffled, they span the window and the bound stands.
            seen = conn.execute(
                "SELECT count(*) AS n, min(ts) AS lo, max(ts) AS hi FROM forge_seen "
                "WHERE source_id = %s AND ts >= %s AND ts < %s",
                (source["id"], start, end),
            ).fetchone()
            if seen["n"] >= 2 and seen["hi"] > seen["lo"]:
                density = max(density or 0.0, seen["n"] / _minutes(seen["hi"] - seen["lo"]))
            conn.execute(
                """
                UPDATE sources SET window_end = %(end)s, window_cursor = NULL, window_opened_at = NULL,
                    window_pages = 0, window_records = 0, density_per_minute = %(density)s, last_error = %(error)s
                WHERE id = %(id)s
                """,
                {"end": new_end, "density": density, "error": message, "id": source["id"]},
            )
        source.update(window_start=start, window_end=new_end, window_cursor=None, window_opened_at=None,
                      window_pages=0, window_records=0, density_per_minute=density)
        outcome.shrunk += 1
        if exc is not None:
            outcome.errors.append(f"{exc.kind}: {exc}")
        log.info("poll source=%s shrank its window after %d pages: %s", source["id"], pages,
                 exc.kind if exc is not None else "too many pages")

    def _skip(self, source: dict, window: tuple[datetime, datetime], exc: forge.ForgeError | None,
              outcome: Outcome) -> None:
        """Last resort: a millisecond of log that no poll can read to its end is a recorded gap.

        What its pages gave is stored already; the rest cannot be had while
        Atlassian's cursors die before the budget returns. Without this the
        source would spend its budget on that millisecond until it fell past
        the API's 14 days.
        """
        start, end = window
        reason = (f"more records in {start:%Y-%m-%d %H:%M:%S.%f}"[:-3] + " UTC than one poll can read "
                  f"before Atlassian's cursor expires ({exc.kind if exc is not None else 'too many pages'})")
        checkpoint = max(source["checkpoint"], end)
        settled = min(max(source["settled_until"], end) if start <= source["settled_until"]
                      else source["settled_until"], checkpoint)
        with self.connect() as conn, conn.transaction():
            self._fenced(conn, source)
            conn.execute(
                "INSERT INTO source_gaps (source_id, gap_from, gap_until, reason) VALUES (%s, %s, %s, %s)",
                (source["id"], start, end, reason),
            )
            conn.execute(
                "UPDATE sources SET checkpoint = %(checkpoint)s, settled_until = %(settled)s, window_start = NULL, "
                "window_end = NULL, window_cursor = NULL, window_opened_at = NULL, window_pages = 0, "
                "window_records = 0, last_error = %(reason)s WHERE id = %(id)s",
                {"checkpoint": checkpoint, "settled": settled, "reason": reason, "id": source["id"]},
            )
        log.warning("gap source=%s: %s", source["id"], reason)
        source.update(checkpoint=checkpoint, settled_until=settled, window_start=None, window_end=None,
                      window_cursor=None, window_opened_at=None, window_pages=0, window_records=0)
        outcome.shrunk += 1

    def _record_gap(self, source: dict, gap_from: datetime, gap_until: datetime) -> None:
        with self.connect() as conn, conn.transaction():
            self._fenced(conn, source)
            conn.execute(
                "INSERT INTO source_gaps (source_id, gap_from, gap_until, reason) VALUES (%s, %s, %s, %s)",
                (source["id"], gap_from, gap_until, "older than the App logs API's 14 days"),
            )
            conn.execute(
                "UPDATE sources SET checkpoint = %(until)s, settled_until = %(until)s, window_start = NULL, "
                "window_end = NULL, window_cursor = NULL, window_opened_at = NULL, window_pages = 0, "
                "window_records = 0 WHERE id = %(id)s",
                {"until": gap_until, "id": source["id"]},
            )
        log.warning("gap source=%s from=%s until=%s", source["id"], gap_from.isoformat(), gap_until.isoformat())
        source.update(checkpoint=gap_until, settled_until=gap_until, window_start=None, window_end=None,
                      window_cursor=None, window_opened_at=None, window_pages=0, window_records=0)

    def _release(self, source: dict, delay_seconds: float, *, failure: str | None = None,
                 pause: str | None = None, from_claim: bool = False) -> None:
        base = "GREATEST(now(), last_poll_at + make_interval(secs => %(delay)s))" if from_claim \
            else "now() + make_interval(secs => %(delay)s)"
        sets = ["lease_token = NULL", "lease_expires_at = NULL", f"next_poll_at = {base}", "polls = polls + 1"]
        if failure is not None:
            sets += ["consecutive_failures = consecutive_failures + 1", "last_error = %(error)s"]
        if pause is not None:
            sets += ["state = 'paused'", "pause_reason = %(pause)s"]
        with self.connect() as conn, conn.transaction():
            conn.execute(
                f"UPDATE sources SET {', '.join(sets)} WHERE id = %(id)s AND lease_token = %(lease)s",
                {"delay": delay_seconds, "error": failure, "pause": pause, "id": source["id"],
                 "lease": source["lease_token"]},
            )

    # --- one poll ----------------------------------------------------------------

    def poll(self, source: dict) -> Outcome:
        """Poll one claimed source as far as its time box and budget allow, then release it."""
        outcome = Outcome(source["id"])
        began = self.clock()
        db_now = source["db_now"]
        plan = plans.get(source["plan"]) or plans.PLANS["test"]
        interval = timedelta(seconds=plan.poll_interval_seconds)
        try:
            credentials = Credentials(source["email"], self.vault.decrypt(source["api_token_enc"]))
        except Exception:  # noqa: BLE001 — a secret that cannot be read cannot be used
            self._release(source, 0, failure="stored API token cannot be decrypted", pause="auth_failed")
            outcome.result = "paused"
            return outcome
        client = self.client_for()
        app_id = source["app_id"]
        # Fixed for the whole poll: catching up chases where "now" was at the
        # claim, not a target that moves with every call.
        lag = max(self.settings.lag, timedelta(seconds=source["lag_seconds"] or 0))
        target_end = _to_millis(db_now - lag)
        # The API speaks milliseconds: a horizon with microseconds would be read
        # from its floor, past fingerprints already pruned.
        source["checkpoint"] = _to_millis(source["checkpoint"])
        source["settled_until"] = _to_millis(source["settled_until"])
        cursor_faults = 0
        try:
            while True:
                elapsed = self.clock() - began
                now = db_now + timedelta(seconds=elapsed)
                resuming = source["window_cursor"] is not None
                free = None if resuming else self.limiter.free(app_id)
                window = self._next_window(source, now, target_end, interval, free)
                if window is None:
                    # Due one interval after this poll began, not after it ended:
                    # otherwise every cycle drifts by the poll's own length.
                    self._release(source, max(plan.poll_interval_seconds - DUE_EARLY_SECONDS, 0), from_claim=True)
                    outcome.result = "caught-up"
                    return outcome
                box = self.settings.window_box_seconds if resuming else self.settings.time_box_seconds
                if elapsed > box:
                    self._interrupted(source, window, outcome)
                    self._release(source, 0)  # still behind: due again at once
                    outcome.result = "time-box"
                    return outcome
                wait, call_id = self._take_budget(app_id)
                if wait > 0:
                    self._interrupted(source, window, outcome)
                    self._release(source, wait)
                    outcome.result = "no-budget"
                    return outcome
                query = Query(app_id, source["environment_id"], window[0], window[1],
                              tuple(source["levels"]), tuple(source["installation_contexts"]))
                outcome.calls += 1
                asked_at = db_now + timedelta(seconds=self.clock() - began)
                cursor = source["window_cursor"]
                try:
                    page = client.fetch_page(credentials, query, cursor)
                except forge.ForgeError as exc:
                    if cursor is not None and self._cursor_failed(exc, cursor_faults):
                        self._shrink(source, window, exc, outcome)
                        continue
                    if cursor is not None and not isinstance(exc, (forge.AuthError, forge.RateLimited)):
                        cursor_faults += 1  # once more with the same cursor, then it is cut
                        continue
                    if cursor is None and isinstance(exc, forge.BadWindow) and self._near_now(window, now):
                        # A window the poller chose, refused: most likely the API's clock is
                        # behind ours and the end lies in its future. Fresh windows end earlier.
                        return self._lengthen_lag(source, exc, asked_at, outcome)
                    raise
                finally:
                    self.limiter.done(app_id, call_id)
                self._store_page(source, page, window, asked_at, target_end, interval, outcome)
                cursor_faults = 0
        except LostLease:
            outcome.result = "lost-lease"
            log.warning("poll source=%s lost its lease; result discarded", source["id"])
            return outcome
        except forge.ForgeError as exc:
            return self._failed(source, exc, outcome)

    @staticmethod
    def _near_now(window: tuple[datetime, datetime], now: datetime) -> bool:
        return window[1] > now - CLOCK_SKEW_SUSPECT

    def _lengthen_lag(self, source: dict, exc: forge.BadWindow, asked_at: datetime, outcome: Outcome) -> Outcome:
        """A window ending near now was refused: double the source's lag and poll again at once.

        Up to half the overlap; refused past that, the 400 is about something
        else, and the source pauses ``bad_request`` as for any refused window.
        """
        base = self.settings.lag.total_seconds()
        lag = max(base, source["lag_seconds"] or 0.0)
        longer = min(max(lag * 2, 1.0), max(base, self.settings.overlap.total_seconds() / 2))
        if longer <= lag:
            return self._failed(source, exc, outcome)
        with self.connect() as conn, conn.transaction():
            self._fenced(conn, source)
            conn.execute("UPDATE sources SET lag_seconds = %s, lag_changed_at = %s WHERE id = %s",
                         (longer, asked_at, source["id"]))
        self._release(source, 0, failure=f"{exc}; fresh windows now end {longer:.0f} s before now")
        outcome.errors.append(f"{exc.kind}: {exc}")
        outcome.result = "retry"
        log.warning("poll source=%s window near now refused; lag=%.0f s", source["id"], longer)
        return outcome

    def _interrupted(self, source: dict, window: tuple[datetime, datetime], outcome: Outcome) -> None:
        """A poll ends with a window open: keep its cursor, unless the window has outgrown any budget.

        The next poll resumes with the cursor if Atlassian still takes it (and
        shrinks the window if not). A window that has taken more pages than
        two polls' worth was badly sized (a probe of a very busy app): waiting
        on a cursor to live that long would be a hope, so it is cut now.
        """
        if (source["window_cursor"] is not None and source["window_pages"] >= 2 * MAX_WINDOW_PAGES
                and window[1] - window[0] > MIN_WINDOW):
            self._shrink(source, window, None, outcome)

    def _next_window(self, source: dict, now: datetime, target_end: datetime, interval: timedelta,
                     free: int | None) -> tuple[datetime, datetime] | None:
        """The window to read next; None when caught up."""
        oldest = now - forge.MAX_AGE + AGE_MARGIN
        pages = min(MAX_WINDOW_PAGES, free if free is not None else MAX_WINDOW_PAGES) * WINDOW_FILL
        length = window_length(source["density_per_minute"], source["page_records"], max(pages, WINDOW_FILL))
        if source["window_start"] is not None:
            start, end = source["window_start"], source["window_end"]
            if source["window_cursor"] is not None:
                return start, end  # resume an open window where its cursor left it
            if start >= oldest:
                # A planned (perhaps shrunk) window: sized again from what is known now.
                return start, max(min(end, _to_millis(start + length)), _to_millis(start + MIN_WINDOW))
            source.update(window_start=None, window_end=None, window_opened_at=None, window_pages=0,
                          window_records=0)
        if source["checkpoint"] < oldest:
            self._record_gap(source, source["checkpoint"], oldest)
        checkpoint = source["checkpoint"]
        settled = min(max(source["settled_until"], _to_millis(oldest)), checkpoint)
        source["settled_until"] = settled
        sweep_end = min(checkpoint, _to_millis(now - self.settings.overlap))
        fresh = target_end - checkpoint >= MIN_WINDOW
        density, page_records = source["density_per_minute"], source["page_records"]
        if fresh and settled < checkpoint and target_end - settled <= MAX_WINDOW and density is not None:
            # A quiet source: sweep and fresh window together still fit one page.
            if density * _minutes(target_end - settled) <= WINDOW_FILL * (page_records or 20):
                return settled, target_end
        if sweep_end - settled >= max(min(interval, self.settings.overlap), MIN_WINDOW):
            return settled, min(_to_millis(settled + length), sweep_end)
        if fresh:
            return checkpoint, min(_to_millis(checkpoint + length), target_end)
        return None

    def _take_budget(self, app_id: str) -> tuple[float, str | None]:
        wait, call_id = self.limiter.take(app_id)
        if 0 < wait <= MAX_BUDGET_WAIT_SECONDS:
            self.sleep(wait)
            wait, call_id = self.limiter.take(app_id)
        return wait, call_id

    @staticmethod
    def _cursor_failed(exc: forge.ForgeError, faults: int) -> bool:
        """Whether a failed call with a cursor means the cursor is no good.

        Atlassian documents neither how long a cursor lives nor what a stale one
        answers: any 4xx but auth and rate limiting means it, and so does a
        second failure in a row (5xx, network, a malformed page) within a poll.
        """
        if isinstance(exc, (forge.AuthError, forge.RateLimited)):
            return False
        if exc.status is not None and 400 <= exc.status < 500:
            return True
        return faults >= 1

    def _failed(self, source: dict, exc: forge.ForgeError, outcome: Outcome) -> Outcome:
        outcome.errors.append(f"{exc.kind}: {exc}")
        if isinstance(exc, forge.RateLimited):
            wait = exc.retry_after if exc.retry_after is not None else failure_backoff(source["consecutive_failures"])
            self.limiter.block(source["app_id"], wait)
            self._release(source, wait, failure=str(exc))
            outcome.result = "rate-limited"
        elif isinstance(exc, forge.AuthError):
            self._release(source, 0, failure=str(exc), pause="auth_failed")
            outcome.result = "paused"
        elif isinstance(exc, forge.NotFound):
            self._release(source, 0, failure=str(exc), pause="not_found")
            outcome.result = "paused"
        elif isinstance(exc, forge.BadWindow):
            self._release(source, 0, failure=str(exc), pause="bad_request")
            outcome.result = "paused"
        else:
            delay = failure_backoff(source["consecutive_failures"])
            self._release(source, delay, failure=str(exc))
            outcome.result = "retry"
        log.warning("poll source=%s app=%s failed kind=%s result=%s", source["id"], source["app_id"],
                    exc.kind, outcome.result)
        return outcome
