"""The outbox: the one store of records waiting for drains (SPEC §4, §6).

Polling and drain ingest append to it; delivery reads after each drain's
cursor; pruning removes what no drain still needs. None of them imports
another: they meet here. Every query is keyed by ``resource_id`` first, so the
table can be distributed by resource (one shard per group of resources)
without a redesign.

An outbox *batch* is one row: the records one Forge page added (origin
``forge``, a zlib-compressed JSON array), one logplex request of the
Heroku app's own logs (origin ``heroku``, the octet-counted frames as they
came), one OTLP request of an app's logs (origin ``otlp``, the protobuf or
JSON body as it came, :mod:`broker.formats.otlp_ingest`), or the notices of an alert
evaluation (origin ``alert``, records like a Forge batch's, see :func:`append_alerts`).
Its records are read with :meth:`Batch.records`.

**Backlog**, everywhere it is shown (resource API, dashboard, ``/metrics``,
CLI ``status``, ``replay``) and in delivery itself, means one thing: the
records of the batches after a drain's cursor that the drain will receive.
The ``heroku`` drain writes into the app's own stream, so the app's own
records (origins ``heroku`` and ``otlp``: what an app sends over OTLP is its own
logs too) are never sent back there and never count toward its backlog; alert lines
(origin ``alert``) are for that stream only, so they count toward the heroku drain's
backlog and no other's (:data:`RECEIVES`).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from datetime import datetime

import orjson
import psycopg

from broker import activity, plans, usage
from broker.formats import logplex, otlp_ingest

# zlib level 3: measured (bench/poll_cpu.py) at half the CPU of level 6 for 1.15x the bytes.
COMPRESSION_LEVEL = 3
# Heroku frames are stored while logplex waits for the answer: the cheapest level.
FRAMES_COMPRESSION_LEVEL = 1

# pg_advisory_xact_lock(APPEND_LOCK, hashtext(resource id)): appends to one resource's outbox.
APPEND_LOCK = 7_210_001
# pg_advisory_xact_lock key taken by prune() and by anything that moves a cursor back (replay).
PRUNE_LOCK = 7_210_002

# What a drain receives of a batch: everything, except the app's own logs (logplex or OTLP ingest)
# for the heroku drain, and alert lines (broker.alerts) for any other drain. ``d`` is the drain,
# ``o`` the outbox row.
OWN_LOG_ORIGINS = ("heroku", "otlp")
RECEIVES = "(CASE WHEN d.kind = 'heroku' THEN o.origin NOT IN ('heroku', 'otlp') ELSE o.origin <> 'alert' END)"


@dataclass(frozen=True)
class Batch:
    id: int
    source_id: object | None
    origin: str          # forge | heroku | otlp | alert
    record_count: int
    min_ts: datetime     # for heroku and otlp batches: when they were received
    payload: bytes

    def records(self) -> list[dict]:
        """The batch's records, in the broker's model (Forge's OTLP-shaped records)."""
        if self.origin == "heroku":
            received = int(self.min_ts.timestamp() * 1e9)
            return [logplex.to_record(m, received)
                    for m in logplex.split(zlib.decompress(self.payload), limit=None)]
        if self.origin == "otlp":
            return otlp_ingest.records(zlib.decompress(self.payload), int(self.min_ts.timestamp() * 1e9))
        return forge_records(self.payload)

    def received_by(self, kind: str) -> bool:
        """Whether a drain of ``kind`` receives this batch's records (:data:`RECEIVES`)."""
        return received_by(kind, self.origin)


def received_by(kind: str, origin: str) -> bool:
    """Whether a drain of ``kind`` receives records of ``origin`` (:data:`RECEIVES`, for one batch)."""
    return origin not in OWN_LOG_ORIGINS if kind == "heroku" else origin != "alert"


@dataclass(frozen=True)
class Backlog:
    batches: int = 0
    records: int = 0


# --- append ------------------------------------------------------------------------

def forge_payload(records: list[dict]) -> bytes:
    return zlib.compress(orjson.dumps(records), COMPRESSION_LEVEL)


def forge_records(payload: bytes) -> list[dict]:
    """The records of a Forge batch's payload (:func:`forge_payload` reversed)."""
    return orjson.loads(zlib.decompress(payload))


def frames_payload(frames: list[bytes]) -> bytes:
    return zlib.compress(b"".join(frames), FRAMES_COMPRESSION_LEVEL)


def _lock_for_append(conn: psycopg.Connection, resource_id) -> None:
    """Serialise appends to a resource's outbox until this transaction ends.

    Outbox ids are drawn at INSERT, not at COMMIT: without this, a batch that
    got id N but committed after N+1 would be passed over by a drain whose
    cursor already moved to N+1 (its reads are ``id > cursor``) and later be
    pruned unseen. Holding this lock from just before the INSERT to the
    commit makes a resource's ids appear in commit order, so a cursor never
    jumps a batch. Writers of different resources do not wait for each other.
    """
    conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s::text))", (APPEND_LOCK, str(resource_id)))


