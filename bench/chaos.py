"""Chaos: the whole service under faults on a seeded schedule, then every record accounted for (issue 15).

SPEC §6 promises at-least-once delivery through crashes. This run starts the service as the
Procfile runs it and breaks it on purpose, then compares what the fake Forge logged and what
was posted to drain ingest with what every real receiver got.

What runs, loopback only, against the PostgreSQL and Redis that ``./scripts/bench`` starts
(it exports their data folders so they can be restarted here):

- the Forge fake (``tests/fakes/forge.py``) in this process, its awkward switches on:
  newest-first pages of 40 records, cursors living 20 s, 10 % of records late (up to
  ``LATE_MAX`` s, below the overlap), ``Retry-After`` on 429; Atlassian's 30 calls a minute
  per app. Three apps, one of them used by two resources (their calls share the app's budget).
  Bursts of 500s or 429s are a scheduled fault (``forge_burst``), not background noise: a
  burst landing on sources still recovering from another fault would measure itself (a 429's
  Retry-After holds an app up to 60 s, and at one burst a minute the same sources were hit
  again each time they came back);
- ``gunicorn --config gunicorn.conf.py 'web:create_app()'``, ``WORKERS`` × ``python -m
  worker`` and ``python -m worker.clock``, with FORGE_POLL_OVERLAP_SECONDS=40 so the sweep
  that re-reads late records works within the run;
- one real receiver per drain kind: ``tests.fakes.receivers.logplex_receiver`` as the
  ``heroku`` drain's log input and as the ``logplex`` drain, rotel (``tests/fakes/rotel.py``)
  for the ``otlp`` drains (one JSON, one protobuf), Debian's rsyslog over TLS
  (``tests/fakes/rsyslog.py``) for ``syslog``;
- four resources provisioned through the partner API (plan basic, the Forge credentials as
  provisioning options: the first source), each with a drain of every kind made through the
  resource API, and a poster sending Heroku-shaped logplex frames to drain ingest with known
  ids (a refused or failed post is retried with the same Frame-Id, as logplex does).

Faults, one at a time in a seeded order, each followed by a wait for recovery: SIGKILL a
worker and its work horse mid-job, SIGKILL the web, SIGTERM a worker (SIGKILL after 30 s, as
Heroku does), FLUSHALL, restart Redis, restart PostgreSQL (fast shutdown), a receiver down, a
receiver answering 500, Forge answering 503, Forge answering two calls 429 (with Retry-After)
or 500, the clock SIGKILLed and restarted, two clocks at once. A process that exits by itself is restarted (as Heroku restarts a crashed dyno) and
counted. Recovery: every source's checkpoint back within lag + interval + 15 s of now and
every drain past what the outbox held when the fault ended, within ``recover`` s of the fault's
end or of the end of a Retry-After the fake sent (the poller honours it), whichever is later.
Every scheduled fault runs; Forge's outage lasts longer than a poll interval, so a poll meets it.

Then it stops posting, waits (bounded) until every source's sweep has settled past the cut
and every drain is caught up, and compares: per drain kind, records expected / lost /
duplicated in whole redelivered batches (same Frame-Id, the same record ids in an OTLP export
(rotel runs with batching off, so an export is one request of ours), or for syslog a run
repeating the tail of what came before) / duplicated otherwise / refused by the receiver /
dropped or rejected by the drains' own counters; Forge calls per app in any 60 s against
FORGE_RATE_LIMIT and 429s the fake's own limit answered; recovery p50 / max per fault kind.
Exit 1 on any lost record, any duplicate outside a whole batch, any refused frame, a
rate-limit 429 or calls over the limit.

``./scripts/bench chaos [--profile short|long] [--seed N] [--faults kind,...] [--recover S] [--logs DIR]``;
``run(profile, seed, faults, ...)`` does the same as a function and returns a ``Report``.
"""

from __future__ import annotations

import argparse
import calendar
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
import requests  # noqa: E402
from cryptography.fernet import Fernet  # noqa: E402
from werkzeug.serving import make_server  # noqa: E402

from broker import config, db, outbox, plans, polling, redisconn  # noqa: E402
from tests.fakes import rotel as rotel_fake  # noqa: E402
from tests.fakes.forge import ForgeFake  # noqa: E402
from tests.fakes.receivers import logplex_receiver, otlp_receiver  # noqa: E402
from tests.fakes.rsyslog import Rsyslog  # noqa: E402
from tests.fakes.server import LocalServer  # noqa: E402
from common import (children, create_database, drop_database, pct, process_env, servers, start,  # noqa: E402
                    stop, with_database)

PASSWORD = "chaos-partner-password"
ENVIRONMENT = "prod"
EMAIL = "chaos@example.com"
PLAN = "basic"
LAG = 10
OVERLAP = 40
PROMPT = 4.0
LATE_MAX = 25.0
CURSOR_TTL = 20.0
PAGE_SIZE = 40
FORGE_LIMIT = 30
WORKERS = 2
HISTORY = timedelta(minutes=3)
KINDS = ("heroku", "logplex", "otlp/json", "otlp/protobuf", "syslog")
LINE_BREAK = re.compile(r"\r\n|\r|\n")
INGEST_ID = re.compile(r"chaos-ingest r(\d+) n(\d+) f(\d+)")
# (kind, instant?) — instant faults end when injected; the others last PROFILE[...]["hold"] s.
FAULTS = ("kill_worker", "kill_web", "term_worker", "flushall", "restart_redis", "restart_postgres",
          "receiver_down", "receiver_500", "forge_5xx", "forge_burst", "kill_clock", "two_clocks")
PROFILES = {
    # short: a few faults in ~2.5 minutes; long: every fault several times, ≥ 10 minutes.
    "short": {"faults": ("kill_worker", "restart_postgres", "flushall", "restart_redis", "kill_web",
                         "receiver_down", "two_clocks", "forge_burst"), "repeat": 1, "hold": 25, "recover": 90,
              "settle": 240},
    "long": {"faults": FAULTS, "repeat": 3, "hold": 45, "receiver_hold": 120,
             "recover": 240, "settle": 420},
}
APPS = ("chaos-app-a", "chaos-app-b", "chaos-app-c")
RESOURCE_APPS = (0, 1, 2, 0)  # resource i polls APPS[RESOURCE_APPS[i]]: two share app a


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


# --- restartable pieces -------------------------------------------------------------------------

class Served:
    """A WSGI app on a fixed loopback port that can be stopped and served again on the same port."""

    def __init__(self, app, port: int = 0):
        self.app = app
        self.port = port
        self._server = None
        self._thread = None

    def start(self) -> "Served":
        deadline = time.monotonic() + 10
        while True:
            try:
                self._server = make_server("127.0.0.1", self.port, self.app, threaded=True)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        self.port = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=10)
            self._server = None


