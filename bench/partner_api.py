"""Partner API latency under concurrent provisions (SPEC §9).

Target: "Partner API: p99 ≤ 100 ms at 20 concurrent provisions".

What it measures, in one run against one real gunicorn (the Procfile's web
command, ``gunicorn --config gunicorn.conf.py 'web:create_app()'``):

- ``healthz``: ``GET /healthz`` — the HTTP stack's floor (gunicorn, Flask,
  requests on keep-alive connections), no database;
- ``provision``: ``POST /heroku/resources`` as Heroku sends it (v3 body with
  ``log_drain_token`` and ``log_input_url``, HTTP Basic), each with a distinct
  uuid: one durable transaction inserting the resource, its Heroku drain (the
  URL Fernet-encrypted) and an audit entry;
- ``replay``: the same provision requests sent again (same uuid): Heroku's
  at-least-once redelivery, the idempotent path.

Each scenario sends the same number of requests from the same number of
concurrent clients (one thread and one keep-alive ``requests.Session`` each,
bodies serialized beforehand), timed per request with ``time.perf_counter``;
the scenarios take turns in rounds so a load that comes and goes on the
machine weighs on all of them. It prints, per scenario: requests, errors,
throughput and client-side p50/p90/p99/max; gunicorn's own duration_ms from
its access log (the rest of the client's figure is queueing and the client);
the CPU used by the client, gunicorn, PostgreSQL (when local) and everything
else; the ratio of provision p99 to the healthz p99 of the same run; and
whether the absolute target is met. Timings never fail the run; a non-2xx
answer, a transport error or a replay that stored a row does (exit 1).

Run it with ``./scripts/bench partner_api``. Flags: ``--requests 2000``
(per scenario), ``--concurrency 20``, ``--rounds 4``, ``--warmup 400``,
``--no-keepalive`` (a new connection per request), ``--workers`` /
``--threads`` (default WEB_CONCURRENCY / WEB_THREADS, else gunicorn.conf.py's
2 and 5).

It needs DATABASE_URL (a PostgreSQL server where it may create and drop a
``forgedrain_bench_*`` database; migrations are applied into it) and
REDIS_URL; ``./scripts/bench`` provides both, starting private instances
(fsync on) when they are unset. The client, gunicorn and PostgreSQL share the
machine's cores (2 on the development machine), so the figures include their
contention: compare ratios across machines, not absolute milliseconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
import requests  # noqa: E402
from cryptography.fernet import Fernet  # noqa: E402
from psycopg import sql  # noqa: E402

from broker import db, migrate  # noqa: E402
from common import children, create_database, drop_database, servers, with_database  # noqa: E402

BIN = Path(sys.executable).parent
VENDOR_TYPE = "application/vnd.heroku-addons+json; version=3"
TARGET_P99_MS = 100.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- the server under test -----------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_facts(database_url: str) -> dict:
    with db.connect(database_url, "forgedrain-bench") as conn:
        facts = {
            key: conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(key))).fetchone()[key]
            for key in ("server_version", "fsync", "synchronous_commit")
        }
        backend = conn.execute("SELECT pg_backend_pid() AS pid").fetchone()["pid"]
        facts["postmaster"] = postmaster_pid(database_url, backend)  # while the backend lives
    return facts


def postmaster_pid(database_url: str, backend_pid: int) -> int | None:
    """PostgreSQL's postmaster when it runs on this machine (to count its CPU), else None."""
    if (urlsplit(database_url).hostname or "localhost") not in db.LOCAL_HOSTS:
        return None
    try:
        with open(f"/proc/{backend_pid}/stat") as f:
            ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        with open(f"/proc/{ppid}/cmdline", "rb") as f:
            return ppid if b"postgres" in f.read() else None
    except (OSError, IndexError, ValueError):
        return None


def app_env(database_url: str, redis_url: str, port: int, workers: int, threads: int,
            password: str) -> dict[str, str]:
    env = {
        "PATH": f"{BIN}:/usr/bin:/bin",
        "PYTHONUNBUFFERED": "1",
        "PORT": str(port),
        "WEB_CONCURRENCY": str(workers),
        "WEB_THREADS": str(threads),
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "SECRET_KEY": secrets.token_urlsafe(48),
        "FERNET_KEYS": Fernet.generate_key().decode(),
        "ADDON_ID": "forgedrain",
        "ADDON_PASSWORDS": password,
        "SSO_SALT": secrets.token_urlsafe(24),
        "PUBLIC_URL": "https://forgedrain.example.com",
        # Nothing here calls out; point the third parties at a closed port anyway.
        "FORGE_API_URL": "http://127.0.0.1:9",
        "HEROKU_API_URL": "http://127.0.0.1:9",
        "HEROKU_ID_URL": "http://127.0.0.1:9",
        "ALLOW_PRIVATE_DRAINS": "false",
        "LOG_LEVEL": "INFO",
    }
    if "HOME" in os.environ:
        env["HOME"] = os.environ["HOME"]
    return env


