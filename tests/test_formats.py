"""Output formats: strict parsers accept every frame, and the content decodes back unchanged."""

from __future__ import annotations

import re

import orjson
import pytest
from hypothesis import given, settings, strategies as st

from broker.formats import fields, logplex, severity, syslog5424

PRINTUSASCII = re.compile(rb"^[\x21-\x7e]+$")
TIMESTAMP = re.compile(rb"^(-|\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z)$")


def record(body: str = "hello", *, text: str | None = "INFO", number=30, function: str | None = "run",
           nanos: str = "1707821444939123456", extra: dict | None = None) -> dict:
    attributes = [{"key": "appId", "value": {"stringValue": "app-1"}},
                  {"key": "invocationId", "value": {"stringValue": "inv-1"}}]
    if function is not None:
        attributes.append({"key": "functionKey", "value": {"stringValue": function}})
    for key, value in (extra or {}).items():
        attributes.append({"key": key, "value": {"stringValue": value}})
    out = {"timeUnixNano": nanos, "severityNumber": number, "body": {"stringValue": body},
           "attributes": attributes}
    if text is not None:
        out["severityText"] = text
    return out


# --- strict readers, written from the wire descriptions, independent of the encoders ---

def read_octet_counted(data: bytes) -> list[bytes]:
    """RFC 6587 octet counting: LEN SP MSG, LEN = NONZERO-DIGIT *DIGIT bytes of MSG."""
    messages, i = [], 0
    while i < len(data):
        match = re.match(rb"[1-9][0-9]*", data[i:])
        assert match, f"no length at byte {i}"
        length = int(match.group())
        i += len(match.group())
        assert data[i:i + 1] == b" "
        i += 1
        assert i + length <= len(data), "frame longer than the data"
        messages.append(data[i:i + length])
        i += length
    return messages


def read_logplex(body: bytes, count: int) -> list[dict]:
    """As Vector's heroku_logs source reads: split on LF, eight space-separated fields."""
    assert all(m.endswith(b"\n") for m in read_octet_counted(body)), "every frame ends with LF"
    lines = [line for line in body.split(b"\n") if line]
    events = []
    for line in lines:
        parts = line.split(b" ", 7)
        assert len(parts) == 8, line
        length, pri_version, ts, host, app, procid, msgid, message = parts
        assert re.fullmatch(rb"<\d{1,3}>1", pri_version)
        assert TIMESTAMP.match(ts) and msgid == b"-"
        for field, limit in ((host, 255), (app, 48), (procid, 128)):
            assert PRINTUSASCII.match(field) and len(field) <= limit
        events.append({"pri": int(pri_version[1:-2]), "app": app, "procid": procid, "message": message})
    assert len(events) == count, "Logplex-Msg-Count differs from the frames a reader sees"
    return events


# SD-ELEMENT: [SD-ID *(SP PARAM-NAME="PARAM-VALUE")], with \" \\ \] the only escapes.
SD = rb'(?P<sd>-|(?:\[[\x21-\x7e]{1,32}?(?: [^= \]"]{1,32}="(?:\\["\\\]]|[^"\\\]])*")*\])+)'
RFC5424 = re.compile(rb"^<(\d{1,3})>1 (\S+) (\S+) (\S+) (\S+) (\S+) " + SD + rb"(?: (?P<msg>.*))?$", re.S)


def read_5424(message: bytes) -> dict:
    match = RFC5424.match(message)
    assert match, message[:200]
    pri, ts, host, app, procid, msgid = match.group(1, 2, 3, 4, 5, 6)
    sd = match.group("sd")
    assert 0 <= int(pri) <= 191 and TIMESTAMP.match(ts)
    for field, limit in ((host, 255), (app, 48), (procid, 128), (msgid, 32)):
        assert PRINTUSASCII.match(field) and len(field) <= limit
    assert not (match.group("msg") or b"").startswith(b"\xef\xbb\xbf"), "no BOM"
    return {"pri": int(pri), "sd": sd, "message": match.group("msg") or b""}


def unescape_sd(value: bytes) -> bytes:
    return re.sub(rb'\\(["\\\]])', rb"\1", value)


# --- severity ---------------------------------------------------------------------

