"""Heartbeats: the last time each periodic process proved it was alive (the clock's tick, for one).

Times come from the database's clock, so a beat and its age are measured alike
whichever machine wrote or reads them.
"""

from __future__ import annotations

from datetime import timedelta

import psycopg

TICK = "tick"

BEAT = """
INSERT INTO heartbeats (name, beat_at) VALUES (%s, now())
ON CONFLICT (name) DO UPDATE SET beat_at = excluded.beat_at
"""


def beat(conn: psycopg.Connection, name: str) -> None:
    conn.execute(BEAT, (name,))


def every(conn: psycopg.Connection) -> list[dict]:
    """(name, beat_at) of every heartbeat, by name."""
    return conn.execute("SELECT name, beat_at FROM heartbeats ORDER BY name").fetchall()


def age(conn: psycopg.Connection, name: str = TICK) -> timedelta | None:
    """How long ago ``name`` last beat; None if it never did."""
    row = conn.execute("SELECT now() - beat_at AS age FROM heartbeats WHERE name = %s", (name,)).fetchone()
    return None if row is None else row["age"]
