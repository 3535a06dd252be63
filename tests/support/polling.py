"""Building blocks for polling tests: a resource with sources on the Forge fake, and readers of the outbox."""

from __future__ import annotations

import contextlib
import time
import uuid
from datetime import timedelta

import redis
import requests

from broker import db, outbox, polling, tokens
from broker.forge import ForgeClient
from broker.polling import PollSettings, Poller
from broker.ratelimit import RateLimiter
from broker.vault import Vault

APP = "5f0f8a4e-1f5a-4c3e-9d7b-1a2b3c4d5e6f"
ENV = "prod"
EMAIL = "bot@acme.test"
TOKEN = "ATATT-polling-token"


# conftest.base_env's SECRET_KEY: resource tokens are derived from it (broker.tokens.api_token).
SECRET_KEY = "test-secret-key-" + "x" * 32


def api_token(resource_id) -> str:
    """The FORGEDRAIN_TOKEN of a resource made by :func:`add_resource` (generation 1)."""
    return tokens.api_token(SECRET_KEY, resource_id, 1)


def add_resource(conn, plan: str = "pro") -> uuid.UUID:
    resource_id = uuid.uuid4()
    conn.execute(
        "INSERT INTO resources (id, partner_id, plan, api_token_hash) VALUES (%s, 'forgedrain', %s, %s)",
        (resource_id, plan, tokens.digest(api_token(resource_id))),
    )
    return resource_id


def add_source(conn, vault: Vault, resource_id: uuid.UUID, *, app_id: str = APP, environment_id: str = ENV,
               token: str = TOKEN, checkpoint_ago: timedelta = timedelta(hours=1)) -> uuid.UUID:
    return conn.execute(
        "INSERT INTO sources (resource_id, app_id, environment_id, email, api_token_enc, checkpoint) "
        "VALUES (%s, %s, %s, %s, %s, now() - %s) RETURNING id",
        (resource_id, app_id, environment_id, EMAIL, vault.encrypt(token), checkpoint_ago),
    ).fetchone()["id"]


def outbox_records(conn, source_id=None, after: int = 0) -> list[dict]:
    """Every Forge record in the outbox (of one source), in batches after the batch id ``after``."""
    sql = "SELECT payload FROM outbox WHERE id > %s" + (" AND source_id = %s" if source_id else "") + " ORDER BY id"
    rows = conn.execute(sql, (after, source_id) if source_id else (after,)).fetchall()
    return [record for row in rows for record in outbox.forge_records(bytes(row["payload"]))]


def identity(record: dict) -> bytes:
    return polling.fingerprint(record)


def make_poller(database_url: str, redis_url: str, forge_url: str, vault: Vault, *,
                limit: int = 10_000, period: float = 60.0, lag: float = 120, overlap: float = 300,
                time_box: float = 20.0) -> Poller:
    @contextlib.contextmanager
    def connect():
        with db.connect(database_url, "forgedrain-tests") as conn:
            yield conn

    session = requests.Session()
    return Poller(connect, lambda: ForgeClient(forge_url, session, timeout=(2, 10)),
                  RateLimiter(redis.Redis.from_url(redis_url), limit, period), vault,
                  PollSettings(lag=timedelta(seconds=lag), overlap=timedelta(seconds=overlap),
                               time_box_seconds=time_box))


# Time compressed for budget and cursor tests: the Forge fake's clock runs SPEED times faster than
# the wall clock, and the broker's budget period (25 calls per Atlassian minute) shrinks the same way.
SPEED = 30
PERIOD = 60 / SPEED
BUDGET = 25


class FastClock:
    """Wall-clock time that runs ``SPEED`` times faster, from the moment it was made."""

    def __init__(self) -> None:
        self.origin = time.time()

    def __call__(self) -> float:
        return self.origin + (time.time() - self.origin) * SPEED


def source_row(conn, source_id) -> dict:
    return conn.execute("SELECT * FROM sources WHERE id = %s", (source_id,)).fetchone()