APPEND = """
INSERT INTO outbox (resource_id, source_id, origin, record_count, min_ts, max_ts, payload)
VALUES (%(resource)s, %(source)s, %(origin)s, %(count)s, COALESCE(%(min_ts)s, now()), COALESCE(%(max_ts)s, now()),
        %(payload)s)
RETURNING id
"""


def append(conn: psycopg.Connection, resource_id, *, origin: str, record_count: int, payload: bytes,
           source_id=None, min_ts: datetime | None = None, max_ts: datetime | None = None) -> int:
    """Add one batch; its id. Must run inside the caller's transaction, which the ordering lock
    is held to (so the batch and whatever the caller records with it commit together)."""
    if conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
        raise RuntimeError("outbox.append must run inside a transaction")
    _lock_for_append(conn, resource_id)
    return conn.execute(APPEND, {"resource": resource_id, "source": source_id, "origin": origin,
                                 "count": record_count, "min_ts": min_ts, "max_ts": max_ts,
                                 "payload": payload}).fetchone()["id"]


def append_forge(conn: psycopg.Connection, resource_id, source_id, records: list[dict],
                 times: list[datetime]) -> int:
    """Add the records a Forge page brought (``times``: each record's time)."""
    raw = orjson.dumps(records)
    batch = append(conn, resource_id, origin="forge", source_id=source_id, record_count=len(records),
                   min_ts=min(times), max_ts=max(times), payload=zlib.compress(raw, COMPRESSION_LEVEL))
    usage.add(conn, resource_id, "forge", len(records), len(raw))
    return batch


def append_frames(conn: psycopg.Connection, resource_id, frames: list[bytes], count: int) -> int:
    """Add ``count`` octet-counted frames of the Heroku app's own logs, stored as they came;
    the batch's time is when it was received."""
    batch = append(conn, resource_id, origin="heroku", record_count=count, payload=frames_payload(frames))
    usage.add(conn, resource_id, "ingest", count, sum(len(frame) for frame in frames))
    return batch


def append_alerts(conn: psycopg.Connection, resource_id, records: list[dict]) -> int:
    """Add alert lines for the app's own log stream (only the heroku drain receives them); records
    of the broker's model that carry their logplex header in a ``heroku`` part, stored like a
    Forge batch's. The batch's time is now."""
    return append(conn, resource_id, origin="alert", record_count=len(records), payload=forge_payload(records))


def append_otlp(conn: psycopg.Connection, resource_id, payload: bytes, count: int) -> int:
    """Add an OTLP request's ``count`` records, stored as they came (``otlp_ingest.Parsed.payload``);
    the batch's time is when it was received."""
    batch = append(conn, resource_id, origin="otlp", record_count=count,
                   payload=zlib.compress(payload, FRAMES_COMPRESSION_LEVEL))
    usage.add(conn, resource_id, "ingest", count, len(payload))
    return batch


# --- read --------------------------------------------------------------------------

AFTER = """
SELECT id, source_id, origin, record_count, min_ts, payload FROM outbox
WHERE resource_id = %(resource)s AND id > %(cursor)s ORDER BY id LIMIT %(limit)s
"""


