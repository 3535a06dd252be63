"""The outbox at fleet scale (issue 13, item 5).

Target: "Append, read-after-cursor and prune keep their cost as the outbox
grows to tens of millions of records"; the benchmark: "Outbox prune and
append cost at 1 M vs 20 M rows". If row-by-row DELETE pruning cannot hold
that, the issue proposes PostgreSQL declarative partitioning by time.

What it runs, against real PostgreSQL (fsync on), once per outbox size
(``--small`` 1,000,000 then ``--large`` 20,000,000 batches; ``--quick``:
100,000 and 2,000,000), each in a throwaway database migrated with
``broker.migrate``:

- a fleet: ``--resources`` 2,000 resources (20 % plan ``test``, 50 %
  ``basic``, 30 % ``pro``; 0.5 % deprovisioned), one source each, the
  built-in ``heroku`` drain plus 0-3 others (~2.5 drains a resource);
- the outbox filled server-side (``INSERT … SELECT … FROM generate_series``
  in chunks of ``--chunk`` 1,000,000 rows, a transaction each; foreign-key
  triggers skipped when the role may, the rows being valid by construction):
  batches spread evenly over the last 7 days (ids in time order, as appends
  make them), resources drawn skewed (the largest holds ~2 %), 10 % of
  origin ``heroku``, ``record_count`` 1-500, payloads 224-608 bytes of md5
  digests (not zeros; below the TOAST threshold, as a small page's zlib
  payload is); then ``VACUUM ANALYZE``. Drain cursors: 80 % delivered to
  within 2 minutes, 12 % 10 min-6 h behind, 5 % 6-48 h, 3 % 2-6 days (some
  past their plan's backlog hours, so pruning by age has work). The fill is
  seeded: every layout gets the same rows and cursors at a given size;
- timed through the real functions of ``broker/outbox.py`` on a connection
  made like the service's (``broker.db.connect``: autocommit, dict rows):
  ``after(resource, cursor, 20)`` for random drains' cursors (the delivery
  read; the claim's ``EXISTS`` probe is the same index descent),
  ``backlogs(resource)`` and ``held(resource)`` per random resource,
  ``backlog_by_kind()`` (the /metrics scrape's fleet query, which runs under a
  2 s statement timeout there), ``held()`` over the fleet (CLI ``status``),
  ``append_forge`` of an 8-record page, a transaction (a durable commit)
  each, as the poller's; then ``prune(limit=20_000, replay_hours=24)``
  repeated until it removes nothing or ``--prune-calls`` 20 calls, each of
  its two statements timed (``EXPIRE``, the update moving drains past
  batches older than their plan's backlog; ``DELIVERED``, the ``DELETE``),
  dead tuples and size afterwards, ``EXPLAIN (ANALYZE, BUFFERS)`` of both
  (rolled back) and of ``backlog_by_kind``, and the ``VACUUM`` that
  DELETE-pruning leaves to do;
- ``outbox.EXPIRE`` as a dry run (rolled back), timed before the first
  ``prune()`` (compared with what that call moved) and after the last (the
  steady state: little left to move).

Layouts (``--layouts``): ``heap`` is the migrated table. ``partitioned``, a
prototype built in the bench database only (never in ``migrations/``): the
same columns ``PARTITION BY RANGE (created_at)`` with daily partitions, the
primary key ``(id, created_at)`` (a unique key must hold the partition key),
``id`` from a sequence (PostgreSQL 15 has no identity on a partitioned
table), the same two indexes as local indexes. The same fill and the same
calls run on it unchanged; then "drop instead of delete": every partition
wholly older than the replay window is dropped when no drain of a live
resource is still behind a batch of its resource in it (one descent of the
partition's ``(resource_id, id)`` index per drain), and when none may be,
one ``DROP`` is timed and rolled back. ``auto`` (the default) runs the
partitioned layout only when the heap's ``prune()`` or ``append_forge``
p50 grows more than 2× from the small to the large outbox.

It prints fill time and sizes, then a table: operation × size per layout
with the ratio large / small (≤ 1.5: the cost holds as the outbox grows).
It never asserts on timings; it exits 1 only when a fill is wrong (ids not
1..N).

Flags: ``--small``, ``--large``, ``--quick``, ``--layouts auto|heap|heap,partitioned``,
``--resources`` 2000, ``--chunk`` 1000000, ``--reads`` 2000, ``--appends``
2000, ``--backlog-resources`` 500, ``--prune-calls`` 20, ``--prune-limit``
20000, ``--replay-hours`` 24, ``--seed``, ``--plans`` (print the EXPLAIN plans
of every pass, not only of the heap's large one). If less than 40 GB is free
where PostgreSQL keeps its data, a large size above 10,000,000 is lowered to
10,000,000 (and said so).

It needs DATABASE_URL (a PostgreSQL server where it may create and drop a
``forgedrain_bench_*`` database) and REDIS_URL (unused, but ``./scripts/bench``
provides both): ``./scripts/bench outbox``.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
import shutil
import sys
import time
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402

from broker import db, migrate, outbox  # noqa: E402
from broker.plans import PLANS  # noqa: E402
from common import create_database, drop_database, pct, servers, with_database  # noqa: E402

SPAN = timedelta(days=7)
MIN_FREE_GB = 40
LOWERED_LARGE = 10_000_000
HOLDS = 1.5
READ_LIMIT = 20
LAYOUTS = ("heap", "partitioned")


# --- the fleet and its outbox ----------------------------------------------------------

def make_fleet(conn: psycopg.Connection, resources: int) -> None:
    """Resources 0..R-1 (uuid md5('r'||i)), a source each (md5('s'||i)), the heroku drain and 0-3 more."""
    with conn.transaction():
        conn.execute(
            """
            INSERT INTO resources (id, partner_id, plan, state, log_drain_token, deprovisioned_at)
            SELECT md5('r' || i)::uuid, 'forgedrain',
                   CASE WHEN mod(i, 10) < 2 THEN 'test' WHEN mod(i, 10) < 7 THEN 'basic' ELSE 'pro' END,
                   CASE WHEN mod(i, 200) = 199 THEN 'deprovisioned' ELSE 'provisioned' END,
                   'd.' || md5('t' || i)::uuid,
                   CASE WHEN mod(i, 200) = 199 THEN now() - interval '1 day' END
            FROM generate_series(0, %(n)s - 1) AS i
            """, {"n": resources})
        conn.execute(
            """
            INSERT INTO sources (id, resource_id, app_id, environment_id, email)
            SELECT md5('s' || i)::uuid, md5('r' || i)::uuid, 'app-' || i, 'prod', 'bot-' || i || '@example.com'
            FROM generate_series(0, %(n)s - 1) AS i
            """, {"n": resources})
        conn.execute(
            """
            INSERT INTO drains (id, resource_id, kind, token, name)
            SELECT md5('d' || i || '-' || k)::uuid, md5('r' || i)::uuid,
                   CASE WHEN k = 0 THEN 'heroku' ELSE (ARRAY['logplex', 'syslog', 'otlp'])[k] END,
                   'd.' || gen_random_uuid(), 'bench-' || k
            FROM generate_series(0, %(n)s - 1) AS i, generate_series(0, 3) AS k
            WHERE k <= mod(i, 4)
            """, {"n": resources})


# The prototype layout (bench only): the migrated outbox's columns, partitioned by day.
PARTITIONED = """
DROP TABLE outbox;
CREATE SEQUENCE outbox_id_seq;
CREATE TABLE outbox (
    id           bigint NOT NULL DEFAULT nextval('outbox_id_seq'),
    resource_id  uuid NOT NULL REFERENCES resources (id) ON DELETE CASCADE,
    source_id    uuid REFERENCES sources (id) ON DELETE SET NULL,
    origin       text NOT NULL CHECK (origin IN ('forge', 'heroku')),
    record_count integer NOT NULL CHECK (record_count > 0),
    min_ts       timestamptz NOT NULL,
    max_ts       timestamptz NOT NULL,
    payload      bytea NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id, created_at)
) PARTITION BY RANGE (created_at);
ALTER SEQUENCE outbox_id_seq OWNED BY outbox.id;
CREATE INDEX outbox_resource_idx ON outbox (resource_id, id);
CREATE INDEX outbox_created_idx ON outbox (created_at);
"""


def partition(conn: psycopg.Connection) -> int:
    """Replace the migrated outbox by the partitioned prototype: a partition per UTC day, from the day
    7 days back (the fill's first) to tomorrow. Returns the number of partitions."""
    conn.execute(PARTITIONED)
    days = [r["d"] for r in conn.execute(
        "SELECT generate_series(date_trunc('day', now() AT TIME ZONE 'UTC') - interval '7 days', "
        "date_trunc('day', now() AT TIME ZONE 'UTC') + interval '1 day', interval '1 day') AS d")]
    for day in days:
        conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF outbox FOR VALUES FROM ({}) TO ({})").format(
            sql.Identifier(f"outbox_p{day:%Y%m%d}"), sql.Literal(f"{day:%Y-%m-%d} 00:00:00+00"),
            sql.Literal(f"{day + timedelta(days=1):%Y-%m-%d} 00:00:00+00")))
    return len(days)


