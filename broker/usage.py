"""The usage store: records and bytes per resource, UTC day and measure (issue 17 item 2, SPEC §11).

Measures: ``forge`` (records of Forge pages stored, and their bytes as JSON),
``ingest`` (logplex frames and OTLP ingest records stored from the app, and their bytes),
``delivered`` and ``dropped`` per drain kind (records). Writers add inside the
transaction that stores, delivers or drops what they count, so usage is as
durable as the data, and never counts a batch twice: the outbox's append and a
drain's fenced advance each happen once.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import date

import psycopg

MEASURES = ("forge", "ingest", "delivered", "dropped")
DRAIN_KINDS = ("heroku", "logplex", "syslog", "otlp")

ADD = """
INSERT INTO usage_days (resource_id, day, measure, kind, records, bytes)
VALUES (%s, (now() AT TIME ZONE 'UTC')::date, %s, %s, %s, %s)
ON CONFLICT (resource_id, day, measure, kind)
DO UPDATE SET records = usage_days.records + excluded.records, bytes = usage_days.bytes + excluded.bytes
"""


def add(conn: psycopg.Connection, resource_id, measure: str, records: int, size: int = 0, kind: str = "") -> None:
    """Count ``records`` (and ``size`` bytes) for the resource today, in the caller's transaction."""
    if records > 0 or size > 0:
        conn.execute(ADD, (resource_id, measure, kind, records, size))


@dataclass
class Day:
    """One resource's usage on one UTC day."""
    resource_id: uuid.UUID
    day: date
    forge_records: int = 0
    forge_bytes: int = 0
    ingest_records: int = 0
    ingest_bytes: int = 0
    delivered: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DRAIN_KINDS, 0))
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DRAIN_KINDS, 0))


DAYS = """
SELECT u.resource_id, u.day, u.measure, u.kind, u.records, u.bytes
FROM usage_days u
WHERE u.resource_id = ANY(%(resources)s) AND u.day BETWEEN %(first)s AND %(last)s
ORDER BY u.resource_id, u.day
"""


def days(conn: psycopg.Connection, resource_ids: list[uuid.UUID], first: date, last: date) -> list[Day]:
    """The usage of these resources on each day from ``first`` to ``last`` that has any, by resource and day."""
    found: dict[tuple, Day] = {}
    for row in conn.execute(DAYS, {"resources": resource_ids, "first": first, "last": last}):
        key = (row["resource_id"], row["day"])
        day = found.get(key)
        if day is None:
            day = found[key] = Day(row["resource_id"], row["day"])
        if row["measure"] in ("forge", "ingest"):
            setattr(day, f"{row['measure']}_records", getattr(day, f"{row['measure']}_records") + row["records"])
            setattr(day, f"{row['measure']}_bytes", getattr(day, f"{row['measure']}_bytes") + row["bytes"])
        else:
            counts = getattr(day, row["measure"])
            counts[row["kind"]] = counts.get(row["kind"], 0) + row["records"]
    return list(found.values())
