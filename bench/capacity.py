"""Sources one worker process keeps on schedule (SPEC §3, §9).

Target (issue): one worker process keeps at least 500 sources on schedule at a
1-minute poll interval with Atlassian answering in 300 ms, and says what CPU
and memory that costs.

What it runs, per fleet size N, against real PostgreSQL (fsync on) and Redis:

- the Forge fake (``tests/fakes/forge.py``) in this process on a loopback
  ``LocalServer``, answering every call after ``--latency`` seconds (0.3; the
  fake serialises its work under one lock, its latency sleep overlaps);
- N sources of ``pro`` resources (polled every 60 s), each on its own Forge
  app id so the per-app budget (25 calls/min) is never what limits; 2 records
  a minute per app, ``FORGE_POLL_LAG_SECONDS=10``, so a poll is one page;
  checkpoints 2 minutes back and ``next_poll_at`` spread evenly over the first
  minute after a 10 s start-up, as a fleet already on schedule;
- one real ``python -m worker`` process (RQ HerokuWorker: a work horse forked
  per job) and one ``python -m worker.clock`` (``CLOCK_TICK_SECONDS``, default
  15): the clock's tick counts due sources and enqueues ``worker.poll.run_batch``
  jobs, which claim and poll them on ``FORGE_POLL_THREADS`` threads. Nothing
  is called directly: the figures are the deployed processes'.

Every 2 s it reads ``SELECT id, last_poll_at FROM sources`` (set when a poll
claims the source) and keeps each source's history of poll starts. A source is
kept on schedule when its first poll started within 15 s of its first
``next_poll_at``, each later poll within 60 + 15 s of the one before, and the
run did not end more than 75 s after its last poll started.

It prints, per N: sources kept / attempted; polls made and polls per minute
against the N a minute the schedule asks for (the ratio is the baseline: 1.0
means every source polled every minute); the gaps between poll starts (p50 /
p99 / max) and the lateness of each poll against its due time; the worker's
CPU seconds per minute (its parent and every work horse), the clock's,
PostgreSQL's (when local) and this process's (the fake); the worker's peak
RSS (parent and horse together, and the largest horse's high-water mark); and
the calls the fake answered by status. It never asserts on timings; it exits
1 only on correctness errors: calls answered other than 200, sources paused
or failing, a poll job that crashed.

Flags: ``--sources 250,500,750`` (fleet sizes, one run each), ``--minutes 1.5``
(measured minutes per run, after 10 s of start-up; about 5 minutes in all),
``--latency 0.3``, ``--threads`` (FORGE_POLL_THREADS, default the app's 32),
``--tick`` (CLOCK_TICK_SECONDS, default 15), ``--records-per-minute 2``,
``--logs DIR`` (keep the worker's and clock's logs).

It needs DATABASE_URL (a PostgreSQL server where it may create and drop
``forgedrain_bench_*`` databases) and REDIS_URL (the worker and clock use its
queues; ``control`` and ``poll`` are emptied before and after each run);
``./scripts/bench capacity`` provides both. On the 2-core development machine
the fake, the worker, the clock and PostgreSQL share the cores: compare the
ratios, not the absolute CPU figures, across machines.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import re
import resource
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from cryptography.fernet import Fernet  # noqa: E402

from broker import db, migrate, redisconn, tokens  # noqa: E402
from broker.vault import Vault  # noqa: E402
from tests.fakes.forge import ForgeFake  # noqa: E402
from tests.fakes.server import LocalServer  # noqa: E402
from common import (children, clear_redis, create_database, pct, process_env, servers, start, status_kb,  # noqa: E402
                    tear_down, with_database)

BIN = Path(sys.executable).parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
INTERVAL = 60.0       # plans basic and pro poll every minute
GRACE = 15.0          # SPEC §9: poll interval + 15 s
STARTUP = 10.0        # before the first source is due: the worker and clock start
SAMPLE_SECONDS = 2.0
TARGET_SOURCES = 500
EMAIL = "bench@example.com"
API_TOKEN = "ATATT-bench-capacity"
ENVIRONMENT = "prod"


# --- database and processes --------------------------------------------------------


def postmaster_pid(conn: psycopg.Connection, database_url: str) -> int | None:
    """PostgreSQL's postmaster when it runs on this machine (to count its CPU), else None."""
    if (urlsplit(database_url).hostname or "localhost") not in db.LOCAL_HOSTS:
        return None
    backend = conn.execute("SELECT pg_backend_pid() AS pid").fetchone()["pid"]
    try:
        with open(f"/proc/{backend}/stat") as f:
            ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        with open(f"/proc/{ppid}/cmdline", "rb") as f:
            return ppid if b"postgres" in f.read() else None
    except (OSError, IndexError, ValueError):
        return None


