"""Fixtures: real PostgreSQL and Redis, one fresh database per test.

``./scripts/test`` exports DATABASE_URL and REDIS_URL (private instances it
started, or the servers the caller named). A session-wide template database
gets every migration once; each test that asks for ``database_url`` gets its
own copy (``CREATE DATABASE ... TEMPLATE``), so tests can commit freely and
never see each other's rows.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from cryptography.fernet import Fernet
from psycopg import sql

from broker import config, db, migrate, redisconn
from tests.support.polling import SECRET_KEY

ROOT = Path(__file__).resolve().parent.parent


def _required(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.exit(f"{name} is not set: run the suite with ./scripts/test", returncode=2)
    return value


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
    client.flushdb()
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
