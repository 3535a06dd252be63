"""Delivering the outbox to drains: claim, advance, release (SPEC §4, §6).

Each drain has a position in its resource's outbox: ``cursor``, the last
batch it has (accepted by its receiver, or dropped and counted), and, when a
send settled only the first records of the next batch, ``partial_batch`` and
``partial_records``. A delivery job claims due drains (a lease in PostgreSQL,
``SKIP LOCKED``), and for each one the :class:`Deliverer`:

1. decrypts its URL and headers — a drain whose secrets cannot be decrypted
   any more is released with that error (``secret_lost_at``) and waits an
   hour, instead of crashing its thread silently;
2. picks the drain's sender once (:mod:`broker.senders`) and hands it the
   batches after its position, decoded by the outbox;
3. writes the position the sender reports (fenced by the lease) whenever a
   batch is complete, and at the end of the turn or when the receiver must
   wait — wherever that falls inside a batch — so a crash resends at most
   one batch's sends, with the same ``Logplex-Frame-Id``s;
4. releases the drain when it is caught up, when its turn is over
   (:data:`TURN_SECONDS`: it is due again at once, behind the drains that
   waited), or when the receiver cannot take more (back-off with jitter, or
   its ``Retry-After``), with the reason in ``last_error``.

A drain with rules (:mod:`broker.rules`, compiled once per process) has them
applied to each batch after it is decoded and before its sender formats it; a
batch its origins or sources exclude whole is not even decoded. A drain without
rules takes no extra step. Positions stay *raw* (a record's
index among all its batch's records), so ``partial_records`` and the
Frame-Ids mean the same records whatever the rules keep and however the
owner changes them while a batch is half sent. What the rules filtered out
and redacted in what a step settled (:class:`Ledger`) is counted in the same
fenced write as what was delivered; a batch whose records are all filtered
out settles like an empty one.

The loop never branches on the drain's kind. Fairness comes from the claim
(:data:`CLAIM`): a drain whose receiver answers slowly (``send_seconds``, a
moving average of its sends' wall time) is claimed only by a job's slow lane,
a few threads of their own, so slow or hostile receivers never hold the
threads healthy drains are delivered by; and no resource holds more than its
share of either lane at once.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field, replace
from typing import Callable, ContextManager, Iterator

import psycopg

from broker import activity, outbox, rules, usage
from broker.senders import (KINDS, SECRET_LOST_ERROR, Drain, Halt, Pending, SecretLost, Source, Step, Wire,
                            destination, frame_id, sender_for)
from broker.vault import Vault

log = logging.getLogger(__name__)

__all__ = ["KINDS", "Claimed", "Deliverer", "Outcome", "backoff", "claim", "count_due", "frame_id"]

BATCHES_PER_READ = 20
BACKOFF_MAX_SECONDS = 300
# A drain's turn: after this long it is released (due again at once) and waits behind the others.
TURN_SECONDS = 5.0
# A lease outlives a turn plus one send's deadline with room to spare; a job killed outright
# leaves leases that free their drains this long after.
LEASE_SECONDS = 90
# A drain whose sends take longer than this (moving average) is delivered by the slow lane.
SLOW_SEND_SECONDS = 1.0
# Weight of the newest send in the moving average.
SEND_SECONDS_WEIGHT = 0.3
# How long a drain whose secrets cannot be decrypted waits before it is tried again.
SECRET_LOST_RETRY_SECONDS = 3600
# How long a drain whose stored rules no longer compile waits before it is tried again.
RULES_BROKEN_RETRY_SECONDS = 3600

Connect = Callable[[], ContextManager[psycopg.Connection]]

# Claim due drains of one lane, oldest due first, at most ``per_resource`` under lease per resource
# (those already leased count), and lease them.
CLAIM = """
WITH leased AS (
    SELECT resource_id, count(*) AS n FROM drains WHERE lease_token IS NOT NULL AND lease_expires_at > now()
    GROUP BY resource_id
), candidates AS (
    SELECT d.id, d.next_attempt_at,
           COALESCE(l.n, 0) + row_number() OVER (PARTITION BY d.resource_id ORDER BY d.next_attempt_at) AS share
    FROM drains d LEFT JOIN leased l ON l.resource_id = d.resource_id
    WHERE d.enabled AND d.kind = ANY(%(kinds)s) AND d.next_attempt_at <= now()
      AND (d.lease_expires_at IS NULL OR d.lease_expires_at < now())
      AND (d.send_seconds > %(slow)s) = %(slow_lane)s
      AND EXISTS (SELECT 1 FROM outbox o WHERE o.resource_id = d.resource_id AND o.id > d.cursor)
), due AS (
    SELECT d.id FROM drains d JOIN candidates c ON c.id = d.id
    WHERE c.share <= %(per_resource)s
      AND d.enabled AND d.next_attempt_at <= now() AND (d.lease_expires_at IS NULL OR d.lease_expires_at < now())
    ORDER BY c.next_attempt_at
    LIMIT %(limit)s
    FOR UPDATE OF d SKIP LOCKED
)
UPDATE drains d
SET lease_token = gen_random_uuid(), lease_expires_at = now() + make_interval(secs => %(lease)s)
FROM due, resources r
WHERE d.id = due.id AND r.id = d.resource_id AND r.state <> 'deprovisioned'
RETURNING d.id, d.resource_id, d.kind, d.url_enc, d.token, d.settings, d.headers_enc, d.cursor,
          d.partial_batch, d.partial_records, d.lease_token, d.consecutive_failures, d.send_seconds, d.rules
