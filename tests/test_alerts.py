"""Alerts (issue 16 item 2): each condition raises one alert and one recovery, with hysteresis, across
crashes and concurrent evaluators; the alert line reaches the app's own log stream and ingest drops it."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import orjson
import pytest

from broker import activity, alerts, db, jobs, outbox, redisconn, rules
from broker.vault import Vault
from tests.fakes.receivers import logplex_receiver
from tests.fakes.server import LocalServer
from tests.support.polling import add_resource, add_source
from tests.test_delivery import add_drain, deliver_all, forge_record, make_deliverer, store
from tests import test_ingest
from tests.test_ingest import frame, post, stored
from tests.test_provision_async import run_worker

MINUTE = timedelta(minutes=1)
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def vault(settings):
    return Vault(settings.fernet_keys)


# A resource provisioned by Heroku whose heroku drain writes to a local logplex input (the app's stream).
app, web, resource = test_ingest.app, test_ingest.web, test_ingest.resource


def db_now(conn) -> datetime:
    return conn.execute("SELECT now() AS now").fetchone()["now"]


def notices(conn, resource_id) -> list[tuple[str, str]]:
    return [(n.change, n.condition) for n in alerts.notices_after(conn, resource_id, 0, 100)]


def audit_actions(conn, resource_id) -> list[str]:
    return [r["action"] for r in conn.execute(
        "SELECT action FROM audit_log WHERE resource_id = %s AND action LIKE 'alert.%%' ORDER BY id", (resource_id,))]


def batch_created(conn, batch_id: int, ago: timedelta) -> None:
    conn.execute("UPDATE outbox SET created_at = now() - %s WHERE id = %s", (ago, batch_id))


# Each condition: how to make it true for a subject of a fresh resource (returning the subject's id), and how
# to make it false again (events need no clearing: they stop being true an hour after the last one).

def paused(conn, vault, rid):
    sid = add_source(conn, vault, rid)
    conn.execute("UPDATE sources SET state = 'paused', pause_reason = 'auth_failed', "
                 "service_name = 'jira-app', environment_label = 'production' WHERE id = %s", (sid,))
    return sid, lambda: conn.execute("UPDATE sources SET state = 'active', pause_reason = NULL WHERE id = %s", (sid,))


def over_capacity(conn, vault, rid):
    sid = add_source(conn, vault, rid)
    conn.execute("UPDATE sources SET over_capacity_since = now(), density_per_minute = 4200.4, "
                 "capacity_per_minute = 2500 WHERE id = %s", (sid,))
    return sid, lambda: conn.execute("UPDATE sources SET over_capacity_since = NULL WHERE id = %s", (sid,))


def failing(conn, vault, rid):
    did = add_drain(conn, vault, rid, "logplex", "http://127.0.0.1:9/")
    batch = store(conn, rid, None, [forge_record(1)])
    batch_created(conn, batch, timedelta(minutes=20))  # has waited 20 minutes through failed attempts
    conn.execute("UPDATE drains SET consecutive_failures = 6, last_error = 'HTTP 503', "
                 "last_delivery_at = now() - interval '1 hour' WHERE id = %s", (did,))
    return did, lambda: conn.execute("UPDATE drains SET consecutive_failures = 0, cursor = %s, "
                                     "last_delivery_at = now() WHERE id = %s", (batch, did))


def backlog(conn, vault, rid):
    did = add_drain(conn, vault, rid, "logplex", "http://127.0.0.1:9/")
    batch = store(conn, rid, None, [forge_record(1)])
    batch_created(conn, batch, timedelta(hours=100))  # plan pro keeps 168 hours: past half
    return did, lambda: conn.execute("UPDATE drains SET cursor = %s WHERE id = %s", (batch, did))


def dropped(conn, vault, rid):
    did = add_drain(conn, vault, rid, "logplex", "http://127.0.0.1:9/")
    with conn.transaction():
        activity.add_now(conn, rid, did, "dropped", 40)
    return did, lambda: None


def gap(conn, vault, rid):
    sid = add_source(conn, vault, rid)
    conn.execute("INSERT INTO source_gaps (source_id, gap_from, gap_until, reason) "
                 "VALUES (%s, now() - interval '15 days', now() - interval '14 days', 'older than 14 days')", (sid,))
    return sid, lambda: None


CONDITIONS = {"source_paused": paused, "source_over_capacity": over_capacity, "drain_failing": failing,
              "drain_backlog": backlog, "records_dropped": dropped, "gap_recorded": gap}


@pytest.mark.parametrize("condition", sorted(CONDITIONS))
def test_each_condition_raises_one_alert_and_one_recovery(conn, database_url, vault, condition):
    rid = add_resource(conn)
    subject, clear = CONDITIONS[condition](conn, vault, rid)
    t0 = db_now(conn)

    first = alerts.evaluate(conn, rid, t0)
    assert (first.raised, first.recovered) == (1, 0)
    (alert,) = alerts.open_for(conn, rid)
    assert (alert.condition, alert.subject_id, alert.recovered_at) == (condition, subject, None)
    assert alert.message.startswith("alert: ") and "\n" not in alert.message
    # A restart: a fresh connection re-evaluates the same state and announces nothing again.
    with db.connect(database_url, "forgedrain-tests") as fresh:
        again = alerts.evaluate(fresh, rid, t0 + MINUTE)
    assert (again.raised, again.recovered) == (0, 0)

    clear()
    later = t0 + timedelta(minutes=70)  # events are quiet an hour after the last one
    assert alerts.evaluate(conn, rid, later).recovered == 0  # hysteresis: false for a moment only
    assert alerts.open_for(conn, rid)[0].id == alert.id
    done = alerts.evaluate(conn, rid, later + timedelta(minutes=6))
    assert (done.raised, done.recovered) == (0, 1)
    assert alerts.open_for(conn, rid) == []
    with db.connect(database_url, "forgedrain-tests") as fresh:
        assert alerts.evaluate(fresh, rid, later + timedelta(minutes=30)).recovered == 0

    assert notices(conn, rid) == [("raised", condition), ("recovered", condition)]
    assert audit_actions(conn, rid) == ["alert.raised", "alert.recovered"]
    (recovered,) = alerts.recent(conn, rid)
    assert recovered.id == alert.id and recovered.recovered_at == later + timedelta(minutes=6)
    assert alerts.notices_after(conn, rid, 0, 10)[1].message.startswith("recovered: ")


def test_a_paused_source_says_why_and_what_to_do(conn, vault):
    rid = add_resource(conn)
    sid, _ = paused(conn, vault, rid)
    alerts.evaluate(conn, rid)
    (alert,) = alerts.open_for(conn, rid)
    assert alert.subject_name == "jira-app (production)"
    assert alert.message == (
        "alert: source jira-app (production) paused: Atlassian refused the email and API token (HTTP 401 or 403). "
        f"Update the API token in the dashboard or with PUT /v1/resources/{rid}/sources/{sid}; polling resumes "
        "at once.")
    assert "ATATT" not in alert.message  # never the token


def test_a_flapping_condition_is_one_alert(conn, vault):
    rid = add_resource(conn)
    sid, clear = paused(conn, vault, rid)
    t0 = db_now(conn)

    def pause():
        conn.execute("UPDATE sources SET state = 'paused', pause_reason = 'auth_failed' WHERE id = %s", (sid,))

    timeline = [(0, None), (1, clear), (3, pause), (4, clear), (8, None), (12, pause), (13, clear), (17, None)]
    for minute, change in timeline:
        if change:
            change()
        alerts.evaluate(conn, rid, t0 + minute * MINUTE)
        assert notices(conn, rid) == [("raised", "source_paused")], minute
    # False for six minutes, but open only since t0 + 0: the recovery waits for the minimum interval …
    # … which the alert has passed now (open 19 minutes, false 6).
    alerts.evaluate(conn, rid, t0 + 19 * MINUTE)
    assert notices(conn, rid) == [("raised", "source_paused"), ("recovered", "source_paused")]


def test_a_recovery_waits_for_the_minimum_interval(conn, vault):
    rid = add_resource(conn)
    _, clear = paused(conn, vault, rid)
    t0 = db_now(conn)
    alerts.evaluate(conn, rid, t0)
    clear()
    alerts.evaluate(conn, rid, t0 + MINUTE)
    assert alerts.evaluate(conn, rid, t0 + 10 * MINUTE).recovered == 0  # false 9 minutes, open 10
    assert alerts.evaluate(conn, rid, t0 + 15 * MINUTE).recovered == 1


def test_a_deleted_subject_recovers_at_once(conn, vault):
    rid = add_resource(conn)
    did, _ = failing(conn, vault, rid)
    alerts.evaluate(conn, rid)
    conn.execute("DELETE FROM drains WHERE id = %s", (did,))
    assert alerts.evaluate(conn, rid).recovered == 1
    (alert,) = alerts.recent(conn, rid)
    last = alerts.notices_after(conn, rid, 0, 10)[-1]
    assert alert.recovered_at is not None
    assert last.message == f"recovered: drain {alert.subject_name} was deleted; its drain failing alert is closed."


def test_a_short_failure_or_an_idle_drain_is_no_alert(conn, vault):
    rid = add_resource(conn)
    sid = add_source(conn, vault, rid)
    did = add_drain(conn, vault, rid, "logplex", "http://127.0.0.1:9/")
    # Idle for a day, then records arrive and the first attempts fail: failing for minutes, not 15.
    store(conn, rid, sid, [forge_record(1)])
    conn.execute("UPDATE drains SET consecutive_failures = 2, last_delivery_at = now() - interval '1 day' "
                 "WHERE id = %s", (did,))
    assert alerts.evaluate(conn, rid).raised == 0
    assert alerts.evaluate(conn, rid, thresholds=alerts.Thresholds(drain_failing_minutes=1),
                           now=db_now(conn) + 2 * MINUTE).raised == 1


def test_two_evaluators_at_once_raise_each_alert_once(conn, database_url, vault):
    resources = [add_resource(conn) for _ in range(8)]
    for rid in resources:
        paused(conn, vault, rid)
        failing(conn, vault, rid)
    barrier = threading.Barrier(4)
    results, errors = [], []

    def evaluator():
        try:
            with db.connect(database_url, "forgedrain-tests") as own:
                barrier.wait(timeout=10)
                results.append(alerts.evaluate(own))
        except Exception as exc:  # noqa: BLE001 — reported below
            errors.append(exc)

    threads = [threading.Thread(target=evaluator) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert sum(r.raised for r in results) == 16
    for rid in resources:
        assert sorted(notices(conn, rid)) == [("raised", "drain_failing"), ("raised", "source_paused")]


def test_an_evaluator_that_read_before_another_wrote_raises_nothing_again(conn, database_url, vault):
    rid = add_resource(conn)
    paused(conn, vault, rid)
    now = db_now(conn)
    stale = alerts.current(conn, rid, now)  # this evaluator read; then another one ran and wrote
    with db.connect(database_url, "forgedrain-tests") as other:
        assert alerts.evaluate(other, rid, now).raised == 1
    raised, recovered, _ = alerts._apply(conn, rid, stale, now, alerts.Thresholds())
    assert (raised, recovered) == (0, 0)
    assert notices(conn, rid) == [("raised", "source_paused")]


EVALUATE = """
import sys
from broker import alerts, db
with db.connect(sys.argv[1], "forgedrain-tests") as conn:
    alerts.evaluate(conn)
