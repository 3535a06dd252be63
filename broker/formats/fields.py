"""Reading Forge records and shaping header fields, shared by the formats.

Bodies and attribute values are OTLP ``AnyValue``s (research otlp-syslog-forge.md §1.4).
:func:`any_value` normalises any JSON value into one (the Forge client uses it
when it repairs a record; the formats use it on whatever they are given, so
records stored before normalisation still encode). OTLP drains carry them
typed; line-based formats (logplex, RFC 5424) write a string as is and any
other value as the compact JSON text of its plain value: a kvlist body
``{"a": 1}`` is the message ``{"a":1}``, an ``intValue`` attribute ``"5"`` is ``5``.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime, timezone
from functools import lru_cache

import orjson


# OTLP AnyValue (OTLP/JSON shape): exactly one of these keys, or none (the "empty" value).
ANY_KEYS = frozenset({"stringValue", "boolValue", "intValue", "doubleValue", "arrayValue", "kvlistValue",
                      "bytesValue"})
INT64_MIN, INT64_MAX = -2**63, 2**63 - 1
# AnyValue levels kept as structure; anything deeper becomes the JSON text of its plain value.
# Each level is up to four JSON levels ({"kvlistValue": {"values": [{"value": …}]}}), and
# orjson refuses to write more than 254, so stored records always stay writable.
MAX_DEPTH = 24
_INTEGER = re.compile(r"-?[0-9]{1,20}")
_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=|[A-Za-z0-9+/]{2,3})?")


def any_value(value, depth: int = 0) -> dict:
    """The OTLP AnyValue of a JSON value, normalised (research otlp-syslog-forge.md §1.4).

    An AnyValue-shaped dict (one known key) is checked and canonicalised:
    ``intValue`` a decimal string within int64, ``doubleValue`` a finite float,
    ``bytesValue`` base64 text, ``arrayValue``/``kvlistValue`` with a ``values``
    list of AnyValues/KeyValues. A bare value becomes the matching AnyValue: a
    string ``stringValue``, a bool ``boolValue``, an integer ``intValue``, a
    float ``doubleValue``, a list ``arrayValue``, any other object
    ``kvlistValue`` of its members; null is the empty AnyValue ``{}``. What
    cannot be that type (an int beyond int64, a double beyond float range
    kept as its text, a ``bytesValue`` that is not base64) becomes a
    ``stringValue`` of its text, so nothing is lost and the result is always
    writable by orjson. Idempotent: a normalised AnyValue comes back equal.
    """
    kind = type(value)
    if kind is str:
        return {"stringValue": value}
    if kind is bool:
        return {"boolValue": value}
    if kind is int:
        return {"intValue": str(value)} if INT64_MIN <= value <= INT64_MAX else {"stringValue": str(value)}
    if kind is float:
        return {"doubleValue": value} if math.isfinite(value) else {"stringValue": _non_finite(value)}
    if value is None:
        return {}
    if kind is dict and len(value) == 1:
        (key, inner), = value.items()
        if key in ANY_KEYS:
            return _typed(key, inner, depth)
    if depth >= MAX_DEPTH:
        return {"stringValue": json_text(value)}
    if kind is list:
        return {"arrayValue": {"values": [any_value(item, depth + 1) for item in value]}}
    if kind is dict:
        if not value:
            return {}
        return {"kvlistValue": {"values": [{"key": key, "value": any_value(inner, depth + 1)}
                                           for key, inner in value.items()]}}
    return {"stringValue": str(value)}


def _non_finite(value: float) -> str:
    return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")


def _typed(kind: str, inner, depth: int) -> dict:
    if inner is None:
        return {}
    if kind == "stringValue":
        return {"stringValue": inner if type(inner) is str else json_text(inner)}
    if kind == "boolValue":
        return {"boolValue": inner} if type(inner) is bool else any_value(inner, depth)
    if kind == "intValue":
        if type(inner) is str and _INTEGER.fullmatch(inner):
            number = int(inner)
        elif type(inner) is int:
            number = inner
        elif type(inner) is float and math.isfinite(inner) and inner.is_integer():
            number = int(inner)
        else:
            return {"stringValue": inner if type(inner) is str else json_text(inner)}
        return {"intValue": str(number)} if INT64_MIN <= number <= INT64_MAX else {"stringValue": str(inner)}
    if kind == "doubleValue":
        if type(inner) in (int, float) or type(inner) is str:
            try:
                number = float(inner)
            except (ValueError, OverflowError):
                number = math.inf
            if math.isfinite(number):
                return {"doubleValue": number}
        return {"stringValue": inner if type(inner) is str else json_text(inner)}
    if kind == "bytesValue":
        if type(inner) is str and _BASE64.fullmatch(inner):
            return {"bytesValue": inner}
        return {"stringValue": inner if type(inner) is str else json_text(inner)}
    if depth >= MAX_DEPTH:
        return {"stringValue": json_text(plain({kind: inner}))}
    values = inner.get("values") if type(inner) is dict and "values" in inner else inner
    if kind == "arrayValue":
        if values is None or values == {}:
            values = []
        if type(values) is not list:
            return any_value(values, depth)
        return {"arrayValue": {"values": [any_value(item, depth + 1) for item in values]}}
    # kvlistValue: a KeyValueList, a bare list of KeyValues, or (sloppily) a plain object
    if type(inner) is dict and "values" not in inner:
        return any_value(inner, depth) if inner else {"kvlistValue": {"values": []}}
    if values is None:
        values = []
    if type(values) is not list:
        return any_value(values, depth)
    return {"kvlistValue": {"values": [pair for item in values
                                       if (pair := key_value(item, depth + 1)) is not None]}}


def key_value(item, depth: int = 0) -> dict | None:
    """A normalised KeyValue, or None for an entry that is not one (not an object, or no key)."""
    if type(item) is not dict:
        return None
    key = item.get("key")
    if key is None:
        return None
    return {"key": key if type(key) is str else json_text(key), "value": any_value(item.get("value"), depth)}


def plain(value):
    """The plain JSON value an AnyValue stands for (``{"kvlistValue": …a: 1}`` → ``{"a": 1}``)."""
    if type(value) is not dict:
        return value
    if len(value) != 1:
        return None if not value else value
    (kind, inner), = value.items()
    if kind == "stringValue" or kind == "boolValue" or kind == "doubleValue" or kind == "bytesValue":
        return inner
    if kind == "intValue":
        try:
            return int(inner)
        except (TypeError, ValueError):
            return inner
    if kind == "arrayValue" and type(inner) is dict and type(inner.get("values")) is list:
        return [plain(item) for item in inner["values"]]
    if kind == "kvlistValue" and type(inner) is dict and type(inner.get("values")) is list:
        return {item.get("key"): plain(item.get("value")) for item in inner["values"]
                if type(item) is dict and type(item.get("key")) is str}
    return value


def value_text(value) -> str:
    """An AnyValue as text for line-based formats: a string as is, anything else compact JSON of its plain value."""
    if type(value) is dict and len(value) == 1 and type(value.get("stringValue")) is str:
        return value["stringValue"]
    if value is None or value == {}:
        return ""
    value = plain(any_value(value))
    return value if type(value) is str else json_text(value)


def attributes(record: dict) -> dict[str, str]:
    """Forge's attribute list as a dict of text values (typed values as compact JSON of their plain value)."""
    found: dict[str, str] = {}
    for item in record.get("attributes") or ():
        if type(item) is dict:  # the fast path: {"key": "…", "value": {"stringValue": "…"}}
            key, value = item.get("key"), item.get("value")
            if type(key) is str and type(value) is dict and len(value) == 1 and type(value.get("stringValue")) is str:
                found[key] = value["stringValue"]
                continue
            if type(key) is str and value is not None:
                found[key] = value_text(value)
    return found