def after(conn: psycopg.Connection, resource_id, cursor: int, limit: int) -> list[Batch]:
    """Up to ``limit`` batches of the resource after ``cursor``, oldest first."""
    return [Batch(r["id"], r["source_id"], r["origin"], r["record_count"], r["min_ts"], bytes(r["payload"]))
            for r in conn.execute(AFTER, {"resource": resource_id, "cursor": cursor, "limit": limit})]


NEWEST = "SELECT COALESCE(max(id), 0) AS id FROM outbox WHERE resource_id = %s"


def newest(conn: psycopg.Connection, resource_id) -> int:
    """The id of the resource's newest batch (0 when none): where a new drain starts."""
    return conn.execute(NEWEST, (resource_id,)).fetchone()["id"]


HELD = """
SELECT count(*) AS batches, COALESCE(sum(record_count), 0)::bigint AS records, min(created_at) AS oldest
FROM outbox WHERE (%(resource)s::uuid IS NULL OR resource_id = %(resource)s::uuid)
"""


def held(conn: psycopg.Connection, resource_id=None) -> dict:
    """What the outbox holds (of one resource, or in all): batches, records, oldest batch's time."""
    row = conn.execute(HELD, {"resource": resource_id}).fetchone()
    return {"batches": row["batches"], "records": int(row["records"]), "oldest": row["oldest"]}


HELD_SINCE = """
SELECT min(created_at) AS oldest,
       (SELECT min(id) FROM outbox WHERE resource_id = %(resource)s AND created_at >= %(since)s) AS first
FROM outbox WHERE resource_id = %(resource)s
"""


def held_since(conn: psycopg.Connection, resource_id, since: datetime) -> dict:
    """The resource's oldest batch's time, and its first batch stored at or after ``since`` (None if none)."""
    return conn.execute(HELD_SINCE, {"resource": resource_id, "since": since}).fetchone()


FIRST_AFTER = "SELECT min(created_at) AS t FROM outbox WHERE resource_id = %s AND id > %s"


def first_after(conn: psycopg.Connection, resource_id, cursor: int) -> datetime | None:
    """When the resource's first batch after ``cursor`` was stored."""
    return conn.execute(FIRST_AFTER, (resource_id, cursor)).fetchone()["t"]


# --- backlog: one definition -------------------------------------------------------

# A drain's backlog: what it receives of the batches after its cursor, less the records of the next
# batch an earlier send already settled (its partial position).
DRAIN_BACKLOG = f"""
SELECT d.id, d.kind, b.batches,
       GREATEST(b.records - CASE WHEN d.partial_batch > d.cursor THEN d.partial_records ELSE 0 END, 0) AS records
FROM drains d
CROSS JOIN LATERAL (
    SELECT count(*) AS batches, COALESCE(sum(o.record_count), 0)::bigint AS records FROM outbox o
    WHERE o.resource_id = d.resource_id AND o.id > d.cursor AND {RECEIVES}) b
"""

BACKLOGS = DRAIN_BACKLOG + """
WHERE d.resource_id = %(resource)s AND (%(drain)s::uuid IS NULL OR d.id = %(drain)s::uuid)
"""


def backlogs(conn: psycopg.Connection, resource_id, drain_id=None) -> dict:
    """Each drain's backlog (of one drain when ``drain_id`` is given): ``{drain id: Backlog}``."""
    return {r["id"]: Backlog(r["batches"], int(r["records"]))
            for r in conn.execute(BACKLOGS, {"resource": resource_id, "drain": drain_id})}


def backlog(conn: psycopg.Connection, resource_id, drain_id) -> Backlog:
    return backlogs(conn, resource_id, drain_id).get(drain_id, Backlog())


BETWEEN = f"""
SELECT count(*) AS batches, COALESCE(sum(o.record_count), 0)::bigint AS records
FROM outbox o, (SELECT %(kind)s::text AS kind) d
WHERE o.resource_id = %(resource)s AND o.id > %(after)s AND (%(upto)s::bigint IS NULL OR o.id <= %(upto)s::bigint)
  AND {RECEIVES}
"""