def start_gunicorn(env: dict[str, str], port: int, log_path: Path) -> subprocess.Popen:
    log = open(log_path, "wb")
    try:
        # --bind overrides gunicorn.conf.py's 0.0.0.0: nothing outside loopback needs it.
        return subprocess.Popen(
            [str(BIN / "gunicorn"), "--config", "gunicorn.conf.py", "--bind", f"127.0.0.1:{port}",
             "web:create_app()"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    finally:
        log.close()


def wait_ready(process: subprocess.Popen, base: str, log_path: Path, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    last = "no answer"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"gunicorn exited with status {process.returncode}:\n{tail(log_path)}")
        try:
            response = requests.get(f"{base}/readyz", timeout=(1, 5))
            if response.status_code == 200:
                return
            last = f"{response.status_code} {response.text.strip()}"
        except requests.RequestException as exc:
            last = type(exc).__name__
        time.sleep(0.1)
    raise SystemExit(f"/readyz did not answer 200 within {seconds:.0f} s (last: {last}):\n{tail(log_path)}")


def stop_gunicorn(process: subprocess.Popen) -> None:
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --- CPU accounting (Linux /proc) -------------------------------------------------


def _proc_ticks(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime
    except (OSError, IndexError, ValueError):
        return 0


def tree_ticks(parent: int | None) -> int:
    """CPU jiffies of a process and its live children (gunicorn's workers, PostgreSQL's backends)."""
    if parent is None:
        return 0
    return _proc_ticks(parent) + sum(_proc_ticks(child) for child in children(parent))


def machine_ticks() -> tuple[int, int, int]:
    """(busy, iowait, total) jiffies over every CPU."""
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return 0, 0, 0
    idle, iowait = values[3], values[4]
    total = sum(values[:8])  # guest time is already inside user
    return total - idle - iowait, iowait, total


def connections_per_worker(master: int, port: int) -> list[int]:
    """Established connections to ``port`` held by each gunicorn worker, most first.

    A keep-alive connection stays with the worker that accepted it, and gthread
    workers do not balance them: this shows how the clients' connections fell.
    """
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(fields[9])
        except OSError:
            pass
    counts = []
    for worker in children(master):
        held = 0
        try:
            for fd in os.listdir(f"/proc/{worker}/fd"):
                try:
                    link = os.readlink(f"/proc/{worker}/fd/{fd}")
                except OSError:
                    continue
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    held += 1
        except OSError:
            pass
        counts.append(held)
    return sorted(counts, reverse=True)


# --- the load generator ----------------------------------------------------------


@dataclass
class Request:
    method: str
    path: str
    body: bytes | None = None
    headers: dict[str, str] | None = None  # replace the partner API's JSON headers when given


@dataclass
class Result:
    name: str
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests only
    errors: int = 0
    examples: list[str] = field(default_factory=list)
    wall: float = 0.0
    server_ms: list[int] = field(default_factory=list)  # gunicorn's duration_ms, successful ones
    client_cpu: float = 0.0
    server_cpu: float = 0.0
    postgres_cpu: float | None = None
    machine_busy: float = 0.0  # cores busy on average
    machine_iowait: float = 0.0

    @property
    def requests(self) -> int:
        return len(self.latencies) + self.errors

    def add(self, other: "Result") -> None:
        """Fold another round of the same scenario into this one."""
        self.latencies += other.latencies
        self.errors += other.errors
        self.examples += other.examples[: 5 - len(self.examples)]
        # Averages over the rounds' wall time: weight by it.
        for attr in ("machine_busy", "machine_iowait"):
            total = getattr(self, attr) * self.wall + getattr(other, attr) * other.wall
            setattr(self, attr, total / ((self.wall + other.wall) or 1.0))
        self.wall += other.wall
        self.client_cpu += other.client_cpu
        self.server_cpu += other.server_cpu
        if other.postgres_cpu is not None:
            self.postgres_cpu = (self.postgres_cpu or 0.0) + other.postgres_cpu


class Clients:
    """``concurrency`` client threads, each with its own session (one connection each)."""

    def __init__(self, base: str, concurrency: int, auth: tuple[str, str], gunicorn_pid: int,
                 postmaster: int | None, keepalive: bool = True):
        self.base = base
        self.gunicorn_pid = gunicorn_pid
        self.postmaster = postmaster
        self.sessions = []
        for _ in range(concurrency):
            session = requests.Session()
            adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=1)
            session.mount("http://", adapter)
            session.auth = auth
            if not keepalive:
                session.headers["Connection"] = "close"
            self.sessions.append(session)
        self.stop = threading.Event()

    def close(self) -> None:
        for session in self.sessions:
            session.close()

    def run(self, name: str, work: list[Request]) -> Result:
        result = Result(name)
        lock = threading.Lock()
        position = iter(range(len(work)))
        post_headers = {"Accept": VENDOR_TYPE, "Content-Type": "application/json"}
        start = threading.Barrier(len(self.sessions) + 1)

        def client(session: requests.Session) -> None:
            mine: list[float] = []
            errors: list[str] = []
            start.wait()
            while not self.stop.is_set():
                with lock:
                    index = next(position, None)
                if index is None:
                    break
                item = work[index]
                # As Heroku's router does; it also tags the access log line with the scenario.
                headers = {"X-Request-Id": f"bench-{name}-{index}"}
                if item.headers is not None:
                    headers.update(item.headers)
                elif item.body is not None:
                    headers.update(post_headers)
                began = time.perf_counter()
                try:
                    response = session.request(item.method, self.base + item.path, data=item.body,
                                               headers=headers, timeout=(5, 30))
                    elapsed = time.perf_counter() - began
                    if 200 <= response.status_code < 300:
                        mine.append(elapsed)
                    else:
                        errors.append(f"{item.method} {item.path} -> {response.status_code} "
                                      f"{response.text[:200].strip()}")
                except requests.RequestException as exc:
                    errors.append(f"{item.method} {item.path} -> {type(exc).__name__}: {exc}")
            with lock:
                result.latencies.extend(mine)
                result.errors += len(errors)
                result.examples.extend(errors[: 5 - len(result.examples)])

        threads = [threading.Thread(target=client, args=(s,), daemon=True) for s in self.sessions]
        for thread in threads:
            thread.start()
        cpu0, machine0 = time.process_time(), machine_ticks()
        server0, postgres0 = tree_ticks(self.gunicorn_pid), tree_ticks(self.postmaster)
        began = time.perf_counter()
        start.wait()
        for thread in threads:
            while thread.is_alive():
                thread.join(0.5)
        result.wall = time.perf_counter() - began
        machine1 = machine_ticks()
        result.client_cpu = time.process_time() - cpu0
        result.server_cpu = (tree_ticks(self.gunicorn_pid) - server0) / CLK_TCK
        if self.postmaster is not None:
            result.postgres_cpu = (tree_ticks(self.postmaster) - postgres0) / CLK_TCK
        cores = os.cpu_count() or 1
        total = max(machine1[2] - machine0[2], 1)
        result.machine_busy = cores * (machine1[0] - machine0[0]) / total
        result.machine_iowait = cores * (machine1[1] - machine0[1]) / total
        return result


def provision_bodies(count: int) -> list[bytes]:
    """Provision requests as Heroku sends them (v3; tests/support/partner.py)."""
    bodies = []
    for _ in range(count):
        resource_id = str(uuid.uuid4())
        bodies.append(json.dumps({
            "uuid": resource_id,
            "name": f"bench-{resource_id[:8]}",
            "plan": "basic",
            "region": "amazon-web-services::us-east-1",
            "callback_url": f"https://api.heroku.com/addons/{resource_id}",
            "options": {},
            "log_drain_token": f"d.{uuid.uuid4()}",
            "log_input_url": f"https://token:t.{secrets.token_hex(4)}@1.us.logplex.io/logs",
        }).encode())
    return bodies


ACCESS_LINE = re.compile(r"status=(\d+) .*duration_ms=(\d+) request_id=bench-(.+)-\d+$")


def server_durations(log_path: Path) -> dict[str, list[int]]:
    """gunicorn's own duration_ms per scenario, from its access log (2xx lines only)."""
    found: dict[str, list[int]] = {}
    with open(log_path, errors="replace") as f:
        for line in f:
            match = ACCESS_LINE.search(line.rstrip())
            if match and match.group(1).startswith("2"):
                found.setdefault(match.group(3), []).append(int(match.group(2)))
    return found


def split(total: int, parts: int) -> list[int]:
    parts = max(1, min(parts, total))
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


# --- report ------------------------------------------------------------------------


def percentile(ordered: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list, in milliseconds."""
    if not ordered:
        return float("nan")
    rank = max(1, -(-len(ordered) * p // 100))  # ceil(n * p / 100)
    return ordered[int(rank) - 1] * 1000


def figures(result: Result) -> dict[str, float]:
    ordered = sorted(result.latencies)
    return {
        "p50": percentile(ordered, 50), "p90": percentile(ordered, 90),
        "p99": percentile(ordered, 99), "max": ordered[-1] * 1000 if ordered else float("nan"),
        "rps": result.requests / result.wall if result.wall else 0.0,
    }


def report(results: list[Result]) -> None:
    print()
    print(f"{'scenario':<10} {'requests':>8} {'errors':>6} {'req/s':>8} {'p50':>7} {'p90':>7} "
          f"{'p99':>7} {'max':>7}  (ms)")
    for result in results:
        f = figures(result)
        print(f"{result.name:<10} {result.requests:>8} {result.errors:>6} {f['rps']:>8.1f} "
              f"{f['p50']:>7.1f} {f['p90']:>7.1f} {f['p99']:>7.1f} {f['max']:>7.1f}")
    print()
    print("where the time goes: gunicorn's own duration_ms (request read to response written,")
    print("whole ms; the rest of the client's figure is queueing and the client itself), and the")
    print("CPU cores each party used on average ('other' is everything else on the machine)")
    print(f"{'scenario':<10} {'srv p50':>7} {'srv p99':>7} {'srv max':>7} | {'client':>6} "
          f"{'gunicorn':>8} {'postgres':>8} {'other':>6} {'busy':>5} {'iowait':>6}")
    for result in results:
        wall = result.wall or 1.0
        ordered = sorted(ms / 1000 for ms in result.server_ms)
        client, server = result.client_cpu / wall, result.server_cpu / wall
        postgres = None if result.postgres_cpu is None else result.postgres_cpu / wall
        other = result.machine_busy - client - server - (postgres or 0)
        shown_pg = "n/a" if postgres is None else f"{postgres:.2f}"
        print(f"{result.name:<10} {percentile(ordered, 50):>7.0f} {percentile(ordered, 99):>7.0f} "
              f"{(ordered[-1] * 1000 if ordered else float('nan')):>7.0f} | {client:>6.2f} "
              f"{server:>8.2f} {shown_pg:>8} {other:>6.2f} {result.machine_busy:>5.2f} "
              f"{result.machine_iowait:>6.2f}")
    busiest = max(r.machine_busy - (r.client_cpu + r.server_cpu + (r.postgres_cpu or 0)) / (r.wall or 1)
                  for r in results)
    if busiest > 0.25:
        print(f"note: other processes used up to {busiest:.2f} cores during the run; the absolute "
              "figures are pessimistic (the ratios less so: the scenarios took turns)")
    print()
    by_name = {r.name: figures(r) for r in results}
    floor = by_name["healthz"]["p99"]
    for name in ("provision", "replay"):
        print(f"{name} p99 / healthz p99: {by_name[name]['p99'] / floor:.2f}x")
    p99 = by_name["provision"]["p99"]
    verdict = "target met" if p99 <= TARGET_P99_MS else "target missed"
    print(f"SPEC §9 Partner API: provision p99 {p99:.1f} ms vs ≤ {TARGET_P99_MS:.0f} ms: {verdict}")
    for result in results:
        for example in result.examples:
            print(f"error ({result.name}): {example}")


# --- main --------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per scenario (2000)")
    parser.add_argument("--concurrency", type=int, default=20, help="concurrent clients (20)")
    parser.add_argument("--rounds", type=int, default=4,
                        help="the scenarios take turns in this many rounds (4)")
    parser.add_argument("--warmup", type=int, default=400,
                        help="untimed requests per kind before measuring (400)")
    parser.add_argument("--no-keepalive", dest="keepalive", action="store_false",
                        help="a new connection per request, as a router that does not reuse "
                             "connections to the dyno sends them")
    parser.add_argument("--workers", type=int, default=int(os.environ.get("WEB_CONCURRENCY", "2")),
                        help="gunicorn worker processes (WEB_CONCURRENCY, else 2)")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("WEB_THREADS", "5")),
                        help="threads per gunicorn worker (WEB_THREADS, else 5)")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.concurrency < 1 or args.warmup < 0 or args.rounds < 1 or args.workers < 1 or args.threads < 1:
        parser.error("counts must be positive")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    found = servers("partner_api")
    if found is None:
        return 2
    server_url, redis_url = found

    database = None
    process = None
    clients = None
    workdir = tempfile.TemporaryDirectory(prefix="forgedrain-bench-")
    log_path = Path(workdir.name) / "gunicorn.log"
    try:
        database = create_database(server_url)
        database_url = with_database(server_url, database)
        with db.connect(database_url, "forgedrain-bench") as conn:
            migrate.migrate(conn)
        facts = server_facts(database_url)

        port = free_port()
        password = secrets.token_urlsafe(24)
        process = start_gunicorn(
            app_env(database_url, redis_url, port, args.workers, args.threads, password), port, log_path)
        base = f"http://127.0.0.1:{port}"
        wait_ready(process, base, log_path)

        pool_max = db.Database.__init__.__kwdefaults__["max_size"]
        print(f"Partner API bench: {args.requests} requests per scenario from {args.concurrency} "
              f"concurrent clients (threads, a requests.Session each), in {args.rounds} "
              f"rounds, after {args.warmup} warm-up requests per kind")
        print(f"server: gunicorn gthread {args.workers} workers x {args.threads} threads, "
              f"pool max {pool_max} connections per worker; PostgreSQL {facts['server_version']} "
              f"fsync={facts['fsync']} synchronous_commit={facts['synchronous_commit']}")
        print(f"machine: {os.cpu_count()} cores shared by this client, gunicorn, PostgreSQL and "
              f"Redis (and whatever else runs here); Python {platform.python_version()} on "
              f"{platform.machine()}")

        clients = Clients(base, args.concurrency, ("forgedrain", password), process.pid,
                          facts["postmaster"], args.keepalive)
        if args.warmup:
            warm = [Request("GET", "/healthz")] * args.warmup
            warm += [Request("POST", "/heroku/resources", b) for b in provision_bodies(args.warmup)]
            warmed = clients.run("warm-up", warm)
            if warmed.errors:
                report_errors = "\n".join(warmed.examples)
                print(f"warm-up: {warmed.errors} errors:\n{report_errors}", file=sys.stderr)
                return 1

        if args.keepalive:
            spread = connections_per_worker(process.pid, port)
            print(f"client connections per gunicorn worker (kept for the whole run): "
                  f"{', '.join(map(str, spread)) or 'unknown'}")
        else:
            print("client connections: a new one per request (Connection: close)")

        # The scenarios take turns in rounds, so a load that comes and goes on the
        # machine (another build, a backup) weighs on each of them alike.
        results = [Result("healthz"), Result("provision"), Result("replay")]
        for round_size in split(args.requests, args.rounds):
            provisions = [Request("POST", "/heroku/resources", b) for b in provision_bodies(round_size)]
            results[0].add(clients.run("healthz", [Request("GET", "/healthz")] * round_size))
            results[1].add(clients.run("provision", provisions))
            results[2].add(clients.run("replay", provisions))
        time.sleep(0.2)  # let the last access-log lines reach the file
        durations = server_durations(log_path)
        for result in results:
            result.server_ms = durations.get(result.name, [])
        with db.connect(database_url, "forgedrain-bench") as conn:
            stored = conn.execute("SELECT count(*) AS n FROM resources").fetchone()["n"]
        report(results)
        expected = args.requests + args.warmup
        if stored != expected:
            print(f"error: {stored} resources stored, {expected} expected", file=sys.stderr)
            return 1
        if any(r.errors for r in results) or process.poll() is not None:
            print("error: some requests failed (see above)", file=sys.stderr)
            return 1
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        if clients is not None:
            clients.stop.set()
            clients.close()
        if process is not None:
            stop_gunicorn(process)
        if database is not None:
            try:
                drop_database(server_url, database)
            except psycopg.Error as exc:
                print(f"could not drop database {database}: {exc}", file=sys.stderr)
        workdir.cleanup()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
