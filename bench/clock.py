"""The clock's tick at fleet size (SPEC §9).

Target: "Scheduler tick ≤ 1 s with 100,000 sources".

What it measures, in one run against real PostgreSQL (fsync on) and Redis:

- ``tick``: the real tick job, ``worker.tick.run(slot)`` (settings installed
  with ``worker.context.install``), called in-process as the worker's job
  process calls it: a new connection, the heartbeat upsert (one durable
  commit), the capped count of due sources, due asynchronous provisions, the
  purge of resources deprovisioned 30 days ago, and the poll jobs it enqueues
  on Redis. Before each timed tick the poll queue is emptied, so every tick
  enqueues its jobs (the worst case: workers took the previous ones);
- baselines measured in the same run, taking turns with the ticks: a bare
  ``SELECT 1`` round trip on an open connection, and the due-count query
  alone (``broker.polling.count_due``) on an open connection;
- where the tick's time goes: each of its steps timed on its own (connect,
  heartbeat commit, count, due provisions, purge, Redis enqueue), so a slow
  tick names its slow step.

Fleets: sources are bulk-inserted with ``generate_series`` (four sources per
resource, distinct app ids, one Fernet token from ``broker.vault.Vault``, 2 %
paused, 1 % leased by polls in flight; 1 % of resources deprovisioned within
30 days and 0.2 % provisioning, so the tick's other queries have rows to
skip), then ``VACUUM ANALYZE`` as autovacuum would have done. The first fleet
is grown into the next (10,000 then 100,000 by default). Per fleet, scenarios
set ``next_poll_at`` of the active, unleased sources over one 60 s poll
interval:

- ``spread``: a quarter due (a 15 s tick over a 60 s interval);
- ``few due``: 1 % due when set (just after the workers caught up; about one
  more percent per second becomes due while it runs);
- ``all due``: every active source due (the moment after an outage);
- ``tail due``: 1 % due, all of them at the physical end of a compacted
  table (the worst case for a sequential scan that stops at the cap).

It prints, per fleet and scenario: p50 / p90 / max milliseconds of the tick,
of the baselines and of the tick's steps, and the ratio of the tick's p50 to
each baseline's p50; then the ``EXPLAIN (ANALYZE, BUFFERS)`` of the due count
at the largest fleet for each scenario, and whether it used
``sources_due_idx``. It never asserts on timings; it exits 1 only when a
tick's answer is wrong (its due count disagrees with an independent count
taken just before and after it, or it enqueued no poll job while sources were
due).

Flags: ``--sources 10000,100000`` (fleet sizes), ``--ticks 20`` (timed ticks
per fleet and scenario, after 3 untimed), ``--scenarios
spread,few due,all due,tail due``.

It needs DATABASE_URL (a PostgreSQL server where it may create and drop a
``forgedrain_bench_*`` database) and REDIS_URL (its ``poll`` and ``control``
queues are emptied); ``./scripts/bench clock`` provides both.
"""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from cryptography.fernet import Fernet  # noqa: E402
from psycopg import sql  # noqa: E402

from broker import config, db, heartbeats, jobs, migrate, polling, redisconn, resources  # noqa: E402
from broker.vault import Vault  # noqa: E402
from common import create_database, drop_database, servers, with_database  # noqa: E402
from worker import context, tick  # noqa: E402

TARGET_MS = 1000.0
SOURCES_PER_RESOURCE = 4


# --- database ----------------------------------------------------------------------


def bench_env(database_url: str, redis_url: str) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "SECRET_KEY": secrets.token_urlsafe(48),
        "FERNET_KEYS": Fernet.generate_key().decode(),
        "ADDON_ID": "forgedrain",
        "ADDON_PASSWORDS": secrets.token_urlsafe(24),
        "SSO_SALT": secrets.token_urlsafe(24),
        "PUBLIC_URL": "https://forgedrain.example.com",
        "FORGE_API_URL": "http://127.0.0.1:9",
        "HEROKU_API_URL": "http://127.0.0.1:9",
        "HEROKU_ID_URL": "http://127.0.0.1:9",
        "LOG_LEVEL": "WARNING",
    }


