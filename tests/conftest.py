"""Fixtures: real PostgreSQL and Redis, one fresh database per test.

``./scripts/test`` exports DATABASE_URL and REDIS_URL (private instances it
started, or the servers the caller named). A session-wide template database
gets every migration once; each test that asks for ``database_url`` gets its
own copy (``CREATE DATABASE ... TEMPLATE``), so tests can commit freely and
never see each other's rows.

Under pytest-xdist (``./scripts/test`` runs the suite on several workers) each
worker is a process of its own: its template is named after its pid, its
databases are random, and it uses a Redis database of its own (REDIS_URL's
number plus the worker's index), since tests FLUSH theirs. The slowest tests
are collected first (:mod:`tests.support.schedule`), so they start at once
and overlap the rest instead of ending the run alone.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import redis
from cryptography.fernet import Fernet
from psycopg import sql

from broker import config, db, migrate, redisconn
from tests.support import schedule
from tests.support.polling import SECRET_KEY

ROOT = Path(__file__).resolve().parent.parent


def _required(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.exit(f"{name} is not set: run the suite with ./scripts/test", returncode=2)
    return value


def worker_index() -> int | None:
    """This process's index among pytest-xdist's workers ("gw3" → 3); None when not under xdist."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    return int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else None


def with_redis_database(url: str, offset: int) -> str:
    """``url`` with its database number (the path, 0 when absent) moved up by ``offset``."""
    parts = urlsplit(url)
    number = int(parts.path.strip("/") or 0)
    return urlunsplit(parts._replace(path=f"/{number + offset}"))


def pytest_configure(config: pytest.Config) -> None:
    # Before any fixture or subprocess reads it: each worker flushes only its own Redis database.
    index = worker_index()
    if index is not None and os.environ.get("REDIS_URL"):
        os.environ["REDIS_URL"] = with_redis_database(os.environ["REDIS_URL"], index)
    # Hypothesis's own timing verdict ("data generation is too slow") fails a test on a loaded
    # machine for nothing the test checks; the suite makes no timing verdicts.
    from hypothesis import HealthCheck, settings as hypothesis_settings

    hypothesis_settings.register_profile("forgedrain", deadline=None,
                                         suppress_health_check=[HealthCheck.too_slow])
    hypothesis_settings.load_profile("forgedrain")


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)


def pytest_make_parametrize_id(config: pytest.Config, val: object, argname: str) -> str | None:
    # xdist's workers each collect the suite and must find the same test ids: a parameter made
    # with a fresh uuid4() gets a placeholder in its id (pytest numbers any ids that then repeat).
    text = val.decode("ascii", "backslashreplace") if isinstance(val, bytes) else val
    if isinstance(text, str) and _UUID.search(text):
        return _UUID.sub("<uuid>", text)
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items[:] = schedule.slowest_first(items)


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def _admin(server_url: str) -> psycopg.Connection:
    return psycopg.connect(db.conninfo(server_url, "forgedrain-tests"), autocommit=True)


@pytest.fixture(scope="session")
def server_url() -> str:
    return _required("DATABASE_URL")


@pytest.fixture(scope="session")
def template_database(server_url: str):
    name = f"forgedrain_test_tpl_{os.getpid()}"
    with _admin(server_url) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    with db.connect(with_database(server_url, name)) as conn:
        migrate.migrate(conn)
    yield name
    with _admin(server_url) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def empty_database_url(server_url: str):
    """A database with nothing in it, not even migrations."""
    name = f"forgedrain_test_{uuid.uuid4().hex[:12]}"
    with _admin(server_url) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield with_database(server_url, name)
    with _admin(server_url) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@contextlib.contextmanager
def migrated_database(server_url: str, template_database: str):
    """A fresh database cloned from the migrated template; dropped afterwards."""
    name = f"forgedrain_test_{uuid.uuid4().hex[:12]}"
    with _admin(server_url) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template_database)
            )
        )
    try:
        yield with_database(server_url, name)
    finally:
        with _admin(server_url) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def database_url(server_url: str, template_database: str):
    """A database with every migration applied, private to this test."""
    with migrated_database(server_url, template_database) as url:
        yield url


@pytest.fixture
def conn(database_url: str):
    with db.connect(database_url, "forgedrain-tests") as connection:
        yield connection


@pytest.fixture
def redis_url() -> str:
    url = _required("REDIS_URL")
    client = redisconn.connect(url)
    try:
        client.flushdb()
    except redis.ResponseError as exc:
        if "out of range" not in str(exc):
            raise
        # pytest.exit would only crash the xdist worker, its message lost: fail the test instead.
        pytest.fail(f"{url} names a database this Redis does not have ({exc}): each xdist worker uses "
                    "REDIS_URL's number plus its index; run fewer workers (-n) or let ./scripts/test "
                    "start its own Redis", pytrace=False)
    finally:
        client.close()
    return url


@pytest.fixture(scope="session")
def fernet_key() -> str:
    return Fernet.generate_key().decode()


def base_env(database_url: str, redis_url: str, fernet_key: str) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "SECRET_KEY": SECRET_KEY,
        "FERNET_KEYS": fernet_key,
        "ADDON_ID": "forgedrain",
        "ADDON_PASSWORDS": "forgedrain-dev-password",
        "SSO_SALT": "forgedrain-dev-sso-salt",
        "PUBLIC_URL": "http://127.0.0.1:5000",
        "FORGE_API_URL": "http://127.0.0.1:9",
        "HEROKU_API_URL": "http://127.0.0.1:9",
        "HEROKU_ID_URL": "http://127.0.0.1:9",
        "ALLOW_PRIVATE_DRAINS": "true",
        "LOG_LEVEL": "INFO",
    }


@pytest.fixture
def env(database_url: str, redis_url: str, fernet_key: str) -> dict[str, str]:
    """A complete, valid environment for the processes under test."""
    return base_env(database_url, redis_url, fernet_key)


@pytest.fixture
def settings(env: dict[str, str]) -> config.Settings:
    return config.load(env, testing=True)


@pytest.fixture
def app(settings: config.Settings):
    from web import create_app

    application = create_app(settings)
    yield application
    application.extensions["forgedrain"].db.close()
