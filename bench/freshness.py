"""Freshness: how long a Forge record takes from being logged to reaching a drain (issue 12).

Targets: at normal density, records that reach the App logs API promptly reach a
drain with a log-to-drain delay of p50 ≤ 45 s and p99 ≤ 90 s; every record that
reaches the API late (by less than FORGE_POLL_OVERLAP_SECONDS) is still delivered.

What it runs, in real time (nothing compressed), against real PostgreSQL (fsync
on) and Redis:

- the Forge fake (``tests/fakes/forge.py``) in this process on a loopback
  ``LocalServer``, its clock the wall clock: Atlassian's 30 calls a minute per
  app, pages of ``--page-size`` records (50), cursors living 60 s; one app logging
  ``--records-per-minute`` (60), each record visible in the API U(0,
  ``--prompt-delay``) s after its timestamp (3 s), and ``--late-fraction`` of them
  (5 %) late, visible U(prompt, ``--max-delay``) s after it (0.9 × the overlap:
  540 s as deployed, so that late records of the minutes before the start
  reach the API only after the first poll read their minute, and only the sweep
  can deliver them);
- one source of that app on plan ``pro`` (a poll a minute), its checkpoint
  ``--history`` minutes back (9): a source that has been running, so the
  sweep that re-reads each stretch of log at FORGE_POLL_OVERLAP_SECONDS old has
  work within the run; one OTLP/JSON drain (gzip) to a loopback receiver in
  this process that notes when each record arrives (``ALLOW_PRIVATE_DRAINS=true``);
- one real ``python -m worker`` and one ``python -m worker.clock`` with the
  deployed defaults (FORGE_RATE_LIMIT, CLOCK_TICK_SECONDS,
  FORGE_POLL_LAG_SECONDS, FORGE_POLL_OVERLAP_SECONDS from ``broker/config.py``),
  except what ``--lag`` / ``--overlap`` set or the bench's own environment
  passes through (``FORGE_POLL_LAG_SECONDS=20 ./scripts/bench freshness``).

After ``--warmup`` minutes (1) it measures ``--minutes`` minutes (6): every
record whose timestamp falls in them is matched at the receiver by its
``timeUnixNano`` and body (a multiset: records may share both), and its delay
is arrival − timestamp. It then waits up to FORGE_POLL_LAG_SECONDS + the poll
interval + 60 s for the last of them. It prints p50/p90/p99/max of that delay
for prompt records, the theoretical floor (lag + half the poll interval: a
record waits for the lag to pass and then, on average, half an interval for the
next poll) and the ratio; for late records: delivered vs expected over the
stretch the sweep has settled by the end (``sources.settled_until``), with
their delays; the calls a minute the source used; duplicates at the receiver.

Exit 1 when a prompt record of the measured minutes never arrived, a late
record in the settled stretch is missing, a record arrived twice, or the fake
answered anything but 200. It never asserts on timings.

It needs DATABASE_URL and REDIS_URL; ``./scripts/bench freshness`` provides both.
About ``--warmup`` + ``--minutes`` + 2 minutes (9 by default).
"""

from __future__ import annotations

import argparse
import gzip
import logging
import os
import platform
import re
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
from cryptography.fernet import Fernet  # noqa: E402
from flask import Flask, Response, request  # noqa: E402

from broker import config, db, migrate, plans, redisconn, tokens  # noqa: E402
from broker.vault import Vault  # noqa: E402
from tests.fakes.forge import ForgeFake, BUCKET_MS  # noqa: E402
from tests.fakes.server import LocalServer  # noqa: E402
from common import clear_redis, create_database, pct, process_env, servers, start, stop, tear_down, with_database  # noqa: E402

EMAIL = "bench@example.com"
API_TOKEN = "ATATT-bench-freshness"
ENVIRONMENT = "prod"
PLAN = "pro"
TARGET_P50, TARGET_P99 = 45.0, 90.0
PASSED_THROUGH = ("FORGE_POLL_LAG_SECONDS", "FORGE_POLL_OVERLAP_SECONDS", "CLOCK_TICK_SECONDS",
                  "FORGE_RATE_LIMIT", "FORGE_POLL_THREADS", "FORGE_POLL_BATCHES")


