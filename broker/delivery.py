"""Delivering the outbox to drains: per-drain cursors, batches, retries (SPEC §4, §6).

Each drain has a cursor: the id of the last outbox batch it has (accepted by
its receiver, or dropped and counted). A delivery holds the drain's lease,
reads the batches after the cursor in order, encodes them for the drain's
kind, sends them, and moves the cursor only after the receiver answered.
A crash in between resends the batch in flight with the same
``Logplex-Frame-Id`` (derived from drain, batch and part), so duplicates are
bounded to that batch and recognisable. A drain that fails waits in
PostgreSQL (``next_attempt_at``), so it costs nothing meanwhile and never
holds back another drain.

Kinds: ``heroku`` (the app's log_input_url) and ``logplex`` in Heroku's
dialect, ``otlp`` as JSON or protobuf, ``syslog`` as strict RFC 5424 over TLS.
A syslog send carries up to ~1 MiB of frames (several outbox batches) and
counts as accepted when the receiver has closed the connection after reading
it (see :mod:`broker.sinks.syslog`). Records that came from the Heroku app
itself (origin ``heroku``) never go back to its own ``heroku`` drain.

The outbox is pruned by :func:`prune`: a batch goes when every drain of its
resource has it, or when it is older than the plan's backlog; drains that
had not received it then count its records as dropped.
"""

from __future__ import annotations

import hashlib
import logging
import random
import ssl
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, ContextManager

import orjson
import psycopg
import requests

from broker import activity, ingest, plans, polling
from broker.formats import logplex, otlp, syslog5424
from broker.sinks import Result, http, syslog
from broker.vault import Vault

log = logging.getLogger(__name__)

KINDS = ("heroku", "logplex", "otlp", "syslog")
# Heroku's drains aim at ~100 KB per request; OTLP at ≤ 1,000 records or ~1 MiB.
LOGPLEX_TARGET_BYTES = 100 * 1024
OTLP_MAX_RECORDS = 1000
OTLP_TARGET_BYTES = 1024 * 1024
# A syslog send (one connection, one confirmed close) carries up to ~1 MiB.
SYSLOG_TARGET_BYTES = 1024 * 1024
BATCHES_PER_READ = 20
BACKOFF_MAX_SECONDS = 300

Connect = Callable[[], ContextManager[psycopg.Connection]]

CLAIM = """
WITH due AS (
    SELECT d.id FROM drains d
    WHERE d.enabled AND d.kind = ANY(%(kinds)s) AND d.next_attempt_at <= now()
      AND (d.lease_expires_at IS NULL OR d.lease_expires_at < now())
      AND EXISTS (SELECT 1 FROM outbox o WHERE o.resource_id = d.resource_id AND o.id > d.cursor)
    ORDER BY d.next_attempt_at
    LIMIT %(limit)s
    FOR UPDATE OF d SKIP LOCKED
)
UPDATE drains d
SET lease_token = gen_random_uuid(), lease_expires_at = now() + make_interval(secs => %(lease)s)
FROM due, resources r
WHERE d.id = due.id AND r.id = d.resource_id AND r.state <> 'deprovisioned'
RETURNING d.id, d.resource_id, d.kind, d.url_enc, d.token, d.name, d.settings, d.headers_enc, d.cursor,
          d.lease_token, d.consecutive_failures
"""

DUE = """
SELECT count(*) AS n FROM (
    SELECT 1 FROM drains d
    WHERE d.enabled AND d.kind = ANY(%s) AND d.next_attempt_at <= now()
      AND (d.lease_expires_at IS NULL OR d.lease_expires_at < now())
      AND EXISTS (SELECT 1 FROM outbox o WHERE o.resource_id = d.resource_id AND o.id > d.cursor)
    LIMIT %s) due
"""


def claim(conn: psycopg.Connection, limit: int, lease_seconds: int = 180) -> list[dict]:
    with conn.transaction():
        return conn.execute(CLAIM, {"kinds": list(KINDS), "limit": limit, "lease": lease_seconds}).fetchall()


def count_due(conn: psycopg.Connection, cap: int) -> int:
    return conn.execute(DUE, (list(KINDS), cap)).fetchone()["n"]


def batch_records(row: dict) -> list[dict]:
    """The records of an outbox batch: Forge pages as stored, Heroku ingest batches read now."""
    if row["origin"] == "heroku":
        return ingest.records(bytes(row["payload"]), int(row["min_ts"].timestamp() * 1e9))
    return polling.decode_batch(bytes(row["payload"]))