# --- /proc accounting --------------------------------------------------------------


def _stat(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def tree_cpu(pid: int | None) -> float:
    """CPU seconds of ``pid`` and its descendants, live or reaped (utime+stime+cutime+cstime)."""
    if pid is None:
        return 0.0
    try:
        fields = _stat(pid)
    except (OSError, IndexError):
        return 0.0
    ticks = sum(int(v) for v in fields[11:15])
    return ticks / CLK_TCK + sum(tree_cpu(child) for child in children(pid))


@dataclass
class Memory:
    peak_tree_kb: int = 0    # parent + live horses, RSS summed, highest sample
    parent_kb: int = 0       # the parent's VmHWM
    horse_hwm_kb: int = 0    # the largest horse's VmHWM (last sample before it exited)
    horses: set[int] = field(default_factory=set)

    def sample(self, parent: int) -> None:
        kids = children(parent)
        self.horses.update(kids)
        total = status_kb(parent, "VmRSS") + sum(status_kb(k, "VmRSS") for k in kids)
        self.peak_tree_kb = max(self.peak_tree_kb, total)
        self.parent_kb = max(self.parent_kb, status_kb(parent, "VmHWM"))
        for kid in kids:
            self.horse_hwm_kb = max(self.horse_hwm_kb, status_kb(kid, "VmHWM"))


# --- one run -----------------------------------------------------------------------


@dataclass
class Run:
    sources: int
    kept: int = 0
    polls: int = 0
    polls_in_window: int = 0
    measured_seconds: float = 0.0
    gaps: list[float] = field(default_factory=list)
    lateness: list[float] = field(default_factory=list)
    worker_cpu: float = 0.0
    clock_cpu: float = 0.0
    postgres_cpu: float | None = None
    bench_cpu: float = 0.0
    memory: Memory = field(default_factory=Memory)
    statuses: Counter = field(default_factory=Counter)
    never_polled: int = 0
    errors: list[str] = field(default_factory=list)
    batches: int = 0


def setup(conn: psycopg.Connection, vault: Vault, apps: list[str]) -> dict:
    """Resources and sources; returns each source's first due time."""
    count = len(apps)
    with conn.transaction():
        resources = []
        for i in range(-(-count // 25)):  # pro: up to 25 sources each
            resource_id = uuid.uuid4()
            conn.execute(
                "INSERT INTO resources (id, partner_id, plan, api_token_hash) VALUES (%s, 'forgedrain', 'pro', %s)",
                (resource_id, tokens.digest(str(resource_id))),
            )
            resources.append(resource_id)
        token = vault.encrypt(API_TOKEN)
        rows = conn.execute(
            """
            INSERT INTO sources (resource_id, app_id, environment_id, email, api_token_enc,
                                 checkpoint, next_poll_at)
            SELECT (%(resources)s::uuid[])[(n - 1) / 25 + 1], app, %(env)s, %(email)s, %(token)s,
                   now() - interval '2 minutes',
                   now() + make_interval(secs => %(startup)s + (n - 1) * %(step)s)
            FROM unnest(%(apps)s::text[]) WITH ORDINALITY AS a(app, n)
            RETURNING id, next_poll_at
            """,
            {"resources": resources, "env": ENVIRONMENT, "email": EMAIL, "token": token,
             "startup": STARTUP, "step": INTERVAL / count, "apps": apps},
        ).fetchall()
    return {r["id"]: r["next_poll_at"] for r in rows}


def judge(run: Run, first_due: dict, history: dict[object, list[datetime]], window_start: datetime,
          ended: datetime) -> None:
    for source_id, due in first_due.items():
        starts = sorted(history.get(source_id, ()))
        on_time = True
        previous_due = due
        for began in starts:
            late = (began - previous_due).total_seconds()
            run.lateness.append(late)
            if late > GRACE:
                on_time = False
            previous_due = began + timedelta(seconds=INTERVAL)
        for a, b in zip(starts, starts[1:]):
            run.gaps.append((b - a).total_seconds())
        if (ended - previous_due).total_seconds() > GRACE:
            on_time = False  # due, and not started by the end of the run
        if not starts:
            run.never_polled += 1
        run.polls += len(starts)
        run.polls_in_window += sum(1 for start in starts if start >= window_start)
        run.kept += on_time


def run_one(args: argparse.Namespace, server_url: str, redis_url: str, fake: ForgeFake, forge_url: str,
            apps: list[str], workdir: Path) -> Run:
    run = Run(len(apps))
    database = create_database(server_url)
    database_url = with_database(server_url, database)
    redis = redisconn.connect(redis_url)
    clear_redis(redis)
    fernet_key = Fernet.generate_key().decode()
    vault = Vault([fernet_key])
    worker = clock = None
    log_end = 0
    worker_log = workdir / f"worker-{len(apps)}.log"
    try:
        with db.connect(database_url, "forgedrain-bench") as conn:
            migrate.migrate(conn)
            postmaster = postmaster_pid(conn, database_url)
            first_due = setup(conn, vault, apps)
            env = process_env(database_url, redis_url, forge_url, fernet_key, {
                "CLOCK_TICK_SECONDS": str(args.tick),
                "FORGE_POLL_LAG_SECONDS": "10",
                **({"FORGE_POLL_THREADS": str(args.threads)} if args.threads else {}),
            })
            began = conn.execute("SELECT now() AS t").fetchone()["t"]
            worker = start(["-m", "worker"], env, worker_log)
            clock = start(["-m", "worker.clock"], env, workdir / f"clock-{len(apps)}.log")
            calls_before = len(fake.calls)
            history: dict[object, set[datetime]] = {}
            window_start = began + timedelta(seconds=STARTUP)
            ends = began + timedelta(seconds=STARTUP + args.minutes * 60)
            cpu0 = None
            while True:
                now = conn.execute("SELECT now() AS t").fetchone()["t"]
                for row in conn.execute("SELECT id, last_poll_at FROM sources WHERE last_poll_at IS NOT NULL"):
                    history.setdefault(row["id"], set()).add(row["last_poll_at"])
                run.memory.sample(worker.pid)
                if cpu0 is None and now >= window_start:
                    cpu0 = (time.monotonic(), tree_cpu(worker.pid), tree_cpu(clock.pid), tree_cpu(postmaster),
                            resource.getrusage(resource.RUSAGE_SELF))
                if now >= ends:
                    break
                if worker.poll() is not None or clock.poll() is not None:
                    run.errors.append(f"N={len(apps)}: the worker or the clock exited early "
                                      f"(see {worker_log.name})")
                    break
                time.sleep(SAMPLE_SECONDS)
            log_end = worker_log.stat().st_size
            if cpu0 is not None:
                self1 = resource.getrusage(resource.RUSAGE_SELF)
                wall = time.monotonic() - cpu0[0]
                run.measured_seconds = wall
                run.worker_cpu = tree_cpu(worker.pid) - cpu0[1]
                run.clock_cpu = tree_cpu(clock.pid) - cpu0[2]
                run.postgres_cpu = None if postmaster is None else tree_cpu(postmaster) - cpu0[3]
                run.bench_cpu = (self1.ru_utime + self1.ru_stime) - (cpu0[4].ru_utime + cpu0[4].ru_stime)
            judge(run, first_due, {k: sorted(v) for k, v in history.items()}, window_start, now)
            run.statuses = Counter(call.status for call in fake.calls[calls_before:])
            bad = conn.execute(
                "SELECT count(*) FILTER (WHERE state <> 'active') AS paused, "
                "count(*) FILTER (WHERE consecutive_failures > 0) AS failing FROM sources"
            ).fetchone()
            if bad["paused"] or bad["failing"]:
                run.errors.append(f"N={len(apps)}: {bad['paused']} sources paused, {bad['failing']} failing")
    finally:
        tear_down(server_url, database, redis, clock, worker)
    with open(worker_log, "rb") as f:
        log_text = f.read(log_end).decode(errors="replace")
    run.batches = len(re.findall(r"poll batch slot=", log_text))
    bad = [line for line in log_text.splitlines() if re.search(r"level=error|poll crashed", line)]
    if bad:
        run.errors.append(f"N={len(apps)}: {len(bad)} error lines in the worker's log, the first: "
                          + " | ".join(line[:300] for line in bad[:3]))
    other = sum(n for status, n in run.statuses.items() if status != 200)
    if other:
        run.errors.append(f"N={len(apps)}: the fake answered {other} calls other than 200: "
                          f"{dict(run.statuses)}")
    return run


# --- report ------------------------------------------------------------------------


def report(runs: list[Run], args: argparse.Namespace) -> None:
    print()
    print("polls/min: poll starts per minute in the measured window; / asked: that over the N a minute the "
          "schedule asks for")
    print(f"{'sources':>7} {'kept':>6} {'kept %':>6} {'polls':>6} {'polls/min':>9} {'/ asked':>7} "
          f"{'gap p50':>7} {'gap p99':>7} {'gap max':>7} {'late p99':>8} {'late max':>8} {'never':>5}")
    for r in runs:
        per_min = 60 * r.polls_in_window / r.measured_seconds if r.measured_seconds else 0.0
        print(f"{r.sources:>7} {r.kept:>6} {100 * r.kept / r.sources:>5.1f}% {r.polls:>6} {per_min:>9.1f} "
              f"{per_min / r.sources:>7.2f} {pct(r.gaps, 50):>7.1f} {pct(r.gaps, 99):>7.1f} "
              f"{pct(r.gaps, 100):>7.1f} {pct(r.lateness, 99):>8.1f} {pct(r.lateness, 100):>8.1f} "
              f"{r.never_polled:>5}")
    print("(gaps between poll starts and lateness against the due time, in seconds; kept = every poll "
          f"started within {GRACE:.0f} s of its due time, due = {INTERVAL:.0f} s after the previous start)")
    print()
    print("CPU seconds per minute of the measured window (1 core = 60), and memory:")
    print(f"{'sources':>7} {'worker':>7} {'clock':>6} {'postgres':>8} {'fake+bench':>10} "
          f"{'worker/1k polls':>15} | {'RSS peak':>8} {'parent':>7} {'horse':>7}  (MB)  {'jobs':>4}")
    for r in runs:
        per_min = 60 / r.measured_seconds if r.measured_seconds else float("nan")
        pg = "n/a" if r.postgres_cpu is None else f"{r.postgres_cpu * per_min:.1f}"
        per_k = 1000 * r.worker_cpu / r.polls_in_window if r.polls_in_window else float("nan")
        print(f"{r.sources:>7} {r.worker_cpu * per_min:>7.1f} {r.clock_cpu * per_min:>6.2f} {pg:>8} "
              f"{r.bench_cpu * per_min:>10.1f} {per_k:>15.1f} | {r.memory.peak_tree_kb / 1024:>8.1f} "
              f"{r.memory.parent_kb / 1024:>7.1f} {r.memory.horse_hwm_kb / 1024:>7.1f}  {r.batches:>10}")
    print("(RSS peak: the worker's parent and live work horse summed, highest sample; parent and horse: "
          "their high-water marks; jobs: poll batch jobs the worker finished)")
    for r in runs:
        print(f"fake's answers at N={r.sources}: {dict(sorted(r.statuses.items()))}")
    print()
    best = max((r.sources for r in runs if r.kept == r.sources), default=0)
    verdict = "target met" if best >= TARGET_SOURCES else "target missed"
    for r in runs:
        if r.kept < r.sources:
            late = pct(r.lateness, 100)
            cores = r.worker_cpu / r.measured_seconds if r.measured_seconds else float("nan")
            print(f"N={r.sources}: {r.sources - r.kept} sources late; the latest poll started {late:.1f} s after "
                  f"its due time (CLOCK_TICK_SECONDS={args.tick}) while the worker used {cores:.2f} of a core")
    print(f"capacity: one worker process kept every source on schedule up to N={best} of the fleets tried "
          f"(target ≥ {TARGET_SOURCES}): {verdict}")


# --- main --------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sources", default="250,500,750", help="fleet sizes, one run each (250,500,750)")
    parser.add_argument("--minutes", type=float, default=1.5,
                        help="measured minutes per fleet after 10 s of start-up (1.5)")
    parser.add_argument("--latency", type=float, default=0.3, help="the fake's answer latency, seconds (0.3)")
    parser.add_argument("--threads", type=int, default=0, help="FORGE_POLL_THREADS (the app's default, 32)")
    parser.add_argument("--tick", type=int, default=5, help="CLOCK_TICK_SECONDS (5, the default)")
    parser.add_argument("--logs", type=Path, default=None,
                        help="keep the worker's and clock's logs in this folder")
    parser.add_argument("--records-per-minute", type=float, default=2.0,
                        help="records each fake app logs per minute (2)")
    args = parser.parse_args(argv)
    try:
        args.fleets = [int(n) for n in args.sources.split(",") if n.strip()]
    except ValueError:
        parser.error("--sources takes whole numbers")
    if not args.fleets or min(args.fleets) < 1 or args.minutes <= 0 or args.latency < 0 or args.tick < 1:
        parser.error("counts must be positive")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    found = servers("capacity")
    if found is None:
        return 2
    server_url, redis_url = found
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log line per fake call
    fake = ForgeFake(seed=7, latency=args.latency)
    runs: list[Run] = []
    prefix = f"cap-{uuid.uuid4().hex[:6]}-"  # app ids (and so budget keys) of this invocation only
    workdir = tempfile.TemporaryDirectory(prefix="forgedrain-bench-")
    logdir = Path(workdir.name)
    if args.logs is not None:
        args.logs.mkdir(parents=True, exist_ok=True)
        logdir = args.logs
    try:
        with LocalServer(fake.wsgi()) as server:
            print(f"capacity bench: ./scripts/bench capacity {' '.join(argv)}".rstrip())
            print(f"fleets {', '.join(map(str, args.fleets))} sources, one app id each, polled every "
                  f"{INTERVAL:.0f} s (plan pro); the fake answers after {args.latency:.2f} s, "
                  f"{args.records_per_minute:g} records/min per app; one `python -m worker` and one "
                  f"`python -m worker.clock` (CLOCK_TICK_SECONDS={args.tick}, FORGE_POLL_THREADS="
                  f"{args.threads or 'default 32'}, FORGE_POLL_LAG_SECONDS=10); {args.minutes:g} min measured "
                  f"per fleet after {STARTUP:.0f} s of start-up")
            print(f"machine: {os.cpu_count()} cores shared by the fake (this process), the worker, the clock, "
                  f"PostgreSQL and Redis; Python {platform.python_version()}")
            for index, count in enumerate(args.fleets):
                apps = [f"{prefix}{index}-app-{i:05d}" for i in range(count)]
                for app_id in apps:
                    fake.add_app(app_id, [ENVIRONMENT], EMAIL, API_TOKEN,
                                 records_per_minute=args.records_per_minute)
                run = run_one(args, server_url, redis_url, fake, server.url, apps, logdir)
                print(f"N={count}: kept {run.kept}/{count}, {run.polls} polls", flush=True)
                runs.append(run)
        report(runs, args)
        errors = [e for r in runs for e in r.errors]
        for error in errors:
            print(f"error: {error}", file=sys.stderr)
        return 1 if errors else 0
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        workdir.cleanup()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
