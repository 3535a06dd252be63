"""OTLP ``ExportLogsServiceRequest`` as OTLP/JSON and as protobuf (research otlp-syslog-forge.md §1–2).

OTLP/JSON is not plain proto3 JSON: trace and span ids are lowercase hex of
exactly 32 and 16 characters (never base64), enums are integers, keys are
lowerCamelCase and 64-bit integers are decimal strings. It is therefore built
by hand here, never with ``json_format.MessageToJson`` (PITFALLS). The
protobuf body is built from the same dict with the generated classes.

Records from the Heroku app itself (drain ingest) form their own resources:
``service.name`` is their APP-NAME (``app``, ``heroku``), the dyno is the
record attribute ``heroku.dyno``.

Records are grouped into one ``ResourceLogs`` per resource: the source's
service name and environment label, the Forge app, environment and app
version. Attribute mapping (decision 7): resource ``service.name``,
``service.namespace``, ``service.version``, ``forge.app.id``,
``forge.environment.id``, ``deployment.environment.name`` and the drain's
token; record ``faas.invocation_id``, ``forge.function.key``,
``forge.module.type``, ``forge.installation_context``, ``forge.license.state``,
``forge.edition``, other Forge keys as ``forge.<key>``; ``arguments`` only when
the source opts in. A severity number outside 1..24 is rewritten and the
original kept as ``forge.severity_number``; invalid ids are dropped from the
record and kept as attributes, since one bad id makes a Collector refuse the
whole request.

Bodies and attribute values keep their OTLP type (issue 12): a structured body
is a ``kvlistValue`` or ``arrayValue``, a typed attribute an ``intValue``,
``doubleValue``, ``boolValue`` or ``bytesValue``, in both encodings — never
their JSON text. Whatever a record holds is read through
:func:`fields.any_value`, so values the Forge client did not normalise
(records stored earlier) encode too.
"""

from __future__ import annotations

import base64
import re
import struct
from dataclasses import dataclass

import orjson

from broker.formats import fields, severity

SCOPE = {"name": "forgedrain", "version": "1"}
HEX32 = re.compile(r"^[0-9a-fA-F]{32}\Z")
HEX16 = re.compile(r"^[0-9a-fA-F]{16}\Z")
RECORD_KEYS = {
    "invocationId": "faas.invocation_id", "functionKey": "forge.function.key",
    "moduleType": "forge.module.type", "installationContext": "forge.installation_context",
    "licenseState": "forge.license.state", "edition": "forge.edition",
}
RESOURCE_KEYS = {"appId", "environmentId", "appVersion"}


@dataclass(frozen=True)
class Origin:
    """The source a record came from, as the owner configured it, and the drain it goes to."""

    app_id: str
    environment_id: str
    drain_token: str
    service_name: str | None = None
    environment_label: str | None = None
    include_arguments: bool = False


def _kv(key: str, value: str) -> dict:
    return {"key": key, "value": {"stringValue": value}}


def _trace_id(value) -> str | None:
    if not isinstance(value, str):
        return None
    if HEX32.match(value) and value.strip("0"):
        return value.lower()
    if HEX16.match(value) and value.strip("0"):
        return "0" * 16 + value.lower()  # a 64-bit (B3) trace id, left-padded
    return None


def _span_id(value) -> str | None:
    return value.lower() if isinstance(value, str) and HEX16.match(value) and value.strip("0") else None


_EMPTY_BODY = {"stringValue": ""}


def _body(record: dict) -> dict:
    """The body as an AnyValue: a stringValue as is (the common case), anything else normalised.
    A missing body is an empty string, as before."""
    body = record.get("body")
    if type(body) is dict and len(body) == 1 and type(body.get("stringValue")) is str:
        return body
    if body is None:
        return _EMPTY_BODY
    return fields.any_value(body)


def _text(value: str | dict) -> str:
    return value if type(value) is str else fields.value_text(value)


def _nanos(value) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        return 0
    return number if 0 <= number < 2**64 else 0


