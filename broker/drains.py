"""Drains: validation of what an owner submits, and the store (SPEC §4).

Kinds an owner adds: ``logplex`` (HTTPS POST in Heroku's dialect), ``syslog``
(``syslog+tls://host:port``, strict RFC 5424) and ``otlp`` (OTLP/HTTP, a base
URL or the full ``/v1/logs`` URL, JSON or protobuf, custom headers). The
``heroku`` drain — the app's own log stream — is made at provision from
``log_input_url``; it can be renamed, disabled and given rules, not deleted or
redirected. Plain ``http://`` and ``syslog+tcp://`` are accepted only where
private drains are allowed (tests, private deployments).

Any drain may carry ``rules`` (:mod:`broker.rules`): which records it receives
and what is redacted from them. They are checked with the rest of the drain,
before anything is written: :class:`~broker.rules.RulesInvalid` lists every
problem.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import orjson
import psycopg

from broker import outbox, rules
from broker.validation import InputError

OWNER_KINDS = ("logplex", "syslog", "otlp")
FIELDS = ("kind", "url", "name", "enabled", "encoding", "gzip", "headers", "sd_id", "rules")
# What the heroku drain (the app's own stream, made at provision) lets its owner change.
HEROKU_FIELDS = {"enabled", "name", "rules"}
# RFC 5424 §6.3.2: SD-NAME is PRINTUSASCII but '=', SP, ']' and '"' (and '@', which ends it here).
SD_ID = re.compile(r'^[^= \]"@\x00-\x20\x7f-\U0010ffff]{1,32}@[0-9]+(\.[0-9]+)*\Z')
HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}\Z")
# Headers the broker sets itself; a drain may not override them.
RESERVED_HEADERS = {"content-type", "content-length", "content-encoding", "host", "user-agent",
                    "transfer-encoding", "connection"}


@dataclass
class DrainInput:
    values: dict


def _parsed(value):
    # isprintable() is False for every control character (NUL, CR, LF, DEL, C1), every space but
    # U+0020 (refused apart), invisible format characters and lone surrogates: none belongs in a URL.
    if not isinstance(value, str) or len(value) > 2048 or " " in value or not value.isprintable():
        raise InputError("url", "url must be a URL without spaces or control characters, "
                                "at most 2048 characters")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise InputError("url", "url is not a valid URL") from None
    if not parts.hostname:
        raise InputError("url", "url has no host")
    return parts, port


def https_url(value, *, allow_private: bool, what: str = "url") -> str:
    """An owner's HTTPS URL (plain http only where private destinations are allowed), as drains of
    the HTTP kinds and the alert webhook take it; the SSRF guard checks where it points at send time."""
    parts, _ = _parsed(value)
    schemes = ("https", "http") if allow_private else ("https",)
    if parts.scheme not in schemes:
        raise InputError("url", f"{what} must start with https://")
    if parts.fragment:
        raise InputError("url", "url must not have a #fragment")
    return value


def _url(kind: str, value, allow_private: bool) -> str:
    parts, port = _parsed(value)
    if kind == "syslog":
        schemes = ("syslog+tls", "syslog+tcp") if allow_private else ("syslog+tls",)
        if parts.scheme not in schemes or port is None:
            raise InputError("url", "a syslog drain's url is syslog+tls://host:port")
        if parts.path not in ("", "/") or parts.query or parts.username:
            raise InputError("url", "a syslog drain's url is only syslog+tls://host:port")
        return value
    return https_url(value, allow_private=allow_private, what=f"a {kind} drain's url")


def validate(payload: object, *, allow_private: bool, current: dict | None = None) -> DrainInput:
    """Check a submitted drain (a new one, or changes to ``current``)."""
    if not isinstance(payload, dict):
        raise InputError("body", "request body must be a JSON object")
    unknown = sorted(set(payload) - set(FIELDS))
    if unknown:
        raise InputError(unknown[0], f"unknown field {unknown[0]!r}; fields are {', '.join(FIELDS)}")
    values: dict = {}
    if current is None:
        kind = payload.get("kind")
        if kind not in OWNER_KINDS:
            raise InputError("kind", f"kind must be one of {', '.join(OWNER_KINDS)}")
        if "url" not in payload:
            raise InputError("url", "url is required")
        values["kind"] = kind
    else:
        kind = current["kind"]
        if "kind" in payload and payload["kind"] != kind:
            raise InputError("kind", "a drain's kind cannot change; add a new drain instead")
        if kind == "heroku" and set(payload) - HEROKU_FIELDS:
            raise InputError(sorted(set(payload) - HEROKU_FIELDS)[0],
                                  "the heroku drain is the app's own log stream: it can only be "
                                  "renamed, enabled or disabled, and given rules")
    if "url" in payload:
        values["url"] = _url(kind, payload["url"], allow_private)
    if "name" in payload:
        name = payload["name"]
        if name is not None and (not isinstance(name, str) or not 1 <= len(name) <= 100
                                 or not name.isprintable()):
            raise InputError("name", "name must be 1 to 100 printable characters")
        values["name"] = name
    if "enabled" in payload:
        if not isinstance(payload["enabled"], bool):
            raise InputError("enabled", "enabled must be true or false")
        values["enabled"] = payload["enabled"]
    settings = dict(current["settings"]) if current else {}
    if kind == "otlp":
        settings.setdefault("encoding", "protobuf")
        settings.setdefault("gzip", True)
    for field in ("encoding", "gzip", "headers"):
        if field in payload and kind != "otlp":
            raise InputError(field, f"{field} applies to otlp drains only")
    if "sd_id" in payload and kind != "syslog":
        raise InputError("sd_id", "sd_id applies to syslog drains only")
    if "encoding" in payload:
        if payload["encoding"] not in ("json", "protobuf"):
            raise InputError("encoding", "encoding must be json or protobuf")
        settings["encoding"] = payload["encoding"]
    if "gzip" in payload:
        if not isinstance(payload["gzip"], bool):
            raise InputError("gzip", "gzip must be true or false")
        settings["gzip"] = payload["gzip"]
    if "sd_id" in payload:
        sd_id = payload["sd_id"]
        if sd_id is not None and (not isinstance(sd_id, str) or len(sd_id) > 32 or not SD_ID.match(sd_id)):
            raise InputError("sd_id", "sd_id must be name@<your Private Enterprise Number>, at most 32 "
                                           "characters in all, such as forge@32473 (RFC 5424 §6.3.2, §7.2.2)")
        settings["sd_id"] = sd_id
    if "headers" in payload:
        headers = payload["headers"] or {}
        if (not isinstance(headers, dict) or len(headers) > 20
                or not all(isinstance(k, str) and HEADER_NAME.match(k) and k.lower() not in RESERVED_HEADERS
                           and isinstance(v, str) and len(v) <= 4096 and all(32 <= ord(c) < 127 for c in v)
                           for k, v in headers.items())):
            raise InputError("headers", "headers must be an object of at most 20 header names to "
                                             "printable ASCII values (not Content-Type, Host, …)")
        values["headers"] = headers
    if "rules" in payload:
        values["rules"] = rules.validate(payload["rules"])
    values["settings"] = settings
    return DrainInput(values)


# A path segment this long with letters and digits mixed is taken for a secret (Sumo Logic's
# /receiver/v1/http/<token>, Loggly's /inputs/<token>, webhook keys): shown as ****.
OPAQUE_SEGMENT = re.compile(r"(?=[^/]*[0-9])(?=[^/]*[A-Za-z])[A-Za-z0-9_\-.~=%+]{20,}")


def masked_url(url: str | None) -> str | None:
    """The URL with every secret it may carry replaced, safe to show.

    A password goes, and a user name without a password (``https://APIKEY@host`` is a key,
    not a name); query values too (``?api-key=…``), and long opaque path segments (tokens
    embedded in the path).
    """
    if not url:
        return None
    parts = urlsplit(url)
    if parts.query:
        masked = "&".join(f"{pair.split('=', 1)[0]}=****" if "=" in pair else pair
                          for pair in parts.query.split("&"))
        parts = parts._replace(query=masked)
    if parts.path:
        parts = parts._replace(path="/".join("****" if OPAQUE_SEGMENT.fullmatch(segment) else segment
                                             for segment in parts.path.split("/")))
    if parts.password is None and parts.username is None:
        return urlunsplit(parts)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port:
        host = f"{host}:{parts.port}"
    if parts.password is not None:
        return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:****@{host}"))
    return urlunsplit(parts._replace(netloc=f"****@{host}"))


def new_token() -> str:
    return f"d.{uuid.uuid4()}"


# --- store ---------------------------------------------------------------------

COLUMNS = """
id, resource_id, kind, url_enc, token, enabled, created_at, updated_at, name, settings, headers_enc,
cursor, next_attempt_at, consecutive_failures, last_error, last_delivery_at, delivered, retried,
dropped, rejected, secret_lost_at, send_seconds, rules, filtered, redacted
"""


def list_for(conn: psycopg.Connection, resource_id) -> list[dict]:
    return conn.execute(f"SELECT {COLUMNS} FROM drains WHERE resource_id = %s ORDER BY created_at, id",
                        (resource_id,)).fetchall()


def get(conn: psycopg.Connection, resource_id, drain_id, *, for_update: bool = False) -> dict | None:
    lock = " FOR UPDATE" if for_update else ""
    return conn.execute(f"SELECT {COLUMNS} FROM drains WHERE resource_id = %s AND id = %s{lock}",
                        (resource_id, drain_id)).fetchone()


def count_owned(conn: psycopg.Connection, resource_id) -> int:
    return conn.execute("SELECT count(*) AS n FROM drains WHERE resource_id = %s AND kind <> 'heroku'",
                        (resource_id,)).fetchone()["n"]


def insert(conn: psycopg.Connection, resource_id, values: dict, url_enc: str,
           headers_enc: str | None) -> dict:
    """A new drain starts at the newest outbox batch: it gets what arrives from now on."""
    return conn.execute(
        f"""
        INSERT INTO drains (resource_id, kind, url_enc, token, name, settings, headers_enc, enabled, cursor, rules)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
        RETURNING {COLUMNS}
        """,
        (resource_id, values["kind"], url_enc, new_token(), values.get("name"),
         orjson.dumps(values["settings"]).decode(), headers_enc, values.get("enabled", True),
         outbox.newest(conn, resource_id), orjson.dumps(values.get("rules") or {}).decode()),
    ).fetchone()


def update(conn: psycopg.Connection, drain_id, values: dict, url_enc: str | None,
           headers_enc: str | None, *, due: bool = False) -> dict:
    """Store the validated ``values``; ``due``: the owner changed something, so the drain is tried
    at once (a drain waiting out a back-off, or parked because its rules no longer compiled, goes
    again with what was saved)."""
    sets, params = ["updated_at = now()", "settings = %(settings)s"], {
        "id": drain_id, "settings": orjson.dumps(values["settings"]).decode()}
    if due:
        sets.append("next_attempt_at = LEAST(next_attempt_at, now())")
    if url_enc is not None:
        sets.append("url_enc = %(url_enc)s")
        params["url_enc"] = url_enc
        # A new destination gets a fresh start: no inherited back-off.
        sets += ["consecutive_failures = 0", "last_error = NULL"]
        if not due:
            sets.append("next_attempt_at = now()")
    if headers_enc is not None:
        sets.append("headers_enc = %(headers_enc)s")
    if url_enc is not None or headers_enc is not None:
        sets.append("secret_lost_at = NULL")  # re-entered: decryptable again
        params["headers_enc"] = headers_enc
    for field in ("name", "enabled"):
        if field in values:
            sets.append(f"{field} = %({field})s")
            params[field] = values[field]
    if "rules" in values:
        # Takes effect at the drain's next delivery turn; positions in a half-sent batch are raw record
        # positions, so nothing before them is sent again or skipped.
        sets.append("rules = %(rules)s")
        params["rules"] = orjson.dumps(values["rules"]).decode()
    return conn.execute(f"UPDATE drains SET {', '.join(sets)} WHERE id = %(id)s RETURNING {COLUMNS}",
                        params).fetchone()


def rotate_token(conn: psycopg.Connection, drain_id) -> dict:
    return conn.execute(f"UPDATE drains SET token = %s, updated_at = now() WHERE id = %s RETURNING {COLUMNS}",
                        (new_token(), drain_id)).fetchone()


def delete(conn: psycopg.Connection, drain_id) -> None:
    conn.execute("DELETE FROM drains WHERE id = %s", (drain_id,))
