"""Records per minute per source and per drain, for the dashboard's chart and the metrics.

Outbox batches leave once every drain has them, so they cannot say afterwards
how many records flowed; these counters can. ``stored`` rows are kept per
source by the records' own minute (a backfill fills the minutes it covers),
``delivered`` and ``dropped`` per drain by the minute it happened. Writers add
to a minute inside their own transaction, so a count is exactly as durable as
what it counts. Rows older than :data:`KEEP_HOURS` are forgotten.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime

import psycopg

KEEP_HOURS = 48
KINDS = ("stored", "delivered", "dropped")

ADD = """
INSERT INTO activity (resource_id, subject, kind, minute, records)
SELECT %s, %s, %s, m, n FROM unnest(%s::timestamptz[], %s::bigint[]) AS x(m, n)
ON CONFLICT (subject, kind, minute) DO UPDATE SET records = activity.records + excluded.records
"""

ADD_NOW = """
INSERT INTO activity (resource_id, subject, kind, minute, records)
VALUES (%s, %s, %s, date_trunc('minute', now()), %s)
ON CONFLICT (subject, kind, minute) DO UPDATE SET records = activity.records + excluded.records
"""


def minutes(times: list[datetime]) -> Counter:
    """How many of ``times`` fall in each minute."""
    return Counter(t.replace(second=0, microsecond=0) for t in times)


def add(conn: psycopg.Connection, resource_id, subject, kind: str, counts: Counter) -> None:
    if counts:
        keys = sorted(counts)  # a fixed order: concurrent writers lock rows alike
        conn.execute(ADD, (resource_id, subject, kind, keys, [counts[k] for k in keys]))


def add_now(conn: psycopg.Connection, resource_id, subject, kind: str, records: int) -> None:
    if records > 0:
        conn.execute(ADD_NOW, (resource_id, subject, kind, records))


def series(conn: psycopg.Connection, resource_id, hours: int = 24) -> list[dict]:
    """(subject, kind, minute, records) rows of a resource over the last ``hours``."""
    return conn.execute(
        "SELECT subject, kind, minute, records FROM activity WHERE resource_id = %s "
        "AND minute >= date_trunc('minute', now()) - make_interval(hours => %s) ORDER BY minute",
        (resource_id, hours)).fetchall()


def forget(conn: psycopg.Connection, hours: int = KEEP_HOURS) -> int:
    return conn.execute("DELETE FROM activity WHERE minute < now() - make_interval(hours => %s)",
                        (hours,)).rowcount
