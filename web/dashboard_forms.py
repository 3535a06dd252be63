"""The dashboard's forms: CSRF tokens, and form fields turned into the payloads broker.operations checks.

What the user typed is kept for a re-rendered form, except secrets: an API
token, a drain URL carrying credentials, and header values are never echoed.
"""

from __future__ import annotations

import hmac
import secrets
from urllib.parse import urlsplit

from flask import session
from werkzeug.datastructures import MultiDict

from broker.validation import InputError

CSRF_FIELD = "csrf_token"


def csrf_token() -> str:
    """This session's CSRF token (made on first use)."""
    token = session.get("csrf")
    if not token:
        token = session["csrf"] = secrets.token_urlsafe(32)
    return token


def csrf_ok(form: MultiDict) -> bool:
    expected, given = session.get("csrf"), form.get(CSRF_FIELD, "")
    return bool(expected) and bool(given) and hmac.compare_digest(given.encode(), expected.encode())


def _text(form: MultiDict, name: str) -> str:
    return (form.get(name) or "").strip()


def _optional(form: MultiDict, name: str) -> str | None:
    return _text(form, name) or None


def source_payload(form: MultiDict, *, partial: bool) -> dict:
    """The source fields of a form; on an edit, an empty API token means "keep the stored one"."""
    payload = {
        "app_id": _text(form, "app_id"),
        "environment_id": _text(form, "environment_id"),
        "email": _text(form, "email"),
        "api_token": (form.get("api_token") or "").strip(),
        "levels": form.getlist("levels"),
        "installation_contexts": [line.strip() for line in (form.get("installation_contexts") or "").splitlines()
                                  if line.strip()],
        "service_name": _optional(form, "service_name"),
        "environment_label": _optional(form, "environment_label"),
        "include_arguments": form.get("include_arguments") == "on",
    }
    if partial and not payload["api_token"]:
        del payload["api_token"]
    return payload


def source_echo(form: MultiDict) -> dict:
    """What to show again in a source form: everything but the API token."""
    values = source_payload(form, partial=True)
    values.pop("api_token", None)
    values["installation_contexts"] = "\n".join(values["installation_contexts"])
    return values


def parse_headers(text: str) -> dict:
    headers = {}
    for number, line in enumerate((text or "").splitlines(), start=1):
        if not line.strip():
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise InputError("headers", f"headers line {number} must read Name: value")
        headers[name.strip()] = value.strip()
    return headers


def drain_payload(form: MultiDict, kind: str, *, editing: bool) -> dict:
    """The drain fields of a form for ``kind``; on an edit, an empty URL or headers box means "keep"."""
    payload: dict = {} if editing else {"kind": kind}
    payload["name"] = _optional(form, "name")
    if kind == "heroku":
        return payload
    url = _text(form, "url")
    if url or not editing:
        payload["url"] = url
    if kind == "otlp":
        payload["encoding"] = form.get("encoding") or "protobuf"
        payload["gzip"] = form.get("gzip") == "on"
        headers = form.get("headers") or ""
        if headers.strip() or not editing:
            payload["headers"] = parse_headers(headers)
    if kind == "syslog":
        payload["sd_id"] = _optional(form, "sd_id")
    return payload


def drain_echo(form: MultiDict) -> dict:
    """What to show again in a drain form: no URL with credentials, header names without values."""
    url = _text(form, "url")
    try:
        parts = urlsplit(url)
        has_userinfo = parts.username is not None or parts.password is not None
    except ValueError:
        has_userinfo = "@" in url
    names = []
    for line in (form.get("headers") or "").splitlines():
        name = line.partition(":")[0].strip()
        if name:
            names.append(f"{name}: ")
    return {"kind": form.get("kind") or "logplex", "name": _text(form, "name"),
            "url": "" if has_userinfo or "?" in url else url,  # query values may be API keys
            "encoding": form.get("encoding") or "protobuf",
            "gzip": form.get("gzip") == "on", "headers": "\n".join(names), "sd_id": _text(form, "sd_id")}


# --- words an owner uses ------------------------------------------------------------------

LABELS = {
    "app_id": "Forge app id", "environment_id": "Environment id", "email": "Atlassian account email",
    "api_token": "API token", "levels": "Levels", "installation_contexts": "Installation contexts",
    "service_name": "Service name", "environment_label": "Environment label",
    "include_arguments": "Include arguments", "url": "Destination URL", "name": "Name", "kind": "Kind",
    "encoding": "OTLP encoding", "gzip": "gzip", "headers": "Headers", "sd_id": "SD-ID", "from": "The start",
    "origins": "Origin", "sources": "Sources", "heroku_apps": "Heroku APP-NAMEs", "processes": "Process types",
    "min_severity": "Minimum severity", "rule_levels": "Levels", "services": "Services",
    "detectors": "Detectors", "patterns": "Your patterns", "drop_attributes": "Dropped attributes",
    "rules": "Rules", "enabled": "Enabled",
}
SOURCE_REQUIRED = {"app_id": "Enter the Forge app id", "environment_id": "Enter the environment id",
                   "email": "Enter the Atlassian account email", "api_token": "Enter an Atlassian API token"}


def owner_words(field: str, message: str) -> str:
    """A validation message with the field's label in place of its key ("app_id is required" →
    "Forge app id is required"), starting with a capital."""
    label = LABELS.get(field)
    if label and message.startswith(field + " "):
        message = label + message[len(field):]
    return message[:1].upper() + message[1:]


