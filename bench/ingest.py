"""Drain ingest throughput and latency for 100 KB logplex batches (issue: drain ingest; SPEC §5, §9).

Target: acknowledge a ~100 KB batch (Heroku's ``http_drain_target_bytes``)
with p99 ≤ 20 ms, the heavy work left to the workers.

What it measures, in one run against one real gunicorn (the Procfile's web
command, ONE worker process as asked: "frames per second accepted by one
gunicorn worker"), with PostgreSQL keeping fsync on:

- ``healthz``: ``GET /healthz`` — the HTTP stack's floor, no database;
- ``ingest``: ``POST /ingest/logplex`` exactly as logplex sends it: octet-
  counted frames of realistic Heroku lines (router lines, app lines with
  non-ASCII, long stack-trace lines), ~100 KB per request, ``Logplex-Msg-
  Count``, a distinct ``Logplex-Frame-Id`` each, ``Logplex-Drain-Token`` of a
  provisioned resource: the strict parse, the resource lookup and one durable
  transaction storing the compressed batch in the outbox;
- ``ingest-gz``: the same batches gzip-compressed (``Content-Encoding: gzip``);
- ``otlp``: ``POST /ingest/otlp/v1/logs`` (issue 17 item 3) as an OpenTelemetry exporter sends it:
  ~100 KB protobuf ``ExportLogsServiceRequest``s holding the same lines as log records (body,
  severity, time, the dyno and a request id as attributes; ``service.name`` and the SDK's
  resource attributes), ``X-Forgedrain-Ingest-Token`` of the resource: the token check, the
  protobuf parse and record count, the volume check in Redis, one durable transaction;
- ``otlp-gz``: the same requests gzip-compressed, as the SDK and the Collector send by default.

Per scenario: requests, frames/s (records/s for OTLP) accepted, client-side p50/p90/p99/max, the
ratio of p99 to the healthz p99 of the same run, gunicorn's own duration_ms,
and the CPU each party used. The client threads, gunicorn and PostgreSQL share
the machine's cores: compare ratios across machines, not absolute ms. It checks
that every frame sent was stored (exit 1 otherwise).

Run it with ``./scripts/bench ingest``. Flags: ``--requests 1000`` (per
scenario), ``--concurrency 4`` (logplex keeps a few connections per drain),
``--rounds 4``, ``--warmup 100``, ``--threads`` (default WEB_THREADS, else 5).
"""

from __future__ import annotations

import argparse
import gzip
import os
import platform
import secrets
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from broker import db, migrate, tokens  # noqa: E402
from common import create_database, drop_database, servers, with_database  # noqa: E402
from partner_api import (Clients, Request, Result, app_env, figures, free_port, percentile,  # noqa: E402
                         server_durations, server_facts, split, start_gunicorn, stop_gunicorn, wait_ready)

TARGET_P99_MS = 20.0
BATCH_BYTES = 100 * 1024
# The volume limit stays on (its Redis check is part of the hot path), far above what the bench sends.
INGEST_LIMIT_SCALE = "1000"
OTLP_PATH = "/ingest/otlp/v1/logs"


def heroku_lines(count: int, seed: int) -> list[bytes]:
    """Messages as Heroku's HTTPS drain writes them (research heroku-addon-and-logplex.md §7.1)."""
    import random

    rng = random.Random(seed)
    start = datetime(2026, 11, 21, 10, 0, tzinfo=timezone.utc)
    out = []
    for i in range(count):
        moment = (start + timedelta(microseconds=i * 1371)).isoformat(timespec="microseconds")
        kind = rng.random()
        if kind < 0.45:
            line = (f"<158>1 {moment} host heroku router - at=info method=GET path=\"/api/items/{i}\" "
                    f"host=acme.herokuapp.com request_id={uuid.UUID(int=rng.getrandbits(128))} "
                    f"fwd=\"203.0.113.{i % 250}\" dyno=web.{i % 4 + 1} connect=0ms service={rng.randint(1, 900)}ms "
                    f"status=200 bytes={rng.randint(200, 90000)} protocol=https\n")
        elif kind < 0.9:
            line = (f"<190>1 {moment} host app web.{i % 4 + 1} - Café order {i} ✓ processed for "
                    f"customer {rng.getrandbits(40):x} in {rng.randint(1, 500)} ms\n")
        else:
            line = (f"<187>1 {moment} host app worker.1 - Error: failed to process job {i} "
                    + "at Object.<anonymous> (/app/src/handler.js:42:17) " * rng.randint(3, 30) + "\n")
        out.append(line.encode())
    return out