# Row g (1..N) is created at t0 - SPAN + g × step: ids in time order, as appends make them. The
# subquery is kept apart (OFFSET 0) so each row's random resource is drawn once.
FILL = """
INSERT INTO outbox (resource_id, source_id, origin, record_count, min_ts, max_ts, payload, created_at)
SELECT md5('r' || x.r)::uuid,
       CASE WHEN x.heroku THEN NULL ELSE md5('s' || x.r)::uuid END,
       CASE WHEN x.heroku THEN 'heroku' ELSE 'forge' END,
       1 + floor(random() * 500)::int,
       x.t - make_interval(secs => 30 + random() * 60),
       x.t - make_interval(secs => random() * 10),
       decode(repeat(md5(x.g::text) || md5((x.g # 7919)::text), 7 + floor(random() * 13)::int), 'hex'),
       x.t
FROM (SELECT g, floor(%(resources)s * power(random(), 2))::int AS r, random() < 0.1 AS heroku,
             %(t0)s::timestamptz - make_interval(secs => (%(n)s - g) * %(step)s::float8) AS t
      FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS g
      OFFSET 0) AS x
"""

# Cursors as ids: row g was created at t0 - SPAN + g × step, so "lag L behind t0" is id N × (1 - L / SPAN).
CURSORS = """
UPDATE drains SET cursor = greatest(0, floor(%(n)s * (1 - lag / %(span)s::float8)))::bigint
FROM (SELECT id AS drain, CASE WHEN u < 0.80 THEN random() * 120
                               WHEN u < 0.92 THEN 600 + random() * (6 * 3600 - 600)
                               WHEN u < 0.97 THEN 6 * 3600 + random() * 42 * 3600
                               ELSE 48 * 3600 + random() * 96 * 3600 END AS lag
      FROM (SELECT id, random() AS u FROM drains ORDER BY id OFFSET 0) AS d) AS l
WHERE drains.id = l.drain
"""

