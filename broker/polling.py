"""Polling Forge sources: lease, windows, checkpoint, outbox (SPEC §3, §6).

One poll of one source, holding its lease:

1. The window starts ``overlap`` before the checkpoint and ends ``lag`` before
   now, at most an hour later (Atlassian's limit). A window older than the API's
   14 days is clamped, and what falls off is recorded as a gap.
2. Each page costs one call of the app's budget (:mod:`broker.ratelimit`). With
   no budget left the poll yields: it saves where it is and asks to be polled
   again when budget returns, instead of sleeping on a worker.
3. Each page is stored in one transaction, fenced by the lease: the records'
   fingerprints go into ``forge_seen`` (those already there — re-read in the
   overlap, or stored before a crash — are dropped), the new records into one
   compressed outbox batch, and the window's cursor onto the source. The last
   page of a window moves the checkpoint to the window's end in the same
   transaction. A crash before a commit re-reads that page; after it, nothing
   is stored twice.
4. Errors: 429 blocks the app for its Retry-After (or a back-off); 5xx, network
   and malformed pages back off with jitter, checkpoint unchanged, failures
   counted; 401/403, 404 and 400 pause the source with the reason.

Every write checks ``lease_token`` and ``state = 'active'``: a poller that
outlived its lease, or whose source was deleted, paused or deprovisioned
meanwhile, changes nothing.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
import uuid
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable, ContextManager

import orjson
import psycopg

from broker import activity, forge, plans
from broker.forge import Credentials, ForgeClient, Query
from broker.ratelimit import RateLimiter
from broker.vault import Vault

log = logging.getLogger(__name__)

MAX_WINDOW = forge.MAX_WINDOW
# Stay this far inside the API's 14 days so clock skew never earns a 400.
AGE_MARGIN = timedelta(minutes=5)
# Waiting this long for budget is cheaper than giving the source back.
MAX_BUDGET_WAIT_SECONDS = 1.0
FAILURE_BACKOFF_BASE_SECONDS = 15
FAILURE_BACKOFF_MAX_SECONDS = 600
COMPRESSION_LEVEL = 6

Connect = Callable[[], ContextManager[psycopg.Connection]]


@dataclass
class PollSettings:
    lag: timedelta
    overlap: timedelta
    # Stop starting calls for one source after this long (the lease is longer).
    time_box_seconds: float = 20.0
    lease_seconds: int = 180


@dataclass
class Outcome:
    """What one poll did (for logs, metrics and tests)."""

    source_id: uuid.UUID
    calls: int = 0
    stored: int = 0
    dropped_as_seen: int = 0
    windows: int = 0
    result: str = "idle"
    errors: list[str] = field(default_factory=list)


CLAIM = """
WITH due AS (
    SELECT id FROM sources
    WHERE state = 'active' AND next_poll_at <= now()
      AND (lease_expires_at IS NULL OR lease_expires_at < now())
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
          s.installation_contexts, s.checkpoint, s.window_start, s.window_end, s.window_cursor,
          s.lease_token, s.consecutive_failures, r.plan, now() AS db_now
"""


def claim(conn: psycopg.Connection, limit: int, lease_seconds: int) -> list[dict]:
    """Lease up to ``limit`` due sources (never one another poller holds)."""
    with conn.transaction():
        return conn.execute(CLAIM, {"limit": limit, "lease": lease_seconds}).fetchall()


def count_due(conn: psycopg.Connection, cap: int) -> int:
    """How many active sources are due and unleased, counting at most ``cap``."""
    return conn.execute(
        """
        SELECT count(*) AS n FROM (
            SELECT 1 FROM sources
            WHERE state = 'active' AND next_poll_at <= now()
              AND (lease_expires_at IS NULL OR lease_expires_at < now())
            LIMIT %s) due
        """,
        (cap,),
    ).fetchone()["n"]


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


# pg_advisory_xact_lock(OUTBOX_LOCK, hashtext(resource id)): appends to one resource's outbox.
OUTBOX_LOCK = 7_210_001


def lock_for_append(conn: psycopg.Connection, resource_id) -> None:
    """Serialise appends to a resource's outbox until this transaction ends.

    Outbox ids are drawn at INSERT, not at COMMIT: without this, a batch that
    got id N but committed after N+1 would be passed over by a drain whose
    cursor already moved to N+1 (its reads are ``id > cursor``) and later be
    pruned unseen. Holding this lock from just before the INSERT to the
    commit makes a resource's ids appear in commit order, so a cursor never
    jumps a batch. Writers of different resources do not wait for each other.
    """
    conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s::text))", (OUTBOX_LOCK, str(resource_id)))


def encode_batch(records: list[dict]) -> bytes:
    return zlib.compress(orjson.dumps(records), COMPRESSION_LEVEL)


def decode_batch(payload: bytes) -> list[dict]:
    return orjson.loads(zlib.decompress(payload))


def failure_backoff(failures: int, rng: random.Random | None = None) -> float:
    ceiling = min(FAILURE_BACKOFF_MAX_SECONDS, FAILURE_BACKOFF_BASE_SECONDS * 2 ** min(failures, 10))
    return ceiling * (0.5 + (rng or random).random() / 2)


class LostLease(Exception):
    """The lease is gone (expired and taken, or the source deleted, paused, deprovisioned)."""


FENCE = """
SELECT 1 FROM sources WHERE id = %(id)s AND lease_token = %(lease)s AND state = 'active' FOR UPDATE
"""


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

    # --- fenced writes -------------------------------------------------------

    def _fenced(self, conn: psycopg.Connection, source: dict) -> None:
        if conn.execute(FENCE, {"id": source["id"], "lease": source["lease_token"]}).fetchone() is None:
            raise LostLease(str(source["id"]))

    def _store_page(self, source: dict, records: list[dict], window: tuple[datetime, datetime],
                    cursor: str | None, outcome: Outcome) -> None:
        start, end = window
        prints, times, keep = [], [], []
        for record in records:
            prints.append(fingerprint(record))
            times.append(record_time(record, start))
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
            for record, fp, ts in zip(records, prints, times):
                if fp in fresh:
                    fresh.discard(fp)  # a twin later in the same page is a duplicate
                    keep.append((record, ts))
            if keep:
                lock_for_append(conn, source["resource_id"])  # held to the commit: ids in commit order
                conn.execute(
                    "INSERT INTO outbox (resource_id, source_id, origin, record_count, min_ts, max_ts, payload) "
                    "VALUES (%s, %s, 'forge', %s, %s, %s, %s)",
                    (source["resource_id"], source["id"], len(keep), min(t for _, t in keep),
                     max(t for _, t in keep), encode_batch([r for r, _ in keep])),
                )
                activity.add(conn, source["resource_id"], source["id"], "stored",
                             activity.minutes([t for _, t in keep]))
            if cursor is not None:
                conn.execute(
                    "UPDATE sources SET window_start = %s, window_end = %s, window_cursor = %s WHERE id = %s",
                    (start, end, cursor, source["id"]),
                )
            else:
                conn.execute(
                    """
                    UPDATE sources SET checkpoint = %(end)s, window_start = NULL, window_end = NULL,
                        window_cursor = NULL, consecutive_failures = 0, last_error = NULL,
                        last_success_at = now(),
                        backfill_from = CASE WHEN backfill_until <= %(end)s THEN NULL ELSE backfill_from END,
                        backfill_until = CASE WHEN backfill_until <= %(end)s THEN NULL ELSE backfill_until END
                    WHERE id = %(id)s
                    """,
                    {"end": end, "id": source["id"]},
                )
                conn.execute("DELETE FROM forge_seen WHERE source_id = %s AND ts < %s",
                             (source["id"], end - self.settings.overlap))
        outcome.stored += len(keep)
        outcome.dropped_as_seen += len(records) - len(keep)
        if cursor is None:
            source["checkpoint"], source["window_start"], source["window_end"] = end, None, None
            source["window_cursor"] = None
            outcome.windows += 1
        else:
            source["window_start"], source["window_end"], source["window_cursor"] = start, end, cursor

    def _record_gap(self, source: dict, gap_from: datetime, gap_until: datetime) -> None:
        with self.connect() as conn, conn.transaction():
            self._fenced(conn, source)
            conn.execute(
                "INSERT INTO source_gaps (source_id, gap_from, gap_until, reason) VALUES (%s, %s, %s, %s)",
                (source["id"], gap_from, gap_until, "older than the App logs API's 14 days"),
            )
            conn.execute(
                "UPDATE sources SET checkpoint = %s, window_start = NULL, window_end = NULL, "
                "window_cursor = NULL WHERE id = %s",
                (gap_until, source["id"]),
            )
        log.warning("gap source=%s from=%s until=%s", source["id"], gap_from.isoformat(), gap_until.isoformat())
        source["checkpoint"] = gap_until
        source["window_start"] = source["window_end"] = source["window_cursor"] = None

    def _release(self, source: dict, delay_seconds: float, *, failure: str | None = None,
                 pause: str | None = None, clear_window: bool = False, from_claim: bool = False) -> None:
        base = "GREATEST(now(), last_poll_at + make_interval(secs => %(delay)s))" if from_claim \
            else "now() + make_interval(secs => %(delay)s)"
        sets = ["lease_token = NULL", "lease_expires_at = NULL", f"next_poll_at = {base}", "polls = polls + 1"]
        if failure is not None:
            sets += ["consecutive_failures = consecutive_failures + 1", "last_error = %(error)s"]
        if pause is not None:
            sets += ["state = 'paused'", "pause_reason = %(pause)s"]
        if clear_window:
            sets += ["window_start = NULL", "window_end = NULL", "window_cursor = NULL"]
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
        try:
            credentials = Credentials(source["email"], self.vault.decrypt(source["api_token_enc"]))
        except Exception:  # noqa: BLE001 — a secret that cannot be read cannot be used
            self._release(source, 0, failure="stored API token cannot be decrypted", pause="auth_failed")
            outcome.result = "paused"
            return outcome
        client = self.client_for()
        # Fixed for the whole poll: catching up chases where "now" was at the
        # claim, not a target that moves with every call.
        target_end = db_now - self.settings.lag
        try:
            while True:
                now = db_now + timedelta(seconds=self.clock() - began)
                window = self._next_window(source, now, target_end)
                if window is None:
                    # Due one interval after this poll began, not after it ended:
                    # otherwise every cycle drifts by the poll's own length.
                    self._release(source, plan.poll_interval_seconds, from_claim=True)
                    outcome.result = "caught-up"
                    return outcome
                if self.clock() - began > self.settings.time_box_seconds:
                    self._release(source, 0)  # still behind: due again at once
                    outcome.result = "time-box"
                    return outcome
                wait, call_id = self._take_budget(source["app_id"])
                if wait > 0:
                    self._release(source, wait)
                    outcome.result = "no-budget"
                    return outcome
                query = Query(source["app_id"], source["environment_id"], window[0], window[1],
                              tuple(source["levels"]), tuple(source["installation_contexts"]))
                outcome.calls += 1
                try:
                    records, cursor = client.fetch_page(credentials, query, source["window_cursor"])
                finally:
                    self.limiter.done(source["app_id"], call_id)
                self._store_page(source, records, window, cursor, outcome)
        except LostLease:
            outcome.result = "lost-lease"
            log.warning("poll source=%s lost its lease; result discarded", source["id"])
            return outcome
        except forge.ForgeError as exc:
            return self._failed(source, exc, outcome)

    def _next_window(self, source: dict, now: datetime, target_end: datetime) -> tuple[datetime, datetime] | None:
        if source["window_start"] is not None:
            return source["window_start"], source["window_end"]
        oldest = now - forge.MAX_AGE + AGE_MARGIN
        if source["checkpoint"] < oldest:
            self._record_gap(source, source["checkpoint"], oldest)
        checkpoint = source["checkpoint"]
        if target_end <= checkpoint:
            return None
        start = _to_millis(max(checkpoint - self.settings.overlap, oldest))
        # The API speaks milliseconds: an end with microseconds would be cut
        # short on the wire while the checkpoint claimed the remainder.
        end = _to_millis(min(start + MAX_WINDOW, target_end))
        if end <= checkpoint:
            return None
        return start, end

    def _take_budget(self, app_id: str) -> tuple[float, str | None]:
        wait, call_id = self.limiter.take(app_id)
        if 0 < wait <= MAX_BUDGET_WAIT_SECONDS:
            self.sleep(wait)
            wait, call_id = self.limiter.take(app_id)
        return wait, call_id

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
        elif isinstance(exc, forge.BadWindow) and source["window_cursor"]:
            # The cursor went stale between polls: read the window again from its start.
            self._release(source, 0, failure=f"cursor refused, window restarted ({exc})", clear_window=True)
            outcome.result = "retry"
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
