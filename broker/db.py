"""PostgreSQL access: connection strings, one-off connections and a fork-safe pool.

House rules (research/stack-and-style.md §2):
- connections never cross a fork: the pool is created closed and opened in the
  process that uses it (gunicorn ``post_fork``, or lazily on first use behind a
  PID check); RQ jobs open a plain connection per job;
- connections are autocommit; every unit of work is ``with conn.transaction():``
  so nothing sits "idle in transaction" across network I/O;
- Heroku Postgres needs TLS, which Heroku says to request in code, not by
  editing the config var: ``sslmode=require`` for every non-local host unless
  the URL states an ``sslmode`` itself.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import weakref
from typing import Iterator

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})

# A dead database must not hang a request or a job: fail the connect quickly
# and let the caller report it (readyz) or retry on the next tick (jobs).
CONNECT_TIMEOUT_SECONDS = 5


def conninfo(database_url: str, application_name: str = "forgedrain") -> str:
    """libpq connection string for ``database_url`` with the house options applied."""
    params = conninfo_to_dict(database_url)
    host = params.get("host") or ""
    extra: dict[str, object] = {
        "application_name": application_name,
        "connect_timeout": params.get("connect_timeout") or CONNECT_TIMEOUT_SECONDS,
    }
    local = all(h in LOCAL_HOSTS or h.startswith("/") or h == "" for h in host.split(","))
    if "sslmode" not in params and not local:
        extra["sslmode"] = "require"
    return make_conninfo(database_url, **extra)


def connect(database_url: str, application_name: str = "forgedrain") -> psycopg.Connection:
    """A plain autocommit connection (jobs, migrations, CLI); close it when done."""
    return psycopg.connect(
        conninfo(database_url, application_name), autocommit=True, row_factory=dict_row
    )


# A pooled connection used within this many seconds is trusted without a ping.
IDLE_CHECK_SECONDS = 5.0


class _IdleCheck:
    """Ping a pooled connection before use only if it sat idle for a while.

    Checking every borrow (``ConnectionPool.check_connection``) costs a round
    trip per request; under load connections are seconds old at most and a
    dead server shows up on the query itself. After an idle spell, when a
    restart or a dropped TCP session is likely to have gone unnoticed, the
    ping catches it and the pool hands out a fresh connection instead.
    """

    def __init__(self) -> None:
        self._returned: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def reset(self, conn: psycopg.Connection) -> None:
        self._returned[conn] = time.monotonic()

    def check(self, conn: psycopg.Connection) -> None:
        last = self._returned.get(conn)
        if last is None or time.monotonic() - last > IDLE_CHECK_SECONDS:
            ConnectionPool.check_connection(conn)


class Database:
    """A lazily opened, fork-aware connection pool for one process.

    Creating a ``Database`` opens nothing. The pool opens on :meth:`open` (called
    from gunicorn's ``post_fork``) or on first use; if the process has forked
    since, a fresh pool is made for the child and the parent's is left alone.
    """

    def __init__(self, database_url: str, *, application_name: str = "forgedrain-web",
                 min_size: int = 1, max_size: int = 5):
        self._conninfo = conninfo(database_url, application_name)
        self._min_size = min_size
        self._max_size = max_size
        self._pool: ConnectionPool | None = None
        self._pid: int | None = None
        self._idle = _IdleCheck()
        self._lock = threading.Lock()

    def open(self) -> ConnectionPool:
        with self._lock:
            if self._pool is None or self._pid != os.getpid():
                pool = ConnectionPool(
                    self._conninfo,
                    min_size=self._min_size,
                    max_size=self._max_size,
                    kwargs={"autocommit": True, "row_factory": dict_row},
                    check=self._idle.check,
                    reset=self._idle.reset,
                    # Do not wait for the database here: a web process must come up
                    # (and answer /healthz) even while PostgreSQL is down.
                    open=False,
                    name=f"forgedrain-{os.getpid()}",
                )
                pool.open(wait=False)
                self._pool, self._pid = pool, os.getpid()
            return self._pool

    @contextlib.contextmanager
    def connection(self, timeout: float = 5.0) -> Iterator[psycopg.Connection]:
        """Borrow a connection; ``timeout`` bounds the wait when the pool is empty."""
        with self.open().connection(timeout=timeout) as conn:
            yield conn

    def close(self) -> None:
        with self._lock:
            if self._pool is not None and self._pid == os.getpid():
                self._pool.close()
            self._pool, self._pid = None, None
