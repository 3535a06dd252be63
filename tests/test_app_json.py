"""app.json, Procfile and .python-version: what Heroku reads when it creates and releases the app.

The schema in tests/schemas/app-json.schema.json says where its rules come from (its "$comment").
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path

import jsonschema

ROOT = Path(__file__).parent.parent
APP_JSON = ROOT / "app.json"
PROCFILE = APP_JSON.parent / "Procfile"
PYTHON_VERSION = APP_JSON.parent / ".python-version"
SCHEMA = Path(__file__).parent / "schemas" / "app-json.schema.json"

SECRET_ENV_VARS = ("SECRET_KEY", "ADDON_PASSWORDS", "SSO_SALT")

# Procfile line format, "<process type>: <command>"
# (https://devcenter.heroku.com/articles/procfile).
PROCFILE_LINE = re.compile(r"^([A-Za-z0-9_-]+):\s*(.+)$")


def load_app_json() -> dict:
    return json.loads(APP_JSON.read_text(encoding="utf-8"))


def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


def schema_errors(document: object) -> list[str]:
    return [
        f"{'/'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message}"
        for error in validator().iter_errors(document)
    ]


def procfile_entries() -> dict[str, str]:
    entries: dict[str, str] = {}
    for line in PROCFILE.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = PROCFILE_LINE.match(line)
        assert match, f"not a Procfile line: {line!r}"
        name, command = match.groups()
        assert name not in entries, f"process type {name!r} is declared twice"
        entries[name] = command.strip()
    return entries


def addon_service(addon: str | dict) -> str:
    plan = addon if isinstance(addon, str) else addon["plan"]
    return plan.split(":", 1)[0]


def test_it_validates_app_json_against_the_schema():
    assert schema_errors(load_app_json()) == []


def test_it_rejects_an_unknown_top_level_key():
    document = copy.deepcopy(load_app_json())
    document["deploy_hooks"] = {"after": "echo hi"}

    errors = schema_errors(document)

    assert any("deploy_hooks" in error for error in errors), errors


def test_it_rejects_a_formation_given_as_an_array():
    document = copy.deepcopy(load_app_json())
    document["formation"] = [{"process": "web", "quantity": 1, "size": "basic"}]

    errors = schema_errors(document)

    assert any(error.startswith("formation:") for error in errors), errors


def test_it_rejects_an_unknown_dyno_size_and_an_unknown_env_key():
    document = copy.deepcopy(load_app_json())
    document["formation"]["web"]["size"] = "huge"
    document["env"]["SECRET_KEY"]["default"] = "nope"

    errors = schema_errors(document)

    assert any(error.startswith("formation/web/size:") for error in errors), errors
    assert any(error.startswith("env/SECRET_KEY:") for error in errors), errors


def test_it_generates_every_secret_env_var():
    env = load_app_json()["env"]
    for name in SECRET_ENV_VARS:
        assert isinstance(env.get(name), dict), f"{name} is missing or not an object"
        assert env[name].get("generator") == "secret", f"{name} has no generator 'secret'"


def test_it_documents_and_requires_fernet_keys():
    fernet_keys = load_app_json()["env"].get("FERNET_KEYS")

    assert isinstance(fernet_keys, dict), "FERNET_KEYS is missing or not an object"
    assert "fernet" in fernet_keys.get("description", "").lower()
    assert fernet_keys.get("required") is True


def test_it_provisions_postgres_and_redis():
    services = {addon_service(addon) for addon in load_app_json()["addons"]}

    assert "heroku-postgresql" in services
    assert "heroku-redis" in services


def test_it_declares_web_worker_and_a_single_clock():
    formation = load_app_json()["formation"]

    assert {"web", "worker", "clock"} <= formation.keys()
    assert formation["clock"]["quantity"] == 1


def test_it_has_no_postdeploy_script():
    # Migrations belong in the release phase: postdeploy runs once, when the app is created.
    assert "postdeploy" not in load_app_json().get("scripts", {})


def test_it_runs_migrations_in_the_release_phase():
    entries = procfile_entries()

    assert "release" in entries
    assert shlex.split(entries["release"])[:3] == ["python", "-m", "broker.migrate"]


def test_it_declares_web_worker_and_clock_processes():
    entries = procfile_entries()

    for name in ("web", "worker", "clock"):
        assert entries.get(name), f"Procfile has no {name}: line"


def test_it_pins_a_python_3_version():
    assert PYTHON_VERSION.is_file()
    assert re.fullmatch(r"3\.\d+(\.\d+)?", PYTHON_VERSION.read_text(encoding="utf-8").strip())


def test_it_scales_only_process_types_the_procfile_declares():
    assert load_app_json()["formation"].keys() <= procfile_entries().keys()