def attribute_values(record: dict) -> dict[str, str | dict]:
    """Attributes by key: the text of a ``stringValue`` (the common case), else the normalised AnyValue."""
    found: dict[str, str | dict] = {}
    for item in record.get("attributes") or ():
        if type(item) is dict:
            key, value = item.get("key"), item.get("value")
            if type(key) is not str:
                continue
            if type(value) is dict and len(value) == 1 and type(value.get("stringValue")) is str:
                found[key] = value["stringValue"]
            elif value is not None:
                found[key] = any_value(value)
    return found


def attribute(record: dict, key: str) -> str | None:
    """One attribute as :func:`attributes` would give it (the last one wins), without building the dict."""
    found = None
    for item in record.get("attributes") or ():
        if type(item) is dict and item.get("key") == key:
            value = item.get("value")
            if value is not None:
                found = value_text(value)
    return found


def heroku_header(record: dict) -> tuple[str, str] | None:
    """(APP-NAME, PROCID) of a line of the Heroku app's own logs, as drain ingest keeps them in the
    record's ``heroku`` part (``-`` for one the line lacked); None for a Forge record."""
    part = record.get("heroku")
    if not isinstance(part, dict):
        return None
    return str(part.get("app") or "-"), str(part.get("dyno") or "-")


def service_name(configured: str | None, app_id: str) -> str:
    """``service.name`` of a Forge record as OTLP drains show it: the source's service name, else
    ``forge-app-<app id>``."""
    return configured or f"forge-app-{app_id}"


