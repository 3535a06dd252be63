"""README promise (Polling; FORGE_POLL_BATCHES): several poll jobs run at once — the tick keeps more
than one queued and any number of workers take them — and none polls a source another is polling
(``FOR UPDATE SKIP LOCKED`` leases), while together they lose no window: every record Atlassian
holds up to each source's final checkpoint is stored, once.

Three poll jobs (``worker.poll.run_batch``, each with its own pool and thread pool, as three workers
would run them) poll twelve sources of the Forge fake. The fake holds every call until all three
jobs have calls out at once, so the overlap is certain, not hoped for; it also records each source's
peak of calls in flight.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import timedelta

import pytest

from broker import config, polling
from broker.vault import Vault
from tests.fakes.forge import ForgeFake
from tests.fakes.server import LocalServer
from tests.support.polling import EMAIL, ENV, TOKEN, add_resource, add_source, identity, outbox_records
from worker import context, poll

JOBS = 3
THREADS = 4  # per job: JOBS * THREADS sources are polled at once
APPS = [f"app-{i:02d}" for i in range(JOBS * THREADS)]


@pytest.fixture
def forge():
    # Every record visible at once, none late: this test is about the jobs, not about the sweep.
    fake = ForgeFake(seed=51, rate_limit=100_000, page_size=40, latency=0.02, prompt_delay_seconds=0)
    for app_id in APPS:
        fake.add_app(app_id, [ENV], EMAIL, TOKEN, records_per_minute=15, late_fraction=0)
    with LocalServer(fake.wsgi()) as server:
        fake.url = server.url
        yield fake


@pytest.fixture
def settings(env, forge):
    settings = config.load({**env, "FORGE_API_URL": forge.url, "FORGE_POLL_THREADS": str(THREADS),
                            "FORGE_RATE_LIMIT": "30", "FORGE_RATE_PERIOD_SECONDS": "0.1"}, testing=True)
    context.install(settings)
    yield settings
    context.install(None)


def wait_for(condition, what: str, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.02)


def test_poll_jobs_running_at_once_never_share_a_source_and_lose_no_window(conn, settings, forge):
    vault = Vault(settings.fernet_keys)
    resource_id = add_resource(conn)
    sources = {add_source(conn, vault, resource_id, app_id=app_id, checkpoint_ago=timedelta(minutes=40)): app_id
               for app_id in APPS}
    first = {r["id"]: r["checkpoint"] for r in conn.execute("SELECT id, checkpoint FROM sources")}

    totals: dict[int, dict] = {}
    forge.hold()

    def job(slot: int) -> None:
        totals[slot] = poll.run_batch(slot, budget_seconds=30)

    runs = [threading.Thread(target=job, args=(slot,), daemon=True) for slot in range(JOBS)]
    try:
        for run in runs:
            run.start()
        # Every job has claimed all it can hold and has a call out at Atlassian for each: at once.
        wait_for(lambda: forge.held == JOBS * THREADS, "every job's threads to be polling at once")
    finally:
        forge.release()
    for run in runs:
        run.join(120)
        assert not run.is_alive()

    assert sorted(totals) == list(range(JOBS))
    assert all(t["polls"] >= 1 and t["errors"] == 0 for t in totals.values()), totals
    # No source was ever polled by two jobs at once...
    assert {app_id: forge.in_flight_peak(app_id, ENV) for app_id in APPS} == {app_id: 1 for app_id in APPS}
    # ...and none was left behind, nor any stretch of its log.
    rows = {r["id"]: r for r in conn.execute("SELECT id, checkpoint, lease_token, last_success_at FROM sources")}
    for source_id, app_id in sources.items():
        row = rows[source_id]
        assert row["lease_token"] is None and row["last_success_at"] is not None, app_id
        assert row["checkpoint"] > first[source_id], app_id
        stored = outbox_records(conn, source_id)
        counts = Counter(map(identity, stored))
        assert max(counts.values()) == 1, f"{app_id}: a record was stored twice"
        expected = forge.records(app_id, ENV, first[source_id], row["checkpoint"])
        assert expected, app_id
        in_range = {identity(r) for r in stored
                    if first[source_id] <= polling.record_time(r, first[source_id]) < row["checkpoint"]}
        assert in_range == set(map(identity, expected)), f"{app_id}: records missing before its checkpoint"
