"""Prometheus metrics, built at scrape time from PostgreSQL and Redis (SPEC §8).

The web runs several gunicorn processes and the workers are separate RQ
processes, so counters kept in any one process would be a fraction of the
truth. Every figure here is read from the shared state when Prometheus
scrapes: the drains' delivery counters and the sources' poll and unreadable
record counts (plus what deleted rows had counted, ``retired_counters``, so a
counter never goes down), per-minute activity, the outbox, ingest batches, the clock's heartbeat,
RQ's queues and the rate limiter's refusals.

Each query is one round trip, an aggregate over an index or over a table kept
small by design (sources, drains, the outbox, which pruning empties), and the
scrape holds its own ``statement_timeout`` so a slow database fails the
scrape instead of piling scrapes up. Labels are kinds, states and reasons,
never ids, URLs or tokens.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import psycopg
import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from broker import delivery, heartbeats, jobs, outbox, ratelimit

PREFIX = "forgedrain"
# Prometheus' own scrape timeout defaults to 10 s; answer well inside it.
STATEMENT_TIMEOUT_MS = 2000
DRAIN_KINDS = delivery.KINDS
PAUSE_REASONS = ("auth_failed", "bad_request", "not_found")
# Lag (now − checkpoint) buckets, seconds. A healthy source sits between the poll
# lag (2 min) and lag + its plan's interval (7 min on `test`).
LAG_BUCKETS = (150, 300, 450, 600, 900, 1800, 3600, 3 * 3600, 6 * 3600, 24 * 3600, 3 * 86400, 14 * 86400)
# "Recently" for sources' last poll and last success.
RECENT_SECONDS = 300

DRAINS = """
SELECT kind, sum(drains)::bigint AS drains, sum(enabled)::bigint AS enabled,
       sum(failing)::bigint AS failing, sum(delivered)::bigint AS delivered,
       sum(retried)::bigint AS retried, sum(dropped)::bigint AS dropped, sum(rejected)::bigint AS rejected,
       sum(filtered)::bigint AS filtered, sum(redacted)::bigint AS redacted,
       sum(secret_lost)::bigint AS secret_lost, sum(slow)::bigint AS slow
FROM (
    SELECT kind, 1 AS drains, enabled::int AS enabled, (enabled AND consecutive_failures > 0)::int AS failing,
           delivered, retried, dropped, rejected, filtered, redacted,
           (secret_lost_at IS NOT NULL)::int AS secret_lost, (send_seconds > %(slow)s)::int AS slow
    FROM drains
    UNION ALL
    SELECT kind, 0, 0, 0, delivered, retried, dropped, rejected, filtered, redacted, 0, 0
    FROM retired_counters WHERE subject = 'drain'
) d
GROUP BY kind
"""

def _sources_query() -> str:
    buckets = ",\n       ".join(
        f"count(*) FILTER (WHERE state = 'active' AND checkpoint >= now() - interval '{b} seconds') AS le_{b}"
        for b in LAG_BUCKETS)
    return f"""
SELECT state, COALESCE(pause_reason, '') AS reason, count(*) AS sources,
       count(*) FILTER (WHERE consecutive_failures > 0) AS failing,
       count(*) FILTER (WHERE last_poll_at >= now() - interval '{RECENT_SECONDS} seconds') AS polled_recently,
       count(*) FILTER (WHERE last_success_at >= now() - interval '{RECENT_SECONDS} seconds') AS succeeded_recently,
       COALESCE(sum(polls), 0)::bigint AS polls,
       COALESCE(sum(unreadable), 0)::bigint AS unreadable,
       count(*) FILTER (WHERE state = 'active' AND over_capacity_since IS NOT NULL) AS over_capacity,
       COALESCE(max(extract(epoch FROM now() - checkpoint)) FILTER (WHERE state = 'active'), 0)::float AS lag_max,
       COALESCE(sum(extract(epoch FROM now() - checkpoint)) FILTER (WHERE state = 'active'), 0)::float AS lag_sum,
       {buckets}
