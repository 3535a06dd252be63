"""README promise (Outbox, replay): a replay moving a drain's cursor back and the tick's prune exclude
each other (``outbox.PRUNE_LOCK``), so a prune never deletes batches a replay has just promised to
deliver again, and a replay never promises batches a prune is deleting.

Each test stops one of them half-way (this test holds a row it needs), starts the other, and sees it
wait for the first (``pg_stat_activity``: waiting on the advisory lock) before letting the first go.
The verdict is what the receiver then gets: exactly what the replay said it would deliver again.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest

from broker import db, outbox, replay
from broker.vault import Vault
from tests.fakes.receivers import logplex_receiver
from tests.fakes.server import LocalServer
from tests.support.polling import add_resource, add_source
from tests.test_delivery import add_drain, deliver_all, forge_record, make_deliverer, store

OLD, RECENT = 3, 2  # batches stored 25 h ago (past the replay window) and just now
PER_BATCH = 4


@pytest.fixture
def vault(settings):
    return Vault(settings.fernet_keys)


@pytest.fixture
def delivered(conn, vault, database_url):
    """A logplex drain that has every batch: OLD of them stored 25 h ago, RECENT just now."""
    resource_id = add_resource(conn)
    source_id = add_source(conn, vault, resource_id)
    app, inbox = logplex_receiver()
    with LocalServer(app) as server:
        drain_id = add_drain(conn, vault, resource_id, "logplex", f"{server.url}/drain")
        batches = [store(conn, resource_id, source_id,
                         [forge_record(b * 100 + i, f"batch {b} record {i}") for i in range(PER_BATCH)])
                   for b in range(OLD + RECENT)]
        conn.execute("UPDATE outbox SET created_at = created_at - interval '25 hours' WHERE id = ANY(%s)",
                     (batches[:OLD],))
        deliverer = make_deliverer(database_url, vault)
        assert [o.delivered for o in deliver_all(deliverer, conn)] == [(OLD + RECENT) * PER_BATCH]
        inbox.requests.clear()
        yield {"drain": drain_id, "batches": batches, "inbox": inbox, "deliverer": deliverer}


def waiting(conn, application_name: str, event: str | None = None) -> bool:
    row = conn.execute("SELECT wait_event_type, wait_event FROM pg_stat_activity "
                       "WHERE application_name = %s AND datname = current_database()",
                       (application_name,)).fetchone()
    return row is not None and row["wait_event_type"] == "Lock" and (event is None or row["wait_event"] == event)


def wait_for(condition, what: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.02)


def in_thread(database_url: str, application_name: str, work) -> tuple[threading.Thread, list]:
    """Run ``work(conn)`` on a connection of its own, named so pg_stat_activity shows it."""
    out: list = []

    def run():
        try:
            with db.connect(database_url, application_name) as conn:
                out.append(work(conn))
        except BaseException as exc:  # noqa: BLE001 — handed to the test, which fails on it
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def finished(thread: threading.Thread, out: list):
    thread.join(60)
    assert not thread.is_alive()
    [result] = out
    if isinstance(result, BaseException):
        raise result
    return result


def received(inbox) -> Counter:
    return Counter(e["message"] for r in inbox.requests for e in r["events"])


def test_a_prune_waits_for_a_replay_moving_a_cursor_back_and_then_keeps_what_it_needs(
        conn, database_url, delivered):
    since = datetime.now(timezone.utc) - timedelta(hours=30)
    with db.connect(database_url, "promise-holder") as holder:
        holder.execute("BEGIN")
        holder.execute("SELECT id FROM drains WHERE id = %s FOR UPDATE", (delivered["drain"],))
        replaying = in_thread(database_url, "promise-replay",
                              lambda c: replay.replay(c, delivered["drain"], since, actor="test"))
        wait_for(lambda: waiting(conn, "promise-replay"), "the replay to wait on the drain's row")
        # The replay holds the prune lock now; every delivered batch is past the replay window (0 h).
        pruning = in_thread(database_url, "promise-prune", lambda c: outbox.prune(c, replay_hours=0))
        wait_for(lambda: waiting(conn, "promise-prune", "advisory") or not pruning[0].is_alive(),
                 "the prune to wait for the replay")
        assert pruning[0].is_alive(), "the prune ran while a replay was moving a cursor back"
        holder.execute("ROLLBACK")
    moved = finished(*replaying)
    pruned = finished(*pruning)

    assert (moved.batches, moved.records) == (OLD + RECENT, (OLD + RECENT) * PER_BATCH)
    assert pruned.batches == 0  # the cursor had moved back: no batch was delivered to every drain
    assert conn.execute("SELECT count(*) AS n FROM outbox").fetchone()["n"] == OLD + RECENT
    outcomes = deliver_all(delivered["deliverer"], conn)
    assert [o.delivered for o in outcomes] == [moved.records]
    assert received(delivered["inbox"]) == Counter(f"batch {b} record {i}" for b in range(OLD + RECENT)
                                                   for i in range(PER_BATCH))


def test_a_replay_waits_for_a_prune_in_progress_and_then_promises_only_what_is_left(
        conn, database_url, delivered):
    since = datetime.now(timezone.utc) - timedelta(hours=30)
    old = delivered["batches"][:OLD]
    with db.connect(database_url, "promise-holder") as holder:
        holder.execute("BEGIN")
        holder.execute("SELECT id FROM outbox WHERE id = %s FOR UPDATE", (old[-1],))
        # Batches every drain has, older than the 24 h replay window: the prune deletes the OLD ones.
        pruning = in_thread(database_url, "promise-prune", lambda c: outbox.prune(c, replay_hours=24))
        wait_for(lambda: waiting(conn, "promise-prune"), "the prune to wait on the batch's row")
        replaying = in_thread(database_url, "promise-replay",
                              lambda c: replay.replay(c, delivered["drain"], since, actor="test"))
        wait_for(lambda: waiting(conn, "promise-replay", "advisory") or not replaying[0].is_alive(),
                 "the replay to wait for the prune")
        assert replaying[0].is_alive(), "the replay moved a cursor back while a prune was deleting batches"
        holder.execute("ROLLBACK")
    pruned = finished(*pruning)
    moved = finished(*replaying)

    assert pruned.batches == OLD
    assert moved.truncated  # the outbox no longer reaches back 30 h, and the replay says so
    assert (moved.batches, moved.records) == (RECENT, RECENT * PER_BATCH)
    assert moved.new_cursor == old[-1]
    outcomes = deliver_all(delivered["deliverer"], conn)
    assert [o.delivered for o in outcomes] == [moved.records]
    assert received(delivered["inbox"]) == Counter(f"batch {b} record {i}" for b in range(OLD, OLD + RECENT)
                                                   for i in range(PER_BATCH))