"""

DUE = """
SELECT count(*) AS n FROM (
    SELECT 1 FROM drains d
    WHERE d.enabled AND d.kind = ANY(%s) AND d.next_attempt_at <= now()
      AND (d.lease_expires_at IS NULL OR d.lease_expires_at < now())
      AND EXISTS (SELECT 1 FROM outbox o WHERE o.resource_id = d.resource_id AND o.id > d.cursor)
    LIMIT %s) due
"""


@dataclass(frozen=True)
class Claimed:
    """A drain under this job's lease, as the claim returned it."""

    id: object
    resource_id: object
    kind: str
    token: str
    settings: dict
    url_enc: str | None
    headers_enc: str | None
    cursor: int
    partial_batch: int | None
    partial_records: int
    lease_token: object
    consecutive_failures: int
    send_seconds: float
    rules: dict = field(default_factory=dict)

    @classmethod
    def of(cls, row: dict) -> "Claimed":
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})

    @property
    def drain(self) -> Drain:
        return Drain(self.id, self.kind, self.token, self.settings or {})


def claim(conn: psycopg.Connection, limit: int, *, slow: bool = False, per_resource: int = 1_000_000,
          lease_seconds: int = LEASE_SECONDS) -> list[Claimed]:
    """Lease up to ``limit`` due drains of the fast lane (or the slow one)."""
    if limit <= 0:
        return []
    with conn.transaction():
        rows = conn.execute(CLAIM, {"kinds": list(KINDS), "limit": limit, "lease": lease_seconds,
                                    "slow": SLOW_SEND_SECONDS, "slow_lane": slow,
                                    "per_resource": per_resource}).fetchall()
    return [Claimed.of(r) for r in rows]


def count_due(conn: psycopg.Connection, cap: int) -> int:
    return conn.execute(DUE, (list(KINDS), cap)).fetchone()["n"]


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
    filtered: int = 0
    redacted: int = 0
    requests: int = 0
    result: str = "idle"
    errors: list[str] = field(default_factory=list)


class LostLease(Exception):
    pass


def merged(earlier: Step, later: Step) -> Step:
    """Two consecutive steps written as one: the later position, both sends' counts."""
    return Step(later.batch, later.offset, delivered=earlier.delivered + later.delivered,
                dropped=earlier.dropped + later.dropped, rejected=earlier.rejected + later.rejected,
                error=later.error or earlier.error, requests=earlier.requests + later.requests,
                seconds=max(earlier.seconds, later.seconds), filtered=earlier.filtered + later.filtered,
                redacted=earlier.redacted + later.redacted)


class Ledger:
    """What a drain's rules removed and redacted in each batch of a turn, counted as steps settle it.

    A step settles raw positions up to where it stands; each batch is counted from where the
    previous step left it (its first pending position at first), so a batch settled over several
    steps, or several turns, is counted once, and what a turn did not settle is counted by the turn
    that does.
    """

    def __init__(self):
        self.open: dict[int, list] = {}  # batch id -> [settled up to, raw end, rules.Applied]

    def add(self, batch: int, start: int, end: int, applied: rules.Applied) -> None:
        if applied.filtered or applied.redacted:
            self.open[batch] = [start, end, applied]

    def settle(self, batch: int, offset: int | None) -> tuple[int, int]:
        """(filtered, redacted) in what a step at ``batch``/``offset`` settled since the last one."""
        filtered = redacted = 0
        for batch_id in list(self.open):
            if batch_id > batch:
                break
            entry = self.open[batch_id]
            upto = entry[1] if batch_id < batch or offset is None else offset
            f, r = entry[2].counts(entry[0], upto)
            filtered, redacted = filtered + f, redacted + r
            if upto >= entry[1]:
                del self.open[batch_id]
            else:
                entry[0] = upto
        return filtered, redacted


SOURCES = """
SELECT id, app_id, environment_id, service_name, environment_label, include_arguments
FROM sources WHERE id = ANY(%s)
"""


