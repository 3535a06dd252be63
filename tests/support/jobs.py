"""Jobs that real worker processes run in tests (imported by dotted name)."""

from __future__ import annotations

import time

from worker import context

MARK_SQL = """
INSERT INTO heartbeats (name, beat_at) VALUES (%s, now())
ON CONFLICT (name) DO UPDATE SET beat_at = excluded.beat_at
"""


def _mark(name: str) -> None:
    with context.connection() as conn:
        conn.execute(MARK_SQL, (name,))


def slow(seconds: float) -> None:
    """Mark the start, work for ``seconds``, mark the end."""
    _mark("slow-job-started")
    time.sleep(seconds)
    _mark("slow-job-finished")