def batches(lines: list[bytes], target: int = BATCH_BYTES) -> list[tuple[bytes, int]]:
    """Octet-counted bodies of about ``target`` bytes and their frame counts, as logplex batches."""
    out, chunk, size = [], [], 0
    for line in lines:
        frame = str(len(line)).encode() + b" " + line
        if chunk and size + len(frame) > target:
            out.append((b"".join(chunk), len(chunk)))
            chunk, size = [], 0
        chunk.append(frame)
        size += len(frame)
    if chunk:
        out.append((b"".join(chunk), len(chunk)))
    return out


def requests_for(bodies: list[tuple[bytes, int]], token: str, zipped: bool) -> list[Request]:
    out = []
    for body, count in bodies:
        headers = {"Content-Type": "application/logplex-1", "Logplex-Msg-Count": str(count),
                   "Logplex-Frame-Id": uuid.uuid4().hex.upper(), "Logplex-Drain-Token": token,
                   "User-Agent": "Logplex/v123"}
        if zipped:
            headers["Content-Encoding"] = "gzip"
            body = gzip.compress(body, 6)
        out.append(Request("POST", "/ingest/logplex", body, headers))
    return out


def otlp_batches(lines: list[bytes], target: int = BATCH_BYTES) -> list[tuple[bytes, int]]:
    """Protobuf ExportLogsServiceRequests of about ``target`` bytes holding ``lines`` as log records
    (one resource per APP-NAME, as an SDK per service would), and their record counts."""
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    def new() -> tuple:
        request = ExportLogsServiceRequest()
        groups = {}
        for app in ("app", "heroku"):
            resource_logs = request.resource_logs.add()
            for key, value in (("service.name", f"acme-{app}"), ("telemetry.sdk.language", "python"),
                               ("telemetry.sdk.name", "opentelemetry"), ("telemetry.sdk.version", "1.45.2")):
                resource_logs.resource.attributes.add(key=key, value={"string_value": value})
            scope_logs = resource_logs.scope_logs.add()
            scope_logs.scope.name, scope_logs.scope.version = "acme", "1.0"
            groups[app] = scope_logs
        return request, groups

    out = []
    request, groups = new()
    count = 0
    for line in lines:
        header, _, message = line.rstrip(b"\n").partition(b" - ")
        pri, when, _host, app, dyno = header.split(b" ")  # <PRI>1 TIMESTAMP HOST APP PROCID
        moment = datetime.fromisoformat(when.decode())
        record = groups[app.decode()].log_records.add()
        record.time_unix_nano = int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000
        record.observed_time_unix_nano = record.time_unix_nano + 1_000_000
        severity = int(pri[1:pri.index(b">")]) % 8
        record.severity_number, record.severity_text = {3: (17, "ERROR"), 6: (9, "INFO")}.get(severity, (9, "INFO"))
        record.body.string_value = message.decode()
        record.attributes.add(key="heroku.dyno", value={"string_value": dyno.decode()})
        record.attributes.add(key="request.id", value={"string_value": str(uuid.uuid4())})
        record.trace_id, record.span_id = os.urandom(16), os.urandom(8)
        count += 1
        if request.ByteSize() > target:
            out.append((request.SerializeToString(), count))
            request, groups = new()
            count = 0
    if count:
        out.append((request.SerializeToString(), count))
    return out