@pytest.mark.parametrize("text, number, expected", [
    ("INFO", 30, (9, 6)), ("info", None, (9, 6)), ("WARN", 40, (13, 4)), ("ERROR", 50, (17, 3)),
    ("FATAL", 60, (21, 2)), ("TRACE", 10, (1, 7)), ("DEBUG", 20, (5, 7)),
    (None, 30, (9, 6)), (None, 17, (17, 3)), (None, 99, (0, 6)), ("LOUD", None, (0, 6)),
])
def test_severity_comes_from_the_text_first(text, number, expected):
    assert severity.of(record(text=text, number=number)) == expected


# --- logplex ------------------------------------------------------------------------

WHO = logplex.Identity(host="d.11111111-2222-3333-4444-555555555555", app_name="acme-forge")


def test_a_logplex_frame_is_herokus_dialect_byte_for_byte():
    body, count = logplex.batch([record("This is simple log message")], WHO)
    message = b"<190>1 2024-02-13T10:50:44.939123Z d.11111111-2222-3333-4444-555555555555 acme-forge run - This is simple log message\n"
    assert body == str(len(message)).encode() + b" " + message
    assert count == 1


def test_a_multi_line_body_becomes_one_frame_per_line():
    trace = "TypeError: x is undefined\n    at run (index.js:3:7)\r\n    at main (index.js:9:1)"
    body, count = logplex.batch([record(trace, text="ERROR")], WHO)
    events = read_logplex(body, count)
    assert [e["message"] for e in events] == [b"TypeError: x is undefined", b"    at run (index.js:3:7)",
                                              b"    at main (index.js:9:1)"]
    assert {e["pri"] for e in events} == {23 * 8 + 3}


def test_a_long_line_is_split_below_10000_bytes_without_breaking_characters():
    line = "é" * 9000 + "✓" * 2000  # 24,000 bytes
    frames = logplex.frames(record(line), WHO)
    assert len(frames) == 3
    messages = read_octet_counted(b"".join(frames))
    assert all(len(m) <= 10_000 for m in messages)
    text = b"".join(m.split(b" - ", 1)[1][:-1] for m in messages).decode("utf-8")
    assert text == line


def test_huge_attributes_leave_logplex_frames_within_10000_bytes_and_the_body_whole():
    """The same record as the 5424 test below: Heroku's dialect has no structured data, so however
    large its attributes, only the body fills frames."""
    rec = record("b" * 20_000, extra={"arguments": '"]\\' * 5000, "appVersion": "v" * 3000})
    data, count = logplex.batch([rec], WHO)
    messages = read_octet_counted(data)
    events = read_logplex(data, count)
    assert all(len(m) <= 10_000 for m in messages)
    assert b"".join(e["message"] for e in events) == b"b" * 20_000
    assert b"vvv" not in data and b'"]\\' not in data


@settings(max_examples=300, deadline=None)
@given(body=st.text(), function=st.one_of(st.none(), st.text(max_size=200)),
       app=st.text(max_size=80), text=st.sampled_from(["INFO", "ERROR", "nonsense", None]))
def test_any_record_gives_frames_a_strict_logplex_reader_accepts(body, function, app, text):
    who = logplex.Identity(host="d.token", app_name=app)
    data, count = logplex.batch([record(body, function=function, text=text)], who)
    events = read_logplex(data, count)
    # the lines decode back to the body (line breaks normalised, invalid surrogates replaced)
    expected = logplex.LINE_BREAK.split(body.encode("utf-8", "replace").decode("utf-8"))
    assert b"\n".join(e["message"] for e in events).decode("utf-8") == "\n".join(expected)


def test_missing_and_odd_fields_still_give_valid_frames():
    odd = {"body": {"kvlistValue": {"values": []}}, "attributes": [{"key": "x"}, "junk"]}
    data, count = logplex.batch([odd, {"timeUnixNano": "not-a-number"}], WHO)
    events = read_logplex(data, count)
    assert [e["procid"] for e in events] == [b"-", b"-"]


# --- RFC 5424 -------------------------------------------------------------------------

STRICT = syslog5424.Identity(host="d.token", app_name="acme-forge", sd_id="forge@32473")