# The outbox's relations: the table, or the partitions of the partitioned one.
RELATIONS = "(SELECT relid FROM pg_partition_tree('outbox') WHERE isleaf UNION SELECT 'outbox'::regclass)"
SIZES = f"""
SELECT sum(pg_total_relation_size(relid))::bigint AS total, sum(pg_relation_size(relid))::bigint AS heap,
       sum(pg_indexes_size(relid))::bigint AS indexes FROM {RELATIONS} AS r(relid)
"""


def fill(conn: psycopg.Connection, rows: int, resources: int, chunk: int, seed: float) -> dict:
    conn.execute("SELECT setseed(%s)", (seed,))
    t0 = conn.execute("SELECT now() AS t").fetchone()["t"]
    step = SPAN.total_seconds() / rows
    # The rows reference resources and sources that exist by construction: skip the foreign-key
    # triggers while filling (a third of the fill's time) when the role may.
    try:
        conn.execute("SET session_replication_role = replica")
        checks = False
    except psycopg.errors.InsufficientPrivilege:
        checks = True
    began = time.perf_counter()
    first = 1
    try:
        while first <= rows:
            last = min(rows, first + chunk - 1)
            conn.execute(FILL, {"resources": resources, "t0": t0, "n": rows, "step": step, "first": first,
                                "last": last})
            elapsed = time.perf_counter() - began
            print(f"  filled {last:>12,} / {rows:,} batches  {elapsed:6.1f} s  ({last / elapsed:,.0f} rows/s)",
                  flush=True)
            first = last + 1
    finally:
        if not checks:
            conn.execute("RESET session_replication_role")
    filled = time.perf_counter() - began
    conn.execute(CURSORS, {"n": rows, "span": SPAN.total_seconds()})
    began = time.perf_counter()
    conn.execute("VACUUM ANALYZE outbox")
    conn.execute("ANALYZE resources, sources, drains")
    vacuumed = time.perf_counter() - began
    check = conn.execute("SELECT min(id) AS lo, max(id) AS hi, count(*) AS n FROM outbox").fetchone()
    if (check["lo"], check["hi"], check["n"]) != (1, rows, rows):
        raise SystemExit(f"fill went wrong: ids {check['lo']}..{check['hi']}, {check['n']} rows, wanted 1..{rows}")
    sizes = conn.execute(SIZES).fetchone()
    sizes["payload"] = conn.execute("SELECT avg(octet_length(payload))::int AS b FROM outbox "
                                    "TABLESAMPLE SYSTEM (1)").fetchone()["b"]
    return {"fill_s": filled, "vacuum_s": vacuumed, "t0": t0, "fk_checks": checks, **sizes}


def describe(conn: psycopg.Connection, rows: int) -> None:
    d = conn.execute(
        """
        SELECT count(*) AS drains, count(*) FILTER (WHERE cursor >= %(n)s * (1 - 120 / %(span)s)) AS current,
               count(*) FILTER (WHERE cursor < %(n)s * (1 - 6 * 3600 / %(span)s)) AS behind_6h,
               count(*) FILTER (WHERE cursor < %(n)s * (1 - 48 * 3600 / %(span)s)) AS behind_48h
        FROM drains
        """, {"n": rows, "span": SPAN.total_seconds()}).fetchone()
    r = conn.execute(
        """
        SELECT max(n) AS largest, percentile_disc(0.5) WITHIN GROUP (ORDER BY n) AS median
        FROM (SELECT count(*) AS n FROM outbox GROUP BY resource_id) c
        """).fetchone()
    print(f"  {d['drains']:,} drains: {d['current']:,} within 2 min of the head, {d['behind_6h']:,} more than 6 h "
          f"behind, {d['behind_48h']:,} more than 48 h; batches per resource: median {r['median']:,}, "
          f"largest {r['largest']:,}", flush=True)


# --- EXPIRE as a dry run; pruning the partitioned prototype --------------------------------------

def expire_dry_run(conn: psycopg.Connection) -> list[dict]:
    """The drains and records ``outbox.EXPIRE`` would move now, rolled back: what ``prune()``'s
    first call is then checked against."""
    rows: list[dict] = []
    try:
        with conn.transaction():
            rows = conn.execute(outbox.EXPIRE, expire_params()).fetchall()
            raise _Rollback
    except _Rollback:
        pass
    return rows

# Drains of live resources still behind a batch of their resource in one partition: the partition
# may not be dropped while there is one.
BLOCKERS = """
SELECT count(*) AS drains, count(DISTINCT d.resource_id) AS resources
FROM drains d JOIN resources r ON r.id = d.resource_id AND r.state <> 'deprovisioned'
WHERE d.cursor < (SELECT max(p.id) FROM {} p WHERE p.resource_id = d.resource_id)
"""

