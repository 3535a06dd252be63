"""Fleet delivery: many tenants' drains, some hostile, fed at a steady rate (issue 13).

Target (issue 13): "N resources × M drains on loopback receivers, 10 % of them
slow or hostile, records arriving at a steady rate; print delivered records/s
and the healthy drains' delivery delay p50/p99 (record stored → receiver) with
1, 2 and 4 worker processes: the throughput ratio 4 : 1 (target ≥ 3 on 4+
cores; on 2 cores report what the machine allows, with CPU per record) and
healthy p99 with vs. without the hostile 10 % (target ≤ 1.5×)."

What it runs, per configuration, against real PostgreSQL (fsync on) and Redis,
each configuration in a fresh database:

- the fleet: ``--resources`` (40) resources (plan ``pro``, no source: nothing
  is polled) with ``--drains`` (5) ``logplex`` drains each. With hostile
  drains, ``--hostile-share`` (10 %) of the resources are *hostile tenants*
  whose every drain points at a misbehaving receiver
  (``tests/fakes/hostile.py``, in a process of its own), the modes in turn:
  ``slow`` (reads the request, answers 200 after ``--hostile-delay`` 9 s),
  ``silent`` (reads it, never answers) and ``trickle`` (the status line, then a
  byte every 5 s): every send to them costs a thread up to the send's 10 s
  deadline. The baseline configuration has the same healthy tenants and no
  hostile ones, so the healthy load is the same;
- the healthy receiver: one more process (this script with ``_receiver``),
  asyncio on loopback, that answers 200 at once and, per drain token
  (``Logplex-Drain-Token``), marks each record's sequence number (so it counts
  records lost and received twice) and notes its delay: arrival − the time the
  bench stored it (``seq=… ns=… ph=…`` leads every record's body; the store
  time is taken just before the append's transaction, whose commit takes a few
  ms);
- the feeder, a thread of this process that plays the poller: realistic Forge
  records (100–420-byte bodies, 5 % multi-line, Forge's attributes) in batches
  of ``--batch`` (100), one ``outbox.append_forge`` transaction per batch, to
  the resources in turn, at ``--rate`` (2,000) records/s stored in all; after
  each batch it queues delivery job 0 as a poll that stored records does
  (``jobs.enqueue_delivery``; ``--no-kick`` leaves delivery to the clock's tick);
- the service's own processes: ``python -m worker`` × workers and one
  ``python -m worker.clock``, with ``CLOCK_TICK_SECONDS`` ``--tick`` (2),
  ``DELIVERY_JOBS`` = workers, ``DELIVERY_THREADS`` ``--threads`` (16, the
  default), ``ALLOW_PRIVATE_DRAINS=true``; the tick keeps a delivery job per 16
  due drains queued, each worker runs one at a time (RQ forks a work horse).

Phases, per configuration: ``--warmup`` (12) s of feeding (every hostile
drain's first send holds a fast-lane thread until its deadline, 10 s, before
the drain moves to the slow lane; not in the steady figures, its p99 shown
apart), then ``--seconds`` (60) s of steady feeding (longer than a delivery
job's 45 s claiming budget, so every job's end is in it); then the bench waits
until every healthy drain has every record (``--catchup-timeout`` 60 s); then a
*burst*: ``--burst`` (40) batches per resource added in one transaction, so
they appear at once, and the time until the healthy drains have them all. The
steady phase gives the delay (p50/p90/p99/max of arrival − store time over
every healthy record stored in it, each healthy drain's own p99, and the worst
delay per 5 s of arrivals, which shows stalls), the delivered rate against the
offered one, and the CPU per 1,000 records; the burst gives the throughput at
saturation (records delivered between the arrival of 10 % and of 90 % of the
burst ÷ the time between: the first job starts at the kick and the others at
the next tick, the tail is the last drains' last sends), from which the ratios
4 : 1 and 2 : 1 are taken. CPU: the worker processes with their work horses
and RQ's scheduler (``/proc``: the parents' own and reaped children's time,
plus their live children's), PostgreSQL's (the postmaster's reaped backends
and live ones: the feeder's appends included), the receiver's; per 1,000
healthy records delivered. Busy: the share of workers RQ showed busy, sampled
every 0.5 s; due: drains due (``delivery.count_due``), sampled alike.

It prints a table per phase, the hostile drains' state (delivered, retried,
consecutive failures, the moving send time that puts them in the slow lane, the
last error, the hostile receivers' hits), error and warning lines of the
workers' logs, and the ratios with their targets. Exit 1 when a healthy record
is missing once caught up (or a healthy drain's counters or cursor disagree),
or a process failed; never on timings.

Flags: ``--workers`` (1,2,4), ``--baseline-workers`` (2; 0: no baseline),
``--resources``, ``--drains``, ``--hostile-share``, ``--hostile-delay``,
``--rate``, ``--batch``, ``--seconds``, ``--warmup``, ``--burst``,
``--catchup-timeout``, ``--tick``, ``--threads``, ``--no-kick``, ``--seed``,
``--logs DIR`` (keep every process's log), ``--quick`` (``--seconds 15 --burst
10``: about 2½ minutes; a 15 s steady phase holds no job's end).

It needs DATABASE_URL (a server where it may create and drop
``forgedrain_bench_*`` databases) and REDIS_URL (its ``control``, ``poll`` and
``deliver`` queues are emptied before and after each configuration);
``./scripts/bench fleet`` provides both. About 7 minutes by default on the
2-core development machine, where the workers, PostgreSQL, the receiver and the
feeder share the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from array import array
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SELF = str(Path(__file__).resolve())

import orjson  # noqa: E402

from common import (children, clear_redis, create_database, http_answer, pct, process_env, read_request,  # noqa: E402
                    servers, start, stop, tear_down, with_database)

APP_ID = "5f0f8a4e-1f5a-4c3e-9d7b-1a2b3c4d5e6f"
ENVIRONMENT = "b1c2d3e4-0000-4a5b-8c9d-0e1f2a3b4c5d"
HOSTILE_MODES = ("slow", "silent", "trickle")
TARGET_SCALE = 3.0     # throughput 4 workers : 1, on 4+ cores
TARGET_P99 = 1.5       # healthy p99 with the hostile 10 % : without
CPU_KEYS = ("workers", "postgres", "receiver", "clock", "bench", "machine", "others", "wall")
TIMELINE_SECONDS = 5   # the steady phase's worst delay is shown per this many seconds of arrivals
CLK = os.sysconf("SC_CLK_TCK")


# --- the healthy receiver process ------------------------------------------------------------

def receiver_main() -> None:
    """Count and time what arrives per drain token; print the port as one JSON line; serve until killed."""
    import asyncio
    import re

    pattern = re.compile(rb"seq=(\d+) ns=(\d+) ph=(\w)")

    class Token:
        __slots__ = ("seen", "dupes", "requests", "phase", "delay", "arrival")

        def __init__(self) -> None:
            self.seen = bytearray()           # per sequence number: times received (capped at 255)
            self.dupes = 0
            self.requests = 0
            self.phase = bytearray()          # per unique record, in arrival order
            self.delay = array("f")           # ms, arrival − store time
            self.arrival = array("d")         # s, wall clock

    tokens: dict[str, Token] = {}
    errors = [0]

    def take(token: str, body: bytes) -> None:
        state = tokens.get(token)
        if state is None:
            state = tokens[token] = Token()
        state.requests += 1
        now_ns = time.time_ns()
        now_s = now_ns / 1e9
        seen = state.seen
        for match in pattern.finditer(body):
            seq = int(match[1])
            if seq >= len(seen):
                seen.extend(bytes(seq + 1 - len(seen) + 1024))
            if seen[seq]:
                state.dupes += 1
                if seen[seq] < 255:
                    seen[seq] += 1
                continue
            seen[seq] = 1
            state.phase.append(match[3][0])
            state.delay.append((now_ns - int(match[2])) / 1e6)
            state.arrival.append(now_s)

    def progress() -> dict:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {"tokens": {t: len(s.delay) for t, s in tokens.items()}, "errors": errors[0],
                "cpu": usage.ru_utime + usage.ru_stime}

    def check(expected: dict[str, int]) -> dict:
        out = {}
        for token, n in expected.items():
            state = tokens.get(token) or Token()
            seen = state.seen
            missing = [i for i in range(n) if i >= len(seen) or not seen[i]]
            beyond = sum(1 for i in range(n, len(seen)) if seen[i])
            out[token] = {"missing": len(missing), "first_missing": missing[:5], "dupes": state.dupes,
                          "beyond": beyond, "requests": state.requests}
        return out

    def delays(query: dict) -> dict:
        """Delays of the unique records of ``phases`` to ``tokens``: percentiles overall and each token's
        p99; arrival times (10 %, 90 %, last) and arrivals within ``window`` (any phase)."""
        phases = {ord(p) for p in query["phases"]}
        window = query.get("window")
        values: list[float] = []
        arrivals: list[float] = []
        per_token: dict[str, float] = {}
        in_window = 0
        for token in query["tokens"]:
            state = tokens.get(token)
            if state is None:
                continue
            mine = [d for ph, d in zip(state.phase, state.delay) if ph in phases]
            values += mine
            arrivals += [a for ph, a in zip(state.phase, state.arrival) if ph in phases]
            if mine:
                mine.sort()
                per_token[token] = mine[max(0, -(-len(mine) * 99 // 100) - 1)]
            if window:
                in_window += sum(1 for a in state.arrival if window[0] <= a < window[1])
        values.sort()
        arrivals.sort()
        # The worst delay of the records arriving in each ``bucket`` seconds from ``window``'s start.
        timeline: dict[int, float] = {}
        if window and query.get("bucket"):
            for token in query["tokens"]:
                state = tokens.get(token)
                if state is None:
                    continue
                for ph, d, a in zip(state.phase, state.delay, state.arrival):
                    if ph in phases:
                        slot = int((a - window[0]) // query["bucket"])
                        if d > timeline.get(slot, -1.0):
                            timeline[slot] = d

        def at(ordered, p):
            return ordered[max(0, int(-(-len(ordered) * p // 100)) - 1)] if ordered else None

        return {"n": len(values), "p50": at(values, 50), "p90": at(values, 90), "p99": at(values, 99),
                "p999": at(values, 99.9), "max": values[-1] if values else None, "per_token_p99": per_token,
                "t10": at(arrivals, 10), "t90": at(arrivals, 90), "first": arrivals[0] if arrivals else None,
                "last": arrivals[-1] if arrivals else None, "in_window": in_window,
                "timeline": [timeline.get(i) for i in range(max(timeline) + 1)] if timeline else []}

    async def http(reader, writer) -> None:
        try:
            while True:
                method, path, headers, body = await read_request(reader)
                if path.startswith("/_"):
                    if path == "/_progress":
                        result = progress()
                    elif path == "/_check":
                        result = check(orjson.loads(body))
                    elif path == "/_delays":
                        result = delays(orjson.loads(body))
                    else:
                        writer.write(http_answer(404))
                        await writer.drain()
                        continue
                    writer.write(http_answer(200, orjson.dumps(result), "application/json"))
                    await writer.drain()
                    continue
                token = headers.get("logplex-drain-token")
                if method != "POST" or not token:
                    errors[0] += 1
                    writer.write(http_answer(400))
                else:
                    take(token, body)
                    writer.write(http_answer(200))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def serve() -> None:
        server = await asyncio.start_server(http, "127.0.0.1", 0, limit=1 << 20, backlog=512)
        print(json.dumps({"port": server.sockets[0].getsockname()[1]}), flush=True)
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


# --- the hostile receivers' process ----------------------------------------------------------

def hostile_main(delay: float) -> None:
    """One ``HostileHTTP`` per mode; print their URLs as one JSON line, then answer each line read
    on stdin with their hits; exit at end of input."""
    from contextlib import ExitStack

    from tests.fakes.hostile import HostileHTTP

    with ExitStack() as stack:
        servers_ = {mode: stack.enter_context(HostileHTTP(mode, delay=delay if mode == "slow" else None))
                    for mode in HOSTILE_MODES}
        print(json.dumps({mode: s.url for mode, s in servers_.items()}), flush=True)
        for _ in sys.stdin:
            print(json.dumps({mode: {"hits": s.hits, "connections": s.connections, "open": s.open}
                              for mode, s in servers_.items()}), flush=True)
        os._exit(0)  # stalled connections' threads are daemons; do not wait for them


class Helper:
    """A child process of this script that prints one JSON line when ready."""

    def __init__(self, args: list[str], log_path: Path, stdin=subprocess.DEVNULL):
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen([sys.executable, SELF, *args], cwd=ROOT, env=env,
                                            stdout=subprocess.PIPE, stderr=log, stdin=stdin,
                                            start_new_session=True)
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"{args[0]} did not start (see {log_path})")
        self.ready = json.loads(line)

    def cpu(self) -> float:
        return tree_cpu(self.process.pid)

    def close(self) -> None:
        stop(self.process, 3)


class Receiver(Helper):
    def __init__(self, log_path: Path):
        super().__init__(["_receiver"], log_path)
        self.port = self.ready["port"]
        import requests
        self.session = requests.Session()
        self.session.trust_env = False
        self.base = f"http://127.0.0.1:{self.port}"

    def url(self, tenant: int) -> str:
        return f"{self.base}/t{tenant}"

    def progress(self) -> dict:
        return self.session.get(f"{self.base}/_progress", timeout=30).json()

    def check(self, expected: dict[str, int]) -> dict:
        return self.session.post(f"{self.base}/_check", data=orjson.dumps(expected), timeout=120).json()

    def delays(self, tokens: list[str], phases: str, window: tuple[float, float] | None = None,
               bucket: float = 0) -> dict:
        body = {"tokens": tokens, "phases": phases, "window": list(window) if window else None, "bucket": bucket}
        return self.session.post(f"{self.base}/_delays", data=orjson.dumps(body), timeout=120).json()

    def close(self) -> None:
        self.session.close()
        super().close()


class Hostile(Helper):
    def __init__(self, log_path: Path, delay: float):
        super().__init__(["_hostile", str(delay)], log_path, stdin=subprocess.PIPE)
        self.urls: dict[str, str] = self.ready
        self.lock = threading.Lock()

    def stats(self) -> dict:
        with self.lock:
            self.process.stdin.write(b"stats\n")
            self.process.stdin.flush()
            return json.loads(self.process.stdout.readline())

    def close(self) -> None:
        try:
            self.process.stdin.close()
        except OSError:
            pass
        super().close()


# --- /proc --------------------------------------------------------------------------------

def own_cpu(pid: int) -> float:
    """utime + stime + cutime + cstime of ``pid`` (every thread; children it reaped), seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return sum(int(v) for v in fields[11:15]) / CLK


def tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and every descendant alive now (those that exited and were reaped count
    in their parent's cutime/cstime)."""
    total, stack = 0.0, [pid]
    while stack:
        current = stack.pop()
        total += own_cpu(current)
        stack += children(current)
    return total


def machine_busy() -> float:
    """CPU seconds the whole machine spent busy since boot (``/proc/stat``: all but idle and iowait)."""
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return float("nan")
    return (sum(values) - values[3] - values[4]) / CLK


def postmaster_pid(conn) -> int | None:
    """The PostgreSQL server's postmaster, when it runs on this machine and /proc shows it."""
    try:
        backend = conn.execute("SELECT pg_backend_pid() AS pid").fetchone()["pid"]
        with open(f"/proc/{backend}/status") as f:
            parent = next(int(line.split()[1]) for line in f if line.startswith("PPid:"))
        with open(f"/proc/{parent}/cmdline", "rb") as f:
            return parent if b"postgres" in f.read() else None
    except (OSError, StopIteration, ValueError):
        return None


# --- records and the feeder ----------------------------------------------------------------

FUNCTIONS = (("updateStatusTitle", "core:function"), ("issue-panel-resolver", "jira:issuePanel"),
             ("nightly-sync", "scheduledTrigger"), ("issue-updated", "trigger"), ("incoming-webhook", "webtrigger"))
LEVELS = (("INFO", 30), ("INFO", 30), ("INFO", 30), ("DEBUG", 20), ("WARN", 40), ("ERROR", 50))
FILLERS = (" issueKey=PROJ-{n}", " durationMs={n}", " path=/rest/api/3/issue/{n}/transitions", " status=200",
           " cache=hit", " bytes={n}", " site=https://acme-{n}.atlassian.net", " spaceKey=ENG", " elapsed={n}ms",
           " Grüße aus Zürich ✓", " retries=0", ' labels=["triage","backend"]')
TRACE = ("Error: Request failed with status code 500\n"
         "    at getIssue (webpack://forge-app/src/resolvers/index.js:88:17)\n"
         "    at async Object.handler (webpack://forge-app/src/index.js:12:5)")


class Records:
    """Forge-shaped records whose body leads with ``seq=… ns=… ph=…`` (read by the receiver)."""

    def __init__(self, seed: int):
        rng = random.Random(seed)
        self.tails = []
        for _ in range(512):  # body tails of 60–380 bytes, some multi-line
            if rng.random() < 0.05:
                self.tails.append(" " + TRACE)
                continue
            target, text = rng.randint(60, 380), ""
            while len(text.encode()) < target:
                text += rng.choice(FILLERS).format(n=rng.randrange(1, 100_000))
            self.tails.append(text)
        self.rng = rng

    def batch(self, first_seq: int, count: int, phase: str, stored_ns: int) -> list[dict]:
        rng = self.rng
        fn, module = rng.choice(FUNCTIONS)
        invocation = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        trace = f"{rng.getrandbits(128):032x}"
        attributes = [{"key": "appId", "value": {"stringValue": APP_ID}},
                      {"key": "environmentId", "value": {"stringValue": ENVIRONMENT}},
                      {"key": "invocationId", "value": {"stringValue": invocation}},
                      {"key": "appVersion", "value": {"stringValue": "2.118.0"}},
                      {"key": "functionKey", "value": {"stringValue": fn}},
                      {"key": "moduleType", "value": {"stringValue": module}}]
        ts = str(stored_ns // 1_000_000 * 1_000_000)
        out = []
        for seq in range(first_seq, first_seq + count):
            level, number = LEVELS[seq % len(LEVELS)]
            out.append({"timeUnixNano": ts, "severityNumber": number, "severityText": level,
                        "body": {"stringValue": f"seq={seq} ns={stored_ns} ph={phase}"
                                                f"{self.tails[rng.getrandbits(9)]}"},
                        "traceId": trace, "spanId": f"{rng.getrandbits(64):016x}", "attributes": attributes})
        return out


class Feeder:
    """Appends batches to the resources in turn, as the poller stores Forge pages; counts per resource."""

    def __init__(self, database_url: str, redis_url: str, resources: list, batch: int, tick: int, kick: bool,
                 seed: int):
        from broker import db, redisconn
        self.conn = db.connect(database_url, "forgedrain-bench-feeder")
        self.redis = redisconn.connect(redis_url)
        self.resources = resources
        self.batch = batch
        self.tick = tick
        self.kick = kick
        self.records = Records(seed)
        self.fed = {r: 0 for r in resources}        # records appended per resource (next seq)
        self.batches = 0
        self.append_ms: list[float] = []
        self.behind_max = 0.0                        # the most the feeder fell behind its schedule, s
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def append(self, resource_id, phase: str) -> None:
        from broker import jobs, outbox
        seq = self.fed[resource_id]
        stored_ns = time.time_ns()
        records = self.records.batch(seq, self.batch, phase, stored_ns)
        moment = datetime.fromtimestamp(stored_ns / 1e9, timezone.utc)
        began = time.perf_counter()
        with self.conn.transaction():
            outbox.append_forge(self.conn, resource_id, None, records, [moment] * len(records))
        self.append_ms.append((time.perf_counter() - began) * 1000)
        self.fed[resource_id] = seq + self.batch
        self.batches += 1
        if self.kick:  # what a poll that stored records does (worker/poll.py)
            jobs.enqueue_delivery(self.redis, 0, self.tick)

    def steady(self, phases: list[tuple[str, float]], rate: float, on_phase) -> None:
        """Feed ``rate`` records/s in all for each (phase, seconds); ``on_phase(phase)`` at each start."""
        per_second = rate / self.batch
        turn = 0
        try:
            for phase, seconds in phases:
                on_phase(phase)
                began = time.monotonic()
                done = 0
                while not self.stop.is_set():
                    now = time.monotonic()
                    if now - began >= seconds:
                        break
                    due = int((now - began) * per_second) + 1
                    if done >= due:
                        time.sleep(min(0.05, (due / per_second) - (now - began)))
                        continue
                    self.behind_max = max(self.behind_max, (now - began) - done / per_second)
                    self.append(self.resources[turn % len(self.resources)], phase)
                    turn += 1
                    done += 1
            on_phase("end")
        except BaseException as exc:  # noqa: BLE001 — reported by the main thread
            self.error = exc

    def burst(self, batches: int) -> tuple[float, float]:
        """``batches`` batches per resource in one transaction, so they all appear at once; the wall
        time written into the records (before the transaction) and that of the commit."""
        from broker import jobs, outbox
        stored_ns = time.time_ns()
        moment = datetime.fromtimestamp(stored_ns / 1e9, timezone.utc)
        fed = dict(self.fed)
        with self.conn.transaction():
            for _ in range(batches):
                for resource_id in self.resources:
                    records = self.records.batch(fed[resource_id], self.batch, "b", stored_ns)
                    outbox.append_forge(self.conn, resource_id, None, records, [moment] * len(records))
                    fed[resource_id] += self.batch
        committed = time.time()
        self.fed = fed
        self.batches += batches * len(self.resources)
        if self.kick:
            jobs.enqueue_delivery(self.redis, 0, self.tick)
        return stored_ns / 1e9, committed

    def close(self) -> None:
        self.conn.close()
        self.redis.close()


# --- one configuration -----------------------------------------------------------------------

@dataclass
class Config:
    workers: int
    hostile: bool

    @property
    def label(self) -> str:
        return f"{self.workers} worker{'s' if self.workers > 1 else ''}, {'hostile 10 %' if self.hostile else 'no hostile'}"


@dataclass
class Result:
    config: Config
    drains_healthy: int = 0
    drains_hostile: int = 0
    steady_seconds: float = 0.0
    offered: float = 0.0                 # healthy records/s the feeder stored × drains, steady phase
    delivered: float = 0.0               # healthy records/s arriving during the steady phase
    steady: dict = field(default_factory=dict)    # receiver delays, phase s
    warmup: dict = field(default_factory=dict)    # receiver delays, phase w
    burst: dict = field(default_factory=dict)     # receiver delays, phase b
    burst_records: int = 0
    burst_append_s: float = 0.0
    burst_rate: float = 0.0              # healthy records/s between 10 % and 90 % of the burst delivered
    burst_rate_whole: float = 0.0        # healthy records/s from the burst's first append to its last arrival
    caught_up_s: float | None = None     # after the steady feed ended
    burst_caught_up_s: float | None = None
    cpu: dict = field(default_factory=dict)       # phase -> {workers, postgres, receiver, clock}
    busy: dict = field(default_factory=dict)      # phase -> mean share of workers busy
    due: dict = field(default_factory=dict)       # phase -> mean due drains
    lost: int = 0
    lost_sample: list = field(default_factory=list)
    dupes: int = 0
    counter_problems: list = field(default_factory=list)
    hostile_rows: list = field(default_factory=list)
    hostile_hits: dict = field(default_factory=dict)
    feeder_append_p99: float = 0.0
    feeder_behind: float = 0.0
    paused: float = 0.0                  # wall − monotonic seconds over the steady phase
    jobs: int = 0
    job_lines: list = field(default_factory=list)
    log_problems: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    warnings: list = field(default_factory=list)


def clear_delivery_queue(redis) -> None:
    """What common.clear_redis leaves: the deliver queue, its job hashes and registries."""
    from broker import jobs
    jobs.queue("deliver", redis).empty()
    for pattern in ("rq:job:deliver-*", "rq:*:deliver", "rq:*:deliver:*"):
        for key in redis.scan_iter(match=pattern, count=1000):
            redis.delete(key)


class Sampler(threading.Thread):
    """Every 0.5 s: how many workers RQ shows busy, and how many drains are due (per phase)."""

    def __init__(self, database_url: str, redis_url: str):
        super().__init__(daemon=True, name="sampler")
        from broker import db, redisconn
        self.conn = db.connect(database_url, "forgedrain-bench-sampler")
        self.redis = redisconn.connect(redis_url)
        self.phase = "start"
        self.samples: dict[str, list[tuple[int, int, int]]] = {}
        self.halt = threading.Event()

    def run(self) -> None:
        from rq import Worker

        from broker import delivery
        while not self.halt.wait(0.5):
            try:
                workers = Worker.all(connection=self.redis)
                busy = sum(1 for w in workers if w.get_state() == "busy")
                due = delivery.count_due(self.conn, 10_000)
                self.samples.setdefault(self.phase, []).append((busy, len(workers), due))
            except Exception:  # noqa: BLE001 — a missed sample
                pass

    def close(self) -> None:
        self.halt.set()
        self.join(5)
        self.conn.close()
        self.redis.close()


def run_config(cfg: Config, args, server_url: str, redis_url: str, receiver: Receiver, hostile: Hostile,
               workdir: Path) -> Result:
    from cryptography.fernet import Fernet

    from broker import db, migrate, redisconn, tokens
    from broker.vault import Vault

    result = Result(cfg)
    database = create_database(server_url)
    database_url = with_database(server_url, database)
    redis = redisconn.connect(redis_url)
    clear_redis(redis)
    clear_delivery_queue(redis)
    fernet_key = Fernet.generate_key().decode()
    vault = Vault([fernet_key])
    name = f"w{cfg.workers}-{'hostile' if cfg.hostile else 'clean'}"
    workers: list[subprocess.Popen] = []
    clock = None
    feeder = sampler = None
    feed_thread = None
    try:
        with db.connect(database_url, "forgedrain-bench") as conn:
            migrate.migrate(conn)
            hostile_tenants = max(1, round(args.resources * args.hostile_share)) if cfg.hostile else 0
            healthy_tenants = args.resources - (max(1, round(args.resources * args.hostile_share))
                                                if args.hostile_share > 0 else 0)
            resources: list = []
            healthy: dict[str, object] = {}      # token -> resource
            hostile_drains: dict = {}            # drain id -> mode
            mode_turn = 0
            with conn.transaction():
                for tenant in range(healthy_tenants + hostile_tenants):
                    resource_id = uuid.uuid4()
                    conn.execute("INSERT INTO resources (id, partner_id, plan, api_token_hash) "
                                 "VALUES (%s, 'forgedrain', 'pro', %s)", (resource_id, tokens.digest(str(resource_id))))
                    resources.append(resource_id)
                    for _ in range(args.drains):
                        token = f"d.{uuid.uuid4()}"
                        if tenant < healthy_tenants:
                            url, mode = receiver.url(tenant), None
                        else:
                            mode = HOSTILE_MODES[mode_turn % len(HOSTILE_MODES)]
                            mode_turn += 1
                            url = hostile.urls[mode]
                        drain_id = conn.execute(
                            "INSERT INTO drains (resource_id, kind, url_enc, token, cursor) "
                            "VALUES (%s, 'logplex', %s, %s, 0) RETURNING id",
                            (resource_id, vault.encrypt(url), token)).fetchone()["id"]
                        if mode is None:
                            healthy[token] = resource_id
                        else:
                            hostile_drains[drain_id] = mode
            result.drains_healthy, result.drains_hostile = len(healthy), len(hostile_drains)
            healthy_tokens = list(healthy)
            # The rate is per healthy tenant as in the baseline: hostile tenants log at the same rate each.
            rate = args.rate * len(resources) / args.resources
            env = process_env(database_url, redis_url, "http://127.0.0.1:9", fernet_key, {
                "ALLOW_PRIVATE_DRAINS": "true",
                "CLOCK_TICK_SECONDS": str(args.tick),
                "DELIVERY_JOBS": str(max(cfg.workers, 1)),
                "DELIVERY_THREADS": str(args.threads),
                "LOG_LEVEL": "INFO",
            })
            postmaster = postmaster_pid(conn)
            for i in range(cfg.workers):
                workers.append(start(["-m", "worker"], env, workdir / f"worker-{name}-{i}.log"))
            clock = start(["-m", "worker.clock"], env, workdir / f"clock-{name}.log")
            from rq import Worker
            deadline = time.monotonic() + 30
            while len(Worker.all(connection=redis)) < cfg.workers and time.monotonic() < deadline:
                time.sleep(0.2)
            if len(Worker.all(connection=redis)) < cfg.workers:
                result.errors.append(f"{cfg.label}: only {len(Worker.all(connection=redis))} of {cfg.workers} "
                                     "workers registered within 30 s")

            def cpu_now() -> dict:
                usage = resource.getrusage(resource.RUSAGE_SELF)
                sample = {"workers": sum(tree_cpu(w.pid) for w in workers),
                          "postgres": tree_cpu(postmaster) if postmaster else float("nan"),
                          "receiver": receiver.cpu(), "clock": tree_cpu(clock.pid),
                          "bench": usage.ru_utime + usage.ru_stime + hostile.cpu(), "machine": machine_busy(),
                          "wall": time.time(), "mono": time.monotonic()}
                # What the rest of the machine used meanwhile (another bench, a test run): not ours.
                sample["others"] = sample["machine"] - sum(sample[k] for k in ("workers", "postgres", "receiver",
                                                                              "clock", "bench"))
                return sample

            marks: dict[str, dict] = {}
            sampler = Sampler(database_url, redis_url)
            sampler.start()

            def on_phase(phase: str) -> None:
                marks[phase] = {**cpu_now(), "fed": dict(feeder.fed)}
                sampler.phase = phase

            feeder = Feeder(database_url, redis_url, resources, args.batch, args.tick, not args.no_kick, args.seed)
            feed_thread = threading.Thread(target=feeder.steady, name="feeder",
                                           args=([("w", args.warmup), ("s", args.seconds)], rate, on_phase))
            feed_thread.start()
            while feed_thread.is_alive():
                feed_thread.join(0.5)
                dead = [w for w in workers + [clock] if w.poll() is not None]
                if dead:
                    feeder.stop.set()
                    result.errors.append(f"{cfg.label}: a worker or the clock exited early (see the logs)")
            if feeder.error is not None:
                raise feeder.error
            result.feeder_behind = feeder.behind_max

            def expected_now() -> dict[str, int]:
                return {t: feeder.fed[r] for t, r in healthy.items()}

            def wait_caught_up(since: float, timeout: float) -> float | None:
                want = expected_now()
                while time.monotonic() - since < timeout:
                    got = receiver.progress()["tokens"]
                    if all(got.get(t, 0) >= n for t, n in want.items()):
                        return time.monotonic() - since
                    time.sleep(0.25)
                return None

            sampler.phase = "catch-up"
            ended = time.monotonic()
            result.caught_up_s = wait_caught_up(ended, args.catchup_timeout)
            caught = cpu_now()
            marks["caught"] = caught
            s0, s1 = marks["s"], marks["end"]
            result.steady_seconds = s1["wall"] - s0["wall"]
            # A machine paused (a VM frozen by its host) shows as wall time the monotonic clock did not see:
            # the feeder (monotonic) then stores less, and every record in flight looks late.
            result.paused = result.steady_seconds - (s1["mono"] - s0["mono"])
            if result.paused > 0.5:
                result.warnings.append(f"{cfg.label}: the wall clock ran {result.paused:.1f} s ahead of the monotonic "
                                     "clock in the steady phase (the machine was paused?): its delays are not usable")
            result.steady = receiver.delays(healthy_tokens, "s", (s0["wall"], s1["wall"]), TIMELINE_SECONDS)
            result.warmup = receiver.delays(healthy_tokens, "w")
            # Offered: healthy records stored in the steady phase, once per healthy drain.
            stored = sum(s1["fed"][r] - s0["fed"][r] for r in healthy.values())
            result.offered = stored / result.steady_seconds if result.steady_seconds else 0.0
            result.delivered = result.steady["in_window"] / result.steady_seconds if result.steady_seconds else 0.0
            # CPU over the steady phase and its catch-up, per 1,000 healthy records stored in it.
            result.cpu["steady"] = {k: caught[k] - s0[k] for k in CPU_KEYS}
            result.cpu["steady"]["records"] = stored
            if result.caught_up_s is None:
                result.errors.append(f"{cfg.label}: healthy drains not caught up {args.catchup_timeout:g} s after "
                                     "the steady feed ended")

            # The burst: throughput at saturation. The store time in its records is taken before the
            # transaction that adds them all; its delays are counted from the commit.
            began = time.monotonic()
            stamped, committed = feeder.burst(args.burst)
            result.burst_append_s = time.monotonic() - began
            b0 = cpu_now()
            sampler.phase = "b"
            result.burst_caught_up_s = wait_caught_up(time.monotonic(), args.catchup_timeout)
            b1 = cpu_now()
            result.burst = receiver.delays(healthy_tokens, "b")
            result.burst_records = result.burst["n"]
            if result.burst["t90"] and result.burst["t10"] and result.burst["t90"] > result.burst["t10"]:
                result.burst_rate = 0.8 * result.burst_records / (result.burst["t90"] - result.burst["t10"])
            if result.burst["last"]:
                result.burst_rate_whole = result.burst_records / (result.burst["last"] - committed)
                for key in ("p50", "p90", "p99", "max"):  # from the commit, not from before the inserts
                    if result.burst.get(key) is not None:
                        result.burst[key] -= (committed - stamped) * 1000
            result.cpu["burst"] = {k: b1[k] - b0[k] for k in CPU_KEYS}
            result.cpu["burst"]["records"] = result.burst_records
            if result.burst_caught_up_s is None:
                result.errors.append(f"{cfg.label}: the burst not delivered to every healthy drain within "
                                     f"{args.catchup_timeout:g} s")
            sampler.phase = "after"
            for phase, samples in sampler.samples.items():
                if samples:
                    result.busy[phase] = sum(b for b, _, _ in samples) / max(1, sum(n for _, n, _ in samples))
                    result.due[phase] = sum(d for *_, d in samples) / len(samples)

            # Loss, duplicates, counters.
            checked = receiver.check(expected_now())
            for token, c in checked.items():
                result.lost += c["missing"]
                result.dupes += c["dupes"]
                if c["missing"] and len(result.lost_sample) < 3:
                    result.lost_sample.append(f"{token}: {c['missing']} missing, first seqs {c['first_missing']}")
            rows = conn.execute(
                "SELECT d.id, d.token, d.resource_id, d.cursor, d.partial_batch, d.delivered, d.dropped, d.rejected, "
                "d.retried, d.consecutive_failures, d.send_seconds, d.last_error, "
                "extract(epoch FROM d.next_attempt_at - now()) AS wait, "
                "(SELECT max(o.id) FROM outbox o WHERE o.resource_id = d.resource_id) AS newest "
                "FROM drains d").fetchall()
            for row in rows:
                if row["token"] in healthy:
                    want = feeder.fed[row["resource_id"]]
                    if row["cursor"] != row["newest"] or row["delivered"] != want or row["dropped"] or row["rejected"]:
                        result.counter_problems.append(
                            f"drain {row['token']}: cursor {row['cursor']} (newest {row['newest']}), delivered "
                            f"{row['delivered']} of {want}, dropped {row['dropped']}, rejected {row['rejected']}, "
                            f"last error {row['last_error']!r}")
                elif row["id"] in hostile_drains:
                    result.hostile_rows.append({**row, "mode": hostile_drains[row["id"]],
                                                "fed": feeder.fed[row["resource_id"]]})
            result.hostile_hits = hostile.stats() if cfg.hostile else {}
            result.feeder_append_p99 = pct(feeder.append_ms, 99)
    finally:
        # The logs up to here: what the workers say when stopped is the bench's doing.
        log_ends = [log_size(workdir / f"worker-{name}-{i}.log") for i in range(len(workers))]
        if feeder is not None:
            feeder.stop.set()
            if feed_thread is not None:
                feed_thread.join(10)
            feeder.close()
        if sampler is not None:
            sampler.close()
        stop_all([p for p in [clock] + workers if p is not None], 5)
        clear_delivery_queue(redis)
        tear_down(server_url, database, redis)
    scan_logs(result, workdir, name, log_ends)
    return result


def stop_all(processes: list[subprocess.Popen], grace: float) -> None:
    """SIGTERM to every process group at once, then common.stop (SIGKILL to what is left) within one
    ``grace`` in all: a worker in a job would wait for it (RQ's warm shutdown), and the database is
    dropped anyway."""
    for process in processes:
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace
    for process in processes:
        stop(process, max(0.1, deadline - time.monotonic()))


def log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def scan_logs(result: Result, workdir: Path, name: str, ends: list[int]) -> None:
    import re
    problems = []
    for i, end in enumerate(ends):
        path = workdir / f"worker-{name}-{i}.log"
        try:
            with open(path, "rb") as f:
                text = f.read(end).decode(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            if "delivery job slot=" in line:
                result.jobs += 1
                result.job_lines.append(line)
            if re.search(r"level=(error|critical)|Traceback|lost its lease|level=warning", line):
                problems.append(f"worker {i}: {line[:400]}")
    result.log_problems = problems


# --- report --------------------------------------------------------------------------------

def fmt(value, spec=".0f", none="n/a") -> str:
    if value is None or value != value:  # None or NaN
        return none
    return format(value, spec)


def per_k(cpu: dict, key: str) -> float:
    records = cpu.get("records") or 0
    return cpu[key] / records * 1000 if records else float("nan")


def report(results: list[Result], args) -> list[str]:
    print()
    print(f"steady phase ({args.seconds:g} s after a {args.warmup:g} s warm-up; healthy drains only; delay = arrival "
          "− store time, ms):")
    print(f"{'configuration':<24} {'healthy':>7} {'hostile':>7} {'offered/s':>9} {'delivered/s':>11} {'p50':>6} "
          f"{'p90':>6} {'p99':>6} {'max':>6} {'drain p99 med/max':>17} {'warm-up p99':>11} {'caught up':>9} "
          f"{'busy':>5} {'due':>5}")
    for r in results:
        s = r.steady
        per = sorted(s.get("per_token_p99", {}).values())
        spread = f"{fmt(per[len(per) // 2] if per else None)}/{fmt(per[-1] if per else None)}"
        print(f"{r.config.label:<24} {r.drains_healthy:>7} {r.drains_hostile:>7} {r.offered:>9,.0f} "
              f"{r.delivered:>11,.0f} {fmt(s.get('p50')):>6} {fmt(s.get('p90')):>6} {fmt(s.get('p99')):>6} "
              f"{fmt(s.get('max')):>6} {spread:>17} {fmt(r.warmup.get('p99')):>11} "
              f"{fmt(r.caught_up_s, '.1f') + ' s':>9} {fmt(r.busy.get('s'), '.2f'):>5} {fmt(r.due.get('s'), '.0f'):>5}")
    print("(offered: healthy records stored in the phase × their drains ÷ its seconds; delivered: healthy records "
          "arriving within the phase ÷ its seconds; drain p99 med/max: the median and the worst of the healthy "
          "drains' own p99; caught up: after the feed ended, until every healthy drain had every record; busy: share "
          "of the workers RQ showed busy; due: drains due on average (delivery.count_due))")
    print(f"worst delay (s) of the steady phase's healthy records, per {TIMELINE_SECONDS} s of arrival:")
    for r in results:
        line = " ".join(fmt(v / 1000 if v is not None else None, ".1f", "-") for v in r.steady.get("timeline", []))
        print(f"  {r.config.label:<24} {line}")
    print()
    print(f"burst ({args.burst} batches of {args.batch} per resource in one transaction; healthy drains):")
    print(f"{'configuration':<24} {'records':>8} {'insert s':>8} {'rec/s 10–90 %':>13} {'rec/s whole':>11} "
          f"{'all in':>7} {'p99 ms':>7} {'busy':>5} {'jobs':>5}")
    for r in results:
        print(f"{r.config.label:<24} {r.burst_records:>8,} {r.burst_append_s:>8.1f} {r.burst_rate:>13,.0f} "
              f"{r.burst_rate_whole:>11,.0f} {fmt(r.burst_caught_up_s, '.1f') + ' s':>7} "
              f"{fmt(r.burst.get('p99')):>7} {fmt(r.busy.get('b'), '.2f'):>5} {r.jobs:>5}")
    print("(insert s: the burst's transaction, before any of it is visible; rec/s 10–90 %: healthy records "
          "delivered between the arrival of 10 % and of 90 % of the burst ÷ that time, the saturation throughput; "
          "whole: from the commit to the last arrival; all in: from the commit until every healthy drain had every "
          "record; p99: of arrival − commit; jobs: delivery jobs that finished in the whole configuration, from the "
          "workers' logs)")
    print()
    print("CPU s per 1,000 healthy records, and cores in use (steady phase with its catch-up | burst):")
    print(f"{'configuration':<24} {'workers':>7} {'postgres':>8} {'receiver':>8} {'ours':>5} {'others':>6} | "
          f"{'workers':>7} {'postgres':>8} {'receiver':>8} {'ours':>5} {'others':>6}")
    for r in results:
        cells = []
        for phase in ("steady", "burst"):
            c = r.cpu.get(phase)
            if not c:
                cells.append(f"{'n/a':>7} {'n/a':>8} {'n/a':>8} {'n/a':>5} {'n/a':>6}")
                continue
            ours = sum(c[k] for k in ("workers", "postgres", "receiver", "clock", "bench")) / c["wall"]
            cells.append(f"{fmt(per_k(c, 'workers'), '.3f'):>7} {fmt(per_k(c, 'postgres'), '.3f'):>8} "
                         f"{fmt(per_k(c, 'receiver'), '.3f'):>8} {ours:>5.2f} {c['others'] / c['wall']:>6.2f}")
        print(f"{r.config.label:<24} {cells[0]} | {cells[1]}")
    print(f"(workers: the worker processes with their work horses and RQ's scheduler; postgres: every backend of "
          f"the bench's server, the feeder's appends included; ours: cores used by those, the receiver, the clock "
          f"and this process with the hostile receivers; others: cores the rest of the machine used meanwhile "
          f"(another bench, a test run) out of {os.cpu_count()})")
    print()
    print("healthy records: lost / received twice; feeder:")
    for r in results:
        line = (f"  {r.config.label:<24} lost {r.lost}, twice {r.dupes}; drain counters "
                f"{'agree' if not r.counter_problems else 'DISAGREE (' + str(len(r.counter_problems)) + ')'}; "
                f"append p99 {fmt(r.feeder_append_p99, '.1f')} ms, the feeder at most {r.feeder_behind:.2f} s behind "
                f"its schedule; wall − monotonic clock over the steady phase {r.paused:+.2f} s")
        print(line)
        for sample in r.lost_sample + r.counter_problems[:3]:
            print(f"      {sample}")
    hostile_results = [r for r in results if r.hostile_rows]
    if hostile_results:
        print()
        print("hostile drains at the end (per mode: drains, records fed to each, delivered in all, retried, "
              "consecutive failures max, send_seconds mean, next attempt in, receiver hits):")
        for r in hostile_results:
            print(f"  {r.config.label}:")
            for mode in HOSTILE_MODES:
                rows = [h for h in r.hostile_rows if h["mode"] == mode]
                if not rows:
                    continue
                hits = r.hostile_hits.get(mode, {})
                errors = sorted({(h["last_error"] or "")[:110] for h in rows})
                print(f"    {mode:<8} {len(rows):>2} drains, fed {rows[0]['fed']:,} each, delivered "
                      f"{sum(h['delivered'] for h in rows):,}, retried {sum(h['retried'] for h in rows):,}, "
                      f"failures max {max(h['consecutive_failures'] for h in rows)}, send_seconds "
                      f"{sum(h['send_seconds'] for h in rows) / len(rows):.1f}, next in "
                      f"{max(0.0, min(float(h['wait']) for h in rows)):.0f}–{max(0.0, max(float(h['wait']) for h in rows)):.0f} s, "
                      f"hits {hits.get('hits', 'n/a')}; last error: {' | '.join(errors)[:240] or '-'}")
    print()
    print("workers' logs (error and warning lines):")
    for r in results:
        print(f"  {r.config.label}: {len(r.log_problems)} lines" + (":" if r.log_problems else ""))
        for line in r.log_problems[:4]:
            print(f"      {line[:300]}")
    print()
    errors: list[str] = []
    by = {(r.config.workers, r.config.hostile): r for r in results}
    one = by.get((1, True))
    cores = os.cpu_count() or 1
    for k in (2, 4):
        many = by.get((k, True))
        if one and many and one.burst_rate:
            ratio = many.burst_rate / one.burst_rate
            steady_ratio = many.delivered / one.delivered if one.delivered else float("nan")
            cpu1, cpuk = per_k(one.cpu.get("burst", {}), "workers"), per_k(many.cpu.get("burst", {}), "workers")
            verdict = ""
            if k == 4:
                verdict = (f": {'met' if ratio >= TARGET_SCALE else 'NOT met'}" if cores >= 4 else
                           f": target ≥ {TARGET_SCALE:g} applies on 4+ cores; this machine has {cores}")
            print(f"issue 13 throughput {k} : 1 workers (burst, 10–90 %): {ratio:.2f} ({many.burst_rate:,.0f} vs "
                  f"{one.burst_rate:,.0f} healthy records/s; worker CPU {cpuk:.3f} vs {cpu1:.3f} s per 1,000; steady "
                  f"delivered {steady_ratio:.2f}){verdict}")
    base_workers = args.baseline_workers
    with_h, without = by.get((base_workers, True)), by.get((base_workers, False))
    if with_h and without and without.steady.get("p99"):
        ratio = with_h.steady["p99"] / without.steady["p99"]
        print(f"issue 13 healthy p99 with / without the hostile 10 % ({base_workers} workers): {ratio:.2f} "
              f"({with_h.steady['p99']:.0f} vs {without.steady['p99']:.0f} ms; p50 {with_h.steady['p50']:.0f} vs "
              f"{without.steady['p50']:.0f} ms): {'met' if ratio <= TARGET_P99 else 'NOT met'} (≤ {TARGET_P99:g})")
    for r in results:
        for warning in r.warnings:
            print(f"warning: {warning}")
        errors += r.errors
        if r.lost:
            errors.append(f"{r.config.label}: {r.lost} healthy records lost")
        if r.counter_problems:
            errors.append(f"{r.config.label}: {len(r.counter_problems)} healthy drains' counters or cursors disagree")
    return errors


# --- main ----------------------------------------------------------------------------------

def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,2,4", help="worker processes per configuration, with hostile "
                                                           "drains (1,2,4)")
    parser.add_argument("--baseline-workers", type=int, default=2,
                        help="also run this many workers without hostile drains (2; 0: skip)")
    parser.add_argument("--resources", type=int, default=40, help="resources (tenants) (40)")
    parser.add_argument("--drains", type=int, default=5, help="logplex drains per resource (5)")
    parser.add_argument("--hostile-share", type=float, default=0.10,
                        help="share of the resources that are hostile tenants, all their drains hostile (0.10)")
    parser.add_argument("--hostile-delay", type=float, default=9.0, help="the slow receiver's answer delay, s (9)")
    parser.add_argument("--rate", type=float, default=2000, help="records/s stored in all for --resources "
                                                                 "resources (2000)")
    parser.add_argument("--batch", type=int, default=100, help="records per outbox batch (100)")
    parser.add_argument("--seconds", type=float, default=60, help="steady feeding per configuration, s (60)")
    parser.add_argument("--warmup", type=float, default=12, help="feeding before the steady phase, s (12)")
    parser.add_argument("--burst", type=int, default=40, help="batches per resource added at once, in one "
                                                               "transaction (40)")
    parser.add_argument("--catchup-timeout", type=float, default=60,
                        help="how long healthy drains may take to catch up after a phase, s (60)")
    parser.add_argument("--tick", type=int, default=2, help="CLOCK_TICK_SECONDS (2)")
    parser.add_argument("--threads", type=int, default=16, help="DELIVERY_THREADS (16)")
    parser.add_argument("--no-kick", action="store_true",
                        help="do not queue delivery job 0 after each batch (as a poll that stored records does)")
    parser.add_argument("--seed", type=int, default=13, help="seed of the generated records (13)")
    parser.add_argument("--logs", type=Path, default=None, help="keep the processes' logs here")
    parser.add_argument("--quick", action="store_true", help="--seconds 15 --burst 10")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.burst = 15, 10
    try:
        args.worker_counts = [int(w) for w in args.workers.split(",") if w.strip()]
    except ValueError:
        parser.error("--workers must be comma-separated numbers")
    if not args.worker_counts or min(args.worker_counts) < 1 or args.baseline_workers < 0:
        parser.error("--workers must be positive numbers")
    if min(args.resources, args.drains, args.batch, args.burst, args.tick, args.threads) < 1 or args.rate <= 0:
        parser.error("--resources, --drains, --batch, --burst, --tick, --threads and --rate must be positive")
    if not 0 <= args.hostile_share < 1:
        parser.error("--hostile-share must be in [0, 1)")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    found = servers("fleet")
    if found is None:
        return 2
    server_url, redis_url = found
    from broker import db

    configs = [Config(k, args.hostile_share > 0) for k in args.worker_counts]
    if args.baseline_workers and args.hostile_share > 0:
        configs.append(Config(args.baseline_workers, False))
    temp = tempfile.TemporaryDirectory(prefix="forgedrain-fleet-")
    workdir = Path(temp.name)
    if args.logs is not None:
        args.logs.mkdir(parents=True, exist_ok=True)
        workdir = args.logs
    receiver = hostile = None
    results: list[Result] = []
    errors: list[str] = []
    began = time.monotonic()
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "broker", "worker"],
                               cwd=ROOT, capture_output=True, text=True).stdout.splitlines()
        with db.connect(server_url, "forgedrain-bench") as conn:
            facts = {k: conn.execute(f"SHOW {k}").fetchone()[k] for k in ("server_version", "fsync",
                                                                             "synchronous_commit")}
        hostile_tenants = max(1, round(args.resources * args.hostile_share)) if args.hostile_share > 0 else 0
        print(f"fleet bench: ./scripts/bench fleet {' '.join(argv)}".rstrip())
        print(f"{args.resources} resources × {args.drains} logplex drains ({hostile_tenants} hostile tenants: "
              f"{hostile_tenants * args.drains} drains, {', '.join(HOSTILE_MODES)} in turn); {args.rate:,.0f} "
              f"records/s stored in {args.batch}-record batches; warm-up {args.warmup:g} s, steady {args.seconds:g} s, "
              f"burst {args.burst} batches per resource; CLOCK_TICK_SECONDS={args.tick}, DELIVERY_THREADS="
              f"{args.threads}, DELIVERY_JOBS=workers; kick after each batch: {'no' if args.no_kick else 'yes'}")
        print(f"commit {commit}{f' + {len(dirty)} uncommitted files in broker/ worker/' if dirty else ''}; "
              f"PostgreSQL {facts['server_version']} fsync={facts['fsync']} synchronous_commit="
              f"{facts['synchronous_commit']}; {os.cpu_count()} cores; Python {platform.python_version()}; "
              f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
        receiver = Receiver(workdir / "receiver.log")
        hostile = Hostile(workdir / "hostile.log", args.hostile_delay)
        for cfg in configs:
            t0 = time.monotonic()
            result = run_config(cfg, args, server_url, redis_url, receiver, hostile, workdir)
            results.append(result)
            s = result.steady
            print(f"  {cfg.label}: steady p50 {fmt(s.get('p50'))} / p99 {fmt(s.get('p99'))} ms, delivered "
                  f"{result.delivered:,.0f}/s of {result.offered:,.0f}; burst {result.burst_rate:,.0f} rec/s; lost "
                  f"{result.lost}; {len(result.log_problems)} log lines; {time.monotonic() - t0:.0f} s"
                  + (f"; errors: {'; '.join(result.errors)}" if result.errors else ""), flush=True)
        errors += report(results, args)
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        for helper in (receiver, hostile):
            if helper is not None:
                helper.close()
        if args.logs is None:
            temp.cleanup()
    print(f"\nrun time {time.monotonic() - began:.0f} s; load average after: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_receiver":
        receiver_main()
    elif len(sys.argv) > 1 and sys.argv[1] == "_hostile":
        hostile_main(float(sys.argv[2]))
    else:
        sys.exit(main(sys.argv[1:]))