class RotelReceiver:
    """rotel (tests/fakes/rotel.py's command) exporting to the decoding receiver; restartable on its ports."""

    def __init__(self, workdir: Path):
        self.app, self.inbox = otlp_receiver()
        self.downstream = LocalServer(self.app).__enter__()
        self.workdir = workdir
        self.http_port, self.grpc_port = rotel_fake.free_port(), rotel_fake.free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        output = open(self.workdir / f"rotel-{self.starts}.out", "wb")
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROTEL_")}
        self.process = subprocess.Popen(
            rotel_fake._command(self.http_port, self.grpc_port, self.downstream.url, self.workdir, []),
            stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT, env=env, cwd=self.workdir,
            start_new_session=True)
        output.close()
        if not rotel_fake._wait_ready(self.process, self.url, time.monotonic() + 20):
            raise RuntimeError(f"rotel did not start; see {self.workdir}")

    def stop(self) -> None:
        if self.process is not None:
            rotel_fake._stop(self.process)

    def close(self) -> None:
        self.stop()
        self.downstream.__exit__(None, None, None)

    def records(self) -> list[rotel_fake.Received]:
        return rotel_fake.Rotel(self.url, self.process, self.inbox, self.workdir / "x").records()

    def requests(self) -> list[list[rotel_fake.Received]]:
        with self.inbox.lock:
            messages = [r["message"] for r in self.inbox.requests]
        return [[rotel_fake.Received(rotel_fake.attributes(rl.resource.attributes), sl.scope.name,
                                     sl.scope.version, log)
                 for rl in m.resource_logs for sl in rl.scope_logs for log in sl.log_records] for m in messages]


class ForgeGate:
    """WSGI middleware in front of the fake: answers 503 to every call while ``down`` (Forge 5xx for a while)."""

    def __init__(self, app):
        self.app = app
        self.down = False
        self.refused: list[tuple[float, str]] = []
        self.held_until: dict[str, float] = {}   # app id → when the latest Retry-After it was sent ends
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if self.down:
            with self.lock:
                self.refused.append((time.time(), path))
            start_response("503 Service Unavailable", [("Content-Type", "application/json")])
            return [b'{"code": 503, "message": "chaos: Forge is down"}']

        def answer(status, headers, exc_info=None):
            # A 429's Retry-After holds the app's sources back until it ends (the poller honours it).
            wait = next((v for k, v in headers if k.lower() == "retry-after"), None)
            if status.startswith("429") and wait is not None and wait.isdigit():
                app_id = path.rsplit("/", 1)[-1]
                with self.lock:
                    self.held_until[app_id] = max(self.held_until.get(app_id, 0.0), time.time() + int(wait))
            return start_response(status, headers, exc_info) if exc_info else start_response(status, headers)

        return self.app(environ, answer)

    def held(self) -> float:
        """Until when (time.time()) a Retry-After the fake sent still holds some app back."""
        with self.lock:
            return max(self.held_until.values(), default=0.0)


# --- PostgreSQL and Redis as ./scripts/bench started them ---------------------------------------