def otlp_weight(record: dict) -> int:
    """About what a record adds to an OTLP request: its body, plus a fixed share for ids and attributes."""
    body = record.get("body")
    text = body.get("stringValue") if isinstance(body, dict) else None
    return 400 + (len(text) if isinstance(text, str) else 256)


def frame_id(drain_id, batch_id: int, part: int) -> str:
    """Stable for a given drain, outbox batch and part: the same on every retry."""
    return hashlib.md5(f"{drain_id}:{batch_id}:{part}".encode(), usedforsecurity=False).hexdigest().upper()


def backoff(failures: int, retry_after: float | None, rng: random.Random | None = None) -> float:
    if retry_after is not None:
        return min(max(retry_after, 1.0), 3600.0)
    ceiling = min(BACKOFF_MAX_SECONDS, 2 ** min(failures + 1, 12))
    return ceiling * (0.5 + (rng or random).random() / 2)


@dataclass
class Outcome:
    drain_id: object
    batches: int = 0
    delivered: int = 0
    dropped: int = 0
    rejected: int = 0
    requests: int = 0
    result: str = "idle"
    errors: list[str] = field(default_factory=list)


class LostLease(Exception):
    pass


class Deliverer:
    def __init__(self, connect: Connect, session_for: Callable[[], requests.Session], vault: Vault, *,
                 allow_private: bool, time_box_seconds: float = 20.0,
                 clock: Callable[[], float] = time.monotonic, tls_context: ssl.SSLContext | None = None):
        self.connect = connect
        self.tls_context = tls_context
        self.session_for = session_for
        self.vault = vault
        self.allow_private = allow_private
        self.time_box_seconds = time_box_seconds
        self.clock = clock

    def deliver(self, drain: dict) -> Outcome:
        """Send what the drain lacks, batch by batch, until caught up, failing, or out of time."""
        outcome = Outcome(drain["id"])
        began = self.clock()
        url = self.vault.decrypt(drain["url_enc"]) if drain["url_enc"] else None
        headers = orjson.loads(self.vault.decrypt(drain["headers_enc"])) if drain["headers_enc"] else {}
        if not url:
            self._release(drain, 3600, error="the drain has no destination")
            outcome.result = "no-destination"
            return outcome
        origins: dict = {}
        try:
            while self.clock() - began < self.time_box_seconds:
                with self.connect() as conn:
                    rows = conn.execute(
                        "SELECT id, source_id, origin, record_count, min_ts, payload FROM outbox "
                        "WHERE resource_id = %s AND id > %s ORDER BY id LIMIT %s",
                        (drain["resource_id"], drain["cursor"], BATCHES_PER_READ),
                    ).fetchall()
                    missing = {r["source_id"] for r in rows if r["source_id"] and r["source_id"] not in origins}
                    if missing:
                        for source in conn.execute(
                                "SELECT id, app_id, environment_id, service_name, environment_label, "
                                "include_arguments FROM sources WHERE id = ANY(%s)", (list(missing),)):
                            origins[source["id"]] = source
                if not rows:
                    self._release(drain, 0, success=True)
                    outcome.result = "caught-up"
                    return outcome
                if drain["kind"] == "syslog":
                    if not self._deliver_stream(drain, rows, url, origins, outcome):
                        return outcome
                    continue
                for row in rows:
                    if not self._deliver_batch(drain, row, url, headers, origins, outcome):
                        return outcome
            self._release(drain, 0, success=True)
            outcome.result = "time-box"
            return outcome
        except LostLease:
            outcome.result = "lost-lease"
            log.warning("delivery drain=%s lost its lease", drain["id"])
            return outcome

    # --- one outbox batch -------------------------------------------------------

    def _deliver_batch(self, drain: dict, row: dict, url: str, headers: dict, origins: dict,
                       outcome: Outcome) -> bool:
        """Deliver one outbox batch; False when the drain must stop for now."""
        # the app's own logs never go back into its own stream
        records = [] if drain["kind"] == "heroku" and row["origin"] == "heroku" else batch_records(row)
        source = origins.get(row["source_id"]) or {}
        parts = list(self._parts(drain, records, source))
        session = self.session_for()
        rejected = 0
        index = 0
        while index < len(parts):
            part_records, body, count = parts[index]
            outcome.requests += 1
            result = self._send(drain, session, url, headers, body, count, row["id"], index)
            if result.outcome == "delivered":
                rejected += result.rejected
                index += 1
                continue
            if result.outcome == "split" and len(part_records) > 1:
                half = len(part_records) // 2
                parts[index:index + 1] = [self._otlp_part(drain, part_records[:half], source),
                                          self._otlp_part(drain, part_records[half:], source)]
                continue
            if result.outcome == "retry":
                delay = backoff(drain["consecutive_failures"], result.retry_after)
                self._release(drain, delay, error=result.detail, retried=True)
                outcome.result = "retry"
                outcome.errors.append(result.detail)
                return False
            # drop (or a single record the receiver finds too large): counted, and move on
            dropped = sum(len(p[0]) for p in parts[index:])
            self._advance(drain, row["id"], delivered=sum(len(p[0]) for p in parts[:index]) - rejected,
                          dropped=dropped, rejected=rejected, error=result.detail)
            outcome.batches += 1
            outcome.dropped += dropped
            outcome.errors.append(result.detail)
            return True
        delivered = sum(len(p[0]) for p in parts) - rejected
        self._advance(drain, row["id"], delivered=delivered, dropped=0, rejected=rejected, error=None)
        outcome.batches += 1
        outcome.delivered += delivered
        outcome.rejected += rejected
        return True

    # --- syslog: several outbox batches per confirmed send ---------------------------

    def _deliver_stream(self, drain: dict, rows: list[dict], url: str, origins: dict,
                        outcome: Outcome) -> bool:
        """Deliver outbox batches to a syslog drain, ~1 MiB per send; False when it must stop."""
        pending: list[tuple[int, int, bytes]] = []  # (batch id, records, frames)
        size = 0
        for row in rows:
            records = batch_records(row)
            frames = syslog5424.stream(records, self._syslog_identity(drain, origins.get(row["source_id"]) or {}))
            if pending and size + len(frames) > SYSLOG_TARGET_BYTES:
                if not self._flush_stream(drain, url, pending, outcome):
                    return False
                pending, size = [], 0
            pending.append((row["id"], len(records), frames))
            size += len(frames)
        return not pending or self._flush_stream(drain, url, pending, outcome)

    def _flush_stream(self, drain: dict, url: str, pending: list[tuple[int, int, bytes]],
                      outcome: Outcome) -> bool:
        outcome.requests += 1
        result = syslog.send(url, [frames for _, _, frames in pending], context=self.tls_context,
                             allow_private=self.allow_private)
        count = sum(n for _, n, _ in pending)
        if result.outcome == "retry":
            self._release(drain, backoff(drain["consecutive_failures"], None), error=result.detail, retried=True)
            outcome.result = "retry"
            outcome.errors.append(result.detail)
            return False
        delivered = result.outcome == "delivered"
        self._advance(drain, pending[-1][0], delivered=count if delivered else 0,
                      dropped=0 if delivered else count, rejected=0, error=None if delivered else result.detail)
        outcome.batches += len(pending)
        if delivered:
            outcome.delivered += count
        else:
            outcome.dropped += count
            outcome.errors.append(result.detail)
        return True

    @staticmethod
    def _syslog_identity(drain: dict, source: dict) -> syslog5424.Identity:
        return syslog5424.Identity(
            host=drain["token"], app_name=source.get("service_name") or "forge",
            sd_id=drain["settings"].get("sd_id"), include_arguments=bool(source.get("include_arguments")),
        )

    # --- a test record, sent now, outside the cursor --------------------------------

    def probe(self, drain: dict, records: list[dict], source: dict | None = None) -> Result:
        """Send ``records`` to the drain now, as a delivery would; the cursor does not move."""
        url = self.vault.decrypt(drain["url_enc"]) if drain["url_enc"] else None
        if not url:
            return Result("drop", detail="the drain has no destination")
        source = source or {}
        if drain["kind"] == "syslog":
            return syslog.send(url, [syslog5424.stream(records, self._syslog_identity(drain, source))],
                               context=self.tls_context, allow_private=self.allow_private)
        headers = orjson.loads(self.vault.decrypt(drain["headers_enc"])) if drain["headers_enc"] else {}
        session = self.session_for()
        result = Result("delivered")
        for index, (_, body, count) in enumerate(self._parts(drain, records, source)):
            # A Frame-Id of its own: receivers that drop repeated Frame-Ids must not drop a second test.
            result = self._send(drain, session, url, headers, body, count, f"test-{uuid.uuid4()}", index)
            if result.outcome != "delivered":
                return result
        return result

    def _parts(self, drain: dict, records: list[dict], source: dict):
        if not records:
            return
        if drain["kind"] == "otlp":
            start, size = 0, 0
            for index, record in enumerate(records):
                weight = otlp_weight(record)
                if index > start and (index - start >= OTLP_MAX_RECORDS or size + weight > OTLP_TARGET_BYTES):
                    yield self._otlp_part(drain, records[start:index], source)
                    start, size = index, 0
                size += weight
            yield self._otlp_part(drain, records[start:], source)
            return
        if drain["kind"] == "heroku":
            # Into the app's own stream under a reserved APP-NAME: drain ingest recognises these
            # frames when Heroku sends them back through log_drain_url, so nothing loops.
            who = logplex.Identity(host="forgedrain", app_name=ingest.OWN_APP_NAME,
                                   procid_prefix=source.get("service_name") or "forge")
        else:
            who = logplex.Identity(host=drain["token"], app_name=source.get("service_name") or "forge")
        chunk, chunk_records, size = [], [], 0
        for record in records:
            frames = logplex.frames(record, who)
            frame_bytes = sum(len(f) for f in frames)
            if chunk and size + frame_bytes > LOGPLEX_TARGET_BYTES:
                yield chunk_records, b"".join(chunk), len(chunk)
                chunk, chunk_records, size = [], [], 0
            chunk.extend(frames)
            chunk_records.append(record)
            size += frame_bytes
        if chunk:
            yield chunk_records, b"".join(chunk), len(chunk)

    def _otlp_part(self, drain: dict, records: list[dict], source: dict):
        origin = otlp.Origin(
            app_id=source.get("app_id") or "", environment_id=source.get("environment_id") or "",
            drain_token=drain["token"], service_name=source.get("service_name"),
            environment_label=source.get("environment_label"),
            include_arguments=bool(source.get("include_arguments")),
        )
        if drain["settings"].get("encoding", "protobuf") == "json":
            body = otlp.to_json(otlp.request(records, origin, time.time_ns()))
        else:
            body = otlp.protobuf_request(records, origin, time.time_ns())
        return records, body, len(records)

    def _send(self, drain, session, url, headers, body, count, batch_id, part) -> http.Result:
        if drain["kind"] == "otlp":
            settings = drain["settings"]
            return http.send_otlp(session, url, body, encoding=settings.get("encoding", "protobuf"),
                                  use_gzip=settings.get("gzip", True), headers=headers,
                                  allow_private=self.allow_private)
        return http.send_logplex(session, url, body, count=count, frame_id=frame_id(drain["id"], batch_id, part),
                                 drain_token=drain["token"], allow_private=self.allow_private)

    # --- fenced writes -----------------------------------------------------------

    def _advance(self, drain: dict, batch_id: int, *, delivered: int, dropped: int, rejected: int,
                 error: str | None) -> None:
        with self.connect() as conn, conn.transaction():
            # Not waiting for the WAL flush: an advance lost in a PostgreSQL crash only resends
            # batches the receiver has (same Frame-Ids), and any later durable commit (pruning
            # included) flushes it first.
            conn.execute("SET LOCAL synchronous_commit = off")
            updated = conn.execute(
                """
                UPDATE drains SET cursor = GREATEST(cursor, %(batch)s), delivered = delivered + %(delivered)s,
                    dropped = dropped + %(dropped)s, rejected = rejected + %(rejected)s,
                    last_delivery_at = CASE WHEN %(delivered)s > 0 THEN now() ELSE last_delivery_at END,
                    consecutive_failures = 0,
                    last_error = COALESCE(%(error)s, last_error)
                WHERE id = %(id)s AND lease_token = %(lease)s AND enabled
                """,
                {"batch": batch_id, "delivered": max(delivered, 0), "dropped": dropped,
                 "rejected": rejected, "error": error, "id": drain["id"], "lease": drain["lease_token"]},
            ).rowcount
            if updated:
                activity.add_now(conn, drain["resource_id"], drain["id"], "delivered", max(delivered, 0))
                activity.add_now(conn, drain["resource_id"], drain["id"], "dropped", dropped)
        if not updated:
            raise LostLease(str(drain["id"]))
        drain["cursor"] = max(drain["cursor"], batch_id)

    def _release(self, drain: dict, delay: float, *, error: str | None = None, retried: bool = False,
                 success: bool = False) -> None:
        sets = ["lease_token = NULL", "lease_expires_at = NULL",
                "next_attempt_at = now() + make_interval(secs => %(delay)s)"]
        if retried:
            sets += ["consecutive_failures = consecutive_failures + 1", "retried = retried + 1",
                     "last_error = %(error)s"]
        elif error is not None:
            sets.append("last_error = %(error)s")
        with self.connect() as conn, conn.transaction():
            conn.execute(f"UPDATE drains SET {', '.join(sets)} WHERE id = %(id)s AND lease_token = %(lease)s",
                         {"delay": delay, "error": error, "id": drain["id"], "lease": drain["lease_token"]})