def body_text(record: dict) -> str:
    """The body as text: a stringValue as is, a structured body as compact JSON of its plain value."""
    body = record.get("body")
    if type(body) is dict and len(body) == 1 and type(body.get("stringValue")) is str:
        return body["stringValue"]
    if body is None:
        return ""
    return body if type(body) is str else value_text(body)


def json_text(value) -> str:
    """Compact JSON text of a plain value; never fails (a number beyond float range as its repr)."""
    try:
        return orjson.dumps(value).decode()
    except (TypeError, orjson.JSONEncodeError):
        pass
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
    except (ValueError, TypeError, RecursionError):
        pass
    try:
        return str(value)
    except RecursionError:
        return "[nested too deeply]"


_json = json_text


def timestamp(record: dict) -> str:
    """RFC 3339 UTC with exactly 6 fractional digits (RFC 5424 allows at most 6), or ``-``."""
    try:
        nanos = int(record["timeUnixNano"])
    except (KeyError, TypeError, ValueError):
        return "-"
    if nanos <= 0:
        return "-"
    seconds, rest = divmod(nanos, 1_000_000_000)
    second = _second(seconds)
    return "-" if second is None else f"{second}.{rest // 1000:06d}Z"


@lru_cache(maxsize=4096)
def _second(seconds: int) -> str | None:
    """``YYYY-MM-DDTHH:MM:SS`` of a Unix second (records of a batch share a few: cached)."""
    try:
        moment = datetime.fromtimestamp(seconds, timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None
    if moment.year > 9999:
        return None
    return moment.strftime("%Y-%m-%dT%H:%M:%S")


@lru_cache(maxsize=8192)
def header_field(value: str | None, limit: int) -> str:
    """A header field: PRINTUSASCII only (others become ``_``), cut to ``limit`` bytes, ``-`` if empty."""
    if not value:
        return "-"
    cleaned = "".join(c if 33 <= ord(c) <= 126 else "_" for c in value)[:limit]
    return cleaned or "-"


def cut_utf8(data: bytes, limit: int) -> list[bytes]:
    """Split ``data`` into pieces of at most ``limit`` bytes, never inside a UTF-8 character."""
    pieces = []
    while len(data) > limit:
        cut = limit
        while cut > 0 and (data[cut] & 0xC0) == 0x80:
            cut -= 1
        if cut == 0:
            cut = limit
        pieces.append(data[:cut])
        data = data[cut:]
    pieces.append(data)
    return pieces