def test_a_5424_frame_has_structured_data_and_keeps_the_body_whole():
    rec = record('multi\nline "quoted" ]bracket\\', extra={"appVersion": '1.2"]\\'})
    frame = syslog5424.frames(rec, STRICT)
    assert len(frame) == 1
    (message,) = read_octet_counted(frame[0])
    parsed = read_5424(message)
    assert parsed["message"] == 'multi\nline "quoted" ]bracket\\'.encode()
    assert b'appVersion="1.2\\"\\]\\\\"' in parsed["sd"]
    assert message.startswith(b"<190>1 2024-02-13T10:50:44.939123Z d.token acme-forge run - [forge@32473 ")


def test_without_an_sd_id_the_structured_data_is_nil():
    (message,) = read_octet_counted(syslog5424.stream([record("x")], syslog5424.Identity("h", "a")))
    assert read_5424(message)["sd"] == b"-"


def test_arguments_leave_only_when_the_source_opts_in():
    rec = record("x", extra={"arguments": '[{"email":"user@customer.test"}]'})
    closed = syslog5424.stream([rec], STRICT)
    opened = syslog5424.stream([rec], syslog5424.Identity("d.token", "a", "forge@32473", include_arguments=True))
    assert b"user@customer.test" not in closed
    assert b"user@customer.test" in opened


def test_huge_structured_data_is_shortened_so_frames_stay_within_8_kib():
    rec = record("b" * 20_000, extra={"arguments": '"]\\' * 5000, "appVersion": "v" * 3000})
    who = syslog5424.Identity("d.token", "a", "forge@32473", include_arguments=True)
    messages = read_octet_counted(syslog5424.stream([rec], who))
    parsed = [read_5424(m) for m in messages]
    assert all(len(m) <= syslog5424.MAX_MESSAGE_BYTES for m in messages)
    assert b"".join(p["message"] for p in parsed) == b"b" * 20_000
    assert len(parsed[0]["sd"]) <= syslog5424.MAX_SD_BYTES and b"arguments=" in parsed[0]["sd"]


@settings(max_examples=300, deadline=None)
@given(body=st.text(), function=st.one_of(st.none(), st.text(max_size=200)), app=st.text(max_size=80),
       values=st.dictionaries(st.sampled_from(["appVersion", "invocationId", "installationContext",
                                               "moduleType"]), st.text(max_size=50)),
       nanos=st.one_of(st.integers(-10, 2**63).map(str), st.text(max_size=5)))
def test_any_record_gives_frames_a_strict_5424_reader_accepts(body, function, app, values, nanos):
    who = syslog5424.Identity(host="d.token", app_name=app, sd_id="forge@32473")
    rec = record(body, function=function, nanos=nanos, extra=values)
    messages = read_octet_counted(syslog5424.stream([rec], who))
    parsed = [read_5424(m) for m in messages]
    assert all(len(m) <= syslog5424.MAX_MESSAGE_BYTES for m in messages)
    assert b"".join(p["message"] for p in parsed) == body.encode("utf-8", "replace")
    for key, value in values.items():
        if value:
            found = re.search(rb" " + key.encode() + rb'="((?:\\.|[^"\\])*)"', parsed[0]["sd"])
            assert found and unescape_sd(found.group(1)) == value.encode("utf-8", "replace")


def test_timestamps_have_six_fractional_digits_or_are_nil():
    assert fields.timestamp({"timeUnixNano": "1707821444939000000"}) == "2024-02-13T10:50:44.939000Z"
    assert fields.timestamp({"timeUnixNano": "0"}) == "-"
    assert fields.timestamp({}) == "-"


# --- OTLP -------------------------------------------------------------------------------

from broker.formats import otlp  # noqa: E402

ORIGIN = otlp.Origin(app_id="app-1", environment_id="env-1", drain_token="d.token",
                     service_name="acme-jira-app", environment_label="production")
CAMEL = re.compile(r"^[a-z][A-Za-z0-9]*$")


