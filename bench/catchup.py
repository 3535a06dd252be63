"""Catch-up of a 14-day backlog at the rate limit (SPEC §3, §9).

Targets: "Rate-limit use during catch-up: ≥ 90 % of the per-app budget with
zero 429s caused by us" and "worker memory flat for a 1,000,000-record
backfill"; SPEC §3: "Catch-up after an outage runs as fast as the rate limit
allows".

What it runs, per backlog size (100,000 then 1,000,000 records by default),
against real PostgreSQL (fsync on) and Redis, with time compressed:

- the Forge fake (``tests/fakes/forge.py``) in this process on a loopback
  ``LocalServer``: Atlassian's 30 calls per period per app, the period
  compressed to ``--period`` seconds (4), pages of ``--page-size`` records
  (1000), an answer latency of 300 ms compressed the same way (0.3 × period /
  60), and ``records_per_minute`` chosen so that the 14 days hold the backlog;
- one source of one app whose checkpoint is 14 days less 10 minutes back
  (inside the API's limit, so no gap), due at once;
- one real ``python -m worker`` process and one ``python -m worker.clock``,
  configured as deployed except for the compression: ``FORGE_RATE_LIMIT=25``
  calls per ``FORGE_RATE_PERIOD_SECONDS=<period>`` and ``CLOCK_TICK_SECONDS``
  (``--tick``, 1). A 4 s period with a 1 s tick is harsher than deployed
  (a 60 s period with a 5 s tick); ``--period 12 --tick 1`` keeps the
  deployed ratio. The clock's tick enqueues the poll job
  (``worker.poll.run_batch``); the job claims the source, spends the budget
  page by page, gives the source back when the budget is spent, and the next
  tick enqueues it again, until the source has caught up to "now" as it was
  when the run began. The worker runs under a three-line wrapper that writes,
  when it exits, ``getrusage`` of itself and of its reaped children (the work
  horses RQ forks per job, and RQ's scheduler).

It prints, per backlog: calls made per period against the 25 allowed (the
baseline: calls / (25 × catch-up seconds / period), target ≥ 0.9), the
periods' spread (calls in each whole period, and the most in any sliding
period), 429s answered by the fake (target 0), records stored and per
second, outbox rows, the ceiling the budget allows (25 calls × records per
call / period), and the worker's memory: the parent's peak RSS and the
largest child's, from ``getrusage``, and the largest work horse's high-water
mark sampled from ``/proc``; then the ratio of each memory figure between the
largest and the smallest backlog (flat means ≈ 1). Records per call differ
between backlogs (one short page per hour-long window at 100,000 records,
full pages at 1,000,000), which the per-call column shows.

Correctness (exit 1): the fake answered anything but 200 or 429, the source
did not catch up within ``--max-minutes``, a gap was recorded, or, in
``--verify-hours`` hours spread over the backlog and checked record by record
against the fake, a record is missing from the outbox, stored twice, or
stored without the fake serving it. It never asserts on timings.

Flags: ``--backlogs 100000,1000000``, ``--period 4``, ``--tick 1``,
``--page-size 1000``, ``--latency`` (default 0.3 × period / 60),
``--max-minutes 6`` (per backlog), ``--verify-hours 12``, ``--logs DIR`` (keep the
worker's and clock's logs).

``--profile dense`` (issue 12) runs one catch-up of an app that logs more than
the budget can read, with the fake as awkward as Atlassian might be: pages of
``--page-size`` 50 served newest first (``--order``), cursors that live
``--cursor-ttl`` 60 s, refused with 400; ``--period`` 12 with the 1 s tick (the
deployed tick / period ratio). Time is compressed 60 / period times, and
everything the fake times is compressed with it on its (wall) clock: the
rate-limit period, the cursor's lifetime, the answer latency, the records'
visibility delays. The poller's own clock is not compressed (its lag, overlap,
time boxes and the 5 minutes behind it must be before it calls a source over
capacity are real seconds), so the log's density is: an app logging
``--records-per-minute`` 3,000 a deployed minute (2.4× the 1,250 that 25 calls of
50 records read) logs 3,000 × 60 / period records per minute of log time here,
and the poller measures density and capacity in those minutes. The source starts
behind by lag + overlap + 1 minute (every read settles its window at once; more
than the 5 minutes that make it over capacity) and the run ends when its
checkpoint passes ``--log-minutes`` (12) deployed minutes of log later: an
over-capacity app never catches up to "now", so a finite stretch of its log
is read, ~6 minutes of calls at the 12 s period (the issue's 6-hour backlog would
take 173). FORGE_POLL_LAG_SECONDS and FORGE_POLL_OVERLAP_SECONDS are the deployed
defaults. It prints goodput (new records stored per call ÷ page size; target ≥
0.8), the catch-up time against its minimum (the stretch's pages ÷ 25 × period;
target ≤ 1.25), split into the start-up (calls before the first window
completes) and the rest, with a projection for 6 hours; calls used ÷ allowed
(≥ 0.9), 429s (0), shrunk windows and per-job calls from the worker's log,
whether ``sources.over_capacity_since`` was set with ``density_per_minute`` and
``capacity_per_minute``; the worker's CPU per million records stored, and CPU
per million records of decode (``forge.decode_page``), fingerprints and encode
(``outbox.forge_payload``) measured in this process on the run's records as 50-record
pages. Every record of the stretch is checked against the fake: none missing,
none twice, nothing else.

It needs DATABASE_URL (a PostgreSQL server where it may create and drop
``forgedrain_bench_*`` databases) and REDIS_URL (the worker and clock use its
queues; ``control`` and ``poll`` are emptied before and after each run);
``./scripts/bench catchup`` provides both. About 4 minutes on the 2-core
development machine, where the fake, the worker and PostgreSQL share the
cores.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from cryptography.fernet import Fernet  # noqa: E402

from broker import db, migrate, outbox, polling, redisconn, tokens  # noqa: E402
from broker.vault import Vault  # noqa: E402
from tests.fakes.forge import ForgeFake  # noqa: E402
from tests.fakes.server import LocalServer  # noqa: E402
from common import children, clear_redis, create_database, pct, process_env, servers, start, status_kb, stop, tear_down, with_database  # noqa: E402

BIN = Path(sys.executable).parent
OUR_LIMIT = 25        # FORGE_RATE_LIMIT, the deployed default
ATLASSIAN_LIMIT = 30
TARGET_USE = 0.9
LAG_SECONDS = 120     # FORGE_POLL_LAG_SECONDS, the deployed default
BACKLOG = timedelta(days=14) - timedelta(minutes=10)
EMAIL = "bench@example.com"
API_TOKEN = "ATATT-bench-catchup"
ENVIRONMENT = "prod"

# ``python -c`` program: the real worker entry point, plus a report at exit of its own VmHWM and
# of getrusage for its reaped children (work horses fork without exec: their ru_maxrss is theirs).
WORKER = """
import atexit, json, os, resource, sys
_pid = os.getpid()
def _report():
    if os.getpid() != _pid:
        return
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    # Not me.ru_maxrss: Linux keeps the pre-exec image's peak in it (the bench that forked us).
    with open("/proc/self/status") as f:
        hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    with open(os.environ["BENCH_RUSAGE_FILE"], "w") as f:
        json.dump({"self_maxrss_kb": hwm, "children_maxrss_kb": kids.ru_maxrss,
                   "self_cpu": me.ru_utime + me.ru_stime, "children_cpu": kids.ru_utime + kids.ru_stime}, f)