class Receiver:
    """An OTLP/HTTP JSON endpoint that notes the arrival time of every log record it accepts."""

    def __init__(self) -> None:
        self.arrivals: dict[tuple[str, str], list[float]] = defaultdict(list)
        self.requests = 0
        self.refused: list[str] = []
        self.lock = threading.Lock()

    def wsgi(self) -> Flask:
        app = Flask("freshness-receiver")

        @app.post("/v1/logs")
        def receive():
            now = time.time()
            data = request.get_data()
            if request.headers.get("Content-Encoding") == "gzip":
                data = gzip.decompress(data)
            try:
                document = orjson.loads(data)
                keys = [key_of(log) for resource in document["resourceLogs"]
                        for scope in resource["scopeLogs"] for log in scope["logRecords"]]
            except Exception as exc:  # noqa: BLE001 — a Collector answers 400 to anything undecodable
                self.refused.append(str(exc)[:200])
                return Response("bad request", 400)
            with self.lock:
                self.requests += 1
                for key in keys:
                    self.arrivals[key].append(now)
            return Response(b"{}", 200, content_type="application/json")

        return app


def key_of(record: dict) -> tuple[str, str]:
    """What identifies a record at both ends: its timestamp and its body's text."""
    body = record.get("body")
    text = body.get("stringValue") if isinstance(body, dict) else None
    return str(record.get("timeUnixNano", "")), text if isinstance(text, str) else orjson.dumps(body).decode()