# --- outbox pruning ----------------------------------------------------------------

EXPIRE = """
WITH horizon AS (
    SELECT * FROM unnest(%(plans)s::text[], %(hours)s::int[]) AS h(plan, hours)
), expired AS (
    SELECT o.resource_id, max(o.id) AS upto, max(h.hours) AS hours
    FROM outbox o JOIN resources r ON r.id = o.resource_id JOIN horizon h ON h.plan = r.plan
    WHERE o.created_at < now() - make_interval(hours => h.hours)
    GROUP BY o.resource_id
), lost AS (
    SELECT d.id, e.upto, e.hours,
           (SELECT COALESCE(sum(o.record_count), 0) FROM outbox o
            WHERE o.resource_id = d.resource_id AND o.id > d.cursor AND o.id <= e.upto
              AND NOT (d.kind = 'heroku' AND o.origin = 'heroku')) AS records
    FROM drains d JOIN expired e ON e.resource_id = d.resource_id
    WHERE d.cursor < e.upto
)
UPDATE drains d
SET cursor = lost.upto, dropped = d.dropped + lost.records,
    last_error = CASE WHEN lost.records > 0
        THEN format('%%s records were dropped: older than the plan''s %%s-hour backlog before this drain '
                    'accepted them', lost.records, lost.hours)
        ELSE d.last_error END
FROM lost
WHERE d.id = lost.id
RETURNING d.id, d.resource_id, lost.records
"""

