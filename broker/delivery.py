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

Kinds delivered here: ``heroku`` (the app's log_input_url) and ``logplex``
in Heroku's dialect, ``otlp`` as JSON or protobuf. Records that came from the
Heroku app itself (origin ``heroku``) never go back to its own ``heroku``
drain. ``syslog`` drains wait for their TLS sink.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Callable, ContextManager

import orjson
import psycopg
import requests

from broker import polling
from broker.formats import logplex, otlp
from broker.sinks import http
from broker.vault import Vault

log = logging.getLogger(__name__)

KINDS = ("heroku", "logplex", "otlp")
# Heroku's drains aim at ~100 KB per request; OTLP at ≤ 1,000 records or ~1 MiB.
LOGPLEX_TARGET_BYTES = 100 * 1024
OTLP_MAX_RECORDS = 1000
OTLP_TARGET_BYTES = 1024 * 1024
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
                 clock: Callable[[], float] = time.monotonic):
        self.connect = connect
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
                        "SELECT id, source_id, origin, record_count, payload FROM outbox "
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
        records = polling.decode_batch(bytes(row["payload"]))
        if drain["kind"] == "heroku" and row["origin"] == "heroku":
            records = []  # the app's own logs never go back into its own stream
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

    def _parts(self, drain: dict, records: list[dict], source: dict):
        if not records:
            return
        if drain["kind"] == "otlp":
            for start in range(0, len(records), OTLP_MAX_RECORDS):
                yield self._otlp_part(drain, records[start:start + OTLP_MAX_RECORDS], source)
            return
        who = logplex.Identity(
            host=drain["token"] if drain["kind"] == "logplex" else "forgedrain",
            app_name=source.get("service_name") or "forge",
        )
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
        export = otlp.request(records, origin, time.time_ns())
        encoding = drain["settings"].get("encoding", "protobuf")
        body = otlp.to_json(export) if encoding == "json" else otlp.to_protobuf(export)
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
            updated = conn.execute(
                """
                UPDATE drains SET cursor = %(batch)s, delivered = delivered + %(delivered)s,
                    dropped = dropped + %(dropped)s, rejected = rejected + %(rejected)s,
                    last_delivery_at = CASE WHEN %(delivered)s > 0 THEN now() ELSE last_delivery_at END,
                    consecutive_failures = 0,
                    last_error = COALESCE(%(error)s, last_error)
                WHERE id = %(id)s AND lease_token = %(lease)s AND enabled
                """,
                {"batch": batch_id, "delivered": max(delivered, 0), "dropped": dropped,
                 "rejected": rejected, "error": error, "id": drain["id"], "lease": drain["lease_token"]},
            ).rowcount
        if not updated:
            raise LostLease(str(drain["id"]))
        drain["cursor"] = batch_id

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
