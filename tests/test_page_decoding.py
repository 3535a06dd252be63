"""Pages the fast decoder refuses still complete (issue 12, item 3).

Raw page bytes are served over real HTTP by a tiny local app and read by the
real :class:`ForgeClient`: records orjson cannot read are repaired, entries
that are no log record are counted with a redacted sample, and every record
that comes out can be written by orjson (the poller fingerprints and stores
records with it). Then the repaired records go through every output format.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone

import orjson
import pytest
import requests
from flask import Flask, Response, request

from broker import forge
from broker.forge import Credentials, ForgeClient, Query
from broker.formats import fields, logplex, otlp, syslog5424
from tests.fakes.server import LocalServer

APP = "5f0f8a4e-1f5a-4c3e-9d7b-1a2b3c4d5e6f"
ENV = "0d1e2f30-4152-6374-8596-a7b8c9d0e1f2"
CREDS = Credentials("bot@acme.test", "ATATT3xFfGF0-test-token")
SECRET = "hunter2-customer-secret"


def good(n: int, body: str = "All fine") -> dict:
    return {
        "timeUnixNano": str(1_763_719_200_000_000_000 + n), "severityNumber": 30, "severityText": "INFO",
        "body": {"stringValue": f"{body} #{n}"}, "traceId": "3e1c350520934cbeb20b7d54d56bee2c",
        "spanId": "6c7f6ad7436700c1",
        "attributes": [{"key": "invocationId", "value": {"stringValue": f"inv-{n}"}},
                       {"key": "functionKey", "value": {"stringValue": "run"}}],
    }


def raw_record(n: int, **replace: str) -> str:
    """A good record's JSON text with some members' values replaced by raw JSON text."""
    record = good(n)
    text = json.dumps(record, separators=(",", ":"))
    for key, raw in replace.items():
        text = text.replace(f'"{key}":' + json.dumps(record[key], separators=(",", ":")), f'"{key}":{raw}', 1)
    return text


def page(*entries: str, cursor: str | None = None) -> bytes:
    tail = f',"cursor":"{cursor}"' if cursor else ""
    return ('{"appLogs":[' + ",".join(entries) + "]" + tail + "}").encode()


class RawForge:
    """Answers each call with the next of the given page bodies, following ``cursor``."""

    def __init__(self, bodies: dict[str | None, bytes]):
        self.bodies = bodies
        self.cursors: list[str | None] = []
        self.app = Flask("raw-forge")
        self.app.get("/v1/app/logs/<app_id>")(self.serve)

    def serve(self, app_id: str) -> Response:
        cursor = request.args.get("cursor")
        self.cursors.append(cursor)
        return Response(self.bodies[cursor], 200, content_type="application/json")


@pytest.fixture
def serve():
    servers = []

    def start(*bodies: bytes) -> tuple[ForgeClient, RawForge]:
        keyed = {None if i == 0 else f"c{i}": body for i, body in enumerate(bodies)}
        fake = RawForge(keyed)
        server = LocalServer(fake.app).__enter__()
        session = requests.Session()
        servers.append((server, session))
        return ForgeClient(server.url, session, timeout=(2, 5)), fake

    yield start
    for server, session in servers:
        session.close()
        server.__exit__(None, None, None)


NOW = datetime.now(timezone.utc)
QUERY = Query(APP, ENV, NOW - timedelta(minutes=10), NOW - timedelta(minutes=5))


def fetch(serve, body: bytes) -> forge.Page:
    client, _ = serve(body)
    return client.fetch_page(CREDS, QUERY)


def writable(record: dict) -> None:
    """What the poller does with every record: fingerprint its body with sorted keys, store it."""
    orjson.dumps(record.get("body"), option=orjson.OPT_SORT_KEYS)
    orjson.dumps([record])
    for key in ("timeUnixNano", "severityText", "traceId", "spanId"):
        assert key not in record or isinstance(record[key], str)
    if "timeUnixNano" in record:
        assert record["timeUnixNano"].isascii() and record["timeUnixNano"].isdigit()
    if "body" in record:
        assert fields.any_value(record["body"]) == record["body"]  # a normalised AnyValue
    for item in record.get("attributes", []):
        assert set(item) == {"key", "value"} and isinstance(item["key"], str)
        assert fields.any_value(item["value"]) == item["value"]


def check(result: forge.Page) -> None:
    for record in result.records:
        writable(record)
    if result.sample is not None:
        assert len(result.sample) <= forge.SAMPLE_CHARS and result.sample.isprintable()
        assert result.sample.isascii() and SECRET not in result.sample


# --- each undecodable case: the page completes, good records are kept intact --------------

def test_a_lone_surrogate_in_a_body_is_replaced_and_the_page_completes(serve):
    bad = raw_record(2, body='{"stringValue":"half an emoji \\ud83d then more"}')
    result = fetch(serve, page(json.dumps(good(1)), bad, json.dumps(good(3)), cursor="next"))
    check(result)
    assert (len(result.records), result.unreadable, result.sample, result.cursor) == (3, 0, None, "next")
    assert result.records[0] == good(1) and result.records[2] == good(3)
    assert result.records[1]["body"] == {"stringValue": "half an emoji \ufffd then more"}
    assert {k: v for k, v in result.records[1].items() if k != "body"} == {
        k: v for k, v in good(2).items() if k != "body"}


def test_a_lone_surrogate_in_an_attribute_key_or_value_is_replaced(serve):
    attrs = ('[{"key":"invocationId","value":{"stringValue":"inv-\\udc00"}},'
             '{"key":"k\\ud800","value":{"stringValue":"v"}}]')
    result = fetch(serve, page(json.dumps(good(1)), raw_record(2, attributes=attrs)))
    check(result)
    assert result.unreadable == 0 and result.records[0] == good(1)
    assert result.records[1]["attributes"] == [
        {"key": "invocationId", "value": {"stringValue": "inv-\ufffd"}},
        {"key": "k\ufffd", "value": {"stringValue": "v"}}]


def test_1e400_as_severity_number_is_kept_as_its_text(serve):
    result = fetch(serve, page(raw_record(1, severityNumber="1e400"), json.dumps(good(2))))
    check(result)
    assert result.unreadable == 0 and result.records[1] == good(2)
    assert result.records[0]["severityNumber"] == "1e400"
    assert result.records[0]["severityText"] == "INFO" and result.records[0]["body"] == good(1)["body"]
    export = otlp.request(result.records[:1], ORIGIN, 1)
    log = export["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0]
    assert log["severityNumber"] == 9  # from the text
    assert {"key": "forge.severity_number", "value": {"stringValue": "1e400"}} in log["attributes"]


def test_1e400_as_a_double_value_keeps_the_record_with_the_text(serve):
    attrs = ('[{"key":"ratio","value":{"doubleValue":1e400}},{"key":"tiny","value":{"doubleValue":-1e400}},'
             '{"key":"fine","value":{"doubleValue":0.25}},{"key":"nan","value":{"doubleValue":NaN}}]')
    result = fetch(serve, page(raw_record(1, attributes=attrs, body='{"doubleValue":1E+400}'), json.dumps(good(2))))
    check(result)
    values = {a["key"]: a["value"] for a in result.records[0]["attributes"]}
    assert values == {"ratio": {"stringValue": "1e400"}, "tiny": {"stringValue": "-1e400"},
                      "fine": {"doubleValue": 0.25}, "nan": {"stringValue": "NaN"}}
    assert result.records[0]["body"] == {"stringValue": "1E+400"}
    assert result.records[1] == good(2)


def test_numbers_orjson_reads_and_writes_differently_are_text_or_float_alike_on_both_paths(serve):
    huge = "123456789012345678901234567890"
    entries = [raw_record(1, body=f'{{"intValue":{huge}}}'), raw_record(2, body="18446744073709551615"),
               raw_record(3, severityNumber="9223372036854775808"), raw_record(4, body=f'{{"intValue":"{huge}"}}')]
    fast = fetch(serve, page(*entries))
    tolerant = fetch(serve, page(*entries, raw_record(5, body='"\\ud800"')))
    check(fast)
    check(tolerant)
    assert tolerant.records[:4] == fast.records
    bodies = [r["body"] for r in fast.records]
    assert bodies[0] == {"stringValue": "1.2345678901234568e+29"}  # orjson's float, as text
    assert bodies[1] == {"stringValue": "18446744073709551615"}  # beyond int64: text
    assert bodies[3] == {"stringValue": huge}
    assert fast.records[2]["severityNumber"] == "9223372036854775808"


def test_invalid_utf8_bytes_are_replaced(serve):
    body = page(json.dumps(good(1)), raw_record(2, body='{"stringValue":"caf\xc3"}').replace("\xc3", "@"))
    body = body.replace(b"caf@", b"caf\xff")
    result = fetch(serve, body)
    check(result)
    assert result.records[0] == good(1) and result.records[1]["body"] == {"stringValue": "caf\ufffd"}


@pytest.mark.parametrize("raw, expected", [
    ('"just a string"', {"stringValue": "just a string"}),
    ("42", {"intValue": "42"}),
    ("-7", {"intValue": "-7"}),
    ("2.5", {"doubleValue": 2.5}),
    ("true", {"boolValue": True}),
    ('{"stringValue":5}', {"stringValue": "5"}),
    ('{"intValue":12}', {"intValue": "12"}),
    ('{"intValue":"0012"}', {"intValue": "12"}),
    ('{"intValue":"twelve"}', {"stringValue": "twelve"}),
    ('{"bytesValue":"aGk="}', {"bytesValue": "aGk="}),
    ('{"bytesValue":"not base64!"}', {"stringValue": "not base64!"}),
    ("{}", {}),
])
def test_a_non_string_body_becomes_the_matching_any_value(serve, raw, expected):
    result = fetch(serve, page(raw_record(1, body=raw), json.dumps(good(2))))
    check(result)
    assert result.records[0]["body"] == expected and result.records[1] == good(2)
    assert result.unreadable == 0 and result.repaired == 1


def test_structured_bodies_become_kvlist_and_array_values(serve):
    plain_object = '{"user":{"id":7,"tags":["a","b"]},"ok":true,"score":0.5,"note":null}'
    kvlist = ('{"kvlistValue":{"values":[{"key":"a","value":{"intValue":"1"}},'
              '{"key":"b","value":{"arrayValue":{"values":[{"stringValue":"x"}]}}}]}}')
    array = '[1,"two",{"three":3}]'
    result = fetch(serve, page(raw_record(1, body=plain_object), raw_record(2, body=kvlist),
                               raw_record(3, body=array), json.dumps(good(4))))
    check(result)
    first, second, third, fourth = (r["body"] for r in result.records)
    assert first == {"kvlistValue": {"values": [
        {"key": "user", "value": {"kvlistValue": {"values": [
            {"key": "id", "value": {"intValue": "7"}},
            {"key": "tags", "value": {"arrayValue": {"values": [{"stringValue": "a"}, {"stringValue": "b"}]}}}]}}},
        {"key": "ok", "value": {"boolValue": True}},
        {"key": "score", "value": {"doubleValue": 0.5}},
        {"key": "note", "value": {}}]}}
    assert second == json.loads(kvlist)  # already an AnyValue: untouched
    assert third == {"arrayValue": {"values": [
        {"intValue": "1"}, {"stringValue": "two"},
        {"kvlistValue": {"values": [{"key": "three", "value": {"intValue": "3"}}]}}]}}
    assert fourth == good(4)["body"]
    # line-based formats write the plain value as compact JSON
    assert fields.body_text(result.records[0]) == '{"user":{"id":7,"tags":["a","b"]},"ok":true,"score":0.5,"note":null}'
    assert fields.body_text(result.records[1]) == '{"a":1,"b":["x"]}'
    assert fields.body_text(result.records[2]) == '[1,"two",{"three":3}]'


def test_a_body_nested_deeper_than_orjson_writes_is_cut_to_text(serve):
    deep = "[" * 400 + '"bottom"' + "]" * 400  # orjson reads 1,024 levels but writes only 254
    result = fetch(serve, page(raw_record(1, body=deep), json.dumps(good(2))))
    check(result)
    assert result.unreadable == 0 and result.records[1] == good(2)
    assert "bottom" in orjson.dumps(result.records[0]["body"]).decode()


def test_an_entry_nested_beyond_the_parsers_is_unreadable_not_the_page(serve):
    deep = "[" * 1500 + "]" * 1500  # beyond orjson's 1,024 levels: the tolerant path
    result = fetch(serve, page(json.dumps(good(1)), raw_record(2, body='"\\ud800"'), deep, json.dumps(good(3))))
    check(result)
    # the standard library's parser hits its recursion limit: the entries are read one by one
    assert [r["timeUnixNano"] for r in result.records] == [good(n)["timeUnixNano"] for n in (1, 2, 3)]
    assert result.unreadable == 1 and result.sample.startswith("entry 2 ")


def test_non_dict_entries_are_counted_with_a_redacted_sample_and_the_rest_kept(serve):
    entries = [json.dumps(good(1)), json.dumps(f"password={SECRET}"), "17", "null",
               json.dumps([SECRET, {"token": SECRET}]), json.dumps(good(2)), json.dumps({"error": SECRET}),
               "{}", json.dumps(good(3))]
    result = fetch(serve, page(*entries, cursor="c1"))
    check(result)
    assert result.records == [good(1), good(2), good(3)]
    assert (result.unreadable, result.cursor) == (6, "c1")
    assert result.sample == 'entry 1 (string): "<32 chars>"'


@pytest.mark.parametrize("entry, sample", [
    ([SECRET, {"token": SECRET, "n": 5}], 'entry 0 (array): ["<23 chars>",{"token":"<23 chars>","n":5}]'),
    ({"error": SECRET}, 'entry 0 (object without LogRecord fields): {"error":"<23 chars>"}'),
    (None, "entry 0 (null): null"),
])
def test_the_sample_shows_the_shape_without_the_content(serve, entry, sample):
    result = fetch(serve, page(json.dumps(entry)))
    assert (result.records, result.unreadable, result.sample) == ([], 1, sample)


def test_a_huge_unreadable_entry_gives_a_short_sample(serve):
    entry = [{f"key-{i}-{'k' * 100}": [SECRET] * 50 for i in range(50)}] * 50
    result = fetch(serve, page(json.dumps(entry), raw_record(1, body='"\\ud800"')))
    check(result)
    assert result.unreadable == 1 and len(result.sample) <= 300 and result.sample.endswith("...")


def test_odd_fields_are_repaired_as_documented(serve):
    record = ('{"timeUnixNano":1763719200000000001,"severityText":7,"severityNumber":30.0,"traceId":12,'
              '"body":"text","attributes":{"plain":"x","n":3},"flags":"1","extra":{"a":[1]},"other":1.5,'
              '"spanId":null}')
    negative = '{"timeUnixNano":-5,"body":{"stringValue":"neg"},"attributes":[{"key":"k"},"junk",{"value":1}]}'
    result = fetch(serve, page(record, negative, '{"timeUnixNano":"17637192e9","body":{"stringValue":"x"}}'))
    check(result)
    first, second, third = result.records
    assert first == {"timeUnixNano": "1763719200000000001", "severityText": "7", "severityNumber": 30,
                     "traceId": "12", "body": {"stringValue": "text"},
                     "attributes": [{"key": "plain", "value": {"stringValue": "x"}},
                                    {"key": "n", "value": {"intValue": "3"}}],
                     "extra": '{"a":[1]}', "other": 1.5}
    assert second == {"body": {"stringValue": "neg"}, "attributes": [{"key": "k", "value": {}}]}
    assert third == {"body": {"stringValue": "x"}}
    assert result.repaired == 3 and result.unreadable == 0


def test_a_page_that_is_not_json_at_all_is_still_malformed(serve):
    for body in (b'{"appLogs": [{"timeUnixNano": "17078214449', b"\xff\xfe", b'{"appLogs": {"a": 1}}',
                 b'["not", "a", "page"]', b'{"appLogs": [], "cursor": 5}', b'{"appLogs": ["\\ud800"], "cursor": 5}'):
        with pytest.raises(forge.MalformedPage):
            fetch(serve, body)


def test_the_window_completes_across_pages_with_bad_records(serve):
    client, fake = serve(
        page(json.dumps(good(1)), raw_record(2, body='"\\ud800"'), cursor="c1"),
        page('"junk"', json.dumps(good(3)), cursor="c2"),
        page(raw_record(4, severityNumber="1e400")),
    )
    pages = list(client.pages(CREDS, QUERY))
    assert fake.cursors == [None, "c1", "c2"]
    assert [len(p.records) for p in pages] == [2, 1, 1]
    assert [p.unreadable for p in pages] == [0, 1, 0]
    assert client.verify(CREDS, APP, ENV) == 2


def test_the_fast_and_tolerant_paths_agree_so_fingerprints_match_on_re_reads(serve):
    entries = [json.dumps(good(1)), raw_record(2, body='{"a":{"b":[1,2.5,"c"]}}'), raw_record(3, body="7"),
               raw_record(4, attributes='{"k":"v"}'), raw_record(5, severityNumber="40.0")]
    fast = fetch(serve, page(*entries))
    tolerant = fetch(serve, page(*entries, raw_record(6, body='"\\udfff"')))
    assert tolerant.records[:5] == fast.records
    assert fast.records[0] is not None and fast.repaired == 4 and fast.records[0] == good(1)
    dump = lambda r: orjson.dumps(r, option=orjson.OPT_SORT_KEYS)  # noqa: E731
    assert list(map(dump, tolerant.records[:5])) == list(map(dump, fast.records))


def test_a_common_page_is_returned_as_decoded():
    records = [good(n) for n in range(50)]
    result = forge.decode_page(orjson.dumps({"appLogs": records, "cursor": ""}))
    assert result == forge.Page(records, None, 0, None, 0)


# --- the repaired records through every format ------------------------------------------

ORIGIN = otlp.Origin(app_id=APP, environment_id=ENV, drain_token="d.token", service_name="acme")


def typed_record() -> bytes:
    attrs = ('[{"key":"invocationId","value":{"stringValue":"inv-1"}},'
             '{"key":"count","value":{"intValue":"42"}},{"key":"neg","value":{"intValue":-3}},'
             '{"key":"ratio","value":{"doubleValue":0.5}},{"key":"ok","value":{"boolValue":false}},'
             '{"key":"raw","value":{"bytesValue":"AAEC"}},'
             '{"key":"list","value":{"arrayValue":{"values":[{"stringValue":"a"},{"intValue":"2"}]}}},'
             '{"key":"map","value":{"kvlistValue":{"values":[{"key":"x","value":{"doubleValue":1.5}}]}}},'
             '{"key":"empty","value":{}},{"key":"bare","value":7}]')
    return page(raw_record(1, body='{"user":{"id":7,"tags":["a"]},"ok":true,"bits":{"bytesValue":"AQ=="}}',
                           attributes=attrs),
                raw_record(2, body='{"stringValue":"\\ud800 after"}'))


def test_typed_bodies_and_attributes_reach_otlp_as_any_value(serve):
    from google.protobuf import json_format
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    result = fetch(serve, typed_record())
    check(result)
    export = otlp.request(result.records, ORIGIN, 1_763_719_300_000_000_000)
    # OTLP/JSON read by the official schema (hex ids turned into base64 for json_format first)
    parsed = json_format.ParseDict(otlp.hex_ids_to_base64(orjson.loads(otlp.to_json(export))),
                                   ExportLogsServiceRequest())
    from_json = ExportLogsServiceRequest.FromString(otlp.to_protobuf(export))
    from_records = ExportLogsServiceRequest.FromString(otlp.protobuf_request(result.records, ORIGIN,
                                                                             1_763_719_300_000_000_000))
    assert parsed == from_json == from_records
    log, second = from_records.resource_logs[0].scope_logs[0].log_records
    assert len(log.trace_id) == 16 and len(log.span_id) == 8
    body = {kv.key: kv.value for kv in log.body.kvlist_value.values}
    assert body["ok"].bool_value is True and body["bits"].bytes_value == b"\x01"
    user = {kv.key: kv.value for kv in body["user"].kvlist_value.values}
    assert user["id"].int_value == 7 and user["tags"].array_value.values[0].string_value == "a"
    attributes = {kv.key: kv.value for kv in log.attributes}
    assert attributes["forge.count"].int_value == 42 and attributes["forge.neg"].int_value == -3
    assert attributes["forge.ratio"].double_value == 0.5
    assert attributes["forge.ok"].WhichOneof("value") == "bool_value" and attributes["forge.ok"].bool_value is False
    assert attributes["forge.raw"].bytes_value == b"\x00\x01\x02"
    assert [v.WhichOneof("value") for v in attributes["forge.list"].array_value.values] == ["string_value", "int_value"]
    assert attributes["forge.map"].kvlist_value.values[0].value.double_value == 1.5
    assert attributes["forge.empty"].WhichOneof("value") is None
    assert attributes["forge.bare"].int_value == 7
    assert attributes["faas.invocation_id"].string_value == "inv-1"
    assert second.body.string_value == "\ufffd after"


def test_typed_values_are_compact_json_in_line_based_formats(serve):
    result = fetch(serve, typed_record())
    rec = result.records[0]
    expected = '{"user":{"id":7,"tags":["a"]},"ok":true,"bits":"AQ=="}'
    (frame,) = logplex.frames(rec, logplex.Identity(host="d.token", app_name="acme"))
    assert frame.endswith(b" - " + expected.encode() + b"\n")
    (frame,) = syslog5424.frames(rec, syslog5424.Identity(host="d.token", app_name="acme"))
    assert frame.endswith(b" - - " + expected.encode())
    text = fields.attributes(rec)
    assert (text["count"], text["neg"], text["ratio"], text["ok"], text["list"], text["map"], text["empty"]) == (
        "42", "-3", "0.5", "false", '["a",2]', '{"x":1.5}', "")
    assert base64.b64decode(text["raw"]) == b"\x00\x01\x02"


def test_a_byte_order_mark_before_the_page_is_ignored(serve):
    result = fetch(serve, b"\xef\xbb\xbf" + page(json.dumps(good(1)), cursor="c1"))
    assert (result.records, result.cursor, result.unreadable) == ([good(1)], "c1", 0)
