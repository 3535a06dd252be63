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
            "url": "" if has_userinfo or "?" in url else url,  # query values may be API keys "encoding": form.get("encoding") or "protobuf",
            "gzip": form.get("gzip") == "on", "headers": "\n".join(names), "sd_id": _text(form, "sd_id")}