def grow_fleet(conn: psycopg.Connection, have: int, want: int, token: str) -> None:
    """Add sources ``have+1 .. want`` (and their resources), spread like a live fleet."""
    first_resource = have // SOURCES_PER_RESOURCE + (1 if have % SOURCES_PER_RESOURCE else 0) + 1
    last_resource = -(-want // SOURCES_PER_RESOURCE)
    with conn.transaction():
        # 1 % deprovisioned within the last 30 days (kept, not purged), 0.2 % provisioning
        # with their next attempt later: the tick's other two queries have rows to skip.
        conn.execute(
            """
            INSERT INTO resources (id, partner_id, plan, state, api_token_hash, deprovisioned_at,
                                   provision_next_at)
            SELECT gen_random_uuid(), 'forgedrain', CASE WHEN mod(i, 3) = 0 THEN 'pro' ELSE 'basic' END,
                   CASE WHEN mod(i, 100) = 7 THEN 'deprovisioned'
                        WHEN mod(i, 500) = 11 THEN 'provisioning' ELSE 'provisioned' END,
                   sha256(('bench-' || i)::bytea),
                   CASE WHEN mod(i, 100) = 7 THEN now() - make_interval(days => mod(i, 29)) END,
                   CASE WHEN mod(i, 500) = 11 THEN now() + interval '10 minutes' END
            FROM generate_series(%s::int, %s::int) AS i
            """,
            (first_resource, last_resource),
        )
        # Each source i belongs to resource ceil(i / 4), found by its digest.
        conn.execute(
            """
            INSERT INTO sources (resource_id, app_id, environment_id, email, api_token_enc, state,
                                 pause_reason, next_poll_at, lease_token, lease_expires_at,
                                 checkpoint, last_poll_at)
            SELECT r.id, 'app-' || i, 'prod', 'bot-' || i || '@example.com', %(token)s,
                   CASE WHEN mod(i, 50) = 3 THEN 'paused' ELSE 'active' END,
                   CASE WHEN mod(i, 50) = 3 THEN 'auth_failed' END,
                   -- one 60 s poll interval, a quarter of it already past: about a quarter due
                   now() + make_interval(secs => (mod(hashtext(i::text)::bigint, 30000) + 30000) / 1000.0 - 15),
                   CASE WHEN mod(i, 100) = 5 THEN gen_random_uuid() END,
                   CASE WHEN mod(i, 100) = 5 THEN now() + interval '3 minutes' END,
                   now() - interval '2 minutes', now() - interval '1 minute'
            FROM generate_series(%(first)s::int, %(last)s::int) AS i
            JOIN resources r ON r.api_token_hash = sha256(('bench-' || ((i + 3) / 4))::bytea)
            """,
            {"token": token, "first": have + 1, "last": want},
        )
    conn.execute("VACUUM ANALYZE resources")
    conn.execute("VACUUM ANALYZE sources")


# next_poll_at of every active, unleased source over one 60 s poll interval (by a hash
# of its id), shifted so that the given share is due when it is set (more become due
# while the scenario runs: a second is 1/60 of the fleet).
SCENARIOS = {
    "spread": 15.0,    # a 15 s tick over a 60 s interval: a quarter due
    "few due": 0.6,    # just after the workers caught up: 1 % due
    "all due": 61.0,   # the moment after an outage: every active source due
    "tail due": None,  # 1 % due, every one of them at the physical end of the table
}


def schedule(conn: psycopg.Connection, scenario: str) -> None:
    shift = SCENARIOS[scenario]
    if shift is not None:
        with conn.transaction():
            conn.execute(
                "UPDATE sources SET next_poll_at = now() + make_interval(secs => "
                "(mod(hashtext(id::text)::bigint, 30000) + 30000) / 1000.0 - %s) "
                "WHERE state = 'active' AND lease_token IS NULL",
                (shift,),
            )
        conn.execute("VACUUM ANALYZE sources")
        return
    # The worst case for a sequential scan that stops at the cap: nothing due in the
    # compacted table, then 1 % made due, whose new row versions go to its end.
    with conn.transaction():
        conn.execute("UPDATE sources SET next_poll_at = now() + interval '10 minutes' "
                     "WHERE state = 'active' AND lease_token IS NULL")
    conn.execute("VACUUM FULL sources")
    with conn.transaction():
        conn.execute("UPDATE sources SET next_poll_at = now() - interval '1 second' "
                     "WHERE state = 'active' AND lease_token IS NULL "
                     "AND mod(hashtext(id::text)::bigint, 100) = 0")
    conn.execute("ANALYZE sources")


def independent_due(conn: psycopg.Connection) -> int:
    return conn.execute(
        "SELECT count(*) AS n FROM sources WHERE state = 'active' AND next_poll_at <= now() "
        "AND (lease_expires_at IS NULL OR lease_expires_at < now())"
    ).fetchone()["n"]


# --- timing ------------------------------------------------------------------------


def timed(fn) -> tuple[float, object]:
    began = time.perf_counter()
    result = fn()
    return time.perf_counter() - began, result


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1] * 1000


