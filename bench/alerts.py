"""How long the alert evaluation (broker.alerts) takes over a large fleet.

A fleet of R resources (default 100,000), each with a source and the heroku drain plus 0-3 more
drains, an outbox batch per drain's resource (some 100 hours old, some 20 minutes), and a few per
cent of everything in trouble: paused or over-capacity sources, failing drains, drains behind past
half their plan's backlog, dropped records in the last hour, gaps. Measured:

- ``current``: the one set-based query for the whole fleet (what is true now);
- the first run, which raises alerts for RESOURCES_PER_RUN resources (each its own transaction);
- a steady run, when the open alerts already match: the cost every minute of a calm fleet.

Run it with ``./scripts/bench alerts`` (or DATABASE_URL/REDIS_URL set: ``python bench/alerts.py``).
"""

from __future__ import annotations

import argparse
import sys
import time

from common import create_database, drop_database, servers, with_database  # noqa: E402

from broker import alerts, db, migrate  # noqa: E402


def make_fleet(conn, resources: int) -> None:
    with conn.transaction():
        conn.execute(
            """
            INSERT INTO resources (id, partner_id, plan, state)
            SELECT md5('r' || i)::uuid, 'forgedrain',
                   CASE WHEN mod(i, 10) < 2 THEN 'test' WHEN mod(i, 10) < 7 THEN 'basic' ELSE 'pro' END,
                   CASE WHEN mod(i, 200) = 199 THEN 'deprovisioned' ELSE 'provisioned' END
            FROM generate_series(0, %(n)s - 1) AS i
            """, {"n": resources})
        conn.execute(
            """
            INSERT INTO sources (id, resource_id, app_id, environment_id, email, state, pause_reason,
                                 over_capacity_since, density_per_minute, capacity_per_minute)
            SELECT md5('s' || i)::uuid, md5('r' || i)::uuid, 'app-' || i, 'prod', 'bot-' || i || '@example.com',
                   CASE WHEN mod(i, 50) = 3 THEN 'paused' ELSE 'active' END,
                   CASE WHEN mod(i, 50) = 3 THEN 'auth_failed' END,
                   CASE WHEN mod(i, 100) = 7 THEN now() END,
                   CASE WHEN mod(i, 100) = 7 THEN 5000 END, CASE WHEN mod(i, 100) = 7 THEN 2500 END
            FROM generate_series(0, %(n)s - 1) AS i
            """, {"n": resources})
        conn.execute(
            """
            INSERT INTO drains (id, resource_id, kind, token, name, consecutive_failures, last_error)
            SELECT md5('d' || i || '-' || k)::uuid, md5('r' || i)::uuid,
                   CASE WHEN k = 0 THEN 'heroku' ELSE (ARRAY['logplex', 'syslog', 'otlp'])[k] END,
                   'd.' || gen_random_uuid(), 'bench-' || k,
                   CASE WHEN mod(i, 100) = 11 AND k = 1 THEN 5 ELSE 0 END,
                   CASE WHEN mod(i, 100) = 11 AND k = 1 THEN 'HTTP 503' END
            FROM generate_series(0, %(n)s - 1) AS i, generate_series(0, 3) AS k
            WHERE k <= mod(i, 4)
            """, {"n": resources})
        # One batch per resource: 2 % of them 100 hours old (past half of every plan's backlog),
        # the rest 20 minutes old.
        for old in (True, False):  # the old ones first: outbox ids follow creation
            conn.execute(
                """
                INSERT INTO outbox (resource_id, origin, record_count, min_ts, max_ts, payload, created_at)
                SELECT md5('r' || i)::uuid, 'forge', 10, now(), now(), '\\x00'::bytea,
                       now() - CASE WHEN %(old)s THEN interval '100 hours' ELSE interval '20 minutes' END
                             + i * interval '1 millisecond'
                FROM generate_series(0, %(n)s - 1) AS i WHERE (mod(i, 50) = 17) = %(old)s
                """, {"n": resources, "old": old})
        # Drains are caught up but for those behind: the old batches', and the failing ones.
        conn.execute(
            """
            UPDATE drains d SET cursor = o.id FROM outbox o
            WHERE o.resource_id = d.resource_id AND o.created_at > now() - interval '1 hour'
              AND d.consecutive_failures = 0
            """)
        conn.execute(
            """
            INSERT INTO activity (resource_id, subject, kind, minute, records)
            SELECT md5('r' || i)::uuid, md5('d' || i || '-0')::uuid, kind,
                   date_trunc('minute', now()) - m * interval '1 minute', 5
            FROM generate_series(0, %(n)s - 1) AS i, generate_series(0, 59) AS m,
                 unnest(ARRAY['stored', 'delivered', 'dropped']) AS kind
            WHERE (kind <> 'dropped' OR (mod(i, 200) = 10 AND m = 5)) AND mod(i, 10) = 0
            """, {"n": resources})
        conn.execute(
            """
            INSERT INTO source_gaps (source_id, gap_from, gap_until, reason)
            SELECT md5('s' || i)::uuid, now() - interval '15 days', now() - interval '14 days', 'bench'
            FROM generate_series(0, %(n)s - 1) AS i WHERE mod(i, 500) = 21
            """, {"n": resources})
    for table in ("resources", "sources", "drains", "outbox", "activity", "source_gaps"):
        conn.execute(f"VACUUM ANALYZE {table}")


def timed(label: str, action) -> object:
    began = time.perf_counter()
    result = action()
    print(f"{label:<48} {time.perf_counter() - began:7.3f} s")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--resources", type=int, default=100_000)
    args = parser.parse_args()
    found = servers("alerts")
    if found is None:
        return 2
    server_url, _ = found
    name = create_database(server_url)
    try:
        url = with_database(server_url, name)
        with db.connect(url, "forgedrain-bench") as conn:
            migrate.migrate(conn)
            timed(f"fleet of {args.resources:,} resources", lambda: make_fleet(conn, args.resources))
            conditions = timed("current (whole fleet)", lambda: alerts.current(conn))
            print(f"  {len(conditions):,} conditions true")
            runs = 0
            while True:
                result = timed(f"evaluate run {runs + 1} (raises)", lambda: alerts.evaluate(conn))
                runs += 1
                print(f"  raised {result.raised:,} for {result.resources:,} resources, {result.pending:,} left")
                if not result.pending:
                    break
            for i in range(3):
                result = timed("evaluate, nothing changed", lambda: alerts.evaluate(conn))
                assert result.raised == result.recovered == 0
    finally:
        drop_database(server_url, name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