FROM sources
GROUP BY 1, 2
"""


SOURCES = _sources_query()

RETIRED_SOURCES = ("SELECT COALESCE(sum(polls), 0)::bigint AS polls, COALESCE(sum(unreadable), 0)::bigint "
                   "AS unreadable FROM retired_counters WHERE subject = 'source'")

# Per-minute rows (broker.activity). "Last minute" is the last complete one;
# "last hour" the sixty minutes up to now, the current one included. `stored`
# rows are dated by the records' own minute, which trails now by the poll lag.
ACTIVITY = """
SELECT a.kind AS flow, COALESCE(d.kind, CASE WHEN a.kind = 'stored' THEN '' ELSE 'deleted' END) AS drain_kind,
       COALESCE(sum(a.records) FILTER (WHERE a.minute = date_trunc('minute', now()) - interval '1 minute'), 0)::bigint
           AS last_minute,
       sum(a.records)::bigint AS last_hour
FROM activity a LEFT JOIN drains d ON a.kind <> 'stored' AND d.id = a.subject
WHERE a.minute > date_trunc('minute', now()) - interval '60 minutes'
GROUP BY 1, 2
"""

OUTBOX = """
SELECT count(*) AS batches, COALESCE(sum(record_count), 0)::bigint AS records,
       COALESCE(sum(octet_length(payload)), 0)::bigint AS payload_bytes,
       COALESCE(extract(epoch FROM now() - min(created_at)), 0)::float AS oldest_age,
       pg_total_relation_size('outbox') AS disk_bytes
FROM outbox
"""

INGEST = """
SELECT count(*) AS batches, COALESCE(sum(frames), 0)::bigint AS frames, COALESCE(sum(stored), 0)::bigint AS stored,
       COALESCE(sum(own), 0)::bigint AS own, COALESCE(sum(replays), 0)::bigint AS replays