def check_otlp_json(export: dict) -> None:
    """OTLP/JSON rules a Collector enforces: camelCase keys, hex ids, integer enums, int64 strings."""
    def walk(node, path=""):
        if isinstance(node, dict):
            for key, value in node.items():
                if path.endswith("attributes[]") and key in ("key", "value"):
                    pass
                elif not path.endswith("value"):
                    assert CAMEL.match(key), f"{path}.{key} is not lowerCamelCase"
                walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for item in node:
                walk(item, path + "[]")
    walk(export)
    for resource_logs in export["resourceLogs"]:
        keys = [a["key"] for a in resource_logs["resource"]["attributes"]]
        assert len(keys) == len(set(keys))
        for log in resource_logs["scopeLogs"][0]["logRecords"]:
            assert isinstance(log["severityNumber"], int) and 0 <= log["severityNumber"] <= 24
            assert log["timeUnixNano"].isdigit() and log["observedTimeUnixNano"].isdigit()
            assert re.fullmatch(r"[0-9a-f]{32}", log.get("traceId", "0" * 31 + "1"))
            assert re.fullmatch(r"[0-9a-f]{16}", log.get("spanId", "0" * 15 + "1"))
            names = [a["key"] for a in log.get("attributes", [])]
            assert len(names) == len(set(names))


def test_otlp_json_maps_a_forge_record_as_decided():
    rec = record("This is simple log message", extra={"appVersion": "1.206.0", "moduleType": "core:function",
                                                       "arguments": "[1]"})
    rec.update(traceId="3E1C350520934CBEB20B7D54D56BEE2C", spanId="6c7f6ad7436700c1")
    export = otlp.request([rec], ORIGIN, observed_nanos=1707821500000000000)
    check_otlp_json(export)
    (resource_logs,) = export["resourceLogs"]
    resource = {a["key"]: a["value"]["stringValue"] for a in resource_logs["resource"]["attributes"]}
    assert resource == {"service.name": "acme-jira-app", "service.namespace": "atlassian-forge",
                        "forge.app.id": "app-1", "forge.environment.id": "env-1",
                        "forgedrain.drain.token": "d.token", "service.version": "1.206.0",
                        "deployment.environment.name": "production"}
    (log,) = resource_logs["scopeLogs"][0]["logRecords"]
    assert log["severityNumber"] == 9 and log["severityText"] == "INFO"
    assert log["traceId"] == "3e1c350520934cbeb20b7d54d56bee2c"
    assert log["timeUnixNano"] == "1707821444939123456"
    attributes = {a["key"]: a["value"] for a in log["attributes"]}
    assert attributes["faas.invocation_id"] == {"stringValue": "inv-1"}
    assert attributes["forge.function.key"] == {"stringValue": "run"}
    assert attributes["forge.severity_number"] == {"intValue": "30"}
    assert "forge.arguments" not in attributes


def test_a_16_hex_trace_id_is_padded_and_a_bad_one_kept_aside():
    padded = record("x")
    padded["traceId"] = "6c7f6ad7436700c1"
    bad = record("y")
    bad.update(traceId="not-hex", spanId="00000000000000000")
    export = otlp.request([padded, bad], ORIGIN, 1)
    logs = export["resourceLogs"][0]["scopeLogs"][0]["logRecords"]
    assert logs[0]["traceId"] == "0000000000000000" + "6c7f6ad7436700c1"
    assert "traceId" not in logs[1] and "spanId" not in logs[1]
    assert {"key": "forge.trace_id", "value": {"stringValue": "not-hex"}} in logs[1]["attributes"]


def test_records_are_grouped_by_resource():
    v1 = record("a", extra={"appVersion": "1"})
    v2 = record("b", extra={"appVersion": "2"})
    export = otlp.request([v1, v2, v1], ORIGIN, 1)
    assert [len(r["scopeLogs"][0]["logRecords"]) for r in export["resourceLogs"]] == [2, 1]


@settings(max_examples=200, deadline=None)
@given(body=st.text(), text=st.sampled_from(["INFO", "ERROR", "x", None]),
       number=st.one_of(st.none(), st.integers(-5, 100)),
       trace=st.one_of(st.none(), st.text(alphabet="0123456789abcdefXYZ", max_size=34)),
       extra=st.dictionaries(st.text(min_size=1, max_size=12), st.text(max_size=20), max_size=4))