PARTITIONS = """
SELECT c.relname AS name, pg_total_relation_size(c.oid) AS bytes, COALESCE(s.n_live_tup, 0) AS live,
       to_timestamp(substr(c.relname, 9), 'YYYYMMDD') + interval '1 day' <= now() - make_interval(hours => %s) AS old
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
WHERE i.inhparent = 'outbox'::regclass ORDER BY c.relname
"""


def drop_partitions(conn: psycopg.Connection, args: argparse.Namespace, fig: dict) -> None:
    """Prune by dropping whole partitions: every one wholly older than the replay window that no drain
    still needs. When none may go, one DROP is timed and rolled back (its cost, not its effect)."""
    flush_stats(conn)
    parts = conn.execute(PARTITIONS, (args.replay_hours,)).fetchall()
    old = [p for p in parts if p["old"]]
    checked, dropped, freed, kept_bytes, blocking = 0.0, 0, 0, 0, set()
    drop_ms: list[float] = []
    for p in old:
        t = time.perf_counter()
        row = conn.execute(sql.SQL(BLOCKERS).format(sql.Identifier(p["name"]))).fetchone()
        checked += time.perf_counter() - t
        if row["drains"]:
            kept_bytes += p["bytes"]
            blocking.add((p["name"], row["drains"], row["resources"]))
            continue
        t = time.perf_counter()
        with conn.transaction():
            conn.execute("SET LOCAL lock_timeout = '2s'")
            outbox.lock_against_prune(conn)
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(p["name"])))
        drop_ms.append((time.perf_counter() - t) * 1000)
        dropped += 1
        freed += p["live"]
    rolled_back = None
    if not drop_ms and old:
        t = time.perf_counter()
        try:
            with conn.transaction():
                conn.execute("SET LOCAL lock_timeout = '2s'")
                conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(old[0]["name"])))
                rolled_back = (time.perf_counter() - t) * 1000
                raise _Rollback
        except _Rollback:
            pass
    fig["partitions old"] = len(old)
    fig["partitions dropped"] = dropped
    fig["drop check ms"] = checked * 1000
    fig["drop ms"] = max(drop_ms) if drop_ms else (rolled_back or float("nan"))
    fig["dropped batches"] = freed
    fig["kept by blocked partitions MB"] = kept_bytes / 2**20
    worst = max(blocking, key=lambda b: b[1], default=None)
    print(f"  drop instead of delete: {len(old)} of {len(parts)} partitions wholly older than "
          f"{args.replay_hours} h; checked in {checked * 1000:,.0f} ms; {dropped} dropped ({freed:,} batches"
          + (f", {max(drop_ms):,.0f} ms at most" if drop_ms else "")
          + f"), {len(blocking)} kept ({kept_bytes / 2**20:,.0f} MB)"
          + (f": the oldest kept by {sorted(blocking)[0][1]} drains of {sorted(blocking)[0][2]} resources, "
             f"the worst by {worst[1]} of {worst[2]}" if blocking else "")
          + (f"; a DROP of {old[0]['name']} (rolled back) took {rolled_back:,.0f} ms" if rolled_back else ""),
          flush=True)


# --- measuring -------------------------------------------------------------------------