FROM ingest_batches WHERE received_at >= now() - interval '1 hour'
"""

GAPS = """
SELECT count(*) AS gaps, COALESCE(sum(extract(epoch FROM gap_until - gap_from)), 0)::float AS seconds
FROM source_gaps
"""



@dataclass
class Snapshot:
    """Everything one scrape read, before it is turned into metric families."""

    drains: list[dict] = field(default_factory=list)
    backlog: dict = field(default_factory=dict)
    sources: list[dict] = field(default_factory=list)
    retired_polls: int = 0
    retired_unreadable: int = 0
    activity: list[dict] = field(default_factory=list)
    outbox: dict = field(default_factory=dict)
    ingest: dict = field(default_factory=dict)
    gaps: dict = field(default_factory=dict)
    tick_age: float | None = None
    redis_up: bool = False
    queues: dict[str, dict[str, int]] = field(default_factory=dict)
    budget_waits: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def read_database(conn: psycopg.Connection, snapshot: Snapshot) -> None:
    """Fill ``snapshot`` from PostgreSQL; any psycopg error propagates (the scrape fails)."""
    with conn.transaction():
        conn.execute("SET TRANSACTION READ ONLY")
        # LOCAL: the connection goes back to the web's pool afterwards.
        conn.execute(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}")
        snapshot.drains = conn.execute(DRAINS, {"slow": delivery.SLOW_SEND_SECONDS}).fetchall()
        snapshot.backlog = outbox.backlog_by_kind(conn)  # the one definition (broker.outbox)
        snapshot.sources = conn.execute(SOURCES).fetchall()
        retired = conn.execute(RETIRED_SOURCES).fetchone()
        snapshot.retired_polls, snapshot.retired_unreadable = retired["polls"], retired["unreadable"]
        snapshot.activity = conn.execute(ACTIVITY).fetchall()
        snapshot.outbox = conn.execute(OUTBOX).fetchone()
        snapshot.ingest = conn.execute(INGEST).fetchone()
        snapshot.gaps = conn.execute(GAPS).fetchone()
        tick_age = heartbeats.age(conn)
        snapshot.tick_age = tick_age.total_seconds() if tick_age is not None else None


def read_redis(connection: redis.Redis, snapshot: Snapshot) -> None:
    """Fill ``snapshot`` from Redis in one round trip; when Redis fails, say so and go on."""
    queues = [jobs.queue(name, connection) for name in jobs.QUEUE_NAMES]
    pipe = connection.pipeline(transaction=False)
    for q in queues:
        pipe.llen(q.key)
        pipe.zcard(q.started_job_registry.key)
        pipe.zcard(q.failed_job_registry.key)
    pipe.hgetall(ratelimit.WAITS_KEY)
    try:
        replies = pipe.execute()
    except redis.RedisError:
        snapshot.redis_up = False
        return
    snapshot.redis_up = True
    for index, q in enumerate(queues):
        queued, started, failed = replies[index * 3:index * 3 + 3]
        snapshot.queues[q.name] = {"queued": queued, "started": started, "failed": failed}
    snapshot.budget_waits = {k.decode(): int(v) for k, v in replies[-1].items()}


def read(conn: psycopg.Connection, connection: redis.Redis) -> Snapshot:
    began = time.monotonic()
    snapshot = Snapshot()
    read_database(conn, snapshot)
    read_redis(connection, snapshot)
    snapshot.seconds = time.monotonic() - began
    return snapshot


def _name(suffix: str) -> str:
    return f"{PREFIX}_{suffix}"


class Collector:
    """A prometheus_client collector over one :class:`Snapshot`."""

    def __init__(self, snapshot: Snapshot):
        self.snapshot = snapshot

    def collect(self):
        s = self.snapshot
        yield from self._drains(s)
        yield from self._sources(s)
        yield from self._activity(s)
        yield from self._stores(s)
        yield from self._redis(s)
        yield GaugeMetricFamily(_name("scrape_duration_seconds"),
                                "Time this scrape spent reading PostgreSQL and Redis.", value=s.seconds)

    @staticmethod
    def _drains(s: Snapshot):
        by_kind = {row["kind"]: row for row in s.drains}
        backlog = s.backlog
        kinds = sorted(set(DRAIN_KINDS) | set(by_kind))
        counters = {
            "delivered": "Records drains' receivers accepted.",
            "retried": "Sends to drains that failed and will be retried.",
            "dropped": "Records drains dropped (refused by the receiver, or older than the plan's backlog).",
            "rejected": "Records OTLP receivers reported as rejected in a partial success.",
            "filtered": "Records drains' rules kept from them (origin, source, process, severity, service).",
            "redacted": "Values drains' rules redacted (detector and pattern matches replaced, attributes dropped).",
        }
        names = {"retried": "drain_sends_retried", "redacted": "drain_values_redacted"}
        for column, help_text in counters.items():
            family = CounterMetricFamily(_name(names.get(column, f"drain_records_{column}")),
                                         help_text + " Deleted drains included.", labels=["kind"])
            for kind in kinds:
                family.add_metric([kind], int((by_kind.get(kind) or {}).get(column) or 0))
            yield family
        gauges = {
            "drains": ("drains", "Drains, by kind."),
            "enabled": ("drains_enabled", "Enabled drains, by kind."),
            "failing": ("drains_failing", "Enabled drains whose last send failed (consecutive_failures > 0)."),
            "secret_lost": ("drains_secret_lost", "Drains whose URL or headers cannot be decrypted with FERNET_KEYS "
                                                  "(nothing is sent until the owner re-enters them)."),
            "slow": ("drains_slow", "Drains whose receivers answer slowly, delivered by the workers' slow lane."),
        }
        for column, (name, help_text) in gauges.items():
            family = GaugeMetricFamily(_name(name), help_text, labels=["kind"])
            for kind in kinds:
                family.add_metric([kind], int((by_kind.get(kind) or {}).get(column) or 0))
            yield family
        records = GaugeMetricFamily(_name("drain_backlog_records"),
                                    "Records stored that drains have not received yet (those their rules will filter out "
                                    "included), summed by drain kind.",
                                    labels=["kind"])
        batches = GaugeMetricFamily(_name("drain_backlog_batches"),
                                    "Outbox batches drains have not received yet, summed by drain kind.",
                                    labels=["kind"])
        for kind in kinds:
            records.add_metric([kind], backlog.get(kind, outbox.Backlog()).records)
            batches.add_metric([kind], backlog.get(kind, outbox.Backlog()).batches)
        yield records
        yield batches

    @staticmethod
    def _sources(s: Snapshot):
        sources = GaugeMetricFamily(_name("sources"), "Forge sources, by state and pause reason.",
                                    labels=["state", "reason"])
        failing = GaugeMetricFamily(_name("sources_failing"),
                                    "Sources whose last poll failed (consecutive_failures > 0), by state.",
                                    labels=["state"])
        polled = GaugeMetricFamily(_name("sources_polled_recently"),
                                   f"Sources polled in the last {RECENT_SECONDS} seconds.")
        succeeded = GaugeMetricFamily(_name("sources_succeeded_recently"),
                                      f"Sources whose last window completed in the last {RECENT_SECONDS} seconds.")
        failing_by_state: dict[str, int] = {}
        polls = s.retired_polls
        counts = {("active", ""): 0, **{("paused", reason): 0 for reason in PAUSE_REASONS}}
        for row in s.sources:
            counts[(row["state"], row["reason"])] = row["sources"]
            failing_by_state[row["state"]] = failing_by_state.get(row["state"], 0) + row["failing"]
            polls += row["polls"]
        for key in sorted(counts):
            sources.add_metric(list(key), counts[key])
        for state in sorted(set(failing_by_state) | {"active", "paused"}):
            failing.add_metric([state], failing_by_state.get(state, 0))
        polled.add_metric([], sum(r["polled_recently"] for r in s.sources))
        succeeded.add_metric([], sum(r["succeeded_recently"] for r in s.sources))
        yield sources
        yield failing
        yield polled
        yield succeeded
        yield CounterMetricFamily(_name("polls"), "Polls of Forge sources finished, whatever their result "
                                  "(deleted sources included).", value=polls)
        yield GaugeMetricFamily(_name("sources_over_capacity"),
                                "Active sources whose app logs more records a minute than its share of the App logs "
                                "API can export: they fall behind, and what passes 14 days becomes a gap.",
                                value=sum(r["over_capacity"] for r in s.sources))
        yield CounterMetricFamily(_name("unreadable_records"),
                                  "Records from the App logs API that could not be decoded, counted and skipped "
                                  "(deleted sources included).",
                                  value=s.retired_unreadable + sum(r["unreadable"] for r in s.sources))
        active = [r for r in s.sources if r["state"] == "active"]
        count = sum(r["sources"] for r in active)
        buckets = [(str(float(b)), sum(r[f"le_{b}"] for r in active)) for b in LAG_BUCKETS]
        buckets.append(("+Inf", count))
        yield HistogramMetricFamily(_name("source_lag_seconds"),
                                    "Active sources' lag: now minus the checkpoint (every record before it is "
                                    "stored). Includes the poll lag (FORGE_POLL_LAG_SECONDS) by design.",
                                    buckets=buckets, sum_value=sum(r["lag_sum"] for r in active))
        yield GaugeMetricFamily(_name("source_lag_max_seconds"), "The largest lag of any active source.",
                                value=max((r["lag_max"] for r in active), default=0.0))

    @staticmethod
    def _activity(s: Snapshot):
        minute = GaugeMetricFamily(_name("records_last_minute"),
                                   "Records in the last complete minute, by flow (stored, delivered, dropped) "
                                   "and drain kind; stored records count in their own minute.",
                                   labels=["flow", "drain_kind"])
        hour = GaugeMetricFamily(_name("records_last_hour"),
                                 "Records in the last sixty minutes, by flow (stored, delivered, dropped) and "
                                 "drain kind; stored records count in their own minute.",
                                 labels=["flow", "drain_kind"])
        seen = {(r["flow"], r["drain_kind"]): r for r in s.activity}
        keys = set(seen) | {("stored", "")} | {(f, k) for f in ("delivered", "dropped") for k in DRAIN_KINDS}
        for key in sorted(keys):
            row = seen.get(key) or {}
            minute.add_metric(list(key), int(row.get("last_minute") or 0))
            hour.add_metric(list(key), int(row.get("last_hour") or 0))
        yield minute
        yield hour

    @staticmethod
    def _stores(s: Snapshot):
        o = s.outbox
        yield GaugeMetricFamily(_name("outbox_batches"), "Batches in the outbox.", value=o["batches"])
        yield GaugeMetricFamily(_name("outbox_records"), "Records in the outbox.", value=o["records"])
        yield GaugeMetricFamily(_name("outbox_payload_bytes"), "Compressed payload bytes in the outbox.",
                                value=o["payload_bytes"])
        yield GaugeMetricFamily(_name("outbox_disk_bytes"), "The outbox table's size on disk, indexes and "
                                "TOAST included.", value=o["disk_bytes"])
        yield GaugeMetricFamily(_name("outbox_oldest_batch_age_seconds"),
                                "Age of the oldest outbox batch (0 when empty).", value=o["oldest_age"])
        i = s.ingest
        for column, help_text in (("batches", "Logplex batches received at log_drain_url"),
                                  ("frames", "Frames in them"), ("stored", "Frames stored for delivery"),
                                  ("own", "The broker's own frames dropped (no loop)"),
                                  ("replays", "Batches received again with a known Logplex-Frame-Id")):
            yield GaugeMetricFamily(_name(f"ingest_{column}_last_hour"), f"{help_text}, last hour.", value=i[column])
        yield GaugeMetricFamily(_name("source_gaps"), "Time ranges recorded as lost (older than the App logs "
                                "API's 14 days when reached), of sources that still exist.", value=s.gaps["gaps"])
        yield GaugeMetricFamily(_name("source_gaps_seconds"), "Total length of those ranges.",
                                value=s.gaps["seconds"])
        if s.tick_age is not None:  # absent until the clock's first tick: alert with absent()
            yield GaugeMetricFamily(_name("clock_last_tick_age_seconds"),
                                    "Seconds since a worker last ran the clock's tick.", value=s.tick_age)

    @staticmethod
    def _redis(s: Snapshot):
        yield GaugeMetricFamily(_name("redis_up"), "1 when Redis answered this scrape.", value=int(s.redis_up))
        if not s.redis_up:
            return
        depth = GaugeMetricFamily(_name("queue_jobs"), "RQ jobs waiting in each queue.", labels=["queue"])
        started = GaugeMetricFamily(_name("queue_started_jobs"), "RQ jobs running (started registry).",
                                    labels=["queue"])
        failed = GaugeMetricFamily(_name("queue_failed_jobs"), "RQ jobs in the failed registry (kept for their "
                                   "failure_ttl).", labels=["queue"])
        for name, counts in s.queues.items():
            depth.add_metric([name], counts["queued"])
            started.add_metric([name], counts["started"])
            failed.add_metric([name], counts["failed"])
        yield depth
        yield started
        yield failed
        waits = CounterMetricFamily(_name("forge_budget_waits"),
                                    "Forge calls refused by the shared per-app budget, by reason: budget (the "
                                    "period's calls are spent) or blocked (after a 429). Reset by a Redis flush.",
                                    labels=["reason"])
        for reason in ("blocked", "budget"):
            waits.add_metric([reason], s.budget_waits.get(reason, 0))
        yield waits


def render(snapshot: Snapshot) -> bytes:
    """The Prometheus text exposition of ``snapshot``, from a registry of its own."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector(snapshot))
    return generate_latest(registry)