# Batches every drain of the resource has (once older than the replay window); all of a
# deprovisioned resource's. Each side walks an outbox index (by age; by resource for the few
# deprovisioned resources), never the whole outbox.
DELIVERED = """
WITH doomed AS (
    (SELECT o.id FROM outbox o
     WHERE o.resource_id IN (SELECT id FROM resources WHERE state = 'deprovisioned')
     LIMIT %(limit)s)
    UNION
    (SELECT o.id FROM outbox o
     WHERE o.created_at < now() - make_interval(hours => %(keep)s)
       AND o.id <= COALESCE((SELECT min(d.cursor) FROM drains d WHERE d.resource_id = o.resource_id),
                            9223372036854775807)
     LIMIT %(limit)s)
)
DELETE FROM outbox o USING doomed WHERE o.id = doomed.id
"""


# pg_advisory_xact_lock key taken by prune() and by anything that moves a cursor back (replay).
PRUNE_LOCK = 7_210_002


@dataclass
class Pruned:
    batches: int = 0
    dropped_records: int = 0
    drains_behind: int = 0


def prune(conn: psycopg.Connection, limit: int = 20_000, replay_hours: int = 0) -> Pruned:
    """Remove what no drain still needs (SPEC §6).

    First, batches older than their plan's backlog: drains that had not
    received them move past them, and count their records as dropped (with
    the reason in ``last_error``). Then every batch that every drain of its
    resource has (any, when it has no drain) once it is older than
    ``replay_hours`` — so ``python -m broker replay`` can reach back that far —
    and every batch of a deprovisioned resource, at most ``limit`` per call.
    """
    every = list(plans.PLANS.values())
    pruned = Pruned()
    with conn.transaction():
        # A replay moving a cursor back waits for this prune, or this prune for it.
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (PRUNE_LOCK,))
        for row in conn.execute(EXPIRE, {"plans": [p.name for p in every],
                                         "hours": [p.backlog_hours for p in every]}).fetchall():
            pruned.drains_behind += 1
            pruned.dropped_records += row["records"]
            activity.add_now(conn, row["resource_id"], row["id"], "dropped", row["records"])
        pruned.batches = conn.execute(DELIVERED, {"limit": limit, "keep": replay_hours}).rowcount
    return pruned