def between(conn: psycopg.Connection, resource_id, kind: str, after_id: int, upto: int | None = None) -> Backlog:
    """What a drain of ``kind`` receives of the batches in ``(after_id, upto]`` (to the newest when None)."""
    row = conn.execute(BETWEEN, {"resource": resource_id, "kind": kind, "after": after_id,
                                 "upto": upto}).fetchone()
    return Backlog(row["batches"], int(row["records"]))


# Live resources only: a deprovisioned resource's drains receive nothing any more.
BACKLOG_BY_KIND = f"""
SELECT kind, sum(batches)::bigint AS batches, sum(records)::bigint AS records
FROM ({DRAIN_BACKLOG}
      JOIN resources r ON r.id = d.resource_id AND r.state <> 'deprovisioned') per_drain
GROUP BY kind
"""


def backlog_by_kind(conn: psycopg.Connection) -> dict[str, Backlog]:
    """The fleet's backlog per drain kind."""
    return {r["kind"]: Backlog(r["batches"], int(r["records"])) for r in conn.execute(BACKLOG_BY_KIND)}


# --- prune -------------------------------------------------------------------------

# Drains behind a batch older than their plan's backlog move past it, counting what they lose.
# Keyed by resource: the newest batch past each plan's horizon is found once on the age index
# (``cut``), then each drain behind it looks at its own resource's batches only — never a scan of
# the whole outbox (bench/outbox.py: 7.2 s at 20 M batches for the per-row comparison this
# replaced, 0.1 s for this). Ids follow creation closely (appends hold a per-resource lock to their
# commit), so a batch stored in the same instant as the cut may go one prune early.
EXPIRE = f"""
WITH horizon AS (
    SELECT h.plan, h.hours,
           (SELECT o.id FROM outbox o WHERE o.created_at < now() - make_interval(hours => h.hours)
            ORDER BY o.created_at DESC LIMIT 1) AS cut
    FROM unnest(%(plans)s::text[], %(hours)s::int[]) AS h(plan, hours)
), behind AS (
    SELECT d.id, d.resource_id, d.kind, d.cursor, d.partial_batch, d.partial_records, h.hours,
           (SELECT max(o.id) FROM outbox o WHERE o.resource_id = d.resource_id AND o.id <= h.cut) AS upto
    FROM drains d JOIN resources r ON r.id = d.resource_id JOIN horizon h ON h.plan = r.plan
    WHERE d.cursor < h.cut
), lost AS (
    SELECT b.id, b.upto, b.hours,
           (SELECT COALESCE(sum(o.record_count), 0) FROM outbox o
            WHERE o.resource_id = b.resource_id AND o.id > b.cursor AND o.id <= b.upto
              AND {RECEIVES.replace("d.kind", "b.kind")})
           - CASE WHEN b.partial_batch > b.cursor AND b.partial_batch <= b.upto THEN b.partial_records ELSE 0 END
           AS records
    FROM behind b WHERE b.cursor < b.upto
)
UPDATE drains d
SET cursor = lost.upto, partial_batch = NULL, partial_records = 0, dropped = d.dropped + lost.records,
    last_error = CASE WHEN lost.records > 0
        THEN format('%%s records were dropped: older than the plan''s %%s-hour backlog before this drain '
                    'accepted them', lost.records, lost.hours)
        ELSE d.last_error END
FROM lost
WHERE d.id = lost.id
RETURNING d.id, d.resource_id, d.kind, lost.records
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
        # JIT compiling these plans cost more than running them (0.8 s of EXPIRE at 20 M batches).
        conn.execute("SET LOCAL jit = off")
        for row in conn.execute(EXPIRE, {"plans": [p.name for p in every],
                                         "hours": [p.backlog_hours for p in every]}).fetchall():
            pruned.drains_behind += 1
            pruned.dropped_records += row["records"]
            activity.add_now(conn, row["resource_id"], row["id"], "dropped", row["records"])
            usage.add(conn, row["resource_id"], "dropped", row["records"], kind=row["kind"])
        pruned.batches = conn.execute(DELIVERED, {"limit": limit, "keep": replay_hours}).rowcount
    return pruned


def lock_against_prune(conn: psycopg.Connection) -> None:
    """Hold off pruning until this transaction ends (a cursor moving back must not race it)."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (PRUNE_LOCK,))