def otlp_requests_for(bodies: list[tuple[bytes, int]], token: str, zipped: bool) -> list[Request]:
    out = []
    for body, _ in bodies:
        headers = {"Content-Type": "application/x-protobuf", "X-Forgedrain-Ingest-Token": token,
                   "User-Agent": "OTel-OTLP-Exporter-Python/1.45.2"}
        if zipped:
            headers["Content-Encoding"] = "gzip"
            body = gzip.compress(body, 6)
        out.append(Request("POST", OTLP_PATH, body, headers))
    return out


def provision(database_url: str) -> tuple[uuid.UUID, str]:
    resource_id, token = uuid.uuid4(), f"d.{uuid.uuid4()}"
    with db.connect(database_url, "forgedrain-bench") as conn:
        conn.execute("INSERT INTO resources (id, partner_id, plan, api_token_hash, log_drain_token) "
                     "VALUES (%s, 'forgedrain', 'pro', %s, %s)",
                     (resource_id, tokens.digest(str(resource_id)), token))
    return resource_id, token


SCENARIOS = ("ingest", "ingest-gz", "otlp", "otlp-gz")


def report(results: list[Result], frames: dict[str, int]) -> None:
    print()
    print(f"{'scenario':<10} {'requests':>8} {'errors':>6} {'req/s':>7} {'frames/s':>9} {'p50':>6} "
          f"{'p90':>6} {'p99':>6} {'max':>6}  (ms)   {'srv p50':>7} {'srv p99':>7} | cores: "
          f"{'client':>6} {'gunicorn':>8} {'postgres':>8}")
    for result in results:
        f = figures(result)
        wall = result.wall or 1.0
        ordered = sorted(ms / 1000 for ms in result.server_ms)
        pg = "n/a" if result.postgres_cpu is None else f"{result.postgres_cpu / wall:.2f}"
        rate = frames.get(result.name, 0) / wall
        print(f"{result.name:<10} {result.requests:>8} {result.errors:>6} {f['rps']:>7.1f} {rate:>9.0f} "
              f"{f['p50']:>6.1f} {f['p90']:>6.1f} {f['p99']:>6.1f} {f['max']:>6.1f}        "
              f"{percentile(ordered, 50):>7.0f} {percentile(ordered, 99):>7.0f} |        "
              f"{result.client_cpu / wall:>6.2f} {result.server_cpu / wall:>8.2f} {pg:>8}")
    print()
    by_name = {r.name: figures(r) for r in results}
    floor = by_name["healthz"]["p99"]
    for name in SCENARIOS:
        print(f"{name} p99 / healthz p99: {by_name[name]['p99'] / floor:.2f}x")
    for name in SCENARIOS:
        p99 = by_name[name]["p99"]
        verdict = "target met" if p99 <= TARGET_P99_MS else "target missed"
        print(f"{name}: p99 {p99:.1f} ms for ~{BATCH_BYTES // 1024} KB batches vs ≤ {TARGET_P99_MS:.0f} ms: "
              f"{verdict}")
    for result in results:
        for example in result.examples:
            print(f"error ({result.name}): {example}")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000, help="requests per scenario (1000)")
    parser.add_argument("--concurrency", type=int, default=4, help="concurrent clients (4)")
    parser.add_argument("--rounds", type=int, default=4, help="the scenarios take turns in this many rounds")
    parser.add_argument("--warmup", type=int, default=100, help="untimed requests per kind first (100)")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("WEB_THREADS", "5")),
                        help="threads of the one gunicorn worker (WEB_THREADS, else 5)")
    args = parser.parse_args(argv)
    if min(args.requests, args.concurrency, args.rounds, args.threads) < 1 or args.warmup < 0:
        parser.error("counts must be positive")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    found = servers("ingest")
    if found is None:
        return 2
    server_url, redis_url = found
    database = process = clients = None
    workdir = tempfile.TemporaryDirectory(prefix="forgedrain-bench-")
    log_path = Path(workdir.name) / "gunicorn.log"
    try:
        database = create_database(server_url)
        database_url = with_database(server_url, database)
        with db.connect(database_url, "forgedrain-bench") as conn:
            migrate.migrate(conn)
        facts = server_facts(database_url)
        resource_id, token = provision(database_url)
        port = free_port()
        env = {**app_env(database_url, redis_url, port, 1, args.threads, secrets.token_urlsafe(24)),
               "INGEST_LIMIT_SCALE": INGEST_LIMIT_SCALE}
        ingest_token = tokens.ingest_token(env["SECRET_KEY"], resource_id, 1)
        process = start_gunicorn(env, port, log_path)
        base = f"http://127.0.0.1:{port}"
        wait_ready(process, base, log_path)

        lines = heroku_lines(4000, 1)
        per_request = batches(lines)
        per_otlp = otlp_batches(lines)
        print(f"Drain ingest bench: {args.requests} batches per scenario (~{BATCH_BYTES // 1024} KB, "
              f"{sum(c for _, c in per_request) / len(per_request):.0f} frames each on average) from "
              f"{args.concurrency} concurrent keep-alive clients, {args.rounds} rounds, "
              f"{args.warmup} warm-up batches; OTLP: ~{sum(len(b) for b, _ in per_otlp) // len(per_otlp) // 1024} KB "
              f"protobuf, {sum(c for _, c in per_otlp) / len(per_otlp):.0f} records each on average")
        print(f"server: gunicorn gthread 1 worker x {args.threads} threads; PostgreSQL "
              f"{facts['server_version']} fsync={facts['fsync']} synchronous_commit={facts['synchronous_commit']}")
        print(f"machine: {os.cpu_count()} cores shared by the client, gunicorn and PostgreSQL; "
              f"Python {platform.python_version()}")

        def work(count: int, zipped: bool, otlp: bool = False) -> tuple[list[Request], int]:
            if otlp:
                chosen = [per_otlp[i % len(per_otlp)] for i in range(count)]
                return otlp_requests_for(chosen, ingest_token, zipped), sum(c for _, c in chosen)
            chosen = [per_request[i % len(per_request)] for i in range(count)]
            return requests_for(chosen, token, zipped), sum(c for _, c in chosen)

        clients = Clients(base, args.concurrency, ("unused", "unused"), process.pid, facts["postmaster"])
        sent_frames = 0
        if args.warmup:
            warm, warm_frames = work(args.warmup, False)
            warm_otlp, warm_records = work(args.warmup, False, otlp=True)
            warm_frames += warm_records
            warmed = clients.run("warm-up", warm + warm_otlp + [Request("GET", "/healthz")] * args.warmup)
            if warmed.errors:
                print("warm-up failed:\n" + "\n".join(warmed.examples), file=sys.stderr)
                return 1
            sent_frames += warm_frames
        results = [Result("healthz")] + [Result(name) for name in SCENARIOS]
        frames = {name: 0 for name in SCENARIOS}
        for round_size in split(args.requests, args.rounds):
            results[0].add(clients.run("healthz", [Request("GET", "/healthz")] * round_size))
            for result in results[1:]:
                batch, count = work(round_size, result.name.endswith("-gz"), result.name.startswith("otlp"))
                result.add(clients.run(result.name, batch))
                frames[result.name] += count
                sent_frames += count
        time.sleep(0.2)
        durations = server_durations(log_path)
        for result in results:
            result.server_ms = durations.get(result.name, [])
        report(results, frames)
        with db.connect(database_url, "forgedrain-bench") as conn:
            stored = conn.execute("SELECT COALESCE(sum(record_count), 0) AS n FROM outbox WHERE resource_id = %s",
                                  (resource_id,)).fetchone()["n"]
        print(f"frames and records sent {sent_frames}, records stored {stored}")
        if stored != sent_frames or any(r.errors for r in results):
            print("error: not every frame was stored, or some requests failed", file=sys.stderr)
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
