"""Per-process settings for jobs, and the per-job database connection.

The worker's parent process loads :class:`~broker.config.Settings` once and
installs them here before forking horses; settings are plain data, safe to
inherit. Connections are opened inside each job and closed when it ends.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import psycopg

from broker import config, db
from broker.config import Settings

_settings: Settings | None = None


def install(settings: Settings) -> None:
    global _settings
    _settings = settings


def settings() -> Settings:
    global _settings
    if _settings is None:
        _settings = config.load()
    return _settings


@contextlib.contextmanager
def connection() -> Iterator[psycopg.Connection]:
    """A fresh autocommit connection for the current job."""
    conn = db.connect(settings().database_url, "forgedrain-worker")
    try:
        yield conn
    finally:
        conn.close()
