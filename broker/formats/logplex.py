"""Heroku's logplex dialect, byte for byte (research heroku-addon-and-logplex.md §7; PITFALLS).

Written (:func:`frames`, :func:`batch`) and read (:func:`split`,
:func:`to_record`): the Heroku app's own logs arrive in the same dialect.

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
from datetime import datetime

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
    heroku = fields.heroku_header(record)
    if heroku is not None:
        pri = record["heroku"].get("pri")
        pri = pri if isinstance(pri, int) and 0 <= pri <= 191 else FACILITY * 8 + severity.of(record)[1]
        return pri, heroku[0], heroku[1]
    received = record.get("otlp")
    if type(received) is dict:  # received over OTLP: its service is the APP-NAME, no PROCID
        return FACILITY * 8 + severity.of(record)[1], received.get("service") or who.app_name, None
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


# --- reading Heroku's frames -------------------------------------------------------

# What the broker writes as APP-NAME into the app's own log stream (the heroku drain): frames
# that come back through drain ingest under this name are the broker's own.
OWN_APP_NAME = "forgedrain"
MAX_FRAME_BYTES = 64 * 1024
HEADER = re.compile(
    rb"<(\d{1,3})>1 (\S+) (\S+) (\S+) (\S+) (\S+)(?: (.*))?\Z", re.DOTALL)
TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d{1,9})?(Z|[+-]\d\d:\d\d)\Z")
# syslog severity → (severityText as syslog names it, OTLP SeverityNumber)
SEVERITY = {0: ("EMERG", 24), 1: ("ALERT", 23), 2: ("CRIT", 22), 3: ("ERR", 17), 4: ("WARNING", 13),
            5: ("NOTICE", 10), 6: ("INFO", 9), 7: ("DEBUG", 5)}


class Malformed(Exception):
    """The body is not octet-counted frames; the message says where."""


def split(body: bytes, limit: int | None) -> list[bytes]:
    """Split octet-counted frames (RFC 6587 §3.4.1); raise :class:`Malformed` on any framing error
    or when there are more than ``limit`` frames."""
    out: list[bytes] = []
    position, size = 0, len(body)
    while position < size:
        space = body.find(b" ", position, position + 8)
        if space <= position or not body[position:space].isdigit():
            raise Malformed(f"frame {len(out) + 1}: expected a decimal length then a space at byte {position}")
        length = int(body[position:space])
        if length == 0 or length > MAX_FRAME_BYTES:
            raise Malformed(f"frame {len(out) + 1}: length {length} is outside 1..{MAX_FRAME_BYTES}")
        end = space + 1 + length
        if end > size:
            raise Malformed(f"frame {len(out) + 1}: declares {length} bytes but only {size - space - 1} follow")
        out.append(body[space + 1:end])
        if limit is not None and len(out) > limit:
            raise Malformed(f"more than {limit} frames in one request")
        position = end
    return out


def app_name(message: bytes) -> bytes:
    """A message's APP-NAME field (empty when the header has too few fields)."""
    parts = message.split(b" ", 4)
    return parts[3] if len(parts) > 4 else b""


def _nanos(text: str, fallback: int) -> int:
    match = TIME.match(text)
    if not match:
        return fallback
    try:
        moment = datetime.fromisoformat(match.group(1) + (match.group(3).replace("Z", "+00:00")))
    except ValueError:
        return fallback
    fraction = (match.group(2) or ".")[1:].ljust(9, "0")
    return int(moment.timestamp()) * 1_000_000_000 + int(fraction or 0)


def to_record(message: bytes, received_nanos: int) -> dict:
    """A record of the broker's model for one logplex message, keeping Heroku's PRI, APP-NAME and
    PROCID in a ``heroku`` part; a header that is not RFC 5424 keeps the whole line as the body
    (as Vector's ``heroku_logs`` keeps such lines raw)."""
    match = HEADER.match(message)
    if not match or int(match.group(1)) > 191:
        text = message.decode("utf-8", "replace").rstrip("\n")
        return {"timeUnixNano": str(received_nanos), "severityText": "INFO", "severityNumber": 9,
                "body": {"stringValue": text}, "heroku": {"pri": 190, "app": "-", "dyno": "-"}}
    pri = int(match.group(1))
    text, number = SEVERITY[pri % 8]
    body = (match.group(7) or b"").decode("utf-8", "replace")
    if body.endswith("\n"):
        body = body[:-1]
    return {
        "timeUnixNano": str(_nanos(match.group(2).decode("ascii", "replace"), received_nanos)),
        "severityText": text, "severityNumber": number, "body": {"stringValue": body},
        "heroku": {"pri": pri, "app": match.group(4).decode("ascii", "replace"),
                   "dyno": match.group(5).decode("ascii", "replace")},
    }
