"""What the benchmarks share: a throwaway database, child processes, /proc readings.

Imported by the scripts in this folder (``python bench/<name>.py`` puts it on
the path); not part of the service.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from broker import db, jobs  # noqa: E402

BIN = Path(sys.executable).parent


# --- the servers ./scripts/bench provides ---------------------------------------------

def _interrupt(signum, frame):
    raise KeyboardInterrupt


def servers(name: str) -> tuple[str, str] | None:
    """(DATABASE_URL, REDIS_URL) with SIGTERM made a KeyboardInterrupt (so cleanup runs);
    None, after saying how to run the bench, when either is unset."""
    server_url, redis_url = os.environ.get("DATABASE_URL"), os.environ.get("REDIS_URL")
    if not server_url or not redis_url:
        print(f"DATABASE_URL and REDIS_URL must be set: run it with ./scripts/bench {name}", file=sys.stderr)
        return None
    signal.signal(signal.SIGTERM, _interrupt)
    return server_url, redis_url


# --- a database of the bench's own on DATABASE_URL's server ----------------------------

def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def admin(server_url: str) -> psycopg.Connection:
    return psycopg.connect(db.conninfo(server_url, "forgedrain-bench"), autocommit=True)


def create_database(server_url: str) -> str:
    name = f"forgedrain_bench_{uuid.uuid4().hex[:12]}"
    with admin(server_url) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return name


def drop_database(server_url: str, name: str) -> None:
    with admin(server_url) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


# --- the worker and clock as child processes -------------------------------------------

def process_env(database_url: str, redis_url: str, forge_url: str, fernet_key: str,
                extra: dict[str, str]) -> dict[str, str]:
    """A complete environment for ``python -m worker`` / ``python -m worker.clock``."""
    env = {
        "PATH": f"{BIN}:/usr/bin:/bin",
        "PYTHONUNBUFFERED": "1",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "SECRET_KEY": secrets.token_urlsafe(48),
        "FERNET_KEYS": fernet_key,
        "ADDON_ID": "forgedrain",
        "ADDON_PASSWORDS": secrets.token_urlsafe(24),
        "SSO_SALT": secrets.token_urlsafe(24),
        "PUBLIC_URL": "https://forgedrain.example.com",
        "FORGE_API_URL": forge_url,
        "HEROKU_API_URL": "http://127.0.0.1:9",
        "HEROKU_ID_URL": "http://127.0.0.1:9",
        "LOG_LEVEL": "INFO",
        **extra,
    }
    if "HOME" in os.environ:
        env["HOME"] = os.environ["HOME"]
    return env


def start(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    log = open(log_path, "wb")
    try:
        return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    finally:
        log.close()


def stop(process: subprocess.Popen, grace: float = 3) -> bool:
    """SIGTERM (RQ's warm shutdown), SIGKILL after ``grace`` s to the process group and any work
    horse (RQ puts each horse in a process group of its own); True if it exited by itself."""
    horses = children(process.pid)
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    try:
        process.wait(timeout=grace)
        return True
    except subprocess.TimeoutExpired:
        for pid in horses + children(process.pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
        return False


def clear_redis(redis) -> None:
    """Empty the queues the worker and clock use and forget their jobs (ids are reused)."""
    for name in ("control", "poll"):
        jobs.queue(name, redis).empty()
    for pattern in ("rq:job:tick-*", "rq:job:poll-batch-*", "rq:*:control", "rq:*:poll"):
        for key in redis.scan_iter(match=pattern, count=1000):
            redis.delete(key)


# --- /proc readings and figures ----------------------------------------------------------

def tear_down(server_url: str, database: str, redis, *processes: subprocess.Popen | None) -> None:
    """Stop the processes still running (5 s each), empty the queues, drop the bench database."""
    for process in processes:
        if process is not None and process.poll() is None:
            stop(process, 5)
    clear_redis(redis)
    redis.close()
    try:
        drop_database(server_url, database)
    except psycopg.Error as exc:
        print(f"could not drop database {database}: {exc}", file=sys.stderr)


def children(pid: int) -> list[int]:
    found = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return found


def status_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


# --- a bare HTTP/1.1 reader for the benches' loopback receivers (asyncio streams) ----------------

def http_answer(status: int, body: bytes = b"", content_type: str = "text/plain") -> bytes:
    """A complete HTTP/1.1 response with a Content-Length (the connection is kept alive)."""
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}.get(status, "Error")
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def read_request(reader) -> tuple[str, str, dict[str, str], bytes]:
    """(method, path, headers with lower-case names, body) of the next request on ``reader``;
    asyncio.IncompleteReadError when the sender closed."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return method, path, headers, b"".join(parts)
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
    return method, path, headers, await reader.readexactly(int(headers.get("content-length", "0")))