def run_scenario(name: str, settings: config.Settings, redis, conn: psycopg.Connection,
                 ticks: int, slot0: int) -> tuple[dict[str, list[float]], list[str]]:
    """Ticks and baselines taking turns; returns seconds per kind and any wrong answers."""
    cap = settings.poll_threads * settings.poll_batches
    poll_queue = jobs.queue("poll", redis)
    samples: dict[str, list[float]] = {k: [] for k in (
        "tick", "select 1", "due count", "step: connect", "step: heartbeat", "step: due count",
        "step: due provisions", "step: purge", "step: enqueue")}
    errors: list[str] = []
    for i in range(-3, ticks):
        poll_queue.empty()
        before = independent_due(conn)
        seconds, answer = timed(lambda: tick.run(slot0 + i))
        after = independent_due(conn)
        expected_low, expected_high = min(cap, before), min(cap, after)
        if not min(expected_low, expected_high) <= answer["due_sources"] <= max(expected_low, expected_high):
            errors.append(f"{name}: tick counted {answer['due_sources']} due sources, an independent "
                          f"count gave {before}..{after} (cap {cap})")
        if answer["due_sources"] and not answer["poll_jobs"]:
            errors.append(f"{name}: {answer['due_sources']} sources due and no poll job enqueued")
        select1, _ = timed(lambda: conn.execute("SELECT 1").fetchone())
        count, _ = timed(lambda: polling.count_due(conn, cap))
        # The tick's steps one by one, as worker/tick.py runs them.
        step_conn, fresh = timed(lambda: db.connect(settings.database_url, "forgedrain-worker"))
        try:
            def heartbeat():
                with fresh.transaction():
                    heartbeats.beat(fresh, heartbeats.TICK)
            step_hb, _ = timed(heartbeat)
            step_count, _ = timed(lambda: polling.count_due(fresh, cap))
            step_prov, _ = timed(lambda: resources.due_provisions(fresh, tick.PROVISIONS_PER_TICK))

            def purge():
                with fresh.transaction():
                    return (resources.purge_deprovisioned(fresh, tick.PURGE_AFTER_DAYS)
                            + resources.purge_failed(fresh, tick.PURGE_AFTER_DAYS))
            step_purge, _ = timed(purge)
        finally:
            fresh.close()
        poll_queue.empty()
        wanted = min(settings.poll_batches, -(-cap // settings.poll_threads))

        def enqueue():
            client = redisconn.connect(settings.redis_url)
            for batch in range(wanted):
                jobs.enqueue_poll_batch(client, batch, settings.clock_tick_seconds)
            client.close()
        step_enqueue, _ = timed(enqueue)
        if i < 0:
            continue  # warm-up
        for key, value in (("tick", seconds), ("select 1", select1), ("due count", count),
                           ("step: connect", step_conn), ("step: heartbeat", step_hb),
                           ("step: due count", step_count), ("step: due provisions", step_prov),
                           ("step: purge", step_purge), ("step: enqueue", step_enqueue)):
            samples[key].append(value)
    poll_queue.empty()
    return samples, errors


def report(fleet: int, scenario: str, due: int, samples: dict[str, list[float]]) -> float:
    print(f"\n{fleet:,} sources, {scenario} ({due:,} due at the start), {len(samples['tick'])} ticks:")
    print(f"  {'':<22} {'p50':>8} {'p90':>8} {'max':>8}  (ms)")
    for key, values in samples.items():
        print(f"  {key:<22} {pct(values, 50):>8.2f} {pct(values, 90):>8.2f} {pct(values, 100):>8.2f}")
    tick_p50 = pct(samples["tick"], 50)
    print(f"  tick p50 / select 1 p50: {tick_p50 / pct(samples['select 1'], 50):.1f}x; "
          f"tick p50 / due count p50: {tick_p50 / pct(samples['due count'], 50):.1f}x")
    return pct(samples["tick"], 100)


def explain(conn: psycopg.Connection, cap: int) -> list[str]:
    query = """
        SELECT count(*) AS n FROM (
            SELECT 1 FROM sources
            WHERE state = 'active' AND next_poll_at <= now()
              AND (lease_expires_at IS NULL OR lease_expires_at < now())
            LIMIT %s) due
    """
    rows = conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + query, (cap,)).fetchall()
    return [r["QUERY PLAN"] for r in rows]


# --- main --------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sources", default="10000,100000",
                        help="fleet sizes, ascending, comma-separated (10000,100000)")
    parser.add_argument("--ticks", type=int, default=20, help="timed ticks per fleet and scenario (20)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help=f"which share of sources is due, comma-separated ({','.join(SCENARIOS)})")
    args = parser.parse_args(argv)
    try:
        args.fleets = sorted({int(n) for n in args.sources.split(",") if n.strip()})
    except ValueError:
        parser.error("--sources takes whole numbers")
    args.scenarios = [name.strip() for name in args.scenarios.split(",") if name.strip()]
    if not args.scenarios or any(name not in SCENARIOS for name in args.scenarios):
        parser.error(f"--scenarios takes names from {', '.join(SCENARIOS)}")
    if not args.fleets or args.fleets[0] < 1 or args.ticks < 1:
        parser.error("counts must be positive")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    found = servers("clock")
    if found is None:
        return 2
    server_url, redis_url = found
    database = None
    errors: list[str] = []
    worst: list[tuple[int, str, float]] = []
    plans: list[tuple[str, list[str]]] = []
    try:
        database = create_database(server_url)
        database_url = with_database(server_url, database)
        settings = config.load(bench_env(database_url, redis_url))
        context.install(settings)
        redis = redisconn.connect(redis_url)
        for name in ("control", "poll"):
            jobs.queue(name, redis).empty()
        token = Vault(settings.fernet_keys).encrypt("ATATT-bench-token")
        with db.connect(database_url, "forgedrain-bench") as conn:
            migrate.migrate(conn)
            facts = {k: conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(k))).fetchone()[k]
                     for k in ("server_version", "fsync", "synchronous_commit")}
            print(f"clock bench: ./scripts/bench clock {' '.join(argv)}".rstrip())
            print(f"fleets {', '.join(f'{n:,}' for n in args.fleets)} sources ({SOURCES_PER_RESOURCE} per "
                  f"resource, 2 % paused, 1 % leased); scenarios: {', '.join(args.scenarios)}; "
                  f"{args.ticks} timed ticks each after 3 untimed; poll_threads={settings.poll_threads} "
                  f"poll_batches={settings.poll_batches} "
                  f"(due count capped at {settings.poll_threads * settings.poll_batches})")
            print(f"PostgreSQL {facts['server_version']} fsync={facts['fsync']} "
                  f"synchronous_commit={facts['synchronous_commit']}; {os.cpu_count()} cores; Python "
                  f"{platform.python_version()}")
            have = 0
            slot = 1
            for fleet in args.fleets:
                began = time.perf_counter()
                grow_fleet(conn, have, fleet, token)
                have = fleet
                total = conn.execute("SELECT count(*) AS n FROM sources").fetchone()["n"]
                print(f"\ninserted up to {total:,} sources in {time.perf_counter() - began:.1f} s")
                for scenario in args.scenarios:
                    schedule(conn, scenario)
                    due = independent_due(conn)
                    samples, wrong = run_scenario(f"{fleet} {scenario}", settings, redis, conn, args.ticks, slot)
                    slot += args.ticks + 10
                    errors += wrong
                    worst.append((fleet, scenario, report(fleet, scenario, due, samples)))
                    if fleet == args.fleets[-1]:
                        plans.append((scenario, explain(conn, settings.poll_threads * settings.poll_batches)))
            for scenario, plan in plans:
                print(f"\nEXPLAIN (ANALYZE, BUFFERS) of the due count (broker.polling.count_due, cap "
                      f"{settings.poll_threads * settings.poll_batches}) at {args.fleets[-1]:,} sources, {scenario}:")
                for line in plan:
                    print(f"  {line}")
                used = any("sources_due_idx" in line for line in plan)
                print(f"  -> uses sources_due_idx: {'yes' if used else 'no (sequential scan)'}")
        print()
        for fleet, scenario, max_ms in worst:
            verdict = "target met" if max_ms <= TARGET_MS else "target missed"
            print(f"SPEC §9 scheduler tick: {fleet:,} sources ({scenario}): max {max_ms:.1f} ms vs "
                  f"≤ {TARGET_MS:.0f} ms: {verdict}")
        for error in errors:
            print(f"error: {error}", file=sys.stderr)
        return 1 if errors else 0
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        context.install(None)
        if database is not None:
            try:
                drop_database(server_url, database)
            except psycopg.Error as exc:
                print(f"could not drop database {database}: {exc}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
