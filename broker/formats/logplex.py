"""Heroku's logplex dialect, byte for byte (research heroku-addon-and-logplex.md §7; PITFALLS).

A frame is ``<len> <PRI>1 TIMESTAMP HOST APP PROCID - MSG\\n``: no structured
data field, one ``-`` (the MSGID) before the message, a LF after it, and a
length that counts the UTF-8 bytes of everything after the space, LF included.
Receivers such as Vector's ``heroku_logs`` split the body on LF and read eight
space-separated fields, so a message never holds a raw line break: a
multi-line body (a stack trace) becomes one frame per line. A frame's message
part over 10,000 bytes is split, as Heroku splits long dyno lines. A
structured body (kvlist, array, number, bool) is written as the compact JSON
of its plain value: ``{"a":1}`` (:func:`fields.body_text`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from broker.formats import fields, severity

# local7, like Heroku's app output: an INFO line is <190>.
FACILITY = 23
MAX_MESSAGE_BYTES = 10_000
LINE_BREAK = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True)
class Identity:
    """What the header says about the sender."""

    host: str       # HOSTNAME (≤ 255 bytes): the drain's token, or "host" as Heroku writes
    app_name: str   # APP-NAME (≤ 48 bytes): the source's service name
    # PROCID is ``<prefix>.<functionKey>`` when set (the heroku drain: the source's service name).
    procid_prefix: str | None = None


def header_parts(record: dict, who, function_key: str | None) -> tuple[int, str, str | None]:
    """(PRI, APP-NAME, PROCID) of a record: a Heroku record keeps its own, a Forge record gets the drain's."""
    heroku = record.get("heroku")
    if isinstance(heroku, dict):
        pri = heroku.get("pri")
        pri = pri if isinstance(pri, int) and 0 <= pri <= 191 else FACILITY * 8 + severity.of(record)[1]
        return pri, str(heroku.get("app") or "-"), str(heroku.get("dyno") or "-")
    procid = function_key
    prefix = getattr(who, "procid_prefix", None)
    if prefix:
        procid = f"{prefix}.{procid}" if procid else prefix
    return FACILITY * 8 + severity.of(record)[1], who.app_name, procid


def frames(record: dict, who: Identity) -> list[bytes]:
    """The frames of one record (one per line of its body, long lines split)."""
    pri, app_name, procid = header_parts(record, who, fields.attribute(record, "functionKey"))
    header = (
        f"<{pri}>1 {fields.timestamp(record)} "
        f"{fields.header_field(who.host, 255)} {fields.header_field(app_name, 48)} "
        f"{fields.header_field(procid, 128)} - "
    ).encode()
    room = MAX_MESSAGE_BYTES - len(header) - 1
    text = fields.body_text(record)
    out = []
    for line in (LINE_BREAK.split(text) if "\n" in text or "\r" in text else (text,)):
        data = line.encode("utf-8", "replace")
        for piece in (data,) if len(data) <= room else fields.cut_utf8(data, room):
            message = header + piece + b"\n"
            out.append(b"%d %b" % (len(message), message))
    return out


def batch(records: list[dict], who: Identity) -> tuple[bytes, int]:
    """A request body for ``records`` and its frame count (``Logplex-Msg-Count``)."""
    parts = [frame for record in records for frame in frames(record, who)]
    return b"".join(parts), len(parts)
