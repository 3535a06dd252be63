"""Outbox pruning: a batch leaves when every drain has it, or when it outlives the plan's backlog (counted)."""

from __future__ import annotations

import pytest

from broker import config, delivery, outbox
from tests.test_delivery import add_drain, forge_record, store, vault, world  # noqa: F401
from tests.support.polling import add_resource, add_source
from worker import context, tick


def batch_ids(conn, resource_id) -> list[int]:
    return [r["id"] for r in conn.execute("SELECT id FROM outbox WHERE resource_id = %s ORDER BY id",
                                          (resource_id,))]


def age(conn, batch_id: int, hours: float) -> None:
    conn.execute("UPDATE outbox SET created_at = now() - make_interval(secs => %s) WHERE id = %s",
                 (hours * 3600, batch_id))


def test_batches_every_drain_has_go_and_the_rest_stay(conn, vault, world):
    resource_id, source_id = world
    ahead = add_drain(conn, vault, resource_id, "logplex", "https://ahead.example.com/")
    behind = add_drain(conn, vault, resource_id, "logplex", "https://behind.example.com/")
    batches = [store(conn, resource_id, source_id, [forge_record(b * 10 + i) for i in range(10)]) for b in range(4)]
    conn.execute("UPDATE drains SET cursor = %s WHERE id = %s", (batches[3], ahead))
    conn.execute("UPDATE drains SET cursor = %s WHERE id = %s", (batches[1], behind))
    pruned = outbox.prune(conn)
    assert pruned.batches == 2 and pruned.dropped_records == 0
    assert batch_ids(conn, resource_id) == batches[2:]
    assert conn.execute("SELECT sum(dropped) AS n FROM drains").fetchone()["n"] == 0


def test_without_drains_or_once_deprovisioned_nothing_is_kept(conn, vault, world):
    resource_id, source_id = world
    store(conn, resource_id, source_id, [forge_record(1)])
    gone = add_resource(conn)
    gone_source = add_source(conn, vault, gone, app_id="ari:cloud:ecosystem::app/0b5e4b9c-3ad0-4a4a-9f0b-000000000002")
    add_drain(conn, vault, gone, "logplex", "https://gone.example.com/")
    store(conn, gone, gone_source, [forge_record(2)])
    conn.execute("UPDATE resources SET state = 'deprovisioned' WHERE id = %s", (gone,))
    assert outbox.prune(conn).batches == 2
    assert conn.execute("SELECT count(*) AS n FROM outbox").fetchone()["n"] == 0


@pytest.mark.parametrize("plan, hours", [("test", 24), ("basic", 72), ("pro", 168)])
def test_batches_older_than_the_plans_backlog_are_dropped_and_counted(conn, vault, world, plan, hours):
    resource_id, source_id = world
    conn.execute("UPDATE resources SET plan = %s WHERE id = %s", (plan, resource_id))
    heroku = add_drain(conn, vault, resource_id, "heroku", "https://logs.example.com/input")
    lagging = add_drain(conn, vault, resource_id, "otlp", "https://otlp.example.com/")
    old_forge = store(conn, resource_id, source_id, [forge_record(i) for i in range(7)])
    old_heroku = store(conn, resource_id, None, [forge_record(i) for i in range(5)], origin="heroku")
    young = store(conn, resource_id, source_id, [forge_record(i) for i in range(3)])
    age(conn, old_forge, hours + 1)
    age(conn, old_heroku, hours + 0.5)
    age(conn, young, hours - 0.5)  # inside the backlog: kept for the drains that lack it
    conn.execute("UPDATE drains SET cursor = %s WHERE id = %s", (old_forge, heroku))  # heroku had the first
    pruned = outbox.prune(conn)
    assert (pruned.batches, pruned.drains_behind, pruned.dropped_records) == (2, 2, 12)
    assert batch_ids(conn, resource_id) == [young]
    rows = {r["id"]: r for r in conn.execute("SELECT * FROM drains WHERE resource_id = %s", (resource_id,))}
    # the app's own logs never go to its heroku drain, so passing them over is not a drop for it
    assert rows[heroku]["dropped"] == 0 and rows[heroku]["cursor"] == old_heroku
    assert rows[lagging]["dropped"] == 12 and rows[lagging]["cursor"] == old_heroku
    assert rows[lagging]["last_error"] == (
        f"12 records were dropped: older than the plan's {hours}-hour backlog before this drain accepted them")
    assert outbox.prune(conn).dropped_records == 0  # counted once