class Deliverer:
    def __init__(self, connect: Connect, wire: Wire, vault: Vault, *, turn_seconds: float = TURN_SECONDS,
                 clock: Callable[[], float] = time.monotonic):
        self.connect = connect
        self.wire = wire
        self.vault = vault
        self.turn_seconds = turn_seconds
        self.clock = clock

    def deliver(self, drain: Claimed) -> Outcome:
        """Send what the drain lacks until it is caught up, must wait, or its turn is over."""
        outcome = Outcome(drain.id)
        try:
            where = destination(drain.url_enc, drain.headers_enc, self.vault)
        except SecretLost:
            self._secret_lost(drain)
            outcome.result = "secret-lost"
            outcome.errors.append("secret lost")
            return outcome
        if where is None:
            self._release(drain, 3600, error="the drain has no destination")
            outcome.result = "no-destination"
            return outcome
        try:
            compiled = rules.compile(drain.rules)
        except rules.RulesInvalid as exc:
            # Sending the records unfiltered could send what the owner wanted redacted: wait instead.
            log.warning("delivery drain=%s: its stored rules do not compile", drain.id)
            self._release(drain, RULES_BROKEN_RETRY_SECONDS,
                          error=f"the drain's rules cannot be applied ({exc.message}): save them again; "
                                "records wait within the plan's backlog")
            outcome.result = "rules-invalid"
            outcome.errors.append("rules invalid")
            return outcome
        sender = sender_for(drain.drain, where, self.wire)
        began = self.clock()
        state = {"drained": False}
        ledger = Ledger() if compiled is not None else None
        position = drain
        unsaved: Step | None = None  # steps inside a batch are written with the step that completes it
        try:
            for step in sender.deliver(self._pending(drain, sender, began, state, compiled, ledger)):
                if isinstance(step, Halt):
                    if unsaved is not None:
                        position = self._advance(position, unsaved)
                    self._halt(position, step, outcome)
                    return outcome
                if ledger is not None:
                    filtered, redacted = ledger.settle(step.batch, step.offset)
                    if filtered or redacted:
                        step = replace(step, filtered=filtered, redacted=redacted)
                        outcome.filtered += filtered
                        outcome.redacted += redacted
                outcome.requests += step.requests
                outcome.delivered += step.delivered
                outcome.dropped += step.dropped
                outcome.rejected += step.rejected
                outcome.batches += step.offset is None
                if step.error:
                    outcome.errors.append(step.error)
                unsaved = step if unsaved is None else merged(unsaved, step)
                over = self.clock() - began >= self.turn_seconds
                if step.offset is None or over:
                    position, unsaved = self._advance(position, unsaved), None
                if over:
                    break
            if unsaved is not None:
                position = self._advance(position, unsaved)
            outcome.result = "caught-up" if state["drained"] else "turn-over"
            self._release(position, 0)
            return outcome
        except LostLease:
            outcome.result = "lost-lease"
            log.warning("delivery drain=%s lost its lease", drain.id)
            return outcome

    def _pending(self, drain: Claimed, sender, began: float, state: dict, compiled: rules.Rules | None = None,
                 ledger: Ledger | None = None) -> Iterator[Pending]:
        """The drain's batches after its position, read in slices while its turn lasts, with the
        drain's rules applied (``compiled``; what they did goes to ``ledger``)."""
        cursor = drain.cursor
        sources: dict = {}
        first = True
        while first or self.clock() - began < self.turn_seconds:  # a turn reads at least once
            first = False
            with self.connect() as conn:
                batches = outbox.after(conn, drain.resource_id, cursor, BATCHES_PER_READ)
                missing = [b.source_id for b in batches if b.source_id and b.source_id not in sources]
                if missing:
                    for row in conn.execute(SOURCES, (missing,)):
                        sources[row["id"]] = Source.of(row)
            if not batches:
                state["drained"] = True
                return
            for batch in batches:
                skip = drain.partial_records if batch.id == drain.partial_batch else 0
                wanted = sender.receives(batch.origin)
                # Alert lines (broker.alerts) are the broker's word to the owner: no rule filters them.
                ruled = compiled is not None and batch.origin != "alert"
                if wanted and ruled and not compiled.wants(batch.origin, batch.source_id):
                    # Excluded whole by origin or source: counted as filtered, never decoded.
                    ledger.add(batch.id, skip, batch.record_count,
                               rules.Applied([], [], batch.record_count - skip, 0))
                    wanted = False
                records = batch.records()[skip:] if wanted else []
                source = sources.get(batch.source_id) or Source()
                if not ruled or not records:
                    yield Pending(batch.id, records, skip, source)
                    continue
                applied = compiled.apply(records, batch.origin, source, skip)
                ledger.add(batch.id, skip, skip + len(records), applied)
                yield Pending(batch.id, applied.records, skip, source, applied.positions)
            cursor = batches[-1].id

    # --- fenced writes -----------------------------------------------------------

    def _advance(self, drain: Claimed, step: Step) -> Claimed:
        cursor = step.batch if step.offset is None else step.batch - 1
        partial = None if step.offset is None else step.batch
        records = 0 if step.offset is None else step.offset
        with self.connect() as conn, conn.transaction():
            # Not waiting for the WAL flush: an advance lost in a PostgreSQL crash only resends
            # what the receiver has (same Frame-Ids), and any later durable commit flushes it first.
            conn.execute("SET LOCAL synchronous_commit = off")
            updated = conn.execute(
                """
                UPDATE drains SET cursor = GREATEST(cursor, %(cursor)s), partial_batch = %(partial)s,
                    partial_records = %(records)s,
                    delivered = delivered + %(delivered)s, dropped = dropped + %(dropped)s,
                    rejected = rejected + %(rejected)s, filtered = filtered + %(filtered)s,
                    redacted = redacted + %(redacted)s,
                    last_delivery_at = CASE WHEN %(delivered)s > 0 THEN now() ELSE last_delivery_at END,
                    consecutive_failures = 0, secret_lost_at = NULL,
                    send_seconds = CASE WHEN %(sent)s THEN send_seconds * %(keep)s + %(seconds)s * %(weight)s
                                        ELSE send_seconds END,
                    last_error = COALESCE(%(error)s, last_error)
                WHERE id = %(id)s AND lease_token = %(lease)s AND enabled
                """,
                {"cursor": cursor, "partial": partial, "records": records, "delivered": max(step.delivered, 0),
                 "dropped": step.dropped, "rejected": step.rejected, "filtered": step.filtered,
                 "redacted": step.redacted, "error": step.error,
                 "sent": step.requests > 0, "seconds": step.seconds, "weight": SEND_SECONDS_WEIGHT,
                 "keep": 1 - SEND_SECONDS_WEIGHT, "id": drain.id, "lease": drain.lease_token},
            ).rowcount
            if updated:
                activity.add_now(conn, drain.resource_id, drain.id, "delivered", max(step.delivered, 0))
                activity.add_now(conn, drain.resource_id, drain.id, "dropped", step.dropped)
                usage.add(conn, drain.resource_id, "delivered", max(step.delivered, 0), kind=drain.kind)
                usage.add(conn, drain.resource_id, "dropped", step.dropped, kind=drain.kind)
        if not updated:
            raise LostLease(str(drain.id))
        return replace(drain, cursor=max(drain.cursor, cursor), partial_batch=partial, partial_records=records)

    def _halt(self, drain: Claimed, halt: Halt, outcome: Outcome) -> None:
        result = halt.result
        delay = backoff(drain.consecutive_failures, result.retry_after)
        self._release(drain, delay, error=result.detail, retried=True, seconds=halt.seconds)
        outcome.result = "retry"
        outcome.requests += 1
        outcome.errors.append(result.detail)

    def _secret_lost(self, drain: Claimed) -> None:
        log.warning("delivery drain=%s: its URL or headers cannot be decrypted with FERNET_KEYS", drain.id)
        with self.connect() as conn, conn.transaction():
            conn.execute(
                "UPDATE drains SET secret_lost_at = COALESCE(secret_lost_at, now()), last_error = %(error)s, "
                "lease_token = NULL, lease_expires_at = NULL, "
                "next_attempt_at = now() + make_interval(secs => %(delay)s) "
                "WHERE id = %(id)s AND lease_token = %(lease)s",
                {"error": SECRET_LOST_ERROR, "delay": SECRET_LOST_RETRY_SECONDS, "id": drain.id,
                 "lease": drain.lease_token})

    def _release(self, drain: Claimed, delay: float, *, error: str | None = None, retried: bool = False,
                 seconds: float | None = None) -> None:
        sets = ["lease_token = NULL", "lease_expires_at = NULL",
                "next_attempt_at = now() + make_interval(secs => %(delay)s)"]
        if retried:
            sets += ["consecutive_failures = consecutive_failures + 1", "retried = retried + 1",
                     "last_error = %(error)s"]
        elif error is not None:
            sets.append("last_error = %(error)s")
        if seconds is not None:
            # A send that failed slowly (its deadline, a receiver stalling) marks the drain slow at once.
            sets.append("send_seconds = GREATEST(send_seconds * %(keep)s + %(seconds)s * %(weight)s, %(seconds)s)")
        with self.connect() as conn, conn.transaction():
            conn.execute(f"UPDATE drains SET {', '.join(sets)} WHERE id = %(id)s AND lease_token = %(lease)s",
                         {"delay": delay, "error": error, "id": drain.id, "lease": drain.lease_token,
                          "seconds": seconds, "weight": SEND_SECONDS_WEIGHT, "keep": 1 - SEND_SECONDS_WEIGHT})