class Services:
    """Restarts the PostgreSQL and Redis that ./scripts/bench started (their folders are exported)."""

    def __init__(self, database_url: str, redis_url: str, pg_data: str = "", pg_bin: str = "",
                 redis_dir: str = ""):
        self.pg_data = pg_data or os.environ.get("FORGEDRAIN_BENCH_PG_DATA", "")
        self.pg_bin = pg_bin or os.environ.get("FORGEDRAIN_BENCH_PG_BIN", "")
        self.redis_dir = redis_dir or os.environ.get("FORGEDRAIN_BENCH_REDIS_DIR", "")
        self.redis_port = urlsplit(redis_url).port
        if not (self.pg_data and self.pg_bin and self.redis_dir):
            raise SystemExit("chaos restarts PostgreSQL and Redis: run it with ./scripts/bench chaos, "
                             "without DATABASE_URL / REDIS_URL of your own")

    def _as_pg(self, *args: str) -> list[str]:
        command = [str(Path(self.pg_bin) / args[0]), *args[1:]]
        return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command

    def restart_postgres(self) -> None:
        log = str(Path(self.pg_data).parent / "postgres.log")
        subprocess.run(self._as_pg("pg_ctl", "-D", self.pg_data, "-l", log, "-m", "fast", "-w", "-t", "60",
                                   "restart"), check=True, stdout=subprocess.DEVNULL, timeout=90)

    def ensure_postgres(self) -> None:
        status = subprocess.run(self._as_pg("pg_ctl", "-D", self.pg_data, "status"), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        if status.returncode != 0:
            log = str(Path(self.pg_data).parent / "postgres.log")
            subprocess.run(self._as_pg("pg_ctl", "-D", self.pg_data, "-l", log, "-w", "-t", "60", "start"),
                           stdout=subprocess.DEVNULL, timeout=90)

    def _redis_pid(self) -> int | None:
        try:
            return int((Path(self.redis_dir) / "redis.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def stop_redis(self) -> None:
        pid = self._redis_pid()
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)

    def start_redis(self) -> None:
        """The same command line as scripts/lib.sh's start_redis, on the same port and folder."""
        d = self.redis_dir
        subprocess.run(["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
                        "--appendonly", "no", "--daemonize", "yes", "--pidfile", f"{d}/redis.pid",
                        "--logfile", f"{d}/redis.log", "--dir", d], check=True, timeout=30)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if subprocess.run(["redis-cli", "-p", str(self.redis_port), "ping"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL).returncode == 0:
                return
            time.sleep(0.05)
        raise RuntimeError("Redis did not come back")

    def ensure_redis(self) -> None:
        pid = self._redis_pid()
        try:
            if pid is not None:
                os.kill(pid, 0)
                return
        except ProcessLookupError:
            pass
        self.start_redis()


# --- the service's processes ----------------------------------------------------------------------

@dataclass
class Proc:
    name: str
    args: list[str]
    process: subprocess.Popen | None = None
    starts: int = 0
    planned_down: bool = False


class Fleet:
    """gunicorn, the workers and the clock; restarts what exits by itself (as Heroku does)."""

    def __init__(self, env: dict[str, str], logdir: Path, web_port: int):
        self.env, self.logdir = env, logdir
        self.procs: dict[str, Proc] = {}
        self.unplanned: list[str] = []
        self.web_port = web_port
        self.procs["web"] = Proc("web", ["-m", "gunicorn", "--config", "gunicorn.conf.py", "--bind",
                                         f"127.0.0.1:{web_port}", "web:create_app()"])
        for i in range(WORKERS):
            self.procs[f"worker.{i + 1}"] = Proc(f"worker.{i + 1}", ["-m", "worker"])
        self.procs["clock"] = Proc("clock", ["-m", "worker.clock"])

    def launch(self, name: str) -> None:
        proc = self.procs[name]
        proc.starts += 1
        proc.process = start(proc.args, self.env, self.logdir / f"{name}.{proc.starts}.log")
        proc.planned_down = False

    def supervise(self) -> None:
        for name, proc in self.procs.items():
            if proc.process is not None and proc.process.poll() is not None and not proc.planned_down:
                self.unplanned.append(f"{name} exited with {proc.process.returncode} "
                                      f"({self.logdir / f'{name}.{proc.starts}.log'})")
                say(f"  {name} exited by itself ({proc.process.returncode}); restarting it")
                self.launch(name)

    def kill(self, name: str, sig: int = signal.SIGKILL, with_horse: bool = True) -> None:
        proc = self.procs[name]
        proc.planned_down = True
        pid = proc.process.pid
        groups = [pid] + (children(pid) if with_horse else [])
        for group in groups:
            try:
                os.killpg(group, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def horse(self, name: str) -> int | None:
        """The work horse a worker has forked now (a job is running), or None."""
        proc = self.procs[name]
        found = [c for c in children(proc.process.pid)]
        return found[0] if found else None

    def stop_all(self) -> None:
        for proc in self.procs.values():
            proc.planned_down = True
        for proc in self.procs.values():
            if proc.process is not None and proc.process.poll() is None:
                stop(proc.process, 10)


# --- ground truth and what arrived ----------------------------------------------------------------

def line_key(text: str) -> str:
    """What identifies a record's text at every receiver: its first line's first characters."""
    first = LINE_BREAK.split(text, 1)[0] if text else ""
    return first.lstrip()[:120].rstrip()


def ms_of(stamp: str) -> int:
    moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return calendar.timegm(moment.utctimetuple()) * 1000 + moment.microsecond // 1000


@dataclass
class Resource:
    index: int
    id: str
    token: str           # FORGEDRAIN_TOKEN
    drain_token: str     # log_drain_token (Heroku's token for drain ingest)
    app_id: str
    source_id: str = ""
    drains: dict[str, str] = field(default_factory=dict)   # kind → drain token
    drain_ids: dict[str, str] = field(default_factory=dict)


@dataclass
class Poster:
    """Posts Heroku-shaped logplex frames to drain ingest, one batch per resource a second; a batch
    not answered 2xx is retried with the same Frame-Id until it is, or the run ends."""

    url: str
    resources: list[Resource]
    accepted: dict[int, set[str]] = field(default_factory=lambda: defaultdict(set))  # resource → ids
    refusals: Counter = field(default_factory=Counter)
    never: int = 0
    stop_event: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def batch(self, resource: Resource, seq: int) -> tuple[bytes, list[str]]:
        ids, frames = [], []
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f") + "+00:00"
        for i in range(3):
            ident = f"chaos-ingest r{resource.index} n{seq} f{i}"
            message = f"<190>1 {now} host app web.{i + 1} - {ident} GET /path status=200\n".encode()
            frames.append(b"%d %b" % (len(message), message))
            ids.append(ident)
        return b"".join(frames), ids

    def run(self) -> None:
        session = requests.Session()
        session.trust_env = False
        pending: list[tuple[Resource, int, bytes, list[str]]] = []
        seq = 0
        while not self.stop_event.is_set():
            seq += 1
            for resource in self.resources:
                body, ids = self.batch(resource, seq)
                pending.append((resource, seq, body, ids))
            still = []
            for resource, n, body, ids in pending:
                try:
                    answer = session.post(self.url, data=body, timeout=(2, 5), headers={
                        "Content-Type": "application/logplex-1", "Logplex-Msg-Count": str(len(ids)),
                        "Logplex-Frame-Id": f"chaos-{resource.index}-{n}",
                        "Logplex-Drain-Token": resource.drain_token, "User-Agent": "Logplex/v123"})
                    status = answer.status_code
                except requests.RequestException as exc:
                    status = type(exc).__name__
                if status in (200, 204):
                    self.accepted[resource.index].update(ids)
                else:
                    self.refusals[str(status)] += 1
                    still.append((resource, n, body, ids))
            pending = still[-200:]
            self.stop_event.wait(1.0)
        self.never = len(pending)

    def start(self) -> None:
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def finish(self) -> None:
        self.stop_event.set()
        if self.thread:
            self.thread.join(timeout=30)


@dataclass
class Tally:
    expected: int = 0
    lost: int = 0
    batch_dups: int = 0
    other_dups: int = 0
    refused: int = 0
    dropped: int = 0     # the drains' own counters: records dropped (by age, or refused for good)
    rejected: int = 0    # and records the receiver rejected (OTLP partial success)
    lost_examples: list = field(default_factory=list)
    dup_examples: list = field(default_factory=list)


def compare(tally: Tally, expected: Counter, got: Counter, rebatched: Counter, what: str) -> None:
    """``got`` counts each record once per distinct batch it came in; ``rebatched`` what whole
    redelivered batches (same Frame-Id and content / same record ids) carried on top."""
    tally.expected += sum(expected.values())
    for key, n in expected.items():
        have = got.get(key, 0)
        if have < n:
            tally.lost += n - have
            if len(tally.lost_examples) < 5:
                tally.lost_examples.append((what, key))
        elif have > n:
            tally.other_dups += have - n
            if len(tally.dup_examples) < 5:
                tally.dup_examples.append((what, key))
        tally.batch_dups += rebatched.get(key, 0)


def resent_runs(sequence: list, expected: Counter) -> tuple[Counter, Counter]:
    """Splits what a syslog drain received, in arrival order, into first deliveries and whole resends.

    Syslog has no acknowledgement: a send counts as delivered only when it was all written and the
    connection closed cleanly (README, Delivery), so a send cut short is sent
    again from its first record, so the receiver may hold a prefix of it twice. Such a resend shows
    as a run of records already received, each the one received right after the previous, ending
    with the last record received before the run. Returns (first deliveries, records in such runs);
    a repeated record outside such a run stays in the first Counter, over its expected count."""
    got, resent = Counter(), Counter()
    position: dict = {}      # record → its place among first deliveries
    run: list = []           # the current run of repeated records (their places)

    def close(run: list, newest: int) -> None:
        whole = bool(run) and run[-1][1] == newest and all(b[1] == a[1] + 1 for a, b in zip(run, run[1:]))
        for key, _ in run:
            (resent if whole else got)[key] += 1

    newest = -1
    for key in sequence:
        if got[key] < expected.get(key, 1):
            if run:
                close(run, newest)
                run = []
            got[key] += 1
            if key not in position:
                newest += 1
                position[key] = newest
        else:
            run.append((key, position[key]))
    if run:
        close(run, newest)
    return got, resent


def visibility_split(fake: ForgeFake, app_id: str, start: datetime, prompt_until: datetime,
                     late_until: datetime, levels: list[str]) -> Counter:
    """Records the source must have delivered: every record logged in [start, late_until) (the sweep
    settled it), and after that, up to ``prompt_until`` (the checkpoint), those the API served within
    PROMPT s of their time (late ones there still wait for the sweep)."""
    out: Counter = Counter()
    end = max(prompt_until, late_until)
    if end <= start:
        return out
    far = time.time() + 86_400
    # A record is "prompt" if a query PROMPT s after its time already sees it.
    for record in fake.records(app_id, ENVIRONMENT, start, end, levels=levels or None, now=far):
        ts_ms = int(record["timeUnixNano"]) // 1_000_000
        moment = datetime.fromtimestamp(ts_ms / 1000, timezone.utc)
        key = (ts_ms, line_key(record.get("body", {}).get("stringValue", "")))
        if moment < late_until:
            out[key] += 1
        elif moment < prompt_until and _prompt(fake, app_id, record, ts_ms, levels):
            out[key] += 1
    return out


def _prompt(fake: ForgeFake, app_id: str, record: dict, ts_ms: int, levels: list[str]) -> bool:
    start = datetime.fromtimestamp(ts_ms / 1000, timezone.utc)
    seen = fake.records(app_id, ENVIRONMENT, start, start + timedelta(milliseconds=1), levels=levels or None,
                        now=ts_ms / 1000 + PROMPT + 0.001)
    return any(r.get("spanId") == record.get("spanId") for r in seen)


# --- the run --------------------------------------------------------------------------------------

@dataclass
class Report:
    """What a run found: ``status`` 1 on any error (the ``errors`` list says which), else 0."""

    status: int
    tallies: dict[str, Tally]
    recoveries: dict[str, list[float | None]]   # fault kind → seconds to recover each time (None: never)
    forge_calls: dict[str, tuple[int, int, int]]  # app → (calls, most in any 60 s, 429s of the fake's limit)
    rate_limit: int                              # FORGE_RATE_LIMIT (calls per app per 60 s)
    fault_log: list[str]
    unplanned: list[str]
    errors: list[str]
    wall_seconds: float


class Chaos:
    def __init__(self, args, server_url: str, redis_url: str, services: Services | None = None):
        self.args = args
        self.profile = PROFILES[args.profile]
        self.recover = getattr(args, "recover", None) or self.profile["recover"]
        self.rng = random.Random(args.seed)
        self.server_url, self.redis_url = server_url, redis_url
        self.services = services or Services(server_url, redis_url)
        self.workdir = Path(tempfile.mkdtemp(prefix="forgedrain-chaos-"))
        self.logdir = args.logs or self.workdir
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.database = ""
        self.fleet: Fleet | None = None
        self.poster: Poster | None = None
        self.recoveries: dict[str, list[float | None]] = defaultdict(list)
        self.fault_log: list[str] = []
        self.errors: list[str] = []
        self.injected_429 = 0
        self.injected_500 = 0

    # -- setup --
    def setup(self) -> None:
        self.fake = ForgeFake(seed=self.args.seed, rate_limit=FORGE_LIMIT, rate_period=60.0, page_size=PAGE_SIZE,
                              order="newest", cursor_ttl=CURSOR_TTL, retry_after="seconds",
                              prompt_delay_seconds=PROMPT)
        for i, app_id in enumerate(APPS):
            self.fake.add_app(app_id, [ENVIRONMENT], EMAIL, f"ATATT-chaos-{i}",
                              records_per_minute=(90, 45, 30)[i], late_fraction=0.10, max_delay_seconds=LATE_MAX)
        self.gate = ForgeGate(self.fake.wsgi())
        self.forge = Served(self.gate).start()
        self.heroku_app, self.heroku_inbox = logplex_receiver()
        self.logplex_app, self.logplex_inbox = logplex_receiver()
        self.heroku_rx = Served(self.heroku_app).start()
        self.logplex_rx = Served(self.logplex_app).start()
        self.rotel = RotelReceiver(self.workdir)
        self.rotel.start()
        (self.workdir / "rsyslog").mkdir()
        self.rsyslog = Rsyslog(self.workdir / "rsyslog").start()
        logging.getLogger("werkzeug").setLevel(logging.ERROR)

        self.database = create_database(self.server_url)
        database_url = with_database(self.server_url, self.database)
        self.database_url = database_url
        web_port = rotel_fake.free_port()
        self.web = f"http://127.0.0.1:{web_port}"
        env = process_env(database_url, self.redis_url, self.forge.url, Fernet.generate_key().decode(), {
            "ADDON_PASSWORDS": PASSWORD, "ALLOW_PRIVATE_DRAINS": "true", "PORT": str(web_port),
            "WEB_CONCURRENCY": "2", "WEB_THREADS": "4", "FORGE_POLL_LAG_SECONDS": str(LAG),
            "FORGE_POLL_OVERLAP_SECONDS": str(OVERLAP), "REQUESTS_CA_BUNDLE": str(self.rsyslog.cert),
            "INGEST_LIMIT_SCALE": "10"})
        self.settings = config.load(env)
        subprocess.run([sys.executable, "-m", "broker.migrate"], cwd=ROOT, env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)  # release phase
        self.fleet = Fleet(env, self.logdir, web_port)
        self.fleet.launch("web")
        self.wait_web(60)
        self.resources = [self.provision(i) for i in range(len(RESOURCE_APPS))]
        with self.pg() as conn:
            # A new source reads the last hour first; catchup.py measures that. Here the sources start
            # HISTORY back, before any worker runs, so the run is about faults, not an hour's catch-up.
            conn.execute("UPDATE sources SET checkpoint = date_trunc('milliseconds', now() - %s)", (HISTORY,))
            conn.commit()
            rows = conn.execute("SELECT id, resource_id, checkpoint, levels FROM sources").fetchall()
        for name in self.fleet.procs:
            if name != "web":
                self.fleet.launch(name)
        self.sources = {str(r["resource_id"]): r for r in rows}
        for resource in self.resources:
            resource.source_id = str(self.sources[resource.id]["id"])
        self.started = min(r["checkpoint"] for r in rows)
        self.poster = Poster(f"{self.web}/ingest/logplex", self.resources)
        self.poster.start()

    def wait_web(self, seconds: float) -> float:
        began = time.monotonic()
        deadline = began + seconds
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.web}/readyz", timeout=(1, 3)).status_code == 200:
                    return time.monotonic() - began
            except requests.RequestException:
                pass
            self.fleet.supervise()
            time.sleep(0.2)
        raise RuntimeError(f"the web did not answer /readyz within {seconds:.0f} s")

    def provision(self, index: int) -> Resource:
        app_id = APPS[RESOURCE_APPS[index]]
        uid, drain_token = str(uuid.uuid4()), f"d.{uuid.uuid4()}"
        body = {"uuid": uid, "name": f"chaos-{index}", "plan": PLAN, "region": "amazon-web-services::us-east-1",
                "callback_url": f"https://api.heroku.com/addons/{uid}", "log_drain_token": drain_token,
                "log_input_url": f"http://token:t.chaos{index}@127.0.0.1:{self.heroku_rx.port}/r{index}/logs",
                "options": {"app_id": app_id, "environment_id": ENVIRONMENT, "email": EMAIL,
                            "api_token": f"ATATT-chaos-{APPS.index(app_id)}"}}
        answer = requests.post(f"{self.web}/heroku/resources", json=body, auth=("forgedrain", PASSWORD),
                               headers={"Accept": "application/vnd.heroku-addons+json; version=3"}, timeout=30)
        if answer.status_code not in (200, 201, 202):
            raise RuntimeError(f"provision answered {answer.status_code}: {answer.text[:300]}")
        cfg = answer.json()["config"]
        resource = Resource(index, answer.json()["id"], cfg["FORGEDRAIN_TOKEN"], drain_token, app_id)
        api = f"{self.web}/v1/resources/{resource.id}/drains"
        auth = {"Authorization": f"Bearer {resource.token}"}
        listed = requests.get(api, headers=auth, timeout=10).json()["drains"]
        for d in listed:
            if d["kind"] == "heroku":
                resource.drains["heroku"], resource.drain_ids["heroku"] = d["token"], d["id"]
        wanted = {"logplex": {"kind": "logplex", "url": f"{self.logplex_rx.url}/r{index}"},
                  "otlp/json": {"kind": "otlp", "url": f"{self.rotel.url}/v1/logs", "encoding": "json",
                                "gzip": True},
                  "otlp/protobuf": {"kind": "otlp", "url": f"{self.rotel.url}/v1/logs", "encoding": "protobuf",
                                    "gzip": True},
                  "syslog": {"kind": "syslog", "url": self.rsyslog.tls_url}}
        for kind, payload in wanted.items():
            made = requests.post(api, json=payload, headers=auth, timeout=10)
            if made.status_code != 201:
                raise RuntimeError(f"creating a {kind} drain answered {made.status_code}: {made.text[:300]}")
            resource.drains[kind], resource.drain_ids[kind] = made.json()["token"], made.json()["id"]
        return resource

    def pg(self) -> psycopg.Connection:
        return db.connect(self.database_url, "forgedrain-chaos")

    # -- recovery --
    def heads(self) -> dict[str, int]:
        deadline = time.monotonic() + 60
        while True:
            try:
                with self.pg() as conn:
                    return {str(r["resource_id"]): r["head"] for r in conn.execute(
                        "SELECT resource_id, max(id) AS head FROM outbox GROUP BY resource_id")}
            except psycopg.Error:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def recovered(self, heads: dict[str, int]) -> bool:
        interval = plans.PLANS[PLAN].poll_interval_seconds
        try:
            with self.pg() as conn:
                stale = conn.execute(
                    "SELECT count(*) AS n FROM sources WHERE checkpoint < now() - make_interval(secs => %s)",
                    (LAG + interval + 15,)).fetchone()["n"]
                if stale:
                    return False
                for d in conn.execute("SELECT id, resource_id, kind, cursor FROM drains WHERE enabled").fetchall():
                    head = heads.get(str(d["resource_id"]))
                    if head is None or d["cursor"] >= head:
                        continue
                    if outbox.between(conn, d["resource_id"], d["kind"], d["cursor"], head).batches:
                        return False
            return True
        except psycopg.Error:
            return False

    def backed_off(self) -> float:
        """Seconds until the last source the poller is holding back after a failure (its back-off
        after 5xx, or a 429's Retry-After) is due again; 0 when none is."""
        try:
            with self.pg() as conn:
                row = conn.execute(
                    "SELECT extract(epoch FROM max(next_poll_at) - now()) AS wait FROM sources "
                    "WHERE state = 'active' AND consecutive_failures > 0 AND next_poll_at > now()").fetchone()
            return float(row["wait"] or 0)
        except psycopg.Error:
            return 0.0

    def wait_recovered(self, kind: str, since: float) -> str:
        """Waits until recovered (see ``recovered``) or the deadline: ``recover`` s after the fault's
        end, or after the service was rightly told or chose to wait, whichever is later: a Retry-After
        the fake sent (its own 429s, the injected ones; the poller honours it, capped here at the
        fake's 60 s window) and the poller's back-off after failures such as Forge's 5xx (capped at
        polling.FAILURE_BACKOFF_MAX_SECONDS) both keep a checkpoint behind until they end."""
        heads = self.heads()
        recover = self.recover
        deadline = since + recover
        waited_until = 0.0   # s after the fault's end until which a Retry-After or back-off held a source
        while time.monotonic() < deadline:
            self.fleet.supervise()
            now = time.monotonic()
            told = min(self.gate.held() - time.time(), since + 60 - now)
            chose = min(self.backed_off(), since + polling.FAILURE_BACKOFF_MAX_SECONDS - now)
            remaining = max(told, chose)
            if remaining > 0:
                waited_until = max(waited_until, now + remaining - since)
                deadline = max(deadline, now + remaining + recover)
            if self.recovered(heads):
                took = time.monotonic() - since
                self.recoveries[kind].append(took)
                # Said only when it mattered: the deadline was stretched past ``recover`` for it.
                note = (f" (the poller was honouring a Retry-After or its failure back-off until {waited_until:.0f} s "
                        f"after the fault)") if waited_until and took > recover else ""
                say(f"  recovered in {took:.1f} s{note}")
                return f"recovered in {took:.1f} s{note}"
            time.sleep(1)
        self.recoveries[kind].append(None)
        took = time.monotonic() - since
        note = (f"; the poller was honouring a Retry-After or its failure back-off until {waited_until:.0f} s "
                f"after the fault") if waited_until else ""
        say(f"  not recovered within {took:.0f} s ({recover} s after the fault{note})")
        return f"not recovered within {took:.0f} s ({recover} s after the fault{note})"

    # -- faults --
    def hold(self, kind: str) -> float:
        if kind == "receiver_down":
            return self.profile.get("receiver_hold", self.profile["hold"])
        if kind == "forge_5xx":
            # Longer than a poll interval (+ the clock's slack), so that some poll surely meets the outage.
            return max(self.profile["hold"], plans.PLANS[PLAN].poll_interval_seconds + 15)
        return self.profile["hold"]

    def inject(self, kind: str) -> str:
        fleet = self.fleet
        workers = [n for n in fleet.procs if n.startswith("worker.")]
        if kind == "kill_worker":
            deadline = time.monotonic() + 20
            busy = None
            while time.monotonic() < deadline and busy is None:
                busy = next((w for w in self.rng.sample(workers, len(workers)) if fleet.horse(w)), None)
                time.sleep(0.05)
            name = busy or self.rng.choice(workers)
            fleet.kill(name, signal.SIGKILL)
            fleet.procs[name].process.wait(10)
            fleet.launch(name)
            return f"{name} SIGKILLed {'with its work horse mid-job' if busy else '(no job running in 20 s)'}"
        if kind == "kill_web":
            fleet.kill("web", signal.SIGKILL, with_horse=False)
            fleet.procs["web"].process.wait(10)
            for pid in children(fleet.procs["web"].process.pid):
                os.kill(pid, signal.SIGKILL)
            fleet.launch("web")
            took = self.wait_web(60)
            return f"gunicorn SIGKILLed (master and workers); answering again {took:.1f} s after restart"
        if kind == "term_worker":
            name = self.rng.choice(workers)
            fleet.kill(name, signal.SIGTERM)  # every process of the dyno at once, as Heroku does
            try:
                fleet.procs[name].process.wait(30)
                how = "exited by itself"
            except subprocess.TimeoutExpired:
                fleet.kill(name, signal.SIGKILL)
                fleet.procs[name].process.wait(10)
                how = "SIGKILLed after 30 s"
            fleet.launch(name)
            return f"{name} SIGTERMed, {how}"
        if kind == "flushall":
            redis = redisconn.connect(self.redis_url)
            redis.flushall()
            redis.close()
            return "FLUSHALL"
        if kind == "restart_redis":
            self.services.stop_redis()
            time.sleep(2)
            self.services.start_redis()
            return "Redis stopped, 2 s down, started empty"
        if kind == "restart_postgres":
            began = time.monotonic()
            self.services.restart_postgres()
            return f"PostgreSQL restarted (-m fast) in {time.monotonic() - began:.1f} s"
        if kind == "forge_burst":
            status = self.rng.choice((429, 500))
            self.fake.fail(status, times=2)
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                with self.fake._lock:
                    if not self.fake._failures:
                        break
                self.sleep_supervised(0.5)
            if status == 429:
                self.injected_429 += 2
            else:
                self.injected_500 += 2
            return f"Forge answered the next two calls {status}" + (" with its Retry-After" if status == 429 else "")
        if kind == "kill_clock":
            fleet.kill("clock", signal.SIGKILL)
            fleet.procs["clock"].process.wait(10)
            time.sleep(3)
            fleet.launch("clock")
            return "clock SIGKILLed, restarted 3 s later"
        seconds = self.hold(kind)
        if kind == "receiver_down":
            which = self.rng.choice(("heroku", "logplex", "otlp", "syslog"))
            stopper, starter = {"heroku": (self.heroku_rx.stop, self.heroku_rx.start),
                                "logplex": (self.logplex_rx.stop, self.logplex_rx.start),
                                "otlp": (self.rotel.stop, self.rotel.start),
                                "syslog": (self.rsyslog.stop, self.rsyslog.start)}[which]
            stopper()
            self.sleep_supervised(seconds)
            starter()
            return f"{which} receiver down for {seconds} s"
        if kind == "receiver_500":
            which = self.rng.choice(("heroku", "logplex"))
            inbox = self.heroku_inbox if which == "heroku" else self.logplex_inbox
            inbox.fail(500, times=10**9)
            self.sleep_supervised(seconds)
            with inbox.lock:
                for failure in inbox.failures:
                    failure[1] = 0
            return f"{which} receiver answering 500 for {seconds} s"
        if kind == "forge_5xx":
            self.gate.down = True
            self.sleep_supervised(seconds)
            self.gate.down = False
            return f"Forge answering 503 for {seconds} s"
        if kind == "two_clocks":
            second = start(["-m", "worker.clock"], fleet.env, self.logdir / f"clock.second.{time.time():.0f}.log")
            self.sleep_supervised(seconds)
            stop(second, 10)
            return f"a second clock for {seconds} s"
        raise ValueError(kind)

    def sleep_supervised(self, seconds: float) -> None:
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            self.fleet.supervise()
            time.sleep(0.5)

    def schedule(self) -> list[str]:
        kinds = self.args.faults.split(",") if self.args.faults else self.profile["faults"]
        faults = [f for f in kinds for _ in range(self.profile["repeat"])]
        self.rng.shuffle(faults)
        return faults

    def run_faults(self) -> None:
        """Every scheduled fault runs: no budget cuts the schedule short. Each one is bounded by its
        hold and its recovery deadline (see ``wait_recovered``), so the run is too."""
        began = time.monotonic()
        heads = self.heads()
        while time.monotonic() < began + 180 and not self.recovered(heads):  # warm up: caught up once
            self.sleep_supervised(1)
        say(f"warmed up in {time.monotonic() - began:.0f} s: sources polled up to now, drains caught up")
        for kind in self.schedule():
            say(f"fault: {kind}")
            what = self.inject(kind)
            ended = time.monotonic()
            say(f"  {what}")
            outcome = self.wait_recovered(kind, ended)
            self.fault_log.append(f"{time.strftime('%H:%M:%S')} {kind}: {what}; {outcome}")
            self.sleep_supervised(self.rng.uniform(3, 8))

    # -- settle and compare --
    def settle(self) -> tuple[datetime, dict]:
        self.poster.finish()
        cut = datetime.now(timezone.utc)
        say(f"posting stopped; the cut is {cut:%H:%M:%S}; settling (at most {self.profile['settle']} s)")
        heads = self.heads()
        deadline = time.monotonic() + self.profile["settle"]
        rows = {}
        while time.monotonic() < deadline:
            self.fleet.supervise()
            try:
                with self.pg() as conn:
                    rows = {str(r["resource_id"]): r for r in conn.execute(
                        "SELECT resource_id, checkpoint, COALESCE(settled_until, checkpoint) AS settled FROM sources")}
            except psycopg.Error:
                time.sleep(1)
                continue
            if all(r["settled"] >= cut for r in rows.values()) and self.recovered(heads):
                break
            time.sleep(2)
        else:
            say("settle deadline reached: late records are compared only where the sweep settled")
        # What rotel and rsyslog still hold in flight.
        time.sleep(3)
        return cut, rows

    def compare(self, cut: datetime, rows: dict) -> dict[str, Tally]:
        tallies = {kind: Tally() for kind in KINDS}
        accepted = self.poster.accepted
        # Forge records per resource.
        forge: dict[int, Counter] = {}
        self.coverage = {}
        for resource in self.resources:
            source = self.sources[resource.id]
            row = rows.get(resource.id)
            prompt_until = min(cut, row["checkpoint"]) if row else self.started
            late_until = min(cut, row["settled"]) if row else self.started
            self.coverage[resource.index] = (source["checkpoint"], prompt_until, late_until)
            forge[resource.index] = visibility_split(self.fake, resource.app_id, source["checkpoint"], prompt_until,
                                                     late_until, list(source["levels"] or []))
        by_token = {token: (resource, kind) for resource in self.resources for kind, token in resource.drains.items()}

        def ingest_key(text: str) -> str | None:
            found = INGEST_ID.search(text)
            return found.group(0) if found else None

        # logplex-shaped receivers: heroku (by path) and logplex (by path too: /r<i>).
        for kind, inbox in (("heroku", self.heroku_inbox), ("logplex", self.logplex_inbox)):
            with inbox.lock:
                reqs = list(inbox.requests)
            tallies[kind].refused += len(inbox.refused)
            seen: dict[tuple, tuple] = {}
            got: dict[int, Counter] = defaultdict(Counter)
            rebatched: dict[int, Counter] = defaultdict(Counter)
            for req in reqs:
                match = re.match(r"/r(\d+)", req["path"])
                if not match:
                    continue
                index = int(match.group(1))
                keys = []
                for event in req["events"]:
                    if "message" not in event:
                        continue
                    ident = ingest_key(event["message"])
                    if ident:
                        keys.append(ident)
                    else:
                        keys.append((ms_of(event["timestamp"].decode()), line_key(event["message"])))
                content = tuple(keys)
                signature = (index, req["frame_id"])
                target = got[index]
                if signature in seen:
                    if seen[signature] == content:
                        target = rebatched[index]
                    else:
                        tallies[kind].dup_examples.append(("same Frame-Id, other content", req["frame_id"]))
                        tallies[kind].other_dups += len(content)
                        continue
                seen[signature] = content
                for key in keys:
                    target[key] += 1
            for resource in self.resources:
                expected = Counter(forge[resource.index])
                if kind != "heroku":
                    expected.update(accepted.get(resource.index, set()))
                gathered = got[resource.index]
                # Only what the ground truth knows (records after the cut, cut-off long lines' tails aside).
                gathered = Counter({k: v for k, v in gathered.items() if k in expected})
                compare(tallies[kind], expected, gathered, rebatched[resource.index], f"r{resource.index}")
        # OTLP through rotel: each export request as rotel decoded it.
        for kind in ("otlp/json", "otlp/protobuf"):
            tallies[kind].refused += len(self.rotel.inbox.refused)
        requests_seen: dict[tuple, int] = {}
        got_otlp: dict[tuple[int, str], Counter] = defaultdict(Counter)
        rebatched_otlp: dict[tuple[int, str], Counter] = defaultdict(Counter)
        for received in self.rotel.requests():
            per_drain: dict[str, list] = defaultdict(list)
            for item in received:
                per_drain[str(item.resource.get("forgedrain.drain.token"))].append(item)
            for token, items in per_drain.items():
                if token not in by_token:
                    continue
                resource, kind = by_token[token]
                keys = []
                for item in items:
                    body = item.record.body.string_value
                    ident = ingest_key(body)
                    keys.append(ident or (item.record.time_unix_nano // 1_000_000, line_key(body)))
                ids = tuple(sorted(str(k) for k in keys))
                target = got_otlp[(resource.index, kind)]
                if (token, ids) in requests_seen:
                    target = rebatched_otlp[(resource.index, kind)]
                requests_seen[(token, ids)] = 1
                for key in keys:
                    target[key] += 1
        for resource in self.resources:
            for kind in ("otlp/json", "otlp/protobuf"):
                expected = Counter(forge[resource.index])
                expected.update(accepted.get(resource.index, set()))
                gathered = Counter({k: v for k, v in got_otlp[(resource.index, kind)].items() if k in expected})
                compare(tallies[kind], expected, gathered, rebatched_otlp[(resource.index, kind)],
                        f"r{resource.index}")
        # syslog: what rsyslog wrote, one line per message, in the order it arrived on the drain's
        # connection; a redelivered send shows as a run repeating the tail of what came before it.
        sequences: dict[int, list] = defaultdict(list)
        for message in self.rsyslog.messages():
            if message.get("hostname") not in by_token:
                continue
            resource, _ = by_token[message["hostname"]]
            text = message.get("msg") or ""
            ident = ingest_key(text)
            sequences[resource.index].append(ident or (ms_of(message["timestamp"]), line_key(text)))
        for resource in self.resources:
            expected = Counter(forge[resource.index])
            expected.update(accepted.get(resource.index, set()))
            gathered, rebatched = resent_runs([k for k in sequences[resource.index] if k in expected], expected)
            compare(tallies["syslog"], expected, gathered, rebatched, f"r{resource.index}")
        # The broker's own counters: records it dropped or a receiver rejected must be none.
        with self.pg() as conn:
            for row in conn.execute(
                    "SELECT kind, settings->>'encoding' AS encoding, sum(dropped) AS dropped, "
                    "sum(rejected) AS rejected FROM drains GROUP BY 1, 2").fetchall():
                kind = f"otlp/{row['encoding'] or 'protobuf'}" if row["kind"] == "otlp" else row["kind"]
                if kind in tallies:
                    tallies[kind].dropped += int(row["dropped"] or 0)
                    tallies[kind].rejected += int(row["rejected"] or 0)
        return tallies

    def forge_calls(self) -> dict[str, tuple[int, int, int]]:
        """Per app: (calls, most accepted calls in any 60 s, 429s from the fake's own limit)."""
        with self.fake._lock:
            calls = list(self.fake.calls)
        out = {}
        for app_id in APPS:
            mine = [c for c in calls if c.path.endswith("/" + app_id)]
            accepted = [c.time for c in mine if c.status != 429]
            refused = [c.time for c in mine if c.status == 429]
            gated = [t for t, p in self.gate.refused if p.endswith("/" + app_id)]
            stamps = sorted(accepted + gated)
            most, j = 0, 0
            for i, t in enumerate(stamps):
                while stamps[j] <= t - 60:
                    j += 1
                most = max(most, i - j + 1)
            # A 429 is the fake's own limit when FORGE_LIMIT calls were accepted in the 60 s before it.
            limited = sum(1 for t in refused if sum(1 for a in accepted if t - 60 < a <= t) >= FORGE_LIMIT)
            out[app_id] = (len(mine) + len(gated), most, limited)
        return out

    def report(self, tallies: dict[str, Tally], cut: datetime) -> int:
        print()
        print(f"chaos: ./scripts/bench chaos --profile {self.args.profile} --seed {self.args.seed}"
              f"{' --faults ' + self.args.faults if self.args.faults else ''}; "
              f"{len(self.resources)} resources (plan {PLAN}), {WORKERS} workers, 3 Forge apps")
        print("coverage per resource (records logged from the source's first checkpoint; prompt until its final "
              "checkpoint or the cut, late until its settled_until or the cut):")
        for index, (first, prompt_until, late_until) in sorted(self.coverage.items()):
            print(f"  r{index} {APPS[RESOURCE_APPS[index]]}: {first:%H:%M:%S} → prompt {prompt_until:%H:%M:%S}, "
                  f"late {late_until:%H:%M:%S} (cut {cut:%H:%M:%S})")
        accepted = sum(len(v) for v in self.poster.accepted.values())
        print(f"drain ingest: {accepted} frames accepted; posts not answered 2xx (retried with the same Frame-Id): "
              f"{dict(self.poster.refusals) or 'none'}; batches never accepted by the end: {self.poster.never}")
        print()
        print("faults (in order):")
        for line in self.fault_log:
            print(f"  {line}")
        print()
        print(f"{'fault kind':<18} {'count':>5} {'recovered':>9} {'p50 s':>7} {'max s':>7}")
        for kind in FAULTS:
            values = self.recoveries.get(kind)
            if not values:
                continue
            done = [v for v in values if v is not None]
            p50 = f"{pct(done, 50):7.1f}" if done else f"{'-':>7}"
            top = f"{max(done):7.1f}" if done else f"{'-':>7}"
            print(f"{kind:<18} {len(values):>5} {len(done):>9} {p50} {top}")
        print()
        print(f"{'drain kind':<14} {'expected':>8} {'lost':>6} {'dup(batch)':>10} {'dup(other)':>10} {'refused':>7} "
              f"{'dropped':>7} {'rejected':>8}")
        for kind, t in tallies.items():
            print(f"{kind:<14} {t.expected:>8} {t.lost:>6} {t.batch_dups:>10} {t.other_dups:>10} {t.refused:>7} "
                  f"{t.dropped:>7} {t.rejected:>8}")
        print("dup(batch): whole redelivered batches (same Frame-Id and content; the same record ids in an OTLP "
              "export; for syslog a resent run repeating the tail of what came before); refused: requests the "
              "receiver answered with an error; dropped / rejected: the drains' own counters")
        print()
        calls = self.forge_calls()
        limit = self.settings.forge_rate_limit
        print(f"Forge calls per app (FORGE_RATE_LIMIT {limit} per 60 s; the fake's limit {FORGE_LIMIT}; "
              f"injected: {self.injected_500} 500s, {self.injected_429} 429s, 503 while down: {len(self.gate.refused)})")
        for app_id, (total, most, limited) in calls.items():
            print(f"  {app_id}: {total} calls, most in any 60 s {most}, 429s from the fake's own limit {limited}")
        if self.fleet.unplanned:
            print("processes that exited by themselves (restarted):")
            for line in self.fleet.unplanned:
                print(f"  {line}")
        errors = list(self.errors)
        for kind, t in tallies.items():
            if t.lost:
                errors.append(f"{kind}: {t.lost} records lost, e.g. {t.lost_examples}")
            if t.other_dups:
                errors.append(f"{kind}: {t.other_dups} records received twice outside a whole redelivered batch, "
                              f"e.g. {t.dup_examples}")
            if t.refused:
                errors.append(f"{kind}: the receiver refused {t.refused} requests")
            if t.dropped or t.rejected:
                errors.append(f"{kind}: the drains counted {t.dropped} records dropped and {t.rejected} rejected")
        for app_id, (total, most, limited) in calls.items():
            if most > limit:
                errors.append(f"{app_id}: {most} calls within 60 s, over FORGE_RATE_LIMIT {limit}")
            if limited:
                errors.append(f"{app_id}: {limited} 429s from the fake's own rate limit")
        for kind, values in self.recoveries.items():
            if None in values:
                errors.append(f"{kind}: {values.count(None)} of {len(values)} faults not recovered within "
                              f"{self.recover} s (after the fault, or after a Retry-After or back-off it caused)")
        print(f"logs: {self.logdir}")
        for error in errors:
            print(f"error: {error}", file=sys.stderr)
        self.calls = calls
        return errors

    def teardown(self) -> None:
        if self.poster is not None:
            self.poster.finish()
        if self.fleet is not None:
            self.fleet.stop_all()
        for closer in (getattr(self, "rotel", None) and self.rotel.close,
                       getattr(self, "rsyslog", None) and self.rsyslog.stop,
                       getattr(self, "heroku_rx", None) and self.heroku_rx.stop,
                       getattr(self, "logplex_rx", None) and self.logplex_rx.stop,
                       getattr(self, "forge", None) and self.forge.stop):
            if closer:
                try:
                    closer()
                except Exception as exc:  # noqa: BLE001 — tear down the rest whatever happens
                    print(f"teardown: {exc}", file=sys.stderr)
        # Leave the servers running for ./scripts/bench's own cleanup.
        try:
            self.services.ensure_redis()
            self.services.ensure_postgres()
        except Exception as exc:  # noqa: BLE001
            print(f"teardown: {exc}", file=sys.stderr)
        if self.database:
            try:
                drop_database(self.server_url, self.database)
            except psycopg.Error as exc:
                print(f"could not drop database {self.database}: {exc}", file=sys.stderr)
        if self.args.logs is None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def run(self) -> Report:
        began = time.monotonic()
        try:
            say(f"chaos, profile {self.args.profile}, seed {self.args.seed}: starting the service")
            self.setup()
            say(f"{len(self.resources)} resources provisioned with {len(KINDS)} drains each; web {self.web}")
            self.run_faults()
            cut, rows = self.settle()
            tallies = self.compare(cut, rows)
            errors = self.report(tallies, cut)
            wall = time.monotonic() - began
            print(f"wall time {wall:.0f} s")
            return Report(1 if errors else 0, tallies, dict(self.recoveries), self.calls,
                          self.settings.forge_rate_limit, list(self.fault_log), list(self.fleet.unplanned),
                          errors, wall)
        finally:
            self.teardown()


def run(profile: str = "short", seed: int = 1, faults: tuple[str, ...] | list[str] = (), *,
        database_url: str, redis_url: str, pg_data: str, pg_bin: str, redis_dir: str,
        recover: float | None = None, logs: Path | None = None) -> Report:
    """One chaos run as a function (tests/test_chaos.py): ``database_url`` / ``redis_url`` name a
    PostgreSQL server and Redis of the caller's own that this run may restart (``pg_data`` the
    server's data folder, ``pg_bin`` its binaries, ``redis_dir`` the folder with Redis' pid file, as
    scripts/lib.sh's start_postgres / start_redis lay them out). ``faults`` replaces the profile's
    fault kinds; ``recover`` the profile's recovery deadline (s)."""
    unknown = set(faults) - set(FAULTS)
    if unknown:
        raise ValueError(f"unknown fault kinds: {', '.join(sorted(unknown))}")
    args = argparse.Namespace(profile=profile, seed=seed, faults=",".join(faults), logs=logs, recover=recover)
    services = Services(database_url, redis_url, pg_data, pg_bin, redis_dir)
    return Chaos(args, database_url, redis_url, services).run()


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", choices=tuple(PROFILES), default="short")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--faults", default="", help="comma-separated fault kinds instead of the profile's: "
                                                           + ",".join(FAULTS))
    parser.add_argument("--logs", type=Path, default=None, help="keep the processes' logs here")
    parser.add_argument("--recover", type=float, default=None,
                        help="seconds a fault may take to recover (default: the profile's)")
    args = parser.parse_args(argv)
    unknown = set(filter(None, args.faults.split(","))) - set(FAULTS)
    if unknown:
        parser.error(f"unknown fault kinds: {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    found = servers("chaos")
    if found is None:
        return 2
    try:
        return Chaos(args, *found).run().status
    except KeyboardInterrupt:
        print("\ninterrupted; everything was torn down", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