class Timed:
    """The connection, with the time of each statement prune() runs added up by statement."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self._conn = conn
        self.times: dict[str, float] = defaultdict(float)

    def execute(self, query, params=None, **kwargs):
        began = time.perf_counter()
        try:
            return self._conn.execute(query, params, **kwargs)
        finally:
            label = {outbox.EXPIRE: "expire", outbox.DELIVERED: "delete"}.get(query, "other")
            self.times[label] += time.perf_counter() - began

    def __getattr__(self, name):
        return getattr(self._conn, name)


class _Rollback(Exception):
    pass


def timed(call, *args, **kwargs) -> float:
    began = time.perf_counter()
    call(*args, **kwargs)
    return (time.perf_counter() - began) * 1000


def page(rng: random.Random, now: datetime) -> tuple[list[dict], list[datetime]]:
    """An 8-record Forge page (random bodies, so zlib leaves a few hundred bytes)."""
    times = [now - timedelta(seconds=rng.uniform(20, 80)) for _ in range(8)]
    records = [{"timestamp": t.isoformat(), "severityText": rng.choice(["INFO", "WARN", "ERROR"]),
                "body": f"request {rng.getrandbits(64):x} took {rng.randint(1, 900)} ms " + os.urandom(24).hex(),
                "attributes": {"invocationId": os.urandom(8).hex(), "appVersion": "42"}}
               for t in times]
    return records, times


def explain(conn: psycopg.Connection, query: str, params: dict | None = None) -> list[str]:
    """EXPLAIN (ANALYZE, BUFFERS) of a statement, rolled back."""
    lines: list[str] = []
    try:
        with conn.transaction():
            lines = [r["QUERY PLAN"] for r in conn.execute(f"EXPLAIN (ANALYZE, BUFFERS) {query}", params)]
            raise _Rollback
    except _Rollback:
        pass
    return lines


def jit_ms(lines: list[str]) -> float:
    found = next((re.search(r"Total ([\d.]+) ms", line) for line in lines if "Timing: Generation" in line), None)
    return float(found.group(1)) if found else 0.0


def flush_stats(conn: psycopg.Connection) -> None:
    try:
        conn.execute("SELECT pg_stat_force_next_flush()")
    except psycopg.Error:
        pass
    time.sleep(1)


def expire_params() -> dict:
    every = list(PLANS.values())
    return {"plans": [p.name for p in every], "hours": [p.backlog_hours for p in every]}


def measure(conn: psycopg.Connection, args: argparse.Namespace, layout: str) -> tuple[dict, dict[str, list[str]]]:
    rng = random.Random(args.seed)
    fig: dict[str, float] = {}
    resources = conn.execute("SELECT r.id, s.id AS source FROM resources r JOIN sources s ON s.resource_id = r.id "
                             "WHERE r.state <> 'deprovisioned' ORDER BY r.id").fetchall()
    drains = conn.execute("SELECT resource_id, cursor FROM drains ORDER BY id").fetchall()

    # read after cursor (the delivery read; the claim's EXISTS probe descends the same index)
    samples = []
    for _ in range(args.reads):
        d = rng.choice(drains)
        samples.append(timed(outbox.after, conn, d["resource_id"], d["cursor"], READ_LIMIT))
    fig["after p50 ms"], fig["after p99 ms"] = pct(samples, 50), pct(samples, 99)
    print(f"  after(): {args.reads:,} reads  p50 {fig['after p50 ms']:.2f} ms  p99 {fig['after p99 ms']:.2f} ms",
          flush=True)

    picked = [rng.choice(resources)["id"] for _ in range(args.backlog_resources)]
    samples = [timed(outbox.backlogs, conn, r) for r in picked]
    fig["backlogs p50 ms"], fig["backlogs p99 ms"] = pct(samples, 50), pct(samples, 99)
    samples = [timed(outbox.held, conn, r) for r in picked]
    fig["held(resource) p50 ms"], fig["held(resource) p99 ms"] = pct(samples, 50), pct(samples, 99)
    print(f"  backlogs(): p50 {fig['backlogs p50 ms']:.2f} ms  p99 {fig['backlogs p99 ms']:.2f} ms; "
          f"held(resource): p50 {fig['held(resource) p50 ms']:.2f} ms  p99 {fig['held(resource) p99 ms']:.2f} ms",
          flush=True)

    samples = [timed(outbox.backlog_by_kind, conn) for _ in range(3)]
    fig["backlog_by_kind ms"] = pct(samples, 50)
    backlog = outbox.backlog_by_kind(conn)
    fig["fleet backlog batches"] = sum(b.batches for b in backlog.values())
    samples = [timed(outbox.held, conn) for _ in range(3)]
    fig["held() fleet ms"] = pct(samples, 50)
    print(f"  backlog_by_kind(): {fig['backlog_by_kind ms']:,.0f} ms (median of 3; /metrics allows 2,000) over "
          f"{fig['fleet backlog batches']:,.0f} batches behind; held(): {fig['held() fleet ms']:,.0f} ms", flush=True)

    # append: an 8-record page, a transaction (and a durable commit) each
    now = datetime.now(timezone.utc)
    pages = [page(rng, now) for _ in range(args.appends)]
    targets = [rng.choice(resources) for _ in range(args.appends)]
    samples = []
    began = time.perf_counter()
    for (records, times), r in zip(pages, targets):
        t = time.perf_counter()
        with conn.transaction():
            outbox.append_forge(conn, r["id"], r["source"], records, times)
        samples.append((time.perf_counter() - t) * 1000)
    fig["append calls/s"] = args.appends / (time.perf_counter() - began)
    fig["append p50 ms"], fig["append p99 ms"] = pct(samples, 50), pct(samples, 99)
    print(f"  append_forge(): {args.appends:,} calls  p50 {fig['append p50 ms']:.2f} ms  p99 "
          f"{fig['append p99 ms']:.2f} ms  {fig['append calls/s']:,.0f} calls/s", flush=True)

    plans: dict[str, list[str]] = {"backlog_by_kind": explain(conn, outbox.BACKLOG_BY_KIND)}

    # EXPIRE as a dry run, rolled back, against what prune()'s first call then moves
    samples, keyed = [], []
    for _ in range(3):
        t = time.perf_counter()
        keyed = expire_dry_run(conn)
        samples.append((time.perf_counter() - t) * 1000)
    fig["expire keyed ms"] = pct(samples, 50)
    keyed_records = sum(int(r["records"]) for r in keyed)

    # prune, as the tick runs it, until it removes nothing
    proxy = Timed(conn)
    calls, removed, expire, delete = [], 0, [], []
    began = time.perf_counter()
    for n in range(args.prune_calls):
        proxy.times.clear()
        t = time.perf_counter()
        result = outbox.prune(proxy, limit=args.prune_limit, replay_hours=args.replay_hours)
        calls.append((time.perf_counter() - t) * 1000)
        expire.append(proxy.times["expire"] * 1000)
        delete.append(proxy.times["delete"] * 1000)
        removed += result.batches
        if n == 0:
            print(f"  EXPIRE dry run (rolled back): {fig['expire keyed ms']:,.1f} ms (median of 3): "
                  f"{len(keyed)} drains, {keyed_records:,} records; prune()'s first EXPIRE moved "
                  f"{result.drains_behind} drains past {result.dropped_records:,} records", flush=True)
        print(f"  prune() #{n + 1}: {result.batches:,} batches removed, {result.drains_behind} drains moved past "
              f"{result.dropped_records:,} expired records  {calls[-1]:,.0f} ms (update {expire[-1]:,.0f} ms, "
              f"delete {delete[-1]:,.0f} ms)", flush=True)
        if not result.batches and not result.drains_behind:
            break
    spent = time.perf_counter() - began
    fig["prune calls"] = len(calls)
    fig["prune p50 ms"], fig["prune max ms"] = pct(calls, 50), max(calls)
    fig["prune first ms"] = calls[0]
    fig["prune update p50 ms"], fig["prune delete p50 ms"] = pct(expire, 50), pct(delete, 50)
    fig["prune batches/s"] = removed / spent if spent else 0.0
    fig["pruned batches"] = removed
    flush_stats(conn)
    stats = conn.execute(
        f"SELECT sum(n_live_tup)::bigint AS live, sum(n_dead_tup)::bigint AS dead, "
        f"sum(autovacuum_count)::bigint AS autovacuums "
        f"FROM pg_stat_user_tables WHERE relid IN {RELATIONS}").fetchone()
    size = conn.execute(SIZES).fetchone()["total"]
    fig["dead tuples"] = stats["dead"]
    fig["autovacuums"] = stats["autovacuums"]
    fig["size after prune MB"] = size / 2**20
    print(f"  prune: {len(calls)} calls, {removed:,} batches in {spent:.1f} s ({fig['prune batches/s']:,.0f} "
          f"batches/s); {stats['dead']:,} dead tuples, {stats['live']:,} live, {stats['autovacuums']} autovacuums "
          f"of the outbox in the run, {size / 2**20:,.0f} MB", flush=True)

    samples = []
    for _ in range(3):
        t = time.perf_counter()
        keyed = expire_dry_run(conn)
        samples.append((time.perf_counter() - t) * 1000)
    fig["expire keyed after ms"] = pct(samples, 50)
    print(f"  EXPIRE dry run (rolled back) after the prune calls: {fig['expire keyed after ms']:,.1f} "
          f"ms (median of 3): {len(keyed)} drains, {sum(int(r['records']) for r in keyed):,} records", flush=True)

    plans["EXPIRE"] = explain(conn, outbox.EXPIRE, expire_params())
    plans["DELIVERED"] = explain(conn, outbox.DELIVERED, {"limit": args.prune_limit, "keep": args.replay_hours})
    fig["expire jit ms"], fig["delete jit ms"] = jit_ms(plans["EXPIRE"]), jit_ms(plans["DELIVERED"])

    if layout == "partitioned":
        drop_partitions(conn, args, fig)

    # the VACUUM that DELETE-pruning leaves to do
    notices: list[str] = []

    def handler(diag) -> None:
        notices.append(diag.message_primary or "")

    conn.add_notice_handler(handler)
    try:
        fig["vacuum after prune s"] = timed(conn.execute, "VACUUM (VERBOSE) outbox") / 1000
    finally:
        conn.remove_notice_handler(handler)
    lines = [line.strip() for n in notices for line in n.splitlines()
             if "index scan needed" in line or "index scan bypassed" in line or "index scan not needed" in line]
    needed = sum("index scan needed" in line for line in lines)
    print(f"  VACUUM outbox after prune: {fig['vacuum after prune s']:.1f} s; index vacuuming needed in {needed} of "
          f"{len(lines)} tables" + (f" ({lines[0]})" if len(lines) == 1 else ""), flush=True)
    return fig, plans


# --- the run ---------------------------------------------------------------------------

def one_size(server_url: str, args: argparse.Namespace, rows: int, label: str, layout: str) -> tuple[dict, dict]:
    database = create_database(server_url)
    try:
        with db.connect(with_database(server_url, database), "forgedrain-bench") as conn:
            migrate.migrate(conn)
            print(f"\n{layout}, {label}: {rows:,} batches, {args.resources:,} resources (database {database})",
                  flush=True)
            if layout == "partitioned":
                print(f"  outbox replaced by the partitioned prototype: {partition(conn)} daily partitions")
            make_fleet(conn, args.resources)
            filled = fill(conn, rows, args.resources, args.chunk, args.seed_fraction)
            print(f"  fill {filled['fill_s']:.1f} s ({rows / filled['fill_s']:,.0f} rows/s), VACUUM ANALYZE "
                  f"{filled['vacuum_s']:.1f} s; outbox {filled['total'] / 2**20:,.0f} MB (heap "
                  f"{filled['heap'] / 2**20:,.0f} MB, indexes {filled['indexes'] / 2**20:,.0f} MB), payload avg "
                  f"{filled['payload']} bytes"
                  f"{'' if filled['fk_checks'] else '; foreign-key triggers skipped while filling'}", flush=True)
            describe(conn, rows)
            fig, plans = measure(conn, args, layout)
            fig.update({"fill s": filled["fill_s"], "vacuum analyze s": filled["vacuum_s"],
                        "size MB": filled["total"] / 2**20})
            return fig, plans
    finally:
        try:
            drop_database(server_url, database)
        except psycopg.Error as exc:
            print(f"could not drop database {database}: {exc}", file=sys.stderr)


# (label, key, format, compared): compared rows get a ratio verdict; the others are context.
ROWS = [
    ("fill (s)", "fill s", "{:,.1f}", False),
    ("VACUUM ANALYZE after fill (s)", "vacuum analyze s", "{:,.1f}", False),
    ("outbox size (MB)", "size MB", "{:,.0f}", False),
    ("append_forge p50 (ms)", "append p50 ms", "{:.2f}", True),
    ("append_forge p99 (ms)", "append p99 ms", "{:.2f}", True),
    ("append_forge calls/s", "append calls/s", "{:,.0f}", True),
    ("after(cursor, 20) p50 (ms)", "after p50 ms", "{:.2f}", True),
    ("after(cursor, 20) p99 (ms)", "after p99 ms", "{:.2f}", True),
    ("backlogs(resource) p50 (ms)", "backlogs p50 ms", "{:.2f}", True),
    ("backlogs(resource) p99 (ms)", "backlogs p99 ms", "{:.2f}", True),
    ("held(resource) p50 (ms)", "held(resource) p50 ms", "{:.2f}", True),
    ("held(resource) p99 (ms)", "held(resource) p99 ms", "{:.2f}", True),
    ("backlog_by_kind, fleet (ms)", "backlog_by_kind ms", "{:,.0f}", True),
    ("  batches behind, fleet", "fleet backlog batches", "{:,.0f}", False),
    ("held(), fleet (ms)", "held() fleet ms", "{:,.0f}", True),
    ("prune() calls", "prune calls", "{:.0f}", False),
    ("prune() first call (ms)", "prune first ms", "{:,.0f}", True),
    ("prune() p50 per call (ms)", "prune p50 ms", "{:,.0f}", True),
    ("prune() max per call (ms)", "prune max ms", "{:,.0f}", True),
    ("  EXPIRE update p50 (ms)", "prune update p50 ms", "{:,.0f}", True),
    ("    of it JIT compile (ms)", "expire jit ms", "{:,.0f}", False),
    ("  DELETE p50 (ms)", "prune delete p50 ms", "{:,.0f}", True),
    ("    of it JIT compile (ms)", "delete jit ms", "{:,.0f}", False),
    ("prune() batches removed/s", "prune batches/s", "{:,.0f}", True),
    ("  batches removed", "pruned batches", "{:,.0f}", False),
    ("EXPIRE dry run (ms)", "expire keyed ms", "{:,.1f}", True),
    ("  the same after prune (ms)", "expire keyed after ms", "{:,.1f}", True),
    ("dead tuples after prune", "dead tuples", "{:,.0f}", False),
    ("autovacuums of outbox in run", "autovacuums", "{:.0f}", False),
    ("size after prune (MB)", "size after prune MB", "{:,.0f}", False),
    ("partitions past replay window", "partitions old", "{:.0f}", False),
    ("  dropped", "partitions dropped", "{:.0f}", False),
    ("  check which may go (ms)", "drop check ms", "{:,.0f}", True),
    ("  DROP (ms)", "drop ms", "{:,.0f}", False),
    ("  batches freed by drops", "dropped batches", "{:,.0f}", False),
    ("  MB kept by blocked ones", "kept by blocked partitions MB", "{:,.0f}", False),
    ("VACUUM after prune (s)", "vacuum after prune s", "{:,.1f}", True),
]


def ratio(key: str, a: float | None, b: float | None, compared: bool) -> str:
    if a is None or b is None or not a or a != a or b != b:
        return "-"
    text = f"{b / a:.2f}"
    if compared:
        slowdown = a / b if key.endswith("/s") and b else b / a  # for a rate, less is worse
        text += "  holds" if slowdown <= HOLDS else ("  grows" if slowdown <= 2 else "  GROWS")
    return text


def table(results: dict[str, tuple[dict, dict]], rows_small: int, rows_large: int) -> list[str]:
    layouts = list(results)
    head = f"{'operation':<32}"
    for layout in layouts:
        head += f" {f'{layout} {rows_small:,}':>18} {f'{layout} {rows_large:,}':>18} {'large/small':>12}"
    if len(layouts) > 1:
        head += f" {'part/heap':>10}"
    lines = [head, "-" * len(head)]
    for label, key, fmt, compared in ROWS:
        if all(key not in small and key not in large for small, large in results.values()):
            continue
        line = f"{label:<32}"
        for small, large in results.values():
            a, b = small.get(key), large.get(key)
            cells = [fmt.format(v) if v is not None and v == v else "-" for v in (a, b)]
            line += f" {cells[0]:>18} {cells[1]:>18} {ratio(key, a, b, compared):>12}"
        if len(layouts) > 1:
            heap, part = results["heap"][1].get(key), results["partitioned"][1].get(key)
            line += f" {(f'{part / heap:.2f}' if heap and part is not None and heap == heap and part == part else '-'):>10}"
        lines.append(line)
    return lines


def free_gb(conn: psycopg.Connection) -> float:
    try:
        where = conn.execute("SHOW data_directory").fetchone()["data_directory"]
    except psycopg.Error:
        where = str(ROOT)
    return shutil.disk_usage(where).free / 2**30


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=1_000_000, help="the small outbox, batches (1000000)")
    parser.add_argument("--large", type=int, default=20_000_000, help="the large outbox, batches (20000000)")
    parser.add_argument("--quick", action="store_true", help="100000 vs 2000000, to try it out")
    parser.add_argument("--layouts", default="auto",
                        help="auto (heap; partitioned too when the heap's prune or append grows > 2x), heap, "
                             "partitioned, or heap,partitioned (auto)")
    parser.add_argument("--resources", type=int, default=2000, help="resources in the fleet (2000)")
    parser.add_argument("--chunk", type=int, default=1_000_000, help="rows per INSERT … SELECT (1000000)")
    parser.add_argument("--reads", type=int, default=2000, help="after() calls (2000)")
    parser.add_argument("--appends", type=int, default=2000, help="append_forge() calls (2000)")
    parser.add_argument("--backlog-resources", type=int, default=500, help="backlogs() calls (500)")
    parser.add_argument("--prune-calls", type=int, default=20, help="prune() calls at most (20)")
    parser.add_argument("--prune-limit", type=int, default=20_000, help="prune()'s limit (20000)")
    parser.add_argument("--replay-hours", type=int, default=24, help="prune()'s replay_hours (24)")
    parser.add_argument("--seed", type=int, default=13, help="random seed (13)")
    parser.add_argument("--plans", action="store_true", help="print the EXPLAIN plans of every pass "
                                                              "(default: the heap's large one)")
    args = parser.parse_args(argv)
    if args.quick:
        args.small, args.large = 100_000, 2_000_000
    if min(args.small, args.large, args.resources, args.chunk, args.reads, args.appends,
           args.backlog_resources, args.prune_calls, args.prune_limit) < 1 or args.small >= args.large:
        parser.error("counts must be positive and --small below --large")
    if args.layouts != "auto":
        args.layouts = [name.strip() for name in args.layouts.split(",") if name.strip()]
        if not args.layouts or any(name not in LAYOUTS for name in args.layouts):
            parser.error(f"--layouts takes auto or names from {', '.join(LAYOUTS)}")
    args.seed_fraction = (args.seed % 1000) / 1000
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    found = servers("outbox")
    if found is None:
        return 2
    server_url, _redis_url = found
    began = time.perf_counter()
    try:
        with db.connect(server_url, "forgedrain-bench") as conn:
            facts = {k: conn.execute(f"SHOW {k}").fetchone()[k]
                     for k in ("server_version", "fsync", "synchronous_commit", "shared_buffers", "max_wal_size",
                               "jit")}
            free = free_gb(conn)
        print(f"outbox bench: ./scripts/bench outbox {' '.join(argv)}".rstrip())
        print(f"PostgreSQL {facts['server_version']} fsync={facts['fsync']} synchronous_commit="
              f"{facts['synchronous_commit']} shared_buffers={facts['shared_buffers']} max_wal_size="
              f"{facts['max_wal_size']} jit={facts['jit']}; {os.cpu_count()} cores; Python "
              f"{platform.python_version()}; {free:,.0f} GB free for the data")
        if free < MIN_FREE_GB and args.large > LOWERED_LARGE:
            print(f"less than {MIN_FREE_GB} GB free: the large outbox is lowered from {args.large:,} to "
                  f"{LOWERED_LARGE:,} batches")
            args.large = LOWERED_LARGE
        layouts = ["heap"] if args.layouts == "auto" else args.layouts
        results: dict[str, tuple[dict, dict]] = {}
        plans: list[tuple[str, dict]] = []
        while layouts:
            layout = layouts.pop(0)
            small, plans_small = one_size(server_url, args, args.small, "small", layout)
            large, plans_large = one_size(server_url, args, args.large, "large", layout)
            results[layout] = (small, large)
            plans += [(f"{layout}, small ({args.small:,} batches)", plans_small),
                      (f"{layout}, large ({args.large:,} batches)", plans_large)]
            if args.layouts == "auto" and layout == "heap":
                grew = {key: large[key] / small[key] for key in ("prune p50 ms", "append p50 ms") if small[key]}
                if any(g > 2 for g in grew.values()):
                    print(f"\nthe heap's prune() p50 grew {grew.get('prune p50 ms', 0):.1f}x and append_forge p50 "
                          f"{grew.get('append p50 ms', 0):.1f}x: the partitioned prototype runs too", flush=True)
                    layouts.append("partitioned")
        shown = plans if args.plans else [p for p in plans if p[0].startswith("heap, large")]
        for label, found_plans in shown:
            for name, lines in found_plans.items():
                print(f"\nEXPLAIN (ANALYZE, BUFFERS) of {name}, {label}"
                      f"{' after the prune calls, rolled back' if name != 'backlog_by_kind' else ''}:")
                for line in lines:
                    print(f"  {line}")
        print(f"\nOutbox at fleet scale: {args.small:,} vs {args.large:,} batches, {args.resources:,} resources "
              f"(ratio ≤ {HOLDS}: holds; ≤ 2: grows; above: GROWS)")
        for line in table(results, args.small, args.large):
            print(line)
        print(f"\nthe whole run took {time.perf_counter() - began:,.0f} s")
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