def source_missing(form: MultiDict, *, editing: bool) -> dict:
    """Every required source field left empty, each with what to enter (all at once, in form order)."""
    return {name: text for name, text in SOURCE_REQUIRED.items()
            if not _text(form, name) and not (editing and name == "api_token")}


def drain_missing(form: MultiDict, kind: str, *, editing: bool) -> dict:
    if kind in ("logplex", "syslog", "otlp") and not editing and not _text(form, "url"):
        return {"url": "Enter the drain's URL"}
    return {}


# --- drain rules (broker.rules) in a form -----------------------------------------------------

RULE_TEXTS = ("heroku_apps", "processes", "services", "patterns", "drop_attributes")


def _lines(form: MultiDict, name: str) -> list[tuple[int, str]]:
    """(line number, text) of the non-empty lines of a textarea; commas separate entries too for words."""
    return [(number, line.strip()) for number, line in enumerate((form.get(name) or "").splitlines(), start=1)
            if line.strip()]


def _words(form: MultiDict, name: str) -> list[str]:
    return [word for word in (form.get(name) or "").replace(",", " ").split() if word]


class RulesForm:
    """The rules a drain form submits: ``payload`` for :func:`broker.rules.validate`, the problems found
    while reading the form itself, and a map from a payload path back to the field and its line."""

    def __init__(self, form: MultiDict):
        self.errors: dict = {}
        self.pattern_lines: list[int] = []
        self.line_of: dict = {}
        payload: dict = {}
        if form.getlist("origins"):
            payload["origins"] = form.getlist("origins")
        if form.getlist("sources"):
            payload["sources"] = form.getlist("sources")
        for name in ("heroku_apps", "processes"):
            if _words(form, name):
                payload[name] = _words(form, name)
        if _text(form, "min_severity"):
            payload["min_severity"] = _text(form, "min_severity")
        if form.getlist("rule_levels"):
            payload["levels"] = form.getlist("rule_levels")
        services = _lines(form, "services")
        if services:
            payload["services"] = [text for _, text in services]
            self.line_of["services"] = [number for number, _ in services]
        redact: dict = {}
        if form.getlist("detectors"):
            redact["detectors"] = form.getlist("detectors")
        patterns = []
        for number, line in _lines(form, "patterns"):
            name, sep, regex = line.partition(":")
            if not sep or not name.strip() or not regex.strip():
                self.errors.setdefault("patterns", f"Line {number}: write a name, a colon, then the pattern "
                                                   "(card_ref: CR-[0-9]{8})")
                continue
            patterns.append({"name": name.strip(), "regex": regex.strip()})
            self.pattern_lines.append(number)
        if patterns:
            redact["patterns"] = patterns
        drops = _lines(form, "drop_attributes")
        if drops:
            redact["drop_attributes"] = [text for _, text in drops]
            self.line_of["drop_attributes"] = [number for number, _ in drops]
        if redact:
            payload["redact"] = redact
        self.payload = payload

    def field_of(self, path: str) -> tuple[str, str]:
        """The form field and a "Line n: " prefix for a problem's path (``rules.redact.patterns[2].regex``)."""
        parts = path.replace("[", ".[").split(".")
        names = [p for p in parts[1:] if p and not p.startswith("[") and p != "redact"]
        index = next((int(p[1:-1]) for p in parts if p.startswith("[")), None)
        field = names[0] if names else "min_severity"
        if field == "levels":
            field = "rule_levels"
        prefix = ""
        if index is not None:
            lines = self.pattern_lines if field == "patterns" else self.line_of.get(field)
            prefix = f"line {lines[index]}: " if lines and index < len(lines) else f"entry {index + 1}: "
        return field, prefix

    def problems(self, exc) -> dict:
        """:class:`broker.rules.RulesInvalid`'s problems as form errors, one message per field, in words."""
        errors: dict = {}
        for path, message in exc.problems:
            field, prefix = self.field_of(path)
            if path == "rules" and "not both" in message:
                field, text = "min_severity", "Choose a minimum severity or a set of levels, not both"
            elif prefix:
                text = f"{LABELS.get(field, field)}, {prefix}{message}"
            else:
                text = f"{LABELS.get(field, field)} {message}"
            errors[field] = f"{errors[field]}; {text}" if field in errors else text
        return errors


def rules_values(stored: dict | None) -> dict:
    """A drain's stored rules as the form shows them."""
    stored = stored or {}
    redact = stored.get("redact") or {}
    return {
        "origins": stored.get("origins") or [], "sources": stored.get("sources") or [],
        "heroku_apps": " ".join(stored.get("heroku_apps") or []),
        "processes": " ".join(stored.get("processes") or []),
        "min_severity": stored.get("min_severity") or "", "rule_levels": stored.get("levels") or [],
        "services": "\n".join(stored.get("services") or []), "detectors": redact.get("detectors") or [],
        "patterns": "\n".join(f"{p['name']}: {p['regex']}" for p in redact.get("patterns") or []),
        "drop_attributes": "\n".join(redact.get("drop_attributes") or []),
    }


def rules_echo(form: MultiDict) -> dict:
    """What to show again in a drain form's rules, as typed."""
    return {"origins": form.getlist("origins"), "sources": form.getlist("sources"),
            "heroku_apps": _text(form, "heroku_apps"), "processes": _text(form, "processes"),
            "min_severity": _text(form, "min_severity"), "rule_levels": form.getlist("rule_levels"),
            "services": form.get("services") or "", "detectors": form.getlist("detectors"),
            "patterns": form.get("patterns") or "", "drop_attributes": form.get("drop_attributes") or ""}
