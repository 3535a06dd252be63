"""Settings: one typed object built from the environment once, at start-up.

Every process (web, worker, clock, release) calls :func:`load` exactly once and
passes the result down. Nothing else in the code base reads ``os.environ``.
A missing or malformed value raises :class:`ConfigError`, whose message names
every offending variable and says what is expected, so a bad deploy fails
loudly in the release phase instead of half-working.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Callable, Mapping
from urllib.parse import urlsplit

from cryptography.fernet import Fernet

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off", ""})


class ConfigError(Exception):
    """The environment does not describe a runnable service."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__(
            "invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems)
        )


@dataclass(frozen=True)
class Settings:
    database_url: str
    redis_url: str
    secret_key: str = field(repr=False)
    fernet_keys: tuple[str, ...] = field(repr=False)
    addon_id: str
    addon_passwords: tuple[str, ...] = field(repr=False)
    sso_salt: str = field(repr=False)
    public_url: str
    forge_api_url: str
    heroku_api_url: str
    heroku_id_url: str
    heroku_client_secret: str | None = field(repr=False)
    allow_private_drains: bool
    clock_tick_seconds: int
    forge_rate_limit: int
    forge_rate_period_seconds: float
    poll_lag_seconds: int
    poll_overlap_seconds: int
    poll_threads: int
    poll_batches: int
    delivery_threads: int
    delivery_jobs: int
    outbox_replay_hours: int
    log_level: str
    metrics_token: str | None = field(default=None, repr=False)
    # Drain ingest volume limit (broker.ingest.VolumeLimit): a multiplier of every plan's frames and
    # bytes per minute (0 turns the limit off), and the window they are counted over.
    ingest_limit_scale: float = 1.0
    ingest_limit_period_seconds: float = 60.0
    # Alerts (broker.alerts): a drain is "failing" once records waited this long through failed attempts.
    alert_drain_failing_minutes: int = 15
    testing: bool = False


# Defaults are the real third-party endpoints; tests and the demo point them
# at local fakes.
DEFAULT_FORGE_API_URL = "https://api.atlassian.com"
DEFAULT_HEROKU_API_URL = "https://api.heroku.com"
DEFAULT_HEROKU_ID_URL = "https://id.heroku.com"

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class _Reader:
    """Collects every problem instead of stopping at the first one."""

    def __init__(self, env: Mapping[str, str]):
        self.env = env
        self.problems: list[str] = []

    def raw(self, name: str, default: str | None) -> str | None:
        value = self.env.get(name)
        if value is None or value.strip() == "":
            if default is None:
                self.problems.append(f"{name} is not set; {EXPECTED[name]}")
            return default
        return value.strip()

    def parse(self, name: str, default: str | None, parser: Callable[[str], object]):
        value = self.raw(name, default)
        if value is None:
            return None
        try:
            return parser(value)
        except ValueError as exc:
            self.problems.append(f"{name} is invalid ({exc}); {EXPECTED[name]}")
            return None