def test_a_drain_expired_inside_a_batch_counts_only_the_records_it_lacked(conn, vault, world):
    resource_id, source_id = world
    conn.execute("UPDATE resources SET plan = 'test' WHERE id = %s", (resource_id,))
    drain = add_drain(conn, vault, resource_id, "logplex", "https://l.example.com/")
    old = store(conn, resource_id, source_id, [forge_record(i) for i in range(10)])
    young = store(conn, resource_id, source_id, [forge_record(i) for i in range(4)])
    age(conn, old, 25)
    # an earlier send settled the first 6 records of the old batch
    conn.execute("UPDATE drains SET cursor = %s, partial_batch = %s, partial_records = 6 WHERE id = %s",
                 (old - 1, old, drain))
    assert outbox.backlog(conn, resource_id, drain).records == 8
    pruned = outbox.prune(conn)
    assert pruned.dropped_records == 4
    row = conn.execute("SELECT * FROM drains WHERE id = %s", (drain,)).fetchone()
    assert (row["cursor"], row["partial_batch"], row["partial_records"], row["dropped"]) == (old, None, 0, 4)
    assert outbox.backlog(conn, resource_id, drain).records == 4 and batch_ids(conn, resource_id) == [young]


def test_the_tick_prunes_about_once_a_minute(env, conn, vault, world):
    resource_id, source_id = world
    batch = store(conn, resource_id, source_id, [forge_record(1)])  # no drain: nothing needs it
    age(conn, batch, 24.5)  # past the default replay window (OUTBOX_REPLAY_HOURS=24)
    settings = config.load(env, testing=True)
    context.install(settings)
    try:
        every = tick.PRUNE_EVERY_SECONDS // settings.clock_tick_seconds
        tick.run(every + 1)
        assert len(batch_ids(conn, resource_id)) == 1
        tick.run(every * 2)
        assert batch_ids(conn, resource_id) == []
    finally:
        context.install(None)


def test_records_per_minute_are_counted_for_sources_and_drains(conn, vault, database_url, world):
    """What the dashboard's chart and the metrics read: stored per source, delivered and dropped per drain."""
    from broker import activity
    from tests.fakes.receivers import logplex_receiver
    from tests.fakes.server import LocalServer
    from tests.test_delivery import deliver_all, make_deliverer

    resource_id, source_id = world
    app, inbox = logplex_receiver()
    with LocalServer(app) as server:
        good = add_drain(conn, vault, resource_id, "logplex", f"http://127.0.0.1:{server.port}/")
        refused = add_drain(conn, vault, resource_id, "logplex", f"http://127.0.0.1:{server.port}/x")
        store(conn, resource_id, source_id, [forge_record(i) for i in range(12)])
        inbox.fail(400)  # the first request (either drain) is refused: dropped, counted
        deliver_all(make_deliverer(database_url, vault), conn)
    rows = activity.series(conn, resource_id)
    totals = {(str(r["subject"]), r["kind"]): 0 for r in rows}
    for row in rows:
        totals[(str(row["subject"]), row["kind"])] += row["records"]
    drained = {k: v for k, v in totals.items() if k[1] != "stored"}
    assert sorted(drained.values()) == [12, 12] and {k[1] for k in drained} == {"delivered", "dropped"}
    assert {str(good), str(refused)} == {k[0] for k in drained}
    conn.execute("UPDATE activity SET minute = minute - interval '3 days'")
    assert activity.forget(conn) == len(rows) and activity.series(conn, resource_id) == []


def test_the_poller_counts_stored_records_by_their_own_minute(conn, vault, database_url, redis_url):
    from datetime import timedelta

    from broker import activity
    from tests.fakes.forge import ForgeFake
    from tests.fakes.server import LocalServer
    from tests.support.polling import APP, EMAIL, ENV, TOKEN, make_poller, outbox_records

    fake = ForgeFake(seed=5, rate_limit=10_000)
    fake.add_app(APP, [ENV], EMAIL, TOKEN, records_per_minute=30, late_fraction=0)
    resource_id = add_resource(conn)
    source_id = add_source(conn, vault, resource_id, checkpoint_ago=timedelta(minutes=20))
    with LocalServer(fake.wsgi()) as server:
        from broker import polling

        poller = make_poller(database_url, redis_url, server.url, vault)
        for source in polling.claim(conn, 10, 180):
            poller.poll(source)
    stored = outbox_records(conn, source_id)
    rows = [r for r in activity.series(conn, resource_id) if r["kind"] == "stored"]
    assert stored and sum(r["records"] for r in rows) == len(stored)
    assert len(rows) >= 10  # spread over the minutes the records belong to, not one lump


def test_delivered_batches_stay_for_the_replay_window(conn, vault, world):
    resource_id, source_id = world
    drain = add_drain(conn, vault, resource_id, "logplex", "https://d.example.com/")
    old, recent = (store(conn, resource_id, source_id, [forge_record(i)]) for i in range(2))
    conn.execute("UPDATE drains SET cursor = %s WHERE id = %s", (recent, drain))  # it has both
    age(conn, old, 3)
    assert outbox.prune(conn, replay_hours=2).batches == 1
    assert batch_ids(conn, resource_id) == [recent]  # still replayable for two hours
    assert outbox.prune(conn, replay_hours=0).batches == 1
