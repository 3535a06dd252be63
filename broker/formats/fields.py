"""Reading Forge records and shaping header fields, shared by the syslog-family formats."""

from __future__ import annotations

from datetime import datetime, timezone
from functools import lru_cache

import orjson


def attributes(record: dict) -> dict[str, str]:
    """Forge's attribute list as a dict of text values (non-string values as compact JSON)."""
    found: dict[str, str] = {}
    for item in record.get("attributes") or ():
        if type(item) is dict:  # the fast path: {"key": "…", "value": {"stringValue": "…"}}
            key, value = item.get("key"), item.get("value")
            if type(key) is str and type(value) is dict and len(value) == 1 and type(value.get("stringValue")) is str:
                found[key] = value["stringValue"]
                continue
        if not isinstance(item, dict) or not isinstance(item.get("key"), str):
            continue
        value = item.get("value")
        if isinstance(value, dict) and len(value) == 1:
            (kind, inner), = value.items()
            found[item["key"]] = inner if kind == "stringValue" and isinstance(inner, str) else _json(inner)
        elif value is not None:
            found[item["key"]] = _json(value)
    return found


def attribute(record: dict, key: str) -> str | None:
    """One attribute as :func:`attributes` would give it (the last one wins), without building the dict."""
    found = None
    for item in record.get("attributes") or ():
        if isinstance(item, dict) and item.get("key") == key:
            value = item.get("value")
            if isinstance(value, dict) and len(value) == 1:
                (kind, inner), = value.items()
                found = inner if kind == "stringValue" and isinstance(inner, str) else _json(inner)
            elif value is not None:
                found = _json(value)
    return found


def body_text(record: dict) -> str:
    """The body as text: stringValue as is, anything else as compact JSON."""
    body = record.get("body")
    if isinstance(body, dict):
        if isinstance(body.get("stringValue"), str) and len(body) == 1:
            return body["stringValue"]
        if not body:
            return ""
        return _json(body.get("kvlistValue", body) if len(body) == 1 else body)
    if body is None:
        return ""
    return body if isinstance(body, str) else _json(body)


def _json(value) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return str(value)


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