EXPECTED = {
    "DATABASE_URL": "expected a PostgreSQL URL such as postgres://user:pass@host:5432/dbname",
    "REDIS_URL": "expected a Redis URL such as redis://127.0.0.1:6379/0 or rediss://host:port",
    "SECRET_KEY": "expected a random string of at least 32 characters",
    "FERNET_KEYS": (
        "expected one or more comma-separated Fernet keys (32 url-safe base64 bytes, "
        "as printed by `python -c 'from cryptography.fernet import Fernet; "
        "print(Fernet.generate_key().decode())'`); the first one encrypts"
    ),
    "ADDON_ID": "expected the add-on manifest id: lowercase letters, digits and dashes",
    "ADDON_PASSWORDS": (
        "expected one or more comma-separated partner API passwords of 8 to 72 characters "
        "(Heroku's manifest rule); several may be valid at once during a rotation"
    ),
    "SSO_SALT": "expected the manifest's sso_salt, at least 16 characters",
    "PUBLIC_URL": "expected the broker's public base URL, such as https://forgedrain.example.com",
    "FORGE_API_URL": "expected an http(s) base URL of Atlassian's API",
    "HEROKU_API_URL": "expected an http(s) base URL of Heroku's Platform API",
    "HEROKU_ID_URL": "expected an http(s) base URL of Heroku's identity service",
    "HEROKU_CLIENT_SECRET": "expected the add-on's OAuth client secret from Heroku's Partner Portal",
    "ALLOW_PRIVATE_DRAINS": "expected true or false",
    "CLOCK_TICK_SECONDS": "expected a whole number of seconds between 1 and 3600",
    "LOG_LEVEL": "expected one of " + ", ".join(LOG_LEVELS),
    "FORGE_RATE_LIMIT": "expected calls allowed per period per Forge app, 1 to 30 (Atlassian's limit is 30/min)",
    "FORGE_RATE_PERIOD_SECONDS": "expected the rate-limit period in seconds, 0.1 to 3600",
    "FORGE_POLL_LAG_SECONDS": "expected seconds a window ends before now, 0 to 3600",
    "FORGE_POLL_OVERLAP_SECONDS": "expected seconds after which each stretch of log is read once more "
                                  "for late records, 0 to 3600",
    "FORGE_POLL_THREADS": "expected sources one poll job works on at once, 1 to 256",
    "FORGE_POLL_BATCHES": "expected poll jobs kept queued while sources are due, 1 to 64",
    "DELIVERY_THREADS": "expected drains one delivery job works on at once, 2 to 256",
    "DELIVERY_JOBS": "expected delivery jobs kept queued while drains are due, 1 to 64",
    "OUTBOX_REPLAY_HOURS": "expected whole hours (0 to 168) that delivered batches stay for replay",
    "INGEST_LIMIT_SCALE": "expected a multiplier (0 to 1000) of every plan's drain ingest frames and bytes "
                          "per minute; 0 turns the ingest volume limit off",
    "INGEST_LIMIT_PERIOD_SECONDS": "expected the window (1 to 3600 seconds) drain ingest volume is counted "
                                   "over; each plan's per-minute limits are scaled to it",
    "METRICS_TOKEN": (
        "expected a random token of at least 32 characters (letters, digits and -._~+/), "
        "sent by Prometheus as `Authorization: Bearer <token>`; unset turns /metrics off"
    ),
}