def generated(fake: ForgeFake, app_id: str, start: datetime, end: datetime) -> list[tuple[float, float, tuple]]:
    """(timestamp s, visible_at s, key) of every record the app logs in ``[start, end)``.

    Reads the fake's generated minutes (``_bucket``: the records with their visibility, which no
    query exposes); the records are the ones its pages serve."""
    out = []
    start_ms, end_ms = int(start.timestamp() * 1000), int(end.timestamp() * 1000)
    with fake._lock:
        app = fake._apps[app_id]
        for bucket in range(start_ms // BUCKET_MS, (end_ms - 1) // BUCKET_MS + 1):
            for r in fake._bucket(app, ENVIRONMENT, bucket):
                if start_ms <= r.ts_ms < end_ms:
                    out.append((r.ts_ms / 1000, r.visible_at, key_of(orjson.loads(r.text))))
    return out


def figures(delays: list[float]) -> str:
    if not delays:
        return "n/a"
    return (f"p50 {pct(delays, 50):6.1f}  p90 {pct(delays, 90):6.1f}  p99 {pct(delays, 99):6.1f}  "
            f"max {pct(delays, 100):6.1f}")


def run(args: argparse.Namespace, server_url: str, redis_url: str) -> int:
    probe = config.load(process_env("postgresql://x/y", "redis://x", "http://x", Fernet.generate_key().decode(),
                                    {k: os.environ[k] for k in PASSED_THROUGH if k in os.environ}))
    overlap_default = args.overlap if args.overlap is not None else probe.poll_overlap_seconds
    if args.max_delay is None:
        args.max_delay = 0.9 * overlap_default
    fake = ForgeFake(seed=7, rate_limit=30, rate_period=60.0,
                     page_size=args.page_size, order=args.order, cursor_ttl=60.0,
                     prompt_delay_seconds=args.prompt_delay, clock=time.time)
    app_id = f"freshness-{uuid.uuid4().hex[:8]}"
    fake.add_app(app_id, [ENVIRONMENT], EMAIL, API_TOKEN, records_per_minute=args.records_per_minute,
                 late_fraction=args.late_fraction, max_delay_seconds=args.max_delay,
                 prompt_delay_seconds=args.prompt_delay)
    receiver = Receiver()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    workdir = tempfile.TemporaryDirectory(prefix="forgedrain-bench-")
    logdir = Path(workdir.name)
    if args.logs is not None:
        args.logs.mkdir(parents=True, exist_ok=True)
        logdir = args.logs
    database = create_database(server_url)
    database_url = with_database(server_url, database)
    redis = redisconn.connect(redis_url)
    clear_redis(redis)
    fernet_key = Fernet.generate_key().decode()
    vault = Vault([fernet_key])
    worker = clock = None
    errors: list[str] = []
    try:
        with LocalServer(fake.wsgi()) as forge_server, LocalServer(receiver.wsgi()) as drain_server:
            extra = {"ALLOW_PRIVATE_DRAINS": "true"}
            extra.update({k: os.environ[k] for k in PASSED_THROUGH if k in os.environ})
            if args.lag is not None:
                extra["FORGE_POLL_LAG_SECONDS"] = str(args.lag)
            if args.overlap is not None:
                extra["FORGE_POLL_OVERLAP_SECONDS"] = str(args.overlap)
            env = process_env(database_url, redis_url, forge_server.url, fernet_key, extra)
            settings = config.load(env)
            lag, overlap = settings.poll_lag_seconds, settings.poll_overlap_seconds
            interval = plans.PLANS[PLAN].poll_interval_seconds
            floor = lag + interval / 2
            print(f"freshness bench: ./scripts/bench freshness {' '.join(args.argv)}".rstrip())
            print(f"one app logging {args.records_per_minute:g} records/min, visible U(0, {args.prompt_delay:g}) s "
                  f"after their time, {args.late_fraction:.0%} late U({args.prompt_delay:g}, {args.max_delay:g}) s; "
                  f"the fake: 30 calls/min, {args.order} pages of {args.page_size}, cursors living 60 s; real time")
            print(f"ours: FORGE_POLL_LAG_SECONDS={lag} FORGE_POLL_OVERLAP_SECONDS={overlap} "
                  f"CLOCK_TICK_SECONDS={settings.clock_tick_seconds} FORGE_RATE_LIMIT={settings.forge_rate_limit} "
                  f"plan {PLAN} (a poll every {interval} s); one OTLP/JSON drain (gzip) to a loopback receiver; "
                  f"{', '.join(f'{k} from the environment' for k in PASSED_THROUGH if k in os.environ) or 'defaults'}")
            print(f"one `python -m worker` and one `python -m worker.clock`; {os.cpu_count()} cores; "
                  f"Python {platform.python_version()}", flush=True)
            with db.connect(database_url, "forgedrain-bench") as conn:
                migrate.migrate(conn)
                resource_id = uuid.uuid4()
                with conn.transaction():
                    conn.execute("INSERT INTO resources (id, partner_id, plan, api_token_hash) "
                                 "VALUES (%s, 'forgedrain', %s, %s)",
                                 (resource_id, PLAN, tokens.digest(str(resource_id))))
                    source = conn.execute(
                        "INSERT INTO sources (resource_id, app_id, environment_id, email, api_token_enc, checkpoint) "
                        "VALUES (%s, %s, %s, %s, %s, date_trunc('milliseconds', now() - %s)) RETURNING id, checkpoint",
                        (resource_id, app_id, ENVIRONMENT, EMAIL, vault.encrypt(API_TOKEN),
                         timedelta(minutes=args.history)),
                    ).fetchone()
                    conn.execute("INSERT INTO drains (resource_id, kind, url_enc, token, settings) "
                                 "VALUES (%s, 'otlp', %s, %s, %s)",
                                 (resource_id, vault.encrypt(drain_server.url + "/v1/logs"), f"d.{uuid.uuid4()}",
                                  orjson.dumps({"encoding": "json", "gzip": True}).decode()))
                source_id, first_checkpoint = source["id"], source["checkpoint"]
                began = time.time()
                worker = start(["-m", "worker"], env, logdir / "worker.log")
                clock = start(["-m", "worker.clock"], env, logdir / "clock.log")
                measure_from = began + args.warmup * 60
                measure_until = measure_from + args.minutes * 60
                calls_before = None
                while time.time() < measure_until:
                    if calls_before is None and time.time() >= measure_from:
                        calls_before = len(fake.calls)
                    if worker.poll() is not None or clock.poll() is not None:
                        errors.append("the worker or the clock exited early (see its log)")
                        break
                    time.sleep(0.5)
                calls_during = fake.calls[calls_before or 0:]
                t0 = datetime.fromtimestamp(measure_from, timezone.utc)
                t1 = datetime.fromtimestamp(measure_until, timezone.utc)
                logged = generated(fake, app_id, t0, t1)
                prompt = [r for r in logged if r[1] - r[0] <= args.prompt_delay]
                wanted = Counter(k for *_, k in prompt)
                # The last prompt records: up to lag + an interval + a tick + delivery after the end.
                tail_until = time.time() + lag + interval + 60
                while time.time() < tail_until and not errors:
                    with receiver.lock:
                        if all(len(receiver.arrivals.get(k, ())) >= n for k, n in wanted.items()):
                            break
                    time.sleep(1)
                ended = time.time()
                settled = conn.execute("SELECT COALESCE(settled_until, checkpoint) AS settled, checkpoint, "
                                       "polls FROM sources WHERE id = %s", (source_id,)).fetchone()
            stop(clock, 5)
            stop(worker, 30)
    finally:
        tear_down(server_url, database, redis, clock, worker)

    with receiver.lock:
        arrivals = {k: sorted(v) for k, v in receiver.arrivals.items()}

    def match(records: list[tuple[float, float, tuple]]) -> tuple[list[float], int]:
        """Delays of the records that arrived (earliest records get the earliest arrivals), and the missing."""
        by_key: dict[tuple, list[float]] = defaultdict(list)
        for ts, _, key in records:
            by_key[key].append(ts)
        delays, missing = [], 0
        for key, stamps in by_key.items():
            got = arrivals.get(key, [])
            for i, ts in enumerate(sorted(stamps)):
                if i < len(got):
                    delays.append(got[i] - ts)
                else:
                    missing += 1
        return delays, missing

    prompt_delays, prompt_missing = match(prompt)
    visibility = [v - ts for ts, v, _ in prompt]
    # Late records the sweep must have caught: timestamps in the stretch settled by the end, late by
    # less than the overlap.
    late_all = generated(fake, app_id, first_checkpoint, settled["settled"]) if settled["settled"] > first_checkpoint \
        else []
    late = [r for r in late_all if args.prompt_delay < r[1] - r[0] < overlap]
    late_delays, late_missing = match(late)
    # Of those, the ones that reached the API only after the run began: no poll could have read them
    # on its first pass over their minute, so the sweep (or a later fresh window) had to.
    swept = [r for r in late if r[1] > began + 5]
    swept_delays, _ = match(swept)
    late_window = [r for r in logged if r[1] - r[0] > args.prompt_delay]
    window_late_delays, _ = match(late_window)
    everything = generated(fake, app_id, first_checkpoint, datetime.fromtimestamp(ended, timezone.utc))
    expected_all = Counter(k for *_, k in everything)
    duplicates = sum(max(0, len(v) - expected_all.get(k, 0)) for k, v in arrivals.items())
    statuses = Counter(c.status for c in calls_during if c.path.endswith("/" + app_id))
    calls_per_minute = sum(statuses.values()) / args.minutes

    print()
    print(f"measured: records logged in the {args.minutes:g} minutes after a {args.warmup:g}-minute warm-up; "
          f"delay = arrival at the drain's receiver − the record's timeUnixNano, seconds")
    print(f"{'records':<34} {'count':>6}  delay")
    print(f"{'prompt (visible ≤ %g s after)' % args.prompt_delay:<34} {len(prompt):>6}  {figures(prompt_delays)}")
    print(f"{'  of which never arrived':<34} {prompt_missing:>6}")
    print(f"{'  (their visibility delay alone)':<34} {len(prompt):>6}  {figures(visibility)}")
    print(f"{'late, logged in these minutes':<34} {len(late_window):>6}  {figures(window_late_delays)}  "
          f"({len(window_late_delays)} arrived by the end; the rest wait for the sweep at {overlap} s old)")
    print(f"{'late, in the settled stretch':<34} {len(late):>6}  {figures(late_delays)}")
    print(f"{'  visible only after the start':<34} {len(swept):>6}  {figures(swept_delays)}  (the sweep's "
          f"work: up to overlap + interval after their time; the rest were visible to the first poll)")
    print(f"{'  delivered / expected':<34} {len(late) - late_missing:>6} / {len(late)}  (every record late by less "
          f"than the overlap, timestamps {first_checkpoint:%H:%M:%S}–{settled['settled']:%H:%M:%S} UTC, swept by the end)")
    print()
    p50, p99 = pct(prompt_delays, 50), pct(prompt_delays, 99)
    print(f"baseline: the floor lag + interval / 2 = {lag} + {interval / 2:g} = {floor:g} s; prompt p50 / floor = "
          f"{p50 / floor:.2f}, p99 / (lag + interval = {lag + interval} s) = {p99 / (lag + interval):.2f}")
    print(f"calls: {calls_per_minute:.1f} a minute for the source during the measured minutes "
          f"({dict(sorted(statuses.items()))}; budget {settings.forge_rate_limit}/min); polls in all {settled['polls']}; "
          f"receiver: {receiver.requests} requests, {duplicates} records more than once, "
          f"{len(receiver.refused)} refused")
    met = p50 <= TARGET_P50 and p99 <= TARGET_P99
    print(f"issue 12 freshness, prompt records: p50 {p50:.1f} s and p99 {p99:.1f} s vs ≤ {TARGET_P50:g} and "
          f"≤ {TARGET_P99:g}: {'target met' if met else 'target missed'}; late records delivered "
          f"{len(late) - late_missing} of {len(late)}")
    if prompt_missing:
        errors.append(f"{prompt_missing} prompt records of the measured minutes never arrived")
    if late_missing:
        errors.append(f"{late_missing} of {len(late)} late records in the settled stretch never arrived")
    if duplicates:
        errors.append(f"{duplicates} records arrived more than once")
    if receiver.refused:
        errors.append(f"the receiver refused {len(receiver.refused)} requests: {receiver.refused[0]}")
    odd = {s: n for s, n in statuses.items() if s != 200}
    if odd:
        errors.append(f"the fake answered {odd}")
    log_text = (logdir / "worker.log").read_text(errors="replace")
    bad = [line for line in log_text.splitlines() if re.search(r"level=error|crashed", line)]
    if bad:
        errors.append(f"{len(bad)} error lines in the worker's log, the first: {bad[0][:300]}")
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    workdir.cleanup()
    return 1 if errors else 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=6.0, help="minutes measured after the warm-up (6)")
    parser.add_argument("--warmup", type=float, default=1.0, help="minutes before measuring (1)")
    parser.add_argument("--history", type=float, default=9.0,
                        help="minutes of log before the start the source has to read and sweep (9)")
    parser.add_argument("--records-per-minute", type=float, default=60.0, help="the app's records a minute (60)")
    parser.add_argument("--prompt-delay", type=float, default=3.0,
                        help="seconds within which a prompt record is visible in the API (3)")
    parser.add_argument("--late-fraction", type=float, default=0.05, help="share of records that arrive late (0.05)")
    parser.add_argument("--max-delay", type=float, default=None,
                        help="seconds a late record may take (0.9 × FORGE_POLL_OVERLAP_SECONDS: 540 as deployed)")
    parser.add_argument("--page-size", type=int, default=50, help="records per page of the fake (50)")
    parser.add_argument("--order", choices=("newest", "oldest", "shuffled"), default="newest",
                        help="order of records in the fake's pages (newest)")
    parser.add_argument("--lag", type=int, default=None, help="FORGE_POLL_LAG_SECONDS (deployed default)")
    parser.add_argument("--overlap", type=int, default=None, help="FORGE_POLL_OVERLAP_SECONDS (deployed default)")
    parser.add_argument("--logs", type=Path, default=None, help="keep the worker's and clock's logs here")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.warmup < 0 or args.history < 0 or args.page_size < 1:
        parser.error("minutes and page size must be positive")
    args.argv = argv
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    found = servers("freshness")
    if found is None:
        return 2
    server_url, redis_url = found
    try:
        return run(args, *found)
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
