import pytest
from cryptography.fernet import Fernet

from broker import config
from broker.config import ConfigError


def valid_env(**overrides: str) -> dict[str, str]:
    env = {
        "DATABASE_URL": "postgres://u:p@db.example.com:5432/forgedrain",
        "REDIS_URL": "rediss://:p@redis.example.com:6380",
        "SECRET_KEY": "s" * 40,
        "FERNET_KEYS": Fernet.generate_key().decode(),
        "ADDON_PASSWORDS": "partner-password-1",
        "SSO_SALT": "a-salt-of-sixteen-chars",
        "PUBLIC_URL": "https://forgedrain.example.com/",
    }
    env.update(overrides)
    return {k: v for k, v in env.items() if v is not None}


def problems(env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as info:
        config.load(env)
    return str(info.value)


def test_it_builds_typed_settings_with_defaults():
    settings = config.load(valid_env())
    assert settings.addon_id == "forgedrain"
    assert settings.addon_passwords == ("partner-password-1",)
    assert settings.public_url == "https://forgedrain.example.com"
    assert settings.forge_api_url == "https://api.atlassian.com"
    assert settings.heroku_api_url == "https://api.heroku.com"
    assert settings.heroku_id_url == "https://id.heroku.com"
    assert settings.allow_private_drains is False
    assert settings.clock_tick_seconds == 5


def test_it_reads_lists_and_booleans():
    k1, k2 = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings = config.load(valid_env(
        FERNET_KEYS=f"{k1}, {k2}",
        ADDON_PASSWORDS="new-password-2,old-password-1",
        ALLOW_PRIVATE_DRAINS="yes",
        FORGE_API_URL="http://127.0.0.1:8001/",
    ))
    assert settings.fernet_keys == (k1, k2)
    assert settings.addon_passwords == ("new-password-2", "old-password-1")
    assert settings.allow_private_drains is True
    assert settings.forge_api_url == "http://127.0.0.1:8001"


@pytest.mark.parametrize("name", [
    "DATABASE_URL", "REDIS_URL", "SECRET_KEY", "FERNET_KEYS",
    "ADDON_PASSWORDS", "SSO_SALT", "PUBLIC_URL",
])
def test_a_missing_required_variable_is_named_with_what_is_expected(name):
    message = problems(valid_env(**{name: None}))
    assert f"{name} is not set; expected" in message


@pytest.mark.parametrize("name, value, detail", [
    ("DATABASE_URL", "mysql://db/x", "scheme must be one of postgres, postgresql"),
    ("REDIS_URL", "http://redis", "scheme must be one of redis, rediss, unix"),
    ("SECRET_KEY", "short", "only 5 characters"),
    ("FERNET_KEYS", "not-a-key", "key 1 is not a valid Fernet key"),
    ("ADDON_PASSWORDS", "ok-password,short", "password 2 has 5 characters"),
    ("ADDON_ID", "Forge Drain", "characters other than"),
    ("SSO_SALT", "tiny", "only 4 characters"),
    ("PUBLIC_URL", "forgedrain.example.com", "scheme must be one of http, https"),
    ("HEROKU_ID_URL", "https://", "missing host"),
    ("ALLOW_PRIVATE_DRAINS", "maybe", "'maybe' is not a boolean"),
    ("CLOCK_TICK_SECONDS", "0", "out of range"),
    ("CLOCK_TICK_SECONDS", "soon", "invalid literal"),
    ("LOG_LEVEL", "LOUD", "not a log level"),
    ("METRICS_TOKEN", "short-token", "only 11 characters"),
    ("METRICS_TOKEN", "a token with spaces in it, 32 characters", "characters other than"),
])
def test_a_malformed_variable_is_named_with_the_problem(name, value, detail):
    message = problems(valid_env(**{name: value}))
    assert f"{name} is invalid" in message
    assert detail in message
    assert "expected" in message


def test_the_metrics_token_is_optional_and_hidden():
    assert config.load(valid_env()).metrics_token is None
    token = "0123456789abcdef" * 4
    settings = config.load(valid_env(METRICS_TOKEN=token))
    assert settings.metrics_token == token
    assert token not in repr(settings)
    assert token not in problems(valid_env(METRICS_TOKEN=token, SECRET_KEY="x"))


def test_it_reports_every_problem_at_once():
    message = problems(valid_env(DATABASE_URL=None, SECRET_KEY="x", ALLOW_PRIVATE_DRAINS="2"))
    assert "DATABASE_URL" in message and "SECRET_KEY" in message and "ALLOW_PRIVATE_DRAINS" in message


def test_problems_never_echo_secret_values():
    message = problems(valid_env(SECRET_KEY="hunter2", FERNET_KEYS="hunter3-not-a-key",
                                 ADDON_PASSWORDS="hunter4"))
    for secret in ("hunter2", "hunter3", "hunter4"):
        assert secret not in message


def test_settings_repr_hides_secrets():
    env = valid_env()
    text = repr(config.load(env))
    assert env["SECRET_KEY"] not in text
    assert env["FERNET_KEYS"] not in text
    assert "partner-password-1" not in text


def test_entry_points_exit_with_status_2_and_the_message(capsys):
    with pytest.raises(SystemExit) as info:
        config.load_or_exit(valid_env(PUBLIC_URL=None))
    assert info.value.code == 2
    assert "PUBLIC_URL is not set" in capsys.readouterr().err


def test_nothing_reads_the_environment_or_connects_at_import():
    """Importing every module with an empty environment must succeed silently."""
    import subprocess
    import sys
    from pathlib import Path

    modules = ["broker.config", "broker.db", "broker.vault", "broker.migrate", "broker.jobs",
               "broker.logs", "broker.redisconn", "web", "web.health", "worker", "worker.clock",
               "worker.tick", "worker.rq_worker", "worker.context", "worker.__main__"]
    code = "import importlib, sys\nfor m in sys.argv[1:]: importlib.import_module(m)"
    result = subprocess.run(
        [sys.executable, "-c", code, *modules],
        cwd=Path(__file__).resolve().parent.parent,
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