def _parts(record: dict, origin: Origin) -> tuple:
    """What a LogRecord says about one record, whichever encoding carries it:
    (resource key, time, severity number, severity text, body AnyValue, trace id, span id, attributes),
    attributes as (name, value) pairs: a ``str`` value is a stringValue, an ``int`` an intValue,
    a ``dict`` any other AnyValue (kept typed: kvlist, array, int, double, bool, bytes)."""
    if "otlp" in record:
        return _received_parts(record)
    attrs = fields.attribute_values(record)
    number, _ = severity.of(record)
    text = record.get("severityText")
    pairs: list[tuple[str, str | int | dict]] = []
    for key, value in attrs.items():
        if key in RESOURCE_KEYS:
            continue
        if key == "arguments":
            if origin.include_arguments:
                pairs.append(("forge.arguments", value))
            continue
        pairs.append((RECORD_KEYS.get(key) or f"forge.{key}", value))
    original = record.get("severityNumber")
    if original is not None and original != number:
        pairs.append(("forge.severity_number", original if isinstance(original, int)
                      and not isinstance(original, bool) and -2**63 <= original < 2**63 else str(original)))
    trace, span = _trace_id(record.get("traceId")), _span_id(record.get("spanId"))
    if not trace and record.get("traceId"):
        pairs.append(("forge.trace_id", str(record["traceId"])))
    if not span and record.get("spanId"):
        pairs.append(("forge.span_id", str(record["spanId"])))
    heroku = fields.heroku_header(record)
    if heroku is not None:
        # The Heroku app's own log line (drain ingest): APP-NAME is the service, PROCID the dyno.
        pairs.append(("heroku.dyno", heroku[1]))
        pri = record["heroku"].get("pri")
        if isinstance(pri, int):
            pairs.append(("syslog.facility", pri // 8))
        key = ("heroku", heroku[0], None, None)
    else:
        app_id, environment_id, version = attrs.get("appId"), attrs.get("environmentId"), attrs.get("appVersion")
        key = ("forge", (_text(app_id) if app_id is not None else "") or origin.app_id,
               (_text(environment_id) if environment_id is not None else "") or origin.environment_id,
               (_text(version) or None) if version is not None else None)
    if len({name for name, _ in pairs}) != len(pairs):
        seen: set[str] = set()
        pairs = [p for p in pairs if not (p[0] in seen or seen.add(p[0]))]
    return (key, _nanos(record.get("timeUnixNano")), number, text if isinstance(text, str) and text else None,
            _body(record), trace, span, pairs)


def _received_parts(record: dict) -> tuple:
    """:func:`_parts` of a record received over OTLP (``broker.formats.otlp_ingest``): its resource
    and scope as they came (the key holds them, as JSON), its attributes and severity unchanged."""
    part = record["otlp"]
    key = ("otlp", orjson.dumps(part.get("resource") or []), orjson.dumps(part.get("scope") or {}), None)
    number, _ = severity.of(record)
    text = record.get("severityText")
    trace, span = _trace_id(record.get("traceId")), _span_id(record.get("spanId"))
    pairs: list[tuple[str, str | int | dict]] = [
        (kv["key"], kv["value"]["stringValue"] if len(kv["value"]) == 1 and type(kv["value"].get("stringValue")) is str
         else kv["value"]) for kv in record.get("attributes") or ()]
    if not trace and record.get("traceId"):
        pairs.append(("otlp.trace_id", str(record["traceId"])))
    if not span and record.get("spanId"):
        pairs.append(("otlp.span_id", str(record["spanId"])))
    return (key, _nanos(record.get("timeUnixNano")), number, text if isinstance(text, str) and text else None,
            _body(record), trace, span, pairs)


def _scope(key: tuple) -> dict:
    """The scope of a resource key's records: their own when received over OTLP, else the broker's."""
    return orjson.loads(key[2]) if key[0] == "otlp" else SCOPE


def log_record(record: dict, origin: Origin, observed_nanos: int) -> tuple[tuple, dict]:
    """(resource key, OTLP LogRecord JSON) for one Forge or Heroku record."""
    key, nanos, number, text, body, trace, span, pairs = _parts(record, origin)
    out: dict = {"timeUnixNano": str(nanos), "observedTimeUnixNano": str(observed_nanos),
                 "severityNumber": number, "body": body}
    if text:
        out["severityText"] = text
    if trace:
        out["traceId"] = trace
    if span:
        out["spanId"] = span
    if pairs:
        out["attributes"] = [{"key": name, "value": {"stringValue": value} if type(value) is str
                              else {"intValue": str(value)} if type(value) is int else value}
                             for name, value in pairs]
    return key, out


def _resource(key: tuple, origin: Origin) -> dict:
    kind, app_id, environment_id, app_version = key
    if kind == "otlp":  # received over OTLP: its resource as it came, and the drain's token
        return {"attributes": [a for a in orjson.loads(app_id) if a["key"] != "forgedrain.drain.token"]
                + [_kv("forgedrain.drain.token", origin.drain_token)]}
    if kind == "heroku":
        return {"attributes": [_kv("service.name", app_id), _kv("service.namespace", "heroku"),
                               _kv("cloud.provider", "heroku"), _kv("forgedrain.drain.token", origin.drain_token)]}
    attributes = [
        _kv("service.name", fields.service_name(origin.service_name, app_id)),
        _kv("service.namespace", "atlassian-forge"),
        _kv("forge.app.id", app_id),
        _kv("forge.environment.id", environment_id),
        _kv("forgedrain.drain.token", origin.drain_token),
    ]
    if app_version:
        attributes.append(_kv("service.version", app_version))
    if origin.environment_label:
        attributes.append(_kv("deployment.environment.name", origin.environment_label))
    return {"attributes": attributes}


def request(records: list[dict], origin: Origin, observed_nanos: int) -> dict:
    """An ``ExportLogsServiceRequest`` (OTLP/JSON shape) for ``records``, grouped by resource."""
    groups: dict[tuple, list[dict]] = {}
    for record in records:
        key, log = log_record(record, origin, observed_nanos)
        groups.setdefault(key, []).append(log)
    return {"resourceLogs": [
        {"resource": _resource(key, origin), "scopeLogs": [{"scope": _scope(key), "logRecords": logs}]}
        for key, logs in groups.items()
    ]}


def protobuf_request(records: list[dict], origin: Origin, observed_nanos: int) -> bytes:
    """:func:`request` encoded as protobuf straight from the records (the delivery hot path).

    The wire format of these few messages is written here by hand — fixed64
    times, varint enums, length-delimited strings and sub-messages — because
    filling generated messages field by field costs more than all the rest of
    delivery. Attributes repeat from record to record (function key, module,
    installation, invocation), so each encoded KeyValue is reused. The result
    decodes to exactly ``to_protobuf(request(...))`` (the format tests check it
    with the generated classes).
    """
    groups: dict[tuple, list[bytes]] = {}
    observed = b"\x59" + _FIXED64(observed_nanos)
    pairs_cache: dict = {}
    texts: dict = {}
    varint = _varint
    for record in records:
        key, nanos, number, text, body, trace, span, pairs = _parts(record, origin)
        out = [b"\x09", _FIXED64(nanos), _SEVERITY[number] if 0 <= number < 128 else b"\x10" + varint(number)]
        if text:
            field = texts.get(text)
            if field is None:
                raw = text.encode("utf-8", "replace")
                field = texts[text] = b"\x1a" + varint(len(raw)) + raw
            out.append(field)
        plain_text = body.get("stringValue") if len(body) == 1 else None
        if type(plain_text) is str:
            encoded = plain_text.encode("utf-8", "replace")
            size = len(encoded)
            inner = varint(size)
            out += (b"\x2a", varint(size + 1 + len(inner)), b"\x0a", inner, encoded)
        else:
            encoded = _any_value(body)
            out += (b"\x2a", varint(len(encoded)), encoded)
        for pair in pairs:
            if type(pair[1]) is dict:  # a typed AnyValue: not hashable, rare
                kv = _key_value(*pair)
                out.append(b"\x32" + varint(len(kv)) + kv)
                continue
            field = pairs_cache.get(pair)
            if field is None:
                kv = _key_value(*pair)
                field = pairs_cache[pair] = b"\x32" + varint(len(kv)) + kv
            out.append(field)
        if trace:
            out += (b"\x4a\x10", bytes.fromhex(trace))
        if span:
            out += (b"\x52\x08", bytes.fromhex(span))
        out.append(observed)
        log = b"".join(out)
        groups.setdefault(key, []).append(b"\x12" + varint(len(log)) + log)
    scope = _scope_field(SCOPE)
    message = []
    for key, logs in groups.items():
        resource = b"".join(b"\x0a" + b"".join(_bytes_field(_key_value(a["key"], _plain_string(a["value"]))))
                            for a in _resource(key, origin)["attributes"])
        scope_logs = (_scope_field(_scope(key)) if key[0] == "otlp" else scope) + b"".join(logs)
        resource_logs = (b"\x0a" + b"".join(_bytes_field(resource))
                         + b"\x12" + b"".join(_bytes_field(scope_logs)))
        message.append(b"\x0a" + b"".join(_bytes_field(resource_logs)))
    return b"".join(message)


def _plain_string(value: dict) -> str | dict:
    """A stringValue's text (what :func:`_key_value` writes as a string), any other AnyValue as is."""
    return value["stringValue"] if len(value) == 1 and type(value.get("stringValue")) is str else value


def _scope_field(scope: dict) -> bytes:
    """ScopeLogs' scope (1): an InstrumentationScope, name (1), version (2), attributes (3)."""
    inner = b""
    if scope.get("name"):
        inner += b"\x0a" + b"".join(_bytes_field(scope["name"].encode("utf-8", "replace")))
    if scope.get("version"):
        inner += b"\x12" + b"".join(_bytes_field(scope["version"].encode("utf-8", "replace")))
    for a in scope.get("attributes") or ():
        inner += b"\x1a" + b"".join(_bytes_field(_key_value(a["key"], _plain_string(a["value"]))))
    return b"\x0a" + b"".join(_bytes_field(inner))


_FIXED64 = struct.Struct("<Q").pack
_SEVERITY = [b"\x10" + bytes((n,)) for n in range(128)]  # severity_number (2) as a one-byte varint
_SMALL = [bytes((n,)) for n in range(128)]


def _varint(value: int) -> bytes:
    if 0 <= value < 0x80:
        return _SMALL[value]
    out = bytearray()
    value &= (1 << 64) - 1  # negative int64 values are ten-byte varints
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _bytes_field(data: bytes) -> tuple[bytes, bytes]:
    return _varint(len(data)), data


def _key_value(name: str, value: str | int | dict) -> bytes:
    """A KeyValue: key (1), value (2) an AnyValue (a str is a string_value, an int an int_value)."""
    any_value = (b"\x18" + _varint(value)) if type(value) is int else (
        b"\x0a" + b"".join(_bytes_field(value.encode("utf-8", "replace")))) if type(value) is str else _any_value(value)
    return b"\x0a" + b"".join(_bytes_field(name.encode("utf-8", "replace"))) + b"\x12" + b"".join(
        _bytes_field(any_value))


_DOUBLE = struct.Struct("<d").pack


def _any_value(value: dict) -> bytes:
    """The fields of a normalised AnyValue (:func:`fields.any_value`), protobuf wire format:
    string_value 1, bool_value 2, int_value 3, double_value 4, array_value 5 (ArrayValue:
    values 1), kvlist_value 6 (KeyValueList: values 1), bytes_value 7. Inside a oneof a
    default (false, 0, "") is still written, as the generated classes do."""
    if not value:
        return b""
    (kind, inner), = value.items()
    if kind == "stringValue":
        return b"\x0a" + b"".join(_bytes_field(inner.encode("utf-8", "replace")))
    if kind == "boolValue":
        return b"\x10\x01" if inner else b"\x10\x00"
    if kind == "intValue":
        return b"\x18" + _varint(int(inner))
    if kind == "doubleValue":
        return b"\x21" + _DOUBLE(inner)
    if kind == "bytesValue":
        return b"\x3a" + b"".join(_bytes_field(base64.b64decode(inner + "=" * (-len(inner) % 4))))
    if kind == "arrayValue":
        items = b"".join(b"\x0a" + b"".join(_bytes_field(_any_value(item))) for item in inner["values"])
        return b"\x2a" + b"".join(_bytes_field(items))
    items = b"".join(b"\x0a" + b"".join(_bytes_field(_key_value(item["key"], item["value"])))
                     for item in inner["values"])
    return b"\x32" + b"".join(_bytes_field(items))


def to_json(export: dict) -> bytes:
    return orjson.dumps(export)


def to_protobuf(export: dict) -> bytes:
    """The same request as binary protobuf (``application/x-protobuf``).

    Filled field by field from the OTLP/JSON shape :func:`request` builds —
    several times faster than ``json_format.ParseDict`` on the hot path, and
    checked against it by the format tests.
    """
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    message = ExportLogsServiceRequest()
    for resource_logs in export["resourceLogs"]:
        out = message.resource_logs.add()
        _fill_attributes(out.resource.attributes, resource_logs["resource"]["attributes"])
        for scope_logs in resource_logs["scopeLogs"]:
            scope_out = out.scope_logs.add()
            scope = scope_logs.get("scope") or {}
            scope_out.scope.name = scope.get("name", "")
            scope_out.scope.version = scope.get("version", "")
            if scope.get("attributes"):
                _fill_attributes(scope_out.scope.attributes, scope["attributes"])
            add = scope_out.log_records.add
            for log in scope_logs["logRecords"]:
                record = add()
                record.time_unix_nano = int(log["timeUnixNano"])
                record.observed_time_unix_nano = int(log["observedTimeUnixNano"])
                record.severity_number = log["severityNumber"]
                if "severityText" in log:
                    record.severity_text = log["severityText"]
                _fill_value(record.body, log["body"])
                if "traceId" in log:
                    record.trace_id = bytes.fromhex(log["traceId"])
                if "spanId" in log:
                    record.span_id = bytes.fromhex(log["spanId"])
                if "attributes" in log:
                    _fill_attributes(record.attributes, log["attributes"])
    return message.SerializeToString()


def _fill_attributes(target, attributes: list[dict]) -> None:
    for item in attributes:
        pair = target.add()
        pair.key = item["key"]
        _fill_value(pair.value, item["value"])


def _fill_value(target, value: dict) -> None:
    """One normalised AnyValue into a generated ``AnyValue`` (an empty one is still marked present)."""
    if "stringValue" in value:
        target.string_value = value["stringValue"]
    elif "intValue" in value:
        target.int_value = int(value["intValue"])
    elif "boolValue" in value:
        target.bool_value = value["boolValue"]
    elif "doubleValue" in value:
        target.double_value = value["doubleValue"]
    elif "bytesValue" in value:
        inner = value["bytesValue"]
        target.bytes_value = base64.b64decode(inner + "=" * (-len(inner) % 4))
    elif "arrayValue" in value:
        target.array_value.SetInParent()
        for item in value["arrayValue"]["values"]:
            _fill_value(target.array_value.values.add(), item)
    elif "kvlistValue" in value:
        target.kvlist_value.SetInParent()
        _fill_attributes(target.kvlist_value.values, value["kvlistValue"]["values"])
    else:
        target.SetInParent()


def hex_ids_to_base64(export: dict) -> dict:
    """A copy with OTLP/JSON hex ids turned into proto3 JSON's base64 (json_format reads base64)."""
    copy = orjson.loads(orjson.dumps(export))
    for resource_logs in copy.get("resourceLogs", ()):
        for scope_logs in resource_logs.get("scopeLogs", ()):
            for log in scope_logs.get("logRecords", ()):
                for key in ("traceId", "spanId"):
                    if log.get(key):
                        log[key] = base64.b64encode(bytes.fromhex(log[key])).decode()
    return copy
