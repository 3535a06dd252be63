"""README promise (Metrics): each ``/metrics`` scrape's queries are capped (2 s), so a database that
cannot answer — here, a table held under an exclusive lock — fails the scrape with 503 instead of
holding the web's thread and connection for as long as the lock lasts; the next scrape, once the
database answers, is whole again.

The verdict is on events, not on elapsed time: the scrape is seen waiting on the lock in
``pg_stat_activity``, then answers 503 (``QueryCanceled``, a statement timeout) while the lock is
still held by this test, which never lets it go before the answer. That the cap is the promised
2 s is read on the database's own clock, from ``pg_stat_activity``: the blocked statement's start,
and the start of the ROLLBACK its cancellation led to on the same backend.
"""

from __future__ import annotations

import secrets
import threading
import time

import psycopg
import pytest

from broker import config, db
from web import create_app

METRICS_TOKEN = secrets.token_hex(32)
# Long enough for any loaded machine to run a 2 s timeout; a scrape without a cap never returns
# while the lock is held, so this is only how long the test waits before saying so.
ANSWER_DEADLINE_SECONDS = 60


@pytest.fixture
def metrics_app(env):
    app = create_app(config.load({**env, "METRICS_TOKEN": METRICS_TOKEN}, testing=True))
    yield app
    app.extensions["forgedrain"].db.close()


def wait_for(condition, what: str, seconds: float = 30.0):
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


def scrape_waiting_on_a_lock(conn) -> dict | None:
    """The backend of the scrape waiting on the lock: its pid and its statement's start."""
    return conn.execute(
        "SELECT pid, query_start FROM pg_stat_activity WHERE application_name = 'forgedrain-web' "
        "AND wait_event_type = 'Lock' AND datname = current_database()").fetchone()


def test_a_scrape_blocked_by_the_database_answers_503_while_the_block_lasts(metrics_app, database_url, conn):
    client = metrics_app.test_client()
    headers = {"Authorization": f"Bearer {METRICS_TOKEN}"}
    assert client.get("/metrics", headers=headers).status_code == 200  # the pool is open and healthy

    answers: list = []
    with db.connect(database_url, "promise-lock-holder") as holder:
        holder.execute("BEGIN")
        holder.execute("LOCK TABLE drains IN ACCESS EXCLUSIVE MODE")  # every scrape reads drains
        scrape = threading.Thread(target=lambda: answers.append(client.get("/metrics", headers=headers)),
                                  daemon=True)
        scrape.start()
        waiting = wait_for(lambda: scrape_waiting_on_a_lock(conn), "the scrape to wait on the locked table")
        scrape.join(ANSWER_DEADLINE_SECONDS)
        assert not scrape.is_alive(), "the scrape waited for the lock instead of giving up"
        # The lock was never released: the scrape ended by its own cap.
        assert holder.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        assert holder.execute("SELECT count(*) AS n FROM pg_locks WHERE pid = pg_backend_pid() AND granted "
                              "AND mode = 'AccessExclusiveLock' AND relation = 'drains'::regclass"
                              ).fetchone()["n"] == 1
        holder.execute("ROLLBACK")
    [answer] = answers
    assert answer.status_code == 503
    assert answer.get_data(as_text=True) == "postgres unavailable (QueryCanceled)\n"
    assert answer.headers["Retry-After"] == "15"
    # The cap is 2 s, on the database's clock: the ROLLBACK the scrape sent once its statement was
    # cancelled (the last statement of that backend: the pool sends nothing when a connection comes
    # back) started 2 s after the blocked statement, plus the round trip that told the client.
    # A cap of 30 s, or of 0.5 s, fails here.
    after_cancel = conn.execute("SELECT query, state, query_start FROM pg_stat_activity WHERE pid = %s",
                                (waiting["pid"],)).fetchone()
    assert (after_cancel["query"], after_cancel["state"]) == ("ROLLBACK", "idle")
    capped_after = (after_cancel["query_start"] - waiting["query_start"]).total_seconds()
    assert 2.0 <= capped_after < 10.0, f"the statement was cancelled after {capped_after:.3f} s, not 2 s"
    # The connection went back to the pool usable, and the next scrape is whole.
    after = client.get("/metrics", headers=headers)
    assert after.status_code == 200 and "forgedrain_drains" in after.get_data(as_text=True)
