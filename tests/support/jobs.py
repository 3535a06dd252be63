"""Jobs that real worker processes run in tests (imported by dotted name)."""

from __future__ import annotations

import time

from broker import heartbeats
from worker import context



def _mark(name: str) -> None:
    with context.connection() as conn:
        heartbeats.beat(conn, name)


def slow(seconds: float) -> None:
    """Mark the start, work for ``seconds``, mark the end."""
    _mark("slow-job-started")
    time.sleep(seconds)
    _mark("slow-job-finished")