"""


def test_an_evaluator_killed_between_resources_loses_and_repeats_nothing(conn, database_url, vault):
    first, second = sorted((add_resource(conn) for _ in range(2)), key=str)  # evaluated in this order
    for rid in (first, second):
        paused(conn, vault, rid)
    # Hold the second resource's alert lock: the evaluator commits the first, then waits inside the second.
    with db.connect(database_url, "forgedrain-tests") as holder:
        holder.execute("SELECT pg_advisory_lock(%s, hashtext(%s::text))", (alerts.ALERTS_LOCK, str(second)))
        process = subprocess.Popen([sys.executable, "-c", EVALUATE, database_url], cwd=ROOT)
        try:
            deadline = time.monotonic() + 30
            while not alerts.open_for(conn, first) or not _waiting_for_lock(conn):
                assert time.monotonic() < deadline, "the evaluator never reached the second resource"
                time.sleep(0.05)
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
        holder.execute("SELECT pg_advisory_unlock(%s, hashtext(%s::text))", (alerts.ALERTS_LOCK, str(second)))
    assert alerts.open_for(conn, second) == []
    # The next run (another process after the restart) finishes the work: the second raised, the first not again.
    result = subprocess.run([sys.executable, "-c", EVALUATE, database_url], cwd=ROOT, timeout=60)
    assert result.returncode == 0
    assert notices(conn, first) == [("raised", "source_paused")]
    assert notices(conn, second) == [("raised", "source_paused")]


def _waiting_for_lock(conn) -> bool:
    return conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())) AS waiting"
    ).fetchone()["waiting"]


def test_the_alert_line_reaches_the_apps_own_stream_and_ingest_drops_it(web, conn, resource, settings):
    vault = Vault(settings.fernet_keys)
    rid = uuid.UUID(resource["id"])
    paused(conn, vault, rid)
    # Rules on the heroku drain that would filter out every line (only FATAL, only the app's own logs)
    # do not hold back the broker's word to its owner.
    stored_rules = rules.validate({"min_severity": "FATAL", "origins": ["forge"]})
    conn.execute("UPDATE drains SET rules = %s WHERE resource_id = %s AND kind = 'heroku'",
                 (orjson.dumps(stored_rules).decode(), rid))
    receiver, owner_inbox = logplex_receiver()
    with LocalServer(receiver) as server:
        owner_drain = add_drain(conn, vault, rid, "logplex", f"http://127.0.0.1:{server.port}/")
        alerts.evaluate(conn, rid)
        (alert,) = alerts.open_for(conn, rid)
        backlogs = outbox.backlogs(conn, rid)
        assert backlogs[owner_drain].records == 0  # alert lines are for the app's stream only
        assert sum(b.records for b in backlogs.values()) == 1
        deliver_all(make_deliverer(settings.database_url, vault), conn)
        # A Forge record after it: the owner's drain receives that, and no alert line.
        store(conn, rid, None, [forge_record(1, "after the alert")])
        deliver_all(make_deliverer(settings.database_url, vault), conn)
    stream = resource["stream"]
    assert stream.refused == []
    events = [e for r in stream.requests for e in r["events"]]
    first = events[0]
    assert (first["pri"].split(b">")[0], first["host"], first["app"], first["procid"], first["msgid"]) == (
        b"<188", b"forgedrain", b"forgedrain", b"alert", b"-")
    assert first["message"] == alert.message
    # As `heroku logs` shows it: APP[PROCID]: message.
    assert f"{first['app'].decode()}[{first['procid'].decode()}]: {first['message']}".startswith(
        "forgedrain[alert]: alert: source jira-app (production) paused: ")
    assert [e["message"] for r in owner_inbox.requests for e in r["events"]] == ["after the alert"]

    # Heroku sends the app's stream back through the drain: the alert line stops at ingest.
    echoed = [f.replace(b" forgedrain forgedrain ", b" host forgedrain ") for r in stream.requests for f in r["frames"]
              if b" alert - " in f]
    assert len(echoed) == 1
    assert post(web, resource["token"], b"".join(frame(m) for m in echoed), 1).status_code == 204
    assert stored(conn, rid) == []
    ingest_view = web.get(f"/v1/resources/{rid}", headers=resource["auth"]).json["ingest"]
    assert (ingest_view["frames"], ingest_view["own_dropped"]) == (1, 1)


def test_a_resource_without_a_heroku_drain_gets_no_alert_batch(conn, vault):
    rid = add_resource(conn)
    paused(conn, vault, rid)
    assert alerts.evaluate(conn, rid).raised == 1
    assert conn.execute("SELECT count(*) AS n FROM outbox WHERE origin = 'alert'").fetchone()["n"] == 0


def test_the_tick_queues_the_evaluation_once_a_minute_and_a_worker_runs_it(conn, vault, settings, redis_url):
    from worker import context, tick

    resources = [add_resource(conn) for _ in range(3)]
    for rid in resources:
        paused(conn, vault, rid)
    conn.execute("UPDATE resources SET state = 'deprovisioned' WHERE id = %s", (resources[2],))
    control = jobs.queue("control", redisconn.connect(redis_url))
    context.install(settings)
    try:
        tick.run(1)
        assert "alerts" not in control.job_ids  # about once a minute: slot 0 of every twelve 5 s slots
        tick.run(0)
        tick.run(12)  # the next minute's, while the first is still queued: not twice
        assert control.job_ids.count("alerts") == 1
        run_worker(redis_url)
    finally:
        context.install(None)
    assert [len(alerts.open_for(conn, rid)) for rid in resources] == [1, 1, 0]


def test_recovered_alerts_are_forgotten_after_ninety_days_open_ones_never(conn, vault):
    rid = add_resource(conn)
    _, clear = paused(conn, vault, rid)
    failing(conn, vault, rid)
    t0 = db_now(conn)
    alerts.evaluate(conn, rid, t0)
    clear()
    alerts.evaluate(conn, rid, t0 + MINUTE)
    alerts.evaluate(conn, rid, t0 + 20 * MINUTE)
    assert [a.condition for a in alerts.open_for(conn, rid)] == ["drain_failing"]
    assert alerts.forget(conn, 100) == 0
    conn.execute("UPDATE alerts SET recovered_at = now() - interval '91 days' WHERE recovered_at IS NOT NULL")
    assert alerts.forget(conn, 100) == 1
    assert [a.condition for a in alerts.recent(conn, rid)] == ["drain_failing"]
    assert notices(conn, rid) == [("raised", "drain_failing")]