atexit.register(_report)
from worker.__main__ import main
sys.exit(main([]))
"""


class BoundedFake(ForgeFake):
    """The Forge fake with smaller caches. It keeps 20,000 generated minutes and 64 selections
    by default: a 1,000,000-record backlog read once would sit in this process (GBs of dicts)
    and its garbage collector would slow every answer."""

    BUCKETS = 300
    SELECTIONS = 4

    def _bucket(self, app, env, bucket):
        records = super()._bucket(app, env, bucket)
        while len(self._buckets) > self.BUCKETS:
            self._buckets.popitem(last=False)
        return records

    def _select(self, *args):
        selected = super()._select(*args)
        while len(self._selections) > self.SELECTIONS:
            self._selections.popitem(last=False)
        return selected


# --- database and processes --------------------------------------------------------


# --- one run -----------------------------------------------------------------------


@dataclass
class Run:
    backlog: int
    records_per_minute: float
    caught_up: bool = False
    seconds: float = 0.0                 # first call to the last call
    statuses: Counter = field(default_factory=Counter)
    calls_ok: int = 0
    per_period: list[int] = field(default_factory=list)
    max_sliding: int = 0
    stored: int = 0
    outbox_rows: int = 0
    gaps: int = 0
    parent_start_kb: int = 0
    parent_maxrss_kb: int | None = None
    child_maxrss_kb: int | None = None
    horse_hwm_kb: int = 0
    horses_seen: int = 0
    long_horses: int = 0
    growth_kb: int | None = None
    worker_cpu: float | None = None
    jobs: int = 0
    job_spans: list[tuple[float, float, int]] = field(default_factory=list)  # start, end, calls
    duplicates: int = 0
    missing: int = 0
    unexpected: int = 0
    verify_seconds: float = 0.0
    verified: int = 0
    errors: list[str] = field(default_factory=list)


LOG_TIME = re.compile(r"^at=(\S+)Z ")


def poll_jobs(log_text: str) -> list[tuple[float, float, int]]:
    """(start, end, calls) of each poll job, from the worker's log (RQ's start line, our summary)."""
    spans, began = [], None
    for line in log_text.splitlines():
        stamp = LOG_TIME.match(line)
        if not stamp:
            continue
        moment = datetime.fromisoformat(stamp.group(1)).replace(tzinfo=timezone.utc).timestamp()
        if "poll: worker.poll.run_batch(" in line:
            began = moment
        elif began is not None and "poll batch slot=" in line:
            calls = re.search(r" calls=(\d+)", line)
            spans.append((began, moment, int(calls.group(1)) if calls else 0))
            began = None
    return spans


def spread(times: list[float], period: float, limit: int) -> tuple[list[int], int]:
    """Calls in each whole period from the first call, and the most in any sliding period."""
    if not times:
        return [], 0
    first = times[0]
    whole = int((times[-1] - first) // period)
    bins = [0] * max(whole, 0)
    for t in times:
        index = int((t - first) // period)
        if index < whole:
            bins[index] += 1
    most, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - period:
            j += 1
        most = max(most, i - j + 1)
    return bins, most


def verify(conn: psycopg.Connection, fake: ForgeFake, run: Run, app_id: str, source_id,
           start: datetime, end: datetime, hours: int) -> None:
    """``hours`` hours spread over the backlog, record by record: each record the fake serves for
    that hour is in the outbox once, and the outbox holds nothing else for that hour."""
    span = (end - start) // timedelta(hours=1)
    count = min(hours, span)
    for k in range(count):
        hour = start + timedelta(hours=k * span // count)
        verify_span(conn, fake, run, app_id, source_id, hour, hour + timedelta(hours=1))


def verify_span(conn: psycopg.Connection, fake: ForgeFake, run, app_id: str, source_id,
                start: datetime, until: datetime) -> None:
    """Every record the fake serves for ``[start, until)`` is in the outbox once, and nothing else is."""
    expected = {polling.fingerprint(r) for r in fake.records(app_id, ENVIRONMENT, start, until)}
    stored = Counter()
    rows = conn.execute("SELECT payload FROM outbox WHERE source_id = %s AND max_ts >= %s AND min_ts < %s",
                        (source_id, start, until)).fetchall()
    for row in rows:
        for record in outbox.forge_records(bytes(row["payload"])):
            if start <= polling.record_time(record, start) < until:
                stored[polling.fingerprint(record)] += 1
    run.verified += len(expected)
    run.missing += len(expected - stored.keys())
    run.duplicates += sum(n - 1 for n in stored.values())
    run.unexpected += len(stored.keys() - expected)


def run_one(args: argparse.Namespace, server_url: str, redis_url: str, fake: ForgeFake, forge_url: str,
            backlog: int, app_id: str, workdir: Path) -> Run:
    minutes = BACKLOG.total_seconds() / 60 - LAG_SECONDS / 60
    run = Run(backlog, backlog / minutes)
    fake.add_app(app_id, [ENVIRONMENT], EMAIL, API_TOKEN, records_per_minute=run.records_per_minute)
    database = create_database(server_url)
    database_url = with_database(server_url, database)
    redis = redisconn.connect(redis_url)
    clear_redis(redis)
    fernet_key = Fernet.generate_key().decode()
    worker = clock = None
    worker_log = workdir / f"worker-{backlog}.log"
    rusage_file = workdir / f"rusage-{backlog}.json"
    try:
        with db.connect(database_url, "forgedrain-bench") as conn:
            migrate.migrate(conn)
            resource_id = uuid.uuid4()
            with conn.transaction():
                conn.execute("INSERT INTO resources (id, partner_id, plan, api_token_hash) "
                             "VALUES (%s, 'forgedrain', 'pro', %s)", (resource_id, tokens.digest(str(resource_id))))
                row = conn.execute(
                    "INSERT INTO sources (resource_id, app_id, environment_id, email, api_token_enc, checkpoint) "
                    "VALUES (%s, %s, %s, %s, %s, now() - %s) RETURNING id, checkpoint, now() AS began",
                    (resource_id, app_id, ENVIRONMENT, EMAIL, Vault([fernet_key]).encrypt(API_TOKEN), BACKLOG),
                ).fetchone()
                # A drain switched off keeps every batch it lacks (until the plan's backlog age), so the
                # outbox still holds everything stored when the run is verified; pruning would
                # otherwise delete batches no drain needs.
                conn.execute("INSERT INTO drains (resource_id, kind, url_enc, token, enabled) "
                             "VALUES (%s, 'logplex', %s, %s, false)",
                             (resource_id, Vault([fernet_key]).encrypt("https://logs.example.com/"),
                              f"d.{uuid.uuid4()}"))
            source_id, first_checkpoint, began = row["id"], row["checkpoint"], row["began"]
            goal = began - timedelta(seconds=LAG_SECONDS)
            env = process_env(database_url, redis_url, forge_url, fernet_key, {
                "FORGE_RATE_LIMIT": str(OUR_LIMIT),
                "FORGE_RATE_PERIOD_SECONDS": str(args.period),
                "CLOCK_TICK_SECONDS": str(args.tick),
                "FORGE_POLL_LAG_SECONDS": str(LAG_SECONDS),
                "BENCH_RUSAGE_FILE": str(rusage_file),
            })
            calls_before = len(fake.calls)
            worker = start(["-c", WORKER], env, worker_log)
            clock = start(["-m", "worker.clock"], env, workdir / f"clock-{backlog}.log")
            deadline = time.monotonic() + args.max_minutes * 60
            time.sleep(0.5)
            run.parent_start_kb = status_kb(worker.pid, "VmRSS")
            horses: dict[int, list[int]] = {}  # pid -> VmRSS samples
            checkpoint = first_checkpoint
            while time.monotonic() < deadline:
                for kid in children(worker.pid):
                    rss = status_kb(kid, "VmRSS")
                    if rss:
                        horses.setdefault(kid, []).append(rss)
                    run.horse_hwm_kb = max(run.horse_hwm_kb, status_kb(kid, "VmHWM"))
                checkpoint = conn.execute("SELECT checkpoint FROM sources WHERE id = %s",
                                          (source_id,)).fetchone()["checkpoint"]
                if checkpoint >= goal:
                    run.caught_up = True
                    break
                if worker.poll() is not None or clock.poll() is not None:
                    run.errors.append(f"{backlog:,}: the worker or the clock exited early (see its log)")
                    break
                time.sleep(0.2)
            run.horses_seen = len(horses)
            # Growth within one job: the second half of a horse's life against its first half.
            lives = [v for v in horses.values() if len(v) >= 8]
            run.growth_kb = max((max(v[len(v) // 2:]) - max(v[:len(v) // 2]) for v in lives), default=None)
            run.long_horses = len(lives)
            log_end = worker_log.stat().st_size
            stop(clock, 5)
            # Caught up, the source is idle (next poll a minute away): the warm shutdown is quick.
            if not stop(worker, 30) and run.caught_up:
                run.errors.append(f"{backlog:,}: the worker did not stop on SIGTERM within 30 s")
            calls = [c for c in fake.calls[calls_before:] if c.path.endswith("/" + app_id)]
            run.statuses = Counter(c.status for c in calls)
            ok_times = sorted(c.time for c in calls if c.status == 200)
            run.calls_ok = len(ok_times)
            run.seconds = ok_times[-1] - ok_times[0] if len(ok_times) > 1 else 0.0
            run.per_period, run.max_sliding = spread(ok_times, args.period, OUR_LIMIT)
            totals = conn.execute("SELECT count(*) AS rows, coalesce(sum(record_count), 0) AS records "
                                  "FROM outbox WHERE source_id = %s", (source_id,)).fetchone()
            run.outbox_rows, run.stored = totals["rows"], int(totals["records"])
            run.gaps = conn.execute("SELECT count(*) AS n FROM source_gaps").fetchone()["n"]
            if not run.caught_up:
                run.errors.append(f"{backlog:,}: not caught up within {args.max_minutes:g} min "
                                  f"(checkpoint {checkpoint.isoformat()}, goal {goal.isoformat()})")
            if run.gaps:
                run.errors.append(f"{backlog:,}: {run.gaps} gaps recorded")
            checking = time.monotonic()
            verify(conn, fake, run, app_id, source_id, first_checkpoint, checkpoint - timedelta(minutes=15),
                   args.verify_hours)
            run.verify_seconds = time.monotonic() - checking
            if run.duplicates:
                run.errors.append(f"{backlog:,}: {run.duplicates} records stored twice")
            if run.missing:
                run.errors.append(f"{backlog:,}: {run.missing} of {run.verified} sampled records missing")
            if run.unexpected:
                run.errors.append(f"{backlog:,}: {run.unexpected} records stored in the sampled hours that the "
                                  "fake does not serve")
    finally:
        tear_down(server_url, database, redis, clock, worker)
    if rusage_file.exists():
        usage = json.loads(rusage_file.read_text())
        run.parent_maxrss_kb = usage["self_maxrss_kb"]
        run.child_maxrss_kb = usage["children_maxrss_kb"]
        run.worker_cpu = usage["self_cpu"] + usage["children_cpu"]
    with open(worker_log, "rb") as f:
        log_text = f.read(log_end).decode(errors="replace")
    run.job_spans = poll_jobs(log_text)
    run.jobs = len(run.job_spans)
    bad = [line for line in log_text.splitlines() if re.search(r"level=error|poll crashed", line)]
    if bad:
        run.errors.append(f"{backlog:,}: {len(bad)} error lines in the worker's log, the first: "
                          + " | ".join(line[:300] for line in bad[:3]))
    unexpected = {s: n for s, n in run.statuses.items() if s not in (200, 429)}
    if unexpected:
        run.errors.append(f"{backlog:,}: the fake answered {unexpected}")
    return run


# --- report ------------------------------------------------------------------------


def mb(kb: int | None) -> str:
    return "n/a" if kb is None else f"{kb / 1024:.1f}"


def report(runs: list[Run], args: argparse.Namespace) -> None:
    print()
    print("rate-limit use (calls answered 200 by the fake; allowed = 25 per period over the catch-up):")
    print(f"{'backlog':>9} {'calls':>6} {'secs':>6} {'allowed':>7} {'used/allowed':>12} {'period min':>10} "
          f"{'p50':>4} {'max':>4} {'sliding max':>11} {'429s':>5} {'jobs':>5}")
    for r in runs:
        allowed = OUR_LIMIT * r.seconds / args.period
        use = r.calls_ok / allowed if allowed else float("nan")
        print(f"{r.backlog:>9,} {r.calls_ok:>6} {r.seconds:>6.1f} {allowed:>7.0f} {use:>12.2f} "
              f"{pct(r.per_period, 0.0001):>10.0f} {pct(r.per_period, 50):>4.0f} {pct(r.per_period, 100):>4.0f} "
              f"{r.max_sliding:>11} {r.statuses.get(429, 0):>5} {r.jobs:>5}")
    print(f"(period min/p50/max: calls in each whole {args.period:g} s period from the first call; sliding max: "
          f"most calls in any {args.period:g} s as the fake counts them, at arrival, while our limiter counts at "
          f"take time: a call or two more than 25 is request jitter; Atlassian refuses the {ATLASSIAN_LIMIT + 1}st; "
          "jobs: poll jobs run)")
    print()
    print("poll jobs (from the worker's log): each claims the source, spends the budget, gives the source back "
          "when the wait for budget exceeds 1 s; the next tick enqueues the next job")
    print(f"{'backlog':>9} {'jobs':>5} {'calls/job':>9} {'job s p50':>9} {'/ period':>8} {'idle s p50':>10} "
          f"{'idle s max':>10} {'idle share':>10}")
    for r in runs:
        spans = r.job_spans
        idle = [b[0] - a[1] for a, b in zip(spans, spans[1:])]
        lengths = [end - start for start, end, _ in spans]
        whole = spans[-1][1] - spans[0][0] if spans else 0.0
        share = sum(idle) / whole if whole else float("nan")
        print(f"{r.backlog:>9,} {len(spans):>5} {pct([c for *_, c in spans], 50):>9.0f} {pct(lengths, 50):>9.2f} "
              f"{pct(lengths, 50) / args.period:>8.2f} {pct(idle, 50):>10.2f} {pct(idle, 100):>10.2f} {share:>10.2f}")
    print(f"(idle: from one poll job's end to the next one's start; job s / period: how much of the {args.period:g} s "
          "period a job's calls take. Deployed, the period is 60 s and the tick 15 s: where jobs here take a small "
          "part of the period, their idle share is what carries over)")
    print()
    print("throughput:")
    print(f"{'backlog':>9} {'rec/min':>7} {'stored':>9} {'outbox rows':>11} {'rec/call':>8} {'rec/s':>8} "
          f"{'ceiling rec/s':>13} {'/ ceiling':>9} {'verified':>8}")
    for r in runs:
        per_call = r.stored / r.calls_ok if r.calls_ok else float("nan")
        rate = r.stored / r.seconds if r.seconds else float("nan")
        ceiling = OUR_LIMIT * per_call / args.period
        print(f"{r.backlog:>9,} {r.records_per_minute:>7.1f} {r.stored:>9,} {r.outbox_rows:>11,} {per_call:>8.0f} "
              f"{rate:>8.0f} {ceiling:>13.0f} {rate / ceiling:>9.2f} {r.verified:>8,}")
    print("(ceiling: what 25 calls per period carry at this run's records per call)")
    print()
    print("worker memory (MB) and CPU:")
    print(f"{'backlog':>9} {'rec/call':>8} {'parent idle':>11} {'parent peak':>11} {'child peak':>10} "
          f"{'horse HWM':>9} {'growth in a job':>15} {'CPU s':>6} {'CPU s / 100k rec':>16}")
    for r in runs:
        per = 100_000 * r.worker_cpu / r.stored if r.worker_cpu is not None and r.stored else float("nan")
        cpu = "n/a" if r.worker_cpu is None else f"{r.worker_cpu:.1f}"
        per_call = r.stored / r.calls_ok if r.calls_ok else float("nan")
        growth = "n/a" if r.growth_kb is None else f"{r.growth_kb / 1024:+.1f} ({r.long_horses})"
        print(f"{r.backlog:>9,} {per_call:>8.0f} {mb(r.parent_start_kb):>11} {mb(r.parent_maxrss_kb):>11} "
              f"{mb(r.child_maxrss_kb):>10} {mb(r.horse_hwm_kb):>9} {growth:>15} {cpu:>6} {per:>16.1f}")
    print("(parent idle: VmRSS 0.5 s after start; parent peak: its VmHWM at exit; child peak: getrusage ru_maxrss "
          "of its largest reaped child, a work horse or RQ's scheduler; horse HWM: the largest VmHWM sampled from "
          "/proc every 0.2 s; growth in a job: the most a horse's RSS rose from the first half of its life to the "
          "second, over the (N) horses sampled 8 times or more; CPU: the worker and its children, whole run)")
    if len(runs) >= 2:
        small, large = runs[0], runs[-1]

        def ratio(a, b):
            return "n/a" if not a or not b else f"{b / a:.2f}x"
        print(f"memory at {large.backlog:,} / at {small.backlog:,} records: parent peak "
              f"{ratio(small.parent_maxrss_kb, large.parent_maxrss_kb)}, child peak "
              f"{ratio(small.child_maxrss_kb, large.child_maxrss_kb)}, horse HWM "
              f"{ratio(small.horse_hwm_kb, large.horse_hwm_kb)} (flat ≈ 1.00x)")
    print()
    for r in runs:
        allowed = OUR_LIMIT * r.seconds / args.period
        use = r.calls_ok / allowed if allowed else 0.0
        verdict = "target met" if use >= TARGET_USE and r.statuses.get(429, 0) == 0 else "target missed"
        print(f"SPEC §9 rate-limit use, {r.backlog:,} records: {use:.2f} of the budget with "
              f"{r.statuses.get(429, 0)} 429s vs ≥ {TARGET_USE:.2f} and 0: {verdict}")


# --- the dense, awkward profile (issue 12) ------------------------------------------------


@dataclass
class DenseRun:
    """One catch-up of a finite stretch of an over-capacity app's log."""

    density: float = 0.0                 # records per minute of log time, as generated (compressed)
    start_behind: timedelta = timedelta(0)
    stretch: timedelta = timedelta(0)    # log time to read: first checkpoint → goal
    expected: int = 0                    # records the fake serves for the stretch
    reached: bool = False
    first_call: float | None = None      # fake clock (wall) of the first call
    reached_at: float | None = None      # wall time the checkpoint was first seen at or past the goal
    first_window_at: float | None = None  # wall time the checkpoint first moved (a window completed)
    first_window_checkpoint: datetime | None = None
    steady_expected: int = 0             # records from that checkpoint to the goal
    calls_before_first_window: int = 0
    statuses: Counter = field(default_factory=Counter)
    calls_ok: int = 0                    # answered 200, whole run
    calls_to_goal: int = 0               # answered 200 from the first call to reaching the goal
    refused_cursors: int = 0             # answered the stale-cursor status
    stored: int = 0                      # records in the outbox, whole run
    outbox_rows: int = 0
    over_seen_after: float | None = None  # seconds from the first call to over_capacity_since set
    over_at_end: bool = False
    density_seen: float | None = None    # sources.density_per_minute when last sampled
    capacity_seen: float | None = None   # sources.capacity_per_minute when last sampled
    shrinks: Counter = field(default_factory=Counter)  # reason -> count, from the worker's log
    windows: int | None = None           # windows completed, from the worker's log (when it says)
    job_spans: list[tuple[float, float, int, int]] = field(default_factory=list)  # start, end, calls, stored
    worker_cpu: float | None = None
    split: dict[str, float] = field(default_factory=dict)  # step -> CPU s per million records
    verified: int = 0
    missing: int = 0
    duplicates: int = 0
    unexpected: int = 0
    gaps: int = 0
    errors: list[str] = field(default_factory=list)


