"""The chaos bench's short profile as a test (issue 15): the whole service under faults, every record accounted for.

``bench/chaos.py`` runs gunicorn, two workers and the clock against the Forge fake and a real receiver per
drain kind, injects faults and compares what the Forge fake logged and what was posted to drain ingest
with what each receiver got. Here it runs with a fixed seed and five faults: a worker SIGKILLed mid-job,
FLUSHALL, Redis restarted empty, PostgreSQL restarted, a receiver down. The run restarts PostgreSQL and Redis, so it gets its
own (started as scripts/lib.sh starts the suite's, on free loopback ports) and never touches the
servers the other tests use; they are stopped at the end, whatever happened.

Recovery times are printed, not asserted: a fault fails the test only when it never recovers within
``RECOVER`` s (a generous deadline for a loaded machine).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from collections import Counter

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import chaos  # noqa: E402

SEED = 7
FAULTS = ("kill_worker", "flushall", "restart_redis", "restart_postgres", "receiver_down")
RECOVER = 300

START = """
source scripts/lib.sh
unset DATABASE_URL REDIS_URL
start_postgres "$1"
start_redis "$2"
printf '%s\\n%s\\n%s\\n' "$DATABASE_URL" "$REDIS_URL" "$(pg_bindir)"
"""
STOP = """
source scripts/lib.sh
PG_STARTED_DIR="$1"
REDIS_STARTED_DIR="$2"
stop_services
"""


@pytest.fixture
def private_servers():
    """A PostgreSQL server and a Redis of the run's own (it restarts both), stopped afterwards."""
    base = Path(tempfile.mkdtemp(prefix="forgedrain-chaos-test-"))
    base.chmod(0o755)  # the postgres user must reach its data folder
    pg_dir, redis_dir = base / "postgres", base / "redis"
    try:
        started = subprocess.run(["bash", "-c", START, "start", str(pg_dir), str(redis_dir)], cwd=ROOT,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=180)
        assert started.returncode == 0, f"could not start PostgreSQL and Redis: {started.stderr}"
        database_url, redis_url, pg_bin = started.stdout.split()
        yield {"database_url": database_url, "redis_url": redis_url, "pg_data": str(pg_dir / "data"),
               "pg_bin": pg_bin, "redis_dir": str(redis_dir)}
    finally:
        subprocess.run(["bash", "-c", STOP, "stop", str(pg_dir), str(redis_dir)], cwd=ROOT,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.timeout(900)  # the short profile takes ~4 min alone, up to ~10 on a loaded machine
def test_short_chaos_run_loses_nothing(private_servers):
    report = chaos.run("short", SEED, FAULTS, recover=RECOVER, **private_servers)

    for kind, values in report.recoveries.items():
        shown = ", ".join("never" if v is None else f"{v:.1f} s" for v in values)
        print(f"recovery {kind}: {shown}")
    assert sorted(report.recoveries) == sorted(FAULTS), report.fault_log  # every fault ran
    never = {kind: values for kind, values in report.recoveries.items() if None in values}
    assert not never, f"not recovered within {RECOVER} s: {never}"
    for kind, tally in report.tallies.items():
        assert tally.expected > 0, kind
        assert tally.lost == 0, f"{kind}: {tally.lost} lost, e.g. {tally.lost_examples}"
        assert tally.refused == 0, f"{kind}: {tally.refused} refused"
        assert tally.other_dups == 0, f"{kind}: {tally.other_dups} duplicated, e.g. {tally.dup_examples}"
        assert (tally.dropped, tally.rejected) == (0, 0), f"{kind}: the drains counted drops or rejections"
    for app_id, (_, most, limited) in report.forge_calls.items():
        assert most <= report.rate_limit, f"{app_id}: {most} calls in 60 s"
        assert limited == 0, f"{app_id}: {limited} 429s from the fake's own limit"
    assert report.status == 0, report.errors


def test_a_resent_syslog_send_is_told_from_a_stray_duplicate():
    expected = Counter("abcdefg")
    # d and e arrived, the connection broke before the send was acknowledged, the send came again from d.
    got, resent = chaos.resent_runs(list("abcdedefg"), expected)
    assert got == expected and resent == Counter("de")
    # c again after e: not the tail of what came before, so not a resend.
    got, resent = chaos.resent_runs(list("abcdecfg"), expected)
    assert resent == Counter() and got["c"] == 2
    # A resend that skips a record is not a whole one either.
    got, resent = chaos.resent_runs(list("abcdebefg"), expected)
    assert resent == Counter() and got["b"] == 2 and got["e"] == 2
    # Records expected twice (same instant and text) are not duplicates the second time.
    got, resent = chaos.resent_runs(list("aab"), Counter("aab"))
    assert got == Counter("aab") and resent == Counter()
