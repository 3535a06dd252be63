"""addon-manifest.json: kensa's ManifestCheck plus what Forge Drain's manifest must say."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Callable

import pytest

ROOT = Path(__file__).parent.parent
MANIFEST = ROOT / "addon-manifest.json"
APP_JSON = ROOT / "app.json"

# heroku/kensa lib/heroku/kensa/manifest.rb: Manifest::REGIONS.
KENSA_REGIONS = frozenset({"us", "eu", "frankfurt", "oregon", "tokyo", "virginia", "*"})
# heroku/kensa lib/heroku/kensa/check.rb, ManifestCheck "all config vars are uppercase strings".
KENSA_CONFIG_VAR = re.compile(r"[A-Z][0-9A-Z_]+")


def load_manifest() -> dict:
    return json.loads(MANIFEST.read_text(encoding="utf-8"))


def _uses_ssl(url: object) -> bool:
    # kensa: url =~ /^https:/ (a nil or non-string value fails).
    return isinstance(url, str) and url.startswith("https:")


def kensa_manifest_errors(data: object) -> list[str]:
    """Every check of kensa's ManifestCheck#call!, in its order; returns the failures.

    Ported from heroku/kensa lib/heroku/kensa/check.rb (class ManifestCheck; commits
    8d6fff5ab49911e24374f028390f34bde3397c0b and 063cfc9e9973d92bec53a32937e8b92d4c7b912a)
    and lib/heroku/kensa/manifest.rb (Manifest::REGIONS). Two checks follow the later
    kensa-derived code (conify's check.rb, "taken from heroku/kensa master"), which is a
    superset of the stored kensa versions: the region list may hold "*" instead of "us",
    and the config-var prefix is api.config_vars_prefix when set, else the id upper-cased
    with "-" turned into "_" (the stored kensa versions use only the id-derived prefix;
    for this manifest both give FORGEDRAIN). kensa stops at the first failure; this
    helper goes on where it safely can so a test shows every problem at once. It stops
    early only where kensa would crash on a wrong type.
    """
    errors: list[str] = []
    if not isinstance(data, dict):
        return ["manifest is not a JSON object"]

    # test "manifest id key"
    if "id" not in data:
        errors.append("id: missing")
    elif not isinstance(data["id"], str):
        errors.append("id: not a string")
    elif data["id"] == "":
        errors.append("id: blank")

    # test "manifest api key"
    if "api" not in data:
        return errors + ["api: missing"]
    api = data["api"]
    if not isinstance(api, dict):
        return errors + ["api: not a hash"]

    regions = api.get("regions")
    if not isinstance(regions, list):
        errors.append("api.regions: missing or not an array")
    else:
        if "us" not in regions and "*" not in regions:
            errors.append('api.regions: must contain "us" (or "*")')
        unknown = [r for r in regions if r not in KENSA_REGIONS]
        if unknown:
            errors.append(f"api.regions: unknown region names {unknown!r}")

    if "password" not in api or api["password"] == "":
        errors.append("api.password: missing or blank")
    if "test" not in api:
        errors.append("api.test: missing")
    if "production" not in api:
        errors.append("api.production: missing")

    production = api.get("production")
    if isinstance(production, dict):
        if not _uses_ssl(production.get("base_url")):
            errors.append("api.production.base_url: does not use SSL (https:)")
        if not _uses_ssl(production.get("sso_url")):
            errors.append("api.production.sso_url: does not use SSL (https:)")
    elif not _uses_ssl(production):
        errors.append("api.production: does not use SSL (https:)")

    if "config_vars" in api:
        config_vars = api["config_vars"]
        if not isinstance(config_vars, list):
            errors.append("api.config_vars: not an array")
        elif not config_vars:
            errors.append("api.config_vars: empty")
        else:
            for name in config_vars:
                if not (isinstance(name, str) and KENSA_CONFIG_VAR.fullmatch(name)):
                    errors.append(f"api.config_vars: {name!r} is not a valid ENV key")
            id_key = data["id"].upper().replace("-", "_") if isinstance(data.get("id"), str) else ""
            prefix = api.get("config_vars_prefix") or id_key
            for name in config_vars:
                if not (isinstance(name, str) and name.startswith(f"{prefix}_")):
                    errors.append(
                        f"api.config_vars: {name!r} must be prefixed with {prefix}_"
                    )

    # check "deprecated fields"
    if "username" in api:
        errors.append("api.username: deprecated, authenticate with the add-on id")
    return errors


def test_it_passes_every_kensa_manifest_check():
    assert kensa_manifest_errors(load_manifest()) == []


def _mutate(change: Callable[[dict], None]) -> dict:
    manifest = copy.deepcopy(load_manifest())
    change(manifest)
    return manifest


def _set(path: tuple[str, ...], value: object) -> Callable[[dict], None]:
    def change(manifest: dict) -> None:
        target = manifest
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return change


def _delete(path: tuple[str, ...]) -> Callable[[dict], None]:
    def change(manifest: dict) -> None:
        target = manifest
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return change


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (_set(("api", "production", "base_url"), "http://forgedrain.example.com/heroku/resources"),
         "api.production.base_url"),
        (_set(("api", "production", "sso_url"), "http://forgedrain.example.com/sso/login"),
         "api.production.sso_url"),
        (_set(("api", "config_vars"), ["FORGEDRAIN_URL", "DRAIN_TOKEN"]),
         "must be prefixed with FORGEDRAIN_"),
        (_set(("api", "config_vars"), ["FORGEDRAIN_url"]), "is not a valid ENV key"),
        (_set(("api", "config_vars"), []), "api.config_vars: empty"),
        (_set(("api", "regions"), ["eu"]), 'must contain "us"'),
        (_set(("api", "regions"), ["us", "sydney"]), "unknown region names"),
        (_set(("api", "password"), ""), "api.password"),
        (_delete(("api", "test")), "api.test: missing"),
        (_delete(("api", "production")), "api.production"),
        (_set(("api", "username"), "heroku"), "api.username"),
        (_set(("id",), ""), "id: blank"),
        (_set(("id",), 42), "id: not a string"),
        (_set(("api",), "nope"), "api: not a hash"),
    ],
)
def test_it_makes_the_kensa_checker_reject_a_broken_manifest(change, expected):
    errors = kensa_manifest_errors(_mutate(change))

    assert any(expected in error for error in errors), errors


def test_it_accepts_the_wildcard_region_and_a_dashed_id_prefix():
    manifest = _mutate(_set(("api", "regions"), ["*"]))
    manifest["id"] = "forge-drain"
    del manifest["api"]["config_vars_prefix"]
    manifest["api"]["config_vars"] = ["FORGE_DRAIN_URL"]

    assert kensa_manifest_errors(manifest) == []


def test_it_points_base_urls_at_heroku_resources():
    # Not a ManifestCheck rule: kensa's ApiCheck sends Partner API calls to the path of
    # base_url, and its manifest skeleton (manifest.rb) and Heroku's generator use
    # /heroku/resources, which is where the broker serves them.
    api = load_manifest()["api"]
    for env in ("production", "test"):
        assert api[env]["base_url"].endswith("/heroku/resources"), env


def test_it_describes_forge_drain():
    manifest = load_manifest()
    api = manifest["api"]

    assert manifest["id"] == "forgedrain"
    assert manifest["name"] == "Forge Drain"
    assert api["config_vars_prefix"] == "FORGEDRAIN"
    assert api["config_vars"] == ["FORGEDRAIN_URL", "FORGEDRAIN_TOKEN"]
    assert api["requires"] == ["syslog_drain", "log_input"]
    assert api["regions"] == ["us", "eu"]
    assert api["version"] == "3"


def test_it_uses_a_partner_api_password_of_8_to_72_characters():
    password = load_manifest()["api"]["password"]

    assert isinstance(password, str)
    assert 8 <= len(password) <= 72


def test_it_matches_the_addon_id_in_app_json():
    app_json = json.loads(APP_JSON.read_text(encoding="utf-8"))

    assert app_json["env"]["ADDON_ID"]["value"] == load_manifest()["id"]
