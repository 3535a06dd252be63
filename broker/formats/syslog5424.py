"""Strict RFC 5424 over octet counting (RFC 6587 §3.4.1, as RFC 5425 TLS uses).

``LEN SP <PRI>1 TIMESTAMP HOST APP PROCID MSGID SD MSG``: the structured-data
field is always there (``-`` or one SD element), header fields are
PRINTUSASCII cut by bytes to the RFC's limits, the timestamp has at most six
fractional digits, and a multi-line body stays whole (octet counting carries
it). No BOM: receivers show it as junk, and MSG-ANY allows UTF-8 without it.
A message over 8,192 bytes is split into several frames: RFC 5425 §4.3.1 asks
receivers to take 8,192 octets, and rsyslog's default ``maxMessageSize`` is
8 KiB, so a longer message would be cut by a receiver left at its defaults.
Structured data is held to 4,096 bytes (the longest values are shortened) so
the body always has room. A structured body, like a typed SD-PARAM value, is
the compact JSON of its plain value: ``{"a":1}`` (:func:`fields.body_text`).
"""

from __future__ import annotations

from dataclasses import dataclass

from broker.formats import fields, logplex

MAX_MESSAGE_BYTES = 8192
MAX_SD_BYTES = 4096
# Forge attributes worth carrying as SD-PARAMs, under these names.
SD_PARAMS = (
    ("appVersion", "appVersion"), ("invocationId", "invocationId"),
    ("installationContext", "installationContext"), ("moduleType", "moduleType"),
    ("environmentId", "environmentId"), ("appId", "appId"),
)


@dataclass(frozen=True)
class Identity:
    host: str               # HOSTNAME: the drain's token
    app_name: str           # APP-NAME: the source's service name
    # SD-ID for Forge metadata, ``name@<Private Enterprise Number>``; None sends ``-``.
    sd_id: str | None = None
    include_arguments: bool = False


def _escape(value: str) -> str:
    # RFC 5424 §6.3.3: '"', '\' and ']' are escaped inside PARAM-VALUE.
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def structured_data(attrs: dict[str, str], who: Identity) -> str:
    if not who.sd_id:
        return "-"
    params = [(name, attrs[key]) for key, name in SD_PARAMS if attrs.get(key)]
    if who.include_arguments and attrs.get("arguments"):
        params.append(("arguments", attrs["arguments"]))
    if not params:
        return "-"
    while True:
        text = "[" + who.sd_id + "".join(f' {name}="{_escape(value)}"' for name, value in params) + "]"
        if len(text.encode("utf-8")) <= MAX_SD_BYTES:
            return text
        longest = max(range(len(params)), key=lambda i: len(params[i][1]))
        name, value = params[longest]
        params[longest] = (name, value[: len(value) // 2])


def frames(record: dict, who: Identity) -> list[bytes]:
    if who.sd_id:
        attrs = fields.attributes(record)
        function_key, sd = attrs.get("functionKey"), structured_data(attrs, who)
    else:  # no SD-ID: only PROCID needs an attribute
        function_key, sd = fields.attribute(record, "functionKey"), "-"
    pri, app_name, procid = logplex.header_parts(record, who, function_key)
    header = (
        f"<{pri}>1 {fields.timestamp(record)} "
        f"{fields.header_field(who.host, 255)} {fields.header_field(app_name, 48)} "
        f"{fields.header_field(procid, 128)} - {sd}"
    ).encode("utf-8")
    body = fields.body_text(record).encode("utf-8", "replace")
    room = max(1, MAX_MESSAGE_BYTES - len(header) - 1)
    if not body:
        return [b"%d %b" % (len(header), header)]
    out = []
    for piece in (body,) if len(body) <= room else fields.cut_utf8(body, room):
        message = header + b" " + piece
        out.append(b"%d %b" % (len(message), message))
    return out


def stream(records: list[dict], who: Identity) -> bytes:
    return b"".join(frame for record in records for frame in frames(record, who))