def _url(schemes: tuple[str, ...]) -> Callable[[str], str]:
    def parse(value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in schemes:
            raise ValueError(f"scheme must be one of {', '.join(schemes)}")
        if not parts.hostname and parts.scheme not in ("unix",):
            # postgres:///db?host=/socket is a valid libpq URL with no host part
            if not (parts.scheme in ("postgres", "postgresql") and "host=" in parts.query):
                raise ValueError("missing host")
        return value

    return parse


def _base_url(value: str) -> str:
    _url(("http", "https"))(value)
    return value.rstrip("/")


def _bool(value: str) -> bool:
    word = value.lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError(f"{value!r} is not a boolean")


def _secret_key(value: str) -> str:
    if len(value) < 32:
        raise ValueError(f"only {len(value)} characters")
    return value


def _fernet_keys(value: str) -> tuple[str, ...]:
    keys = tuple(k.strip() for k in value.split(",") if k.strip())
    if not keys:
        raise ValueError("no key given")
    for position, key in enumerate(keys, start=1):
        try:
            Fernet(key)
        except (ValueError, TypeError):
            raise ValueError(f"key {position} is not a valid Fernet key") from None
    return keys


def _passwords(value: str) -> tuple[str, ...]:
    passwords = tuple(p.strip() for p in value.split(",") if p.strip())
    if not passwords:
        raise ValueError("no password given")
    for position, password in enumerate(passwords, start=1):
        if not 8 <= len(password) <= 72:
            raise ValueError(f"password {position} has {len(password)} characters")
    return passwords


def _addon_id(value: str) -> str:
    if not value or not all(c.islower() or c.isdigit() or c == "-" for c in value):
        raise ValueError(f"{value!r} has characters other than a-z, 0-9 and -")
    return value


def _salt(value: str) -> str:
    if len(value) < 16:
        raise ValueError(f"only {len(value)} characters")
    return value


def _optional_secret(value: str) -> str | None:
    if value == "":
        return None
    if len(value) < 16:
        raise ValueError(f"only {len(value)} characters")
    return value


# RFC 6750's b64token: what a Bearer credential may contain.
_TOKEN_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~+/")


def _bearer_token(value: str) -> str | None:
    if value == "":
        return None
    if len(value) < 32:
        raise ValueError(f"only {len(value)} characters")
    if not set(value.rstrip("=")) <= _TOKEN_CHARACTERS:
        raise ValueError("characters other than letters, digits and -._~+/")
    return value


def _tick(value: str) -> int:
    number = int(value)
    if not 1 <= number <= 3600:
        raise ValueError(f"{number} is out of range")
    return number


def _int_range(low: int, high: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        number = int(value)
        if not low <= number <= high:
            raise ValueError(f"{number} is out of range")
        return number

    return parse


def _float_range(low: float, high: float) -> Callable[[str], float]:
    def parse(value: str) -> float:
        number = float(value)
        if not low <= number <= high:
            raise ValueError(f"{number} is out of range")
        return number

    return parse


def _log_level(value: str) -> str:
    level = value.upper()
    if level not in LOG_LEVELS:
        raise ValueError(f"{value!r} is not a log level")
    return level


def load(env: Mapping[str, str] | None = None, *, testing: bool = False) -> Settings:
    """Build :class:`Settings` from ``env`` (default: the process environment)."""
    r = _Reader(os.environ if env is None else env)
    values = dict(
        database_url=r.parse("DATABASE_URL", None, _url(("postgres", "postgresql"))),
        redis_url=r.parse("REDIS_URL", None, _url(("redis", "rediss", "unix"))),
        secret_key=r.parse("SECRET_KEY", None, _secret_key),
        fernet_keys=r.parse("FERNET_KEYS", None, _fernet_keys),
        addon_id=r.parse("ADDON_ID", "forgedrain", _addon_id),
        addon_passwords=r.parse("ADDON_PASSWORDS", None, _passwords),
        sso_salt=r.parse("SSO_SALT", None, _salt),
        public_url=r.parse("PUBLIC_URL", None, _base_url),
        forge_api_url=r.parse("FORGE_API_URL", DEFAULT_FORGE_API_URL, _base_url),
        heroku_api_url=r.parse("HEROKU_API_URL", DEFAULT_HEROKU_API_URL, _base_url),
        heroku_id_url=r.parse("HEROKU_ID_URL", DEFAULT_HEROKU_ID_URL, _base_url),
        heroku_client_secret=r.parse("HEROKU_CLIENT_SECRET", "", _optional_secret),
        allow_private_drains=r.parse("ALLOW_PRIVATE_DRAINS", "false", _bool),
        # 5 s: a source that falls due between ticks waits at most this long
        # (bench/capacity.py); a tick costs ~15 ms of database work.
        clock_tick_seconds=r.parse("CLOCK_TICK_SECONDS", "5", _tick),
        log_level=r.parse("LOG_LEVEL", "INFO", _log_level),
        # 25 of Atlassian's 30 calls/min: headroom for the owner's own console and CLI use.
        forge_rate_limit=r.parse("FORGE_RATE_LIMIT", "25", _int_range(1, 30)),
        forge_rate_period_seconds=r.parse("FORGE_RATE_PERIOD_SECONDS", "60", _float_range(0.1, 3600)),
        # Atlassian's own sample stops a minute short of now: records land late.
        poll_lag_seconds=r.parse("FORGE_POLL_LAG_SECONDS", "10", _int_range(0, 3600)),
        poll_overlap_seconds=r.parse("FORGE_POLL_OVERLAP_SECONDS", "600", _int_range(0, 3600)),
        poll_threads=r.parse("FORGE_POLL_THREADS", "32", _int_range(1, 256)),
        poll_batches=r.parse("FORGE_POLL_BATCHES", "2", _int_range(1, 64)),
        delivery_threads=r.parse("DELIVERY_THREADS", "16", _int_range(2, 256)),
        delivery_jobs=r.parse("DELIVERY_JOBS", "4", _int_range(1, 64)),
        outbox_replay_hours=r.parse("OUTBOX_REPLAY_HOURS", "24", _int_range(0, 168)),
        # Unset, /metrics answers 404: nothing about the fleet is served to anyone.
        metrics_token=r.parse("METRICS_TOKEN", "", _bearer_token),
        # 1: the plans' own ingest limits (broker/plans.py), far above what a normal app sends.
        ingest_limit_scale=r.parse("INGEST_LIMIT_SCALE", "1", _float_range(0, 1000)),
        ingest_limit_period_seconds=r.parse("INGEST_LIMIT_PERIOD_SECONDS", "60", _float_range(1, 3600)),
        # 15 min: long enough that a receiver's restart or a short outage (retried, nothing lost) is no alert.
        alert_drain_failing_minutes=r.parse("ALERT_DRAIN_FAILING_MINUTES", "15", _int_range(1, 1440)),
    )
    if r.problems:
        raise ConfigError(r.problems)
    return Settings(testing=testing, **values)


def load_or_exit(env: Mapping[str, str] | None = None) -> Settings:
    """Entry points use this: a bad environment prints why and exits with status 2."""
    try:
        return load(env)
    except ConfigError as exc:
        print(f"forgedrain: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
