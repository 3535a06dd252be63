"""README promise (Metrics): each ``/metrics`` scrape's queries are capped (2 s), so a database that
cannot answer — here, a table held under an exclusive lock — fails the scrape with 503 instead of
holding the web's thread and connection for as long as the lock lasts; the next scrape, once the
database answers, is whole again.

The verdict is on events, not on elapsed time: the scrape is seen waiting on the lock in
``pg_stat_activity``, then answers 503 (``QueryCanceled``, a statement timeout) while the lock is
still held by this test, which never lets it go before the answer.
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


def scrape_waiting_on_a_lock(conn) -> bool:
    return conn.execute(
        "SELECT count(*) AS n FROM pg_stat_activity WHERE application_name = 'forgedrain-web' "
        "AND wait_event_type = 'Lock' AND datname = current_database()").fetchone()["n"] > 0


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
        wait_for(lambda: scrape_waiting_on_a_lock(conn), "the scrape to wait on the locked table")
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
    # The connection went back to the pool usable, and the next scrape is whole.
    after = client.get("/metrics", headers=headers)
    assert after.status_code == 200 and "forgedrain_drains" in after.get_data(as_text=True)