def deployed_poll_settings(env: dict[str, str]) -> tuple[int, int]:
    """FORGE_POLL_LAG_SECONDS and FORGE_POLL_OVERLAP_SECONDS as deployed (broker/config.py's defaults)."""
    from broker import config
    settings = config.load({k: v for k, v in env.items()
                            if k not in ("FORGE_POLL_LAG_SECONDS", "FORGE_POLL_OVERLAP_SECONDS")})
    return settings.poll_lag_seconds, settings.poll_overlap_seconds


def job_summaries(log_text: str) -> list[tuple[float, float, int, int]]:
    """(start, end, calls, stored) of each poll job, from the worker's log."""
    spans, began = [], None
    for line in log_text.splitlines():
        stamp = LOG_TIME.match(line)
        if not stamp:
            continue
        moment = datetime.fromisoformat(stamp.group(1)).replace(tzinfo=timezone.utc).timestamp()
        if "poll: worker.poll.run_batch(" in line:
            began = moment
        elif began is not None and "poll batch slot=" in line:
            calls, stored = re.search(r" calls=(\d+)", line), re.search(r" stored=(\d+)", line)
            spans.append((began, moment, int(calls.group(1)) if calls else 0, int(stored.group(1)) if stored else 0))
            began = None
    return spans


def cpu_split(records: list[dict], page_size: int) -> dict[str, float]:
    """CPU s per million records of what the poller does per page, on this run's records re-paged as
    the fake served them: decode (``forge.decode_page``), fingerprints, encode (``outbox.forge_payload``)."""
    import orjson
    from broker import forge
    if not records:
        return {}
    pages = [orjson.dumps({"appLogs": records[i:i + page_size], "cursor": "c"})
             for i in range(0, len(records), page_size)]
    decode = getattr(forge, "decode_page", None) or orjson.loads

    def timed(step, items) -> float:
        best = float("inf")
        for _ in range(3):
            began = time.process_time()
            for item in items:
                step(item)
            best = min(best, time.process_time() - began)
        return best * 1_000_000 / len(records)

    decoded = [orjson.loads(p)["appLogs"] for p in pages]
    return {"decode": timed(decode, pages), "fingerprint": timed(polling.fingerprint, records),
            "encode": timed(outbox.forge_payload, decoded), "orjson.loads": timed(orjson.loads, pages)}