def test_any_record_gives_otlp_json_and_protobuf_that_the_official_schema_accepts(body, text, number,
                                                                                  trace, extra):
    from google.protobuf import json_format
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    rec = record(body, text=text, number=number, extra=extra)
    if trace is not None:
        rec["traceId"] = trace
    export = otlp.request([rec], ORIGIN, 1707821500000000000)
    check_otlp_json(export)
    parsed = json_format.ParseDict(otlp.hex_ids_to_base64(export), ExportLogsServiceRequest())
    log = parsed.resource_logs[0].scope_logs[0].log_records[0]
    assert log.body.string_value == fields.body_text(rec)
    if "traceId" in export["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0]:
        assert len(log.trace_id) == 16
    decoded = ExportLogsServiceRequest.FromString(otlp.to_protobuf(export))
    assert decoded == parsed
    # the delivery hot path builds the same message straight from the records
    assert ExportLogsServiceRequest.FromString(otlp.protobuf_request([rec], ORIGIN, 1707821500000000000)) == parsed


# --- the Heroku app's own records (drain ingest) ---------------------------------------

def test_heroku_records_keep_their_pri_app_and_dyno_in_every_format():
    from broker import ingest

    line = b"<187>1 2020-01-08T22:33:58.123+00:00 host app worker.2 - boom \"quoted\"\n"
    rec = logplex.to_record(line, 1)
    (logplex_frame,) = logplex.frames(rec, logplex.Identity(host="d.token", app_name="ignored"))
    (event,) = read_logplex(logplex_frame, 1)
    assert (event["pri"], event["app"], event["procid"], event["message"]) == (
        187, b"app", b"worker.2", b'boom "quoted"')
    (message,) = read_octet_counted(syslog5424.stream([rec], STRICT))
    assert message.startswith(b"<187>1 2020-01-08T22:33:58.123000Z d.token app worker.2 - - boom")
    export = otlp.request([rec, forge_like := record("forge line")], ORIGIN, 1)
    heroku_resource, forge_resource = export["resourceLogs"]
    names = {a["key"]: a["value"]["stringValue"] for a in heroku_resource["resource"]["attributes"]}
    assert names["service.name"] == "app" and names["cloud.provider"] == "heroku"
    (log,) = heroku_resource["scopeLogs"][0]["logRecords"]
    assert (log["severityNumber"], log["severityText"]) == (17, "ERR")
    assert {"key": "heroku.dyno", "value": {"stringValue": "worker.2"}} in log["attributes"]
    assert forge_resource["scopeLogs"][0]["logRecords"][0]["body"] == forge_like["body"]
    check_otlp_json(export)
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    assert (ExportLogsServiceRequest.FromString(otlp.protobuf_request([rec, forge_like], ORIGIN, 1))
            == ExportLogsServiceRequest.FromString(otlp.to_protobuf(export)))


def test_the_heroku_drain_writes_under_the_reserved_app_name_ingest_drops():
    from broker import ingest

    who = logplex.Identity(host="forgedrain", app_name=ingest.OWN_APP_NAME, procid_prefix="acme")
    data, count = logplex.batch([record("x")], who)
    echoed = data.split(b" ", 1)[1].replace(b" forgedrain forgedrain ", b" host forgedrain ")
    parsed = ingest.parse(str(len(echoed)).encode() + b" " + echoed, count)
    assert (parsed.frames, parsed.own, parsed.stored, parsed.kept) == (1, 1, 0, [])
    assert b" forgedrain acme.run - x\n" in data


@pytest.mark.parametrize("number", [2**63, -2**63 - 1, 2**70])
def test_a_severity_number_outside_int64_is_kept_as_text(number):
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    rec = record("x", number=number)
    export = otlp.request([rec], ORIGIN, 1)
    attributes = {a["key"]: a["value"] for a in export["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0]["attributes"]}
    assert attributes["forge.severity_number"] == {"stringValue": str(number)}
    decoded = ExportLogsServiceRequest.FromString(otlp.protobuf_request([rec], ORIGIN, 1))
    assert decoded == ExportLogsServiceRequest.FromString(otlp.to_protobuf(export))


# --- typed bodies and attributes (issue 12: AnyValue, not JSON text) --------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(body=JSON_VALUES, values=st.dictionaries(st.text(min_size=1, max_size=8), JSON_VALUES, max_size=4))
def test_any_typed_body_or_attribute_encodes_alike_in_otlp_json_and_both_protobuf_paths(body, values):
    from google.protobuf import json_format
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    rec = record("x")
    rec["body"] = fields.any_value(body) if body is not None else None
    rec["attributes"] += [{"key": key, "value": fields.any_value(value)} for key, value in values.items()]
    export = otlp.request([rec], ORIGIN, 1707821500000000000)
    check_otlp_json(export)
    text = otlp.to_json(export)  # orjson writes it: nothing unwritable got through
    parsed = json_format.ParseDict(otlp.hex_ids_to_base64(orjson.loads(text)), ExportLogsServiceRequest())
    assert ExportLogsServiceRequest.FromString(otlp.to_protobuf(export)) == parsed
    assert ExportLogsServiceRequest.FromString(otlp.protobuf_request([rec], ORIGIN, 1707821500000000000)) == parsed
    log = parsed.resource_logs[0].scope_logs[0].log_records[0]
    if isinstance(body, dict) and body and not (len(body) == 1 and set(body) <= fields.ANY_KEYS):
        assert log.body.WhichOneof("value") == "kvlist_value"
    elif isinstance(body, list):
        assert log.body.WhichOneof("value") == "array_value"
    elif isinstance(body, bool):
        assert log.body.bool_value is body
    elif isinstance(body, int) and -2**63 <= body < 2**63:
        assert log.body.int_value == body
    elif isinstance(body, float):
        assert log.body.double_value == body
    # line-based formats: one frame a strict reader accepts, the body as compact JSON of its plain value
    data, count = logplex.batch([rec], WHO)
    assert len(read_logplex(data, count)) >= 1
    plain = fields.plain(rec["body"]) if rec["body"] is not None else ""
    expected = "" if plain is None else plain if isinstance(plain, str) else orjson.dumps(plain).decode()
    assert fields.body_text(rec) == expected
    (message,) = read_octet_counted(syslog5424.stream([rec], STRICT))
    assert read_5424(message)["message"] == expected.encode()


@pytest.mark.parametrize("value, expected", [
    ("s", {"stringValue": "s"}), (True, {"boolValue": True}), (5, {"intValue": "5"}),
    (2**63, {"stringValue": "9223372036854775808"}),
    (0.5, {"doubleValue": 0.5}), (float("inf"), {"stringValue": "Infinity"}), (None, {}), ({}, {}),
    ([1], {"arrayValue": {"values": [{"intValue": "1"}]}}),
    ({"a": "b"}, {"kvlistValue": {"values": [{"key": "a", "value": {"stringValue": "b"}}]}}),
    ({"a": "b", "stringValue": "c"}, {"kvlistValue": {"values": [
        {"key": "a", "value": {"stringValue": "b"}}, {"key": "stringValue", "value": {"stringValue": "c"}}]}}),
    ({"arrayValue": {}}, {"arrayValue": {"values": []}}),
    ({"arrayValue": [1]}, {"arrayValue": {"values": [{"intValue": "1"}]}}),
    ({"kvlistValue": {"a": 1}}, {"kvlistValue": {"values": [{"key": "a", "value": {"intValue": "1"}}]}}),
    ({"kvlistValue": {"values": [{"key": 1, "value": "x"}, "junk", {"value": 2}]}},
     {"kvlistValue": {"values": [{"key": "1", "value": {"stringValue": "x"}}]}}),
    ({"doubleValue": "2.5"}, {"doubleValue": 2.5}), ({"doubleValue": "Infinity"}, {"stringValue": "Infinity"}),
    ({"intValue": 3.0}, {"intValue": "3"}), ({"intValue": 3.5}, {"stringValue": "3.5"}),
    ({"boolValue": "yes"}, {"stringValue": "yes"}), ({"stringValue": None}, {}),
])
def test_any_value_normalises_as_documented(value, expected):
    assert fields.any_value(value) == expected
    assert fields.any_value(expected) == expected  # idempotent


def test_nesting_beyond_the_limit_becomes_text_and_stays_writable():
    deep: list = ["bottom"]
    for _ in range(300):
        deep = [deep]
    value = fields.any_value(deep)
    orjson.dumps([{"body": value}])
    assert fields.any_value(value) == value
    assert "bottom" in fields.value_text(value)