def run_dense(args: argparse.Namespace, server_url: str, redis_url: str, fake: ForgeFake, forge_url: str,
              app_id: str, workdir: Path) -> DenseRun:
    scale = 60 / args.period            # deployed seconds per real second
    run = DenseRun(density=args.records_per_minute * scale)
    fake.add_app(app_id, [ENVIRONMENT], EMAIL, API_TOKEN, records_per_minute=run.density,
                 late_fraction=0.05, max_delay_seconds=600 / scale)
    database = create_database(server_url)
    database_url = with_database(server_url, database)
    redis = redisconn.connect(redis_url)
    clear_redis(redis)
    fernet_key = Fernet.generate_key().decode()
    worker = clock = None
    worker_log = workdir / "worker-dense.log"
    rusage_file = workdir / "rusage-dense.json"
    base_env = process_env(database_url, redis_url, forge_url, fernet_key, {
        "FORGE_RATE_LIMIT": str(OUR_LIMIT),
        "FORGE_RATE_PERIOD_SECONDS": str(args.period),
        "CLOCK_TICK_SECONDS": str(args.tick),
        "BENCH_RUSAGE_FILE": str(rusage_file),
    })
    lag, overlap = deployed_poll_settings(base_env)
    args.lag, args.overlap = lag, overlap
    env = {**base_env, "FORGE_POLL_LAG_SECONDS": str(lag), "FORGE_POLL_OVERLAP_SECONDS": str(overlap)}
    # Behind by more than the overlap (each read settles its window at once: catching up reads every
    # record once) and by more than the poller's 5 minutes (it calls a source over capacity only while
    # that far behind); the stretch read is the log's oldest part, so the source stays that far behind.
    run.start_behind = timedelta(seconds=lag + max(overlap, 300) + 60)
    run.stretch = timedelta(minutes=args.log_minutes / scale)
    try:
        with db.connect(database_url, "forgedrain-bench") as conn:
            migrate.migrate(conn)
            resource_id = uuid.uuid4()
            with conn.transaction():
                conn.execute("INSERT INTO resources (id, partner_id, plan, api_token_hash) "
                             "VALUES (%s, 'forgedrain', 'pro', %s)", (resource_id, tokens.digest(str(resource_id))))
                row = conn.execute(
                    "INSERT INTO sources (resource_id, app_id, environment_id, email, api_token_enc, checkpoint) "
                    "VALUES (%s, %s, %s, %s, %s, date_trunc('milliseconds', now() - %s)) "
                    "RETURNING id, checkpoint",
                    (resource_id, app_id, ENVIRONMENT, EMAIL, Vault([fernet_key]).encrypt(API_TOKEN),
                     run.start_behind),
                ).fetchone()
                conn.execute("INSERT INTO drains (resource_id, kind, url_enc, token, enabled) "
                             "VALUES (%s, 'logplex', %s, %s, false)",
                             (resource_id, Vault([fernet_key]).encrypt("https://logs.example.com/"),
                              f"d.{uuid.uuid4()}"))
            source_id, first_checkpoint = row["id"], row["checkpoint"]
            goal = first_checkpoint + run.stretch
            goal = goal.replace(microsecond=goal.microsecond // 1000 * 1000)
            run.expected = len(fake.records(app_id, ENVIRONMENT, first_checkpoint, goal))
            calls_before = len(fake.calls)
            worker = start(["-c", WORKER], env, worker_log)
            clock = start(["-m", "worker.clock"], env, workdir / "clock-dense.log")
            deadline = time.monotonic() + args.max_minutes * 60
            while time.monotonic() < deadline:
                state = conn.execute("SELECT checkpoint, over_capacity_since, density_per_minute, "
                                     "capacity_per_minute FROM sources WHERE id = %s", (source_id,)).fetchone()
                if run.first_call is None:
                    mine = [c for c in fake.calls[calls_before:] if c.path.endswith("/" + app_id)]
                    run.first_call = mine[0].time if mine else None
                if state["density_per_minute"] is not None:
                    run.density_seen = float(state["density_per_minute"])
                if state["capacity_per_minute"] is not None:
                    run.capacity_seen = float(state["capacity_per_minute"])
                run.over_at_end = state["over_capacity_since"] is not None
                if run.over_at_end and run.over_seen_after is None and run.first_call is not None:
                    run.over_seen_after = time.time() - run.first_call
                if run.first_window_at is None and state["checkpoint"] > first_checkpoint:
                    run.first_window_at, run.first_window_checkpoint = time.time(), state["checkpoint"]
                if state["checkpoint"] >= goal:
                    run.reached, run.reached_at = True, time.time()
                    break
                if worker.poll() is not None or clock.poll() is not None:
                    run.errors.append("dense: the worker or the clock exited early (see its log)")
                    break
                time.sleep(0.2)
            log_end = worker_log.stat().st_size
            stop(clock, 5)
            stop(worker, 30)
            calls = [c for c in fake.calls[calls_before:] if c.path.endswith("/" + app_id)]
            run.statuses = Counter(c.status for c in calls)
            run.refused_cursors = sum(1 for c in calls if c.status == fake.stale_cursor_status)
            run.calls_ok = sum(1 for c in calls if c.status == 200)
            if run.first_window_at is not None:
                run.calls_before_first_window = sum(1 for c in calls if c.status == 200
                                                    and c.time <= run.first_window_at)
                run.steady_expected = len(fake.records(app_id, ENVIRONMENT, min(run.first_window_checkpoint, goal),
                                                       goal))
            if run.reached_at is not None:
                run.calls_to_goal = sum(1 for c in calls if c.status == 200 and c.time <= run.reached_at)
            totals = conn.execute("SELECT count(*) AS rows, coalesce(sum(record_count), 0) AS records "
                                  "FROM outbox WHERE source_id = %s", (source_id,)).fetchone()
            run.outbox_rows, run.stored = totals["rows"], int(totals["records"])
            run.gaps = conn.execute("SELECT count(*) AS n FROM source_gaps").fetchone()["n"]
            if not run.reached:
                run.errors.append(f"dense: the checkpoint did not reach the goal within {args.max_minutes:g} min")
            if run.gaps:
                run.errors.append(f"dense: {run.gaps} gaps recorded")
            # Every record of the stretch, record by record, in one-minute spans.
            moment = first_checkpoint
            while moment < goal:
                until = min(goal, moment + timedelta(minutes=1))
                verify_span(conn, fake, run, app_id, source_id, moment, until)
                moment = until
            if run.duplicates:
                run.errors.append(f"dense: {run.duplicates} records stored twice")
            if run.missing:
                run.errors.append(f"dense: {run.missing} of {run.verified} records missing")
            if run.unexpected:
                run.errors.append(f"dense: {run.unexpected} records stored that the fake does not serve")
            run.split = cpu_split(fake.records(app_id, ENVIRONMENT, first_checkpoint,
                                               min(goal, first_checkpoint + timedelta(minutes=1))), args.page_size)
    finally:
        tear_down(server_url, database, redis, clock, worker)
    if rusage_file.exists():
        usage = json.loads(rusage_file.read_text())
        run.worker_cpu = usage["self_cpu"] + usage["children_cpu"]
    with open(worker_log, "rb") as f:
        log_text = f.read(log_end).decode(errors="replace")
    run.job_spans = job_summaries(log_text)
    completed = [int(m) for m in re.findall(r"poll batch slot=\d+ .*? windows=(\d+)", log_text)]
    run.windows = sum(completed) if completed else None
    for line in log_text.splitlines():
        found = re.search(r"shrank its window after \d+ pages: ([^\"]+)", line)
        if found:
            run.shrinks[found.group(1).strip()] += 1
    bad = [line for line in log_text.splitlines() if re.search(r"level=error|poll crashed", line)]
    if bad:
        run.errors.append(f"dense: {len(bad)} error lines in the worker's log, the first: "
                          + " | ".join(line[:300] for line in bad[:3]))
    unexpected = {s: n for s, n in run.statuses.items() if s not in (200, 429, fake.stale_cursor_status)}
    if unexpected:
        run.errors.append(f"dense: the fake answered {unexpected}")
    return run


def report_dense(run: DenseRun, args: argparse.Namespace) -> None:
    scale = 60 / args.period
    page = args.page_size
    capacity_deployed = OUR_LIMIT * page
    print()
    print(f"dense profile: one app logging {args.records_per_minute:,.0f} records per (deployed) minute against "
          f"a budget that reads {OUR_LIMIT} × {page} = {capacity_deployed:,} a minute "
          f"({args.records_per_minute / capacity_deployed:.2f}× over capacity); time compressed {scale:g}×, so "
          f"the log holds {run.density:,.0f} records per minute of its own (the poller's) time")
    print(f"stretch read: {args.log_minutes:g} deployed minutes of log ({run.stretch.total_seconds():.0f} s of "
          f"log time, {run.expected:,} records, {-(-run.expected // page):,} pages), starting "
          f"{run.start_behind.total_seconds() / 60:.1f} min behind (the issue's 6-hour backlog would be "
          f"{6 * 60 * args.records_per_minute / page:,.0f} pages, {6 * 60 * args.records_per_minute / page / OUR_LIMIT * args.period / 60:.0f} "
          f"min here); done when the checkpoint passes the stretch's end")
    min_seconds = -(-run.expected // page) / OUR_LIMIT * args.period
    took = (run.reached_at - run.first_call) if run.reached_at and run.first_call else float("nan")
    allowed = OUR_LIMIT * took / args.period
    goodput = run.stored / run.calls_ok / page if run.calls_ok else float("nan")
    print()
    print(f"{'figure':<46} {'measured':>12} {'baseline':>12} {'ratio':>7} {'target':>8}")

    def line(name, measured, baseline, ratio, target):
        print(f"{name:<46} {measured:>12} {baseline:>12} {ratio:>7} {target:>8}")
    line("goodput: new records per call / page size", f"{run.stored / run.calls_ok if run.calls_ok else 0:.1f}",
         f"{page}", f"{goodput:.2f}", "≥ 0.80")
    line("catch-up time (s) / theoretical minimum", f"{took:.1f}", f"{min_seconds:.1f}",
         f"{took / min_seconds:.2f}" if min_seconds else "n/a", "≤ 1.25")
    line("calls used / allowed (first call → goal)", f"{run.calls_to_goal}", f"{allowed:.0f}",
         f"{run.calls_to_goal / allowed:.2f}" if allowed else "n/a", "≥ 0.90")
    line("429s", f"{run.statuses.get(429, 0)}", "0", "", "0")
    if run.first_window_at is not None and run.reached_at is not None and run.first_call is not None:
        start_up = run.first_window_at - run.first_call
        steady = run.reached_at - run.first_window_at
        steady_min = -(-run.steady_expected // page) / OUR_LIMIT * args.period
        line("  start-up: first call → first window done (s)", f"{start_up:.1f}",
             f"{run.calls_before_first_window} calls", "", "")
        if steady_min:
            line("  then: catch-up time (s) / its minimum", f"{steady:.1f}", f"{steady_min:.1f}",
                 f"{steady / steady_min:.2f}", "≤ 1.25")
            six_hours = 6 * 60 * args.records_per_minute / page / OUR_LIMIT * args.period
            projected = start_up + steady / steady_min * six_hours
            line("  projected for a 6-hour backlog (s) / minimum", f"{projected:.0f}", f"{six_hours:.0f}",
                 f"{projected / six_hours:.2f}", "≤ 1.25")
    print("(baseline of the catch-up: the stretch's pages ÷ 25 calls per period × the period; of the calls: "
          "25 per period over the same time. Start-up: the source's first windows, before any completes, read "
          "the newest pages of a window sized without a density estimate; then: from the first completed window "
          "to the goal; projected: start-up once plus the steady ratio over the issue's 6 hours, an extrapolation)")
    print()
    print(f"calls: {dict(sorted(run.statuses.items()))} (200s {run.calls_ok} in the whole run, of which "
          f"{run.refused_cursors} refused cursors answered {args.stale_cursor_status}); records stored "
          f"{run.stored:,} in {run.outbox_rows:,} outbox rows ({run.stored - run.verified:+,} beyond the stretch, "
          "read by windows past the goal before the run stopped)")
    shrinks = ", ".join(f"{n} {why}" for why, n in run.shrinks.most_common()) or "none"
    print(f"windows completed: {run.windows if run.windows is not None else 'n/a'}; windows shrunk: {shrinks}")
    spans = run.job_spans
    if spans:
        per_job = [s / c / page for *_, c, s in spans if c]
        idle = [b[0] - a[1] for a, b in zip(spans, spans[1:])]
        print(f"poll jobs: {len(spans)}, calls per job p50 {pct([c for *_, c, _ in spans], 50):.0f}, goodput per job "
              f"min {pct(per_job, 0.0001):.2f} p50 {pct(per_job, 50):.2f}; idle between jobs p50 {pct(idle, 50):.2f} s "
              f"max {pct(idle, 100):.2f} s")
    over = "yes" if run.over_seen_after is not None else "no"
    when = f", {run.over_seen_after:.1f} s after the first call" if run.over_seen_after is not None else ""
    density = "n/a" if run.density_seen is None else f"{run.density_seen:,.0f}"
    capacity = "n/a" if run.capacity_seen is None else f"{run.capacity_seen:,.0f}"
    print(f"over capacity shown (sources.over_capacity_since): {over}{when}; at the end "
          f"{'set' if run.over_at_end else 'clear'}; density_per_minute {density}, capacity_per_minute {capacity} "
          f"(generated: {run.density:,.0f}; the poller's minutes are real ones, {scale:g} deployed minutes each: "
          f"÷ {scale:g} = {run.density_seen / scale if run.density_seen else float('nan'):,.0f} and "
          f"{run.capacity_seen / scale if run.capacity_seen else float('nan'):,.0f} deployed)")
    if run.worker_cpu is not None and run.stored:
        per_million = run.worker_cpu * 1_000_000 / run.stored
        print(f"poll side CPU: worker and its work horses {run.worker_cpu:.1f} CPU s for {run.stored:,} records = "
              f"{per_million:.1f} CPU s per million records (target ≤ 18), {1000 * run.worker_cpu / max(run.calls_ok, 1):.0f} "
              f"ms per call: the whole worker, idle or not (HTTP, SQL per page, RQ's fork per job, re-reads); at "
              f"{page} records a page the cost per call, not per record, dominates")
    if run.split:
        s = run.split
        print(f"  per step, this run's records as {page}-record pages, in this process (CPU s per million): decode "
              f"{s['decode']:.2f} (orjson.loads {s['orjson.loads']:.2f}), fingerprints {s['fingerprint']:.2f}, encode "
              f"{s['encode']:.2f}; sum {s['decode'] + s['fingerprint'] + s['encode']:.2f}")
    print(f"verified record by record: {run.verified:,} records of the stretch, {run.missing} missing, "
          f"{run.duplicates} stored twice, {run.unexpected} unexpected")


# --- main --------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", choices=("backlog", "dense"), default="backlog",
                        help="backlog: a 14-day backlog per --backlogs (default); dense: an app logging "
                             "beyond capacity, newest-first pages, cursors living 60 s (issue 12)")
    parser.add_argument("--backlogs", default="100000,1000000",
                        help="records in the 14 days, one run each (100000,1000000)")
    parser.add_argument("--period", type=float, default=None,
                        help="the rate-limit period in seconds, Atlassian's and ours (4; dense 12; deployed: 60)")
    parser.add_argument("--tick", type=int, default=1, help="CLOCK_TICK_SECONDS (1; deployed: 5)")
    parser.add_argument("--page-size", type=int, default=None, help="records per page of the fake (1000; dense 50)")
    parser.add_argument("--records-per-minute", type=float, default=3000.0,
                        help="dense: records the app logs per deployed minute (3000: 2.4x the 1,250 a minute's "
                             "budget reads at 50-record pages)")
    parser.add_argument("--log-minutes", type=float, default=12.0,
                        help="dense: deployed minutes of that log to catch up (12: ~6 min at --period 12)")
    parser.add_argument("--order", choices=("newest", "oldest", "shuffled"), default="newest",
                        help="dense: order of records in the fake's pages (newest)")
    parser.add_argument("--cursor-ttl", type=float, default=60.0,
                        help="dense: deployed seconds a cursor lives (60), compressed like the period")
    parser.add_argument("--stale-cursor-status", type=int, default=400,
                        help="dense: what the fake answers a stale cursor (400)")
    parser.add_argument("--latency", type=float, default=None,
                        help="the fake's answer latency in seconds (0.3 × period / 60)")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="give up a backlog after this long (6; dense 10)")
    parser.add_argument("--verify-hours", type=int, default=12,
                        help="hours of the backlog checked record by record against the fake (12)")
    parser.add_argument("--logs", type=Path, default=None, help="keep the worker's and clock's logs here")
    args = parser.parse_args(argv)
    dense = args.profile == "dense"
    if args.period is None:
        args.period = 12.0 if dense else 4.0
    if args.page_size is None:
        args.page_size = 50 if dense else 1000
    if args.max_minutes is None:
        args.max_minutes = 10.0 if dense else 6.0
    try:
        args.sizes = [int(n) for n in args.backlogs.split(",") if n.strip()]
    except ValueError:
        parser.error("--backlogs takes whole numbers")
    if not args.sizes or min(args.sizes) < 1 or args.period < 0.1 or args.tick < 1 or args.page_size < 1:
        parser.error("sizes and periods must be positive (period ≥ 0.1 s)")
    if args.latency is None:
        args.latency = 0.3 * args.period / 60
    return args


def main_dense(args: argparse.Namespace, argv: list[str], server_url: str, redis_url: str) -> int:
    scale = 60 / args.period
    # Time compressed: the rate-limit period, the cursor's lifetime, the answer latency and the records'
    # visibility delays all shrink by the same factor, on the fake's (wall) clock, the poller's clock.
    fake = BoundedFake(seed=11, rate_limit=ATLASSIAN_LIMIT, rate_period=args.period, page_size=args.page_size,
                       latency=args.latency, order=args.order, cursor_ttl=args.cursor_ttl / scale,
                       stale_cursor_status=args.stale_cursor_status, prompt_delay_seconds=30 / scale)
    fake.BUCKETS = 40  # minutes of ~15,000 records each
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    workdir = tempfile.TemporaryDirectory(prefix="forgedrain-bench-")
    logdir = Path(workdir.name)
    if args.logs is not None:
        args.logs.mkdir(parents=True, exist_ok=True)
        logdir = args.logs
    try:
        with LocalServer(fake.wsgi()) as server:
            print(f"catch-up bench, dense profile: ./scripts/bench catchup {' '.join(argv)}".rstrip())
            print(f"the fake: {ATLASSIAN_LIMIT} calls per {args.period:g} s per app, {args.order}-first pages of "
                  f"{args.page_size}, cursors living {args.cursor_ttl / scale:g} s (deployed {args.cursor_ttl:g} s), "
                  f"stale cursor answered {args.stale_cursor_status}, latency {args.latency * 1000:.0f} ms; ours: "
                  f"FORGE_RATE_LIMIT={OUR_LIMIT} FORGE_RATE_PERIOD_SECONDS={args.period:g} "
                  f"CLOCK_TICK_SECONDS={args.tick}; time compressed {scale:g}x (deployed: 60 s period, 5 s tick)")
            print(f"one `python -m worker` and one `python -m worker.clock`; {os.cpu_count()} cores shared with "
                  f"the fake (this process) and PostgreSQL; Python {platform.python_version()}", flush=True)
            began = time.monotonic()
            run = run_dense(args, server_url, redis_url, fake, server.url, f"dense-{uuid.uuid4().hex[:6]}", logdir)
            print(f"FORGE_POLL_LAG_SECONDS={args.lag} FORGE_POLL_OVERLAP_SECONDS={args.overlap} (deployed defaults); "
                  f"{'goal reached' if run.reached else 'goal NOT reached'} in {time.monotonic() - began:.0f} s "
                  "with set-up and checks")
        report_dense(run, args)
        for error in run.errors:
            print(f"error: {error}", file=sys.stderr)
        return 1 if run.errors else 0
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        workdir.cleanup()


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    found = servers("catchup")
    if found is None:
        return 2
    server_url, redis_url = found
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log line per fake call
    if args.profile == "dense":
        return main_dense(args, argv, server_url, redis_url)
    fake = BoundedFake(seed=11, rate_limit=ATLASSIAN_LIMIT, rate_period=args.period,
                       page_size=args.page_size, latency=args.latency)
    prefix = f"catchup-{uuid.uuid4().hex[:6]}"  # app ids (and so budget keys) of this invocation only
    workdir = tempfile.TemporaryDirectory(prefix="forgedrain-bench-")
    logdir = Path(workdir.name)
    if args.logs is not None:
        args.logs.mkdir(parents=True, exist_ok=True)
        logdir = args.logs
    runs: list[Run] = []
    try:
        with LocalServer(fake.wsgi()) as server:
            print(f"catch-up bench: ./scripts/bench catchup {' '.join(argv)}".rstrip())
            print(f"backlogs {', '.join(f'{n:,}' for n in args.sizes)} records over 14 days less 10 min, one "
                  f"source; the fake: {ATLASSIAN_LIMIT} calls per {args.period:g} s per app, pages of "
                  f"{args.page_size}, latency {args.latency * 1000:.0f} ms; ours: FORGE_RATE_LIMIT={OUR_LIMIT} "
                  f"FORGE_RATE_PERIOD_SECONDS={args.period:g} CLOCK_TICK_SECONDS={args.tick} "
                  f"FORGE_POLL_LAG_SECONDS={LAG_SECONDS}; time compressed {60 / args.period:g}x "
                  f"(deployed: 60 s period, 5 s tick)")
            print(f"one `python -m worker` and one `python -m worker.clock`; {os.cpu_count()} cores shared with "
                  f"the fake (this process) and PostgreSQL; Python {platform.python_version()}")
            for size in args.sizes:
                began = time.monotonic()
                run = run_one(args, server_url, redis_url, fake, server.url, size, f"{prefix}-{size}", logdir)
                print(f"{size:,} records: {'caught up' if run.caught_up else 'NOT caught up'}, "
                      f"{run.calls_ok} calls in {run.seconds:.1f} s ({time.monotonic() - began:.0f} s with set-up "
                      f"and {run.verify_seconds:.0f} s of checks)", flush=True)
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
