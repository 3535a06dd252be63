"""Per-drain rules, pure (broker/rules.py): each rule kind, each detector, owner patterns, every 422."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import orjson
import pytest
import re2
from hypothesis import HealthCheck, given, settings, strategies as st

from broker import rules
from broker.formats import logplex, otlp, syslog5424
from broker.senders import Source

SOURCE_A, SOURCE_B = uuid.uuid4(), uuid.uuid4()
APP_ID = "5f0f8a4e-1f5a-4c3e-9d7b-1a2b3c4d5e6f"


def forge(body="hello", level: str | None = "INFO", attributes: dict | None = None, number=None) -> dict:
    record = {"timeUnixNano": "1763700000000000000", "body": {"stringValue": body} if isinstance(body, str) else body,
              "attributes": [{"key": k, "value": v if isinstance(v, dict) else {"stringValue": v}}
                             for k, v in (attributes or {"functionKey": "run", "appId": APP_ID}).items()]}
    if level is not None:
        record["severityText"] = level
    if number is not None:
        record["severityNumber"] = number
    return record


def heroku(message: str, app: str = "app", dyno: str = "web.1", pri: int = 190) -> dict:
    frame = f"<{pri}>1 2026-11-21T08:00:00.000000+00:00 host {app} {dyno} - {message}".encode()
    return logplex.to_record(frame, 1_763_700_000_000_000_000)


def kept(spec: dict, records: list[dict], origin: str = "forge", source=None, start: int = 0) -> rules.Applied:
    compiled = rules.compile(spec)
    assert compiled is not None
    return compiled.apply(records, origin, source, start)


def bodies(applied: rules.Applied) -> list[str]:
    return [r["body"]["stringValue"] for r in applied.records]


def problems(payload, **kwargs) -> dict[str, str]:
    with pytest.raises(rules.RulesInvalid) as caught:
        rules.validate(payload, **kwargs)
    return dict(caught.value.problems)


# --- the rule kinds ----------------------------------------------------------------------------

def test_no_rules_compile_to_nothing_so_delivery_does_nothing_extra():
    assert rules.compile({}) is None and rules.compile(None) is None
    assert rules.compile({"origins": [], "levels": [], "redact": {"detectors": []}}) is None
    assert rules.validate(None) == {} and rules.validate({"sources": [], "redact": {}}) == {}


def test_origins_keep_only_the_chosen_origins():
    assert kept({"origins": ["heroku"]}, [forge("a"), forge("b")]).filtered == 2
    applied = kept({"origins": ["heroku"]}, [heroku("x")], origin="heroku")
    assert (bodies(applied), applied.filtered) == (["x"], 0)
    assert bodies(kept({"origins": ["forge"]}, [forge("a")])) == ["a"]


def test_sources_keep_forge_records_of_those_sources_only_and_leave_heroku_lines_alone():
    spec = {"sources": [str(SOURCE_A)]}
    assert bodies(kept(spec, [forge("a")], source=Source(id=SOURCE_A))) == ["a"]
    assert kept(spec, [forge("b")], source=Source(id=SOURCE_B)).filtered == 1
    assert kept(spec, [forge("c")], source=None).filtered == 1
    assert bodies(kept(spec, [heroku("line")], origin="heroku")) == ["line"]


def test_heroku_apps_and_process_types_pick_heroku_lines():
    lines = [heroku("web line", "app", "web.1"), heroku("worker line", "app", "worker.2"),
             heroku("router line", "heroku", "router"), heroku("postgres line", "heroku", "heroku-postgres")]
    assert bodies(kept({"heroku_apps": ["heroku"]}, lines, origin="heroku")) == ["router line", "postgres line"]
    assert bodies(kept({"processes": ["web", "router"]}, lines, origin="heroku")) == ["web line", "router line"]
    both = kept({"heroku_apps": ["app"], "processes": ["worker"]}, lines, origin="heroku")
    assert (bodies(both), both.filtered, both.positions) == (["worker line"], 3, [1])
    # Forge records have no APP-NAME or process: these rules are about Heroku lines only.
    assert bodies(kept({"processes": ["web"]}, [forge("forge")])) == ["forge"]


def test_min_severity_keeps_that_level_and_above_and_a_record_without_one_counts_as_info():
    records = [forge(level, level) for level in rules.LEVELS] + [forge("none", None), forge("odd", "LOUD")]
    assert bodies(kept({"min_severity": "WARN"}, records)) == ["WARN", "ERROR", "FATAL"]
    assert bodies(kept({"min_severity": "info"}, records)) == ["INFO", "WARN", "ERROR", "FATAL", "none", "odd"]
    # Forge's pino numbers and Heroku's syslog severities are read as the formats read them.
    assert bodies(kept({"min_severity": "ERROR"}, [forge("pino error", None, number=50), forge("30", None, number=30)])) \
        == ["pino error"]
    lines = [heroku("crit", pri=186), heroku("notice", pri=189), heroku("debug", pri=191)]
    assert bodies(kept({"min_severity": "INFO"}, lines, origin="heroku")) == ["crit", "notice"]


def test_levels_keep_exactly_those_levels():
    records = [forge(level, level) for level in rules.LEVELS] + [forge("warning", "warning")]
    assert bodies(kept({"levels": ["ERROR", "debug"]}, records)) == ["DEBUG", "ERROR"]
    assert bodies(kept({"levels": ["WARN"]}, records)) == ["WARN", "warning"]


def test_services_are_globs_on_service_name_as_otlp_drains_show_it():
    named = Source(id=SOURCE_A, service_name="billing-api")
    assert bodies(kept({"services": ["billing-*"]}, [forge("a")], source=named)) == ["a"]
    assert kept({"services": ["Billing-*"]}, [forge("a")], source=named).filtered == 1  # case-sensitive
    # Without a service name on the source it is forge-app-<app id>, from the record or the source.
    unnamed = Source(id=SOURCE_A, app_id="other-app")
    mixed = [forge("own app"), forge("source's app", attributes={"functionKey": "run"})]
    assert bodies(kept({"services": [f"forge-app-{APP_ID}"]}, mixed, source=unnamed)) == ["own app"]
    assert bodies(kept({"services": ["forge-app-other-???"]}, mixed, source=unnamed)) == ["source's app"]
    assert bodies(kept({"services": ["forge-app-[!o]*"]}, mixed, source=unnamed)) == ["own app"]
    # A Heroku line's service.name is its APP-NAME.
    lines = [heroku("a", "app"), heroku("h", "heroku")]
    assert bodies(kept({"services": ["h*"]}, lines, origin="heroku")) == ["h"]


def test_globs_read_as_fnmatch_reads_them():
    import fnmatch

    names = ["billing-api", "billing", "a.b", "x]y", "x-y", "abc", "a*c", "[ab]", "é-1"]
    for glob in ["billing*", "*-api", "a?b", "x[]]y", "x[!-]y", "[a-c]b?", "a[*]c", "[[]ab]", "?-[0-9]", "*"]:
        pattern = re2.compile(rules.glob_pattern(glob))
        assert [n for n in names if pattern.fullmatch(n)] == [n for n in names if fnmatch.fnmatchcase(n, glob)], glob


def test_rules_combine_with_and_and_positions_are_raw():
    records = [forge("debug", "DEBUG"), forge("error", "ERROR"), forge("info", "INFO"), forge("fatal", "FATAL")]
    applied = kept({"min_severity": "ERROR", "sources": [str(SOURCE_A)]}, records, source=Source(id=SOURCE_A),
                   start=10)
    assert (bodies(applied), applied.positions, applied.filtered) == (["error", "fatal"], [11, 13], 2)
    assert applied.counts(10, 12) == (1, 0) and applied.counts(12, 14) == (1, 0) and applied.counts(10, 14) == (2, 0)


def test_apply_leaves_the_records_it_was_given_unchanged():
    records = [forge("mail bob@example.com", attributes={"email": "eve@example.com", "installationContext": "x"})]
    before = orjson.dumps(records)
    applied = kept({"redact": {"detectors": ["email"], "drop_attributes": ["installationContext"]}}, records)
    assert orjson.dumps(records) == before
    assert applied.records[0]["body"] == {"stringValue": "mail [redacted:email]"}
    assert applied.records[0]["attributes"] == [{"key": "email", "value": {"stringValue": "[redacted:email]"}}]
    assert (applied.redacted, applied.redactions) == (3, [3])
    # A record with nothing to redact is passed on as it is, not copied; in a batch without any, every one.
    clean = [forge("nothing here"), forge("nor here")]
    for batch in (clean, clean + records):
        again = kept({"redact": {"detectors": ["email", "bearer"]}}, batch)
        assert again.records[0] is batch[0] and again.records[1] is batch[1]


# --- detectors -------------------------------------------------------------------------------

def redact(detector: str, text: str) -> str:
    return bodies(kept({"redact": {"detectors": [detector]}}, [forge(text)]))[0]


JWT = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ."
       "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c")
ATLASSIAN = "ATATT3xFfGF0T5JNjx1AwAxAqbOSR8I0B9m5bpZbWg6oGkHA2fTcFqZ8MhQ4k3jYtRmX1vZsAEbN7WqUo8=A1B2C3D4"

DETECTED = [
    ("email", "from bob.smith+forge@mail.example.co.uk now", "from [redacted:email] now"),
    ("email", '{"user":"a_b@x-y.io"}', '{"user":"[redacted:email]"}'),
    ("bearer", "Authorization: Bearer abcdef0123456789ABCDEF._~+/-==", "Authorization: [redacted:bearer]"),
    ("bearer", "authorization=bearer\tmF_9.B5f-4.1JqM.abcdefgh", "authorization=[redacted:bearer]"),
    ("jwt", f"token={JWT}&x=1", "token=[redacted:jwt]&x=1"),
    ("atlassian_token", f"api token {ATLASSIAN} used", "api token [redacted:atlassian_token] used"),
    ("atlassian_token", "key ATCTT3xFfGN0abcdefghijklmnopqrstuvwxyz0123", "key [redacted:atlassian_token]"),
    ("card", "card 4111111111111111 charged", "card [redacted:card] charged"),
    ("card", "amex 3782-822463-10005.", "amex [redacted:card]."),
    ("card", "visa 4111 1111 1111 1111 exp 12/30", "visa [redacted:card] exp 12/30"),
    ("card", "paid with 5555 5555 5555 4444 123", "paid with [redacted:card] 123"),
    ("card", "13 digits 4222222222222", "13 digits [redacted:card]"),
    ("ipv4", "from 192.168.1.20:8080 and 8.8.8.8.", "from [redacted:ipv4]:8080 and [redacted:ipv4]."),
    ("ipv6", "peer 2001:db8::8a2e:370:7334 port", "peer [redacted:ipv6] port"),
    ("ipv6", "link fe80::1ff:fe23:4567:890a%eth0", "link [redacted:ipv6]%eth0"),
    ("ipv6", "mapped ::ffff:192.0.2.128 ok", "mapped [redacted:ipv6] ok"),
    ("ipv6", "full 2001:0db8:0000:0000:0000:ff00:0042:8329!", "full [redacted:ipv6]!"),
]

NEAR_MISSES = [
    ("email", "see @forge/api and user@localhost and a@b.c"),
    ("bearer", "the bearer of bad news; Bearer token missing; bearer: short123"),
    ("jwt", "eyJhbGciOiJIUzI1NiJ9 alone, keys.eyJ and eyJabc.eyJdef.ghi"),
    ("atlassian_token", "ATATTACK on ATCTT and ATATT3short"),
    ("card", "card 4111111111111112 fails Luhn"),  # one digit off
    ("card", "epoch 1763700000000 ms, 1763700000000000000 ns, order 123456789012"),  # start with 1, or 12 digits
    ("card", "id 4111111111111111111111 too long"),
    ("ipv4", "version 2.118.0, OID 1.3.6.1.4.1, 256.1.1.1 and 1.2.3"),
    ("ipv6", "at 12:30:45, mac 00:1a:2b:3c:4d:5e, std::vector, Foo::bar and ::1"),
]


@pytest.mark.parametrize("detector, text, expected", DETECTED)
def test_each_detector_replaces_what_it_finds(detector, text, expected):
    assert redact(detector, text) == expected


@pytest.mark.parametrize("detector, text", NEAR_MISSES)
def test_near_misses_are_left_alone(detector, text):
    assert redact(detector, text) == text


def test_a_luhn_valid_number_inside_a_longer_digit_run_of_groups_is_found():
    # The whole run fails the check; the card among its groups is still replaced.
    assert redact("card", "ref 4111 1111 1111 1111 2222 3333") == "ref [redacted:card] 2222 3333"


def test_every_detector_at_once_counts_each_value():
    text = (f"bob@example.com Bearer abcdefghijklmnopqrstuvwxyz {JWT} {ATLASSIAN} 4111111111111111 "
            "10.0.0.1 2001:db8::1")
    applied = kept({"redact": {"detectors": list(rules.DETECTORS)}}, [forge(text)])
    assert bodies(applied) == ["[redacted:email] [redacted:bearer] [redacted:jwt] [redacted:atlassian_token] "
                               "[redacted:card] [redacted:ipv4] [redacted:ipv6]"]
    assert applied.redacted == 7


def test_bodies_and_every_string_attribute_value_are_redacted_nested_ones_too():
    structured = {"kvlistValue": {"values": [
        {"key": "user", "value": {"stringValue": "bob@example.com"}},
        {"key": "eve@example.com", "value": {"arrayValue": {"values": [{"stringValue": "x carol@example.com"},
                                                                         {"intValue": "4111111111111111"},
                                                                         {"boolValue": True}]}}}]}}
    record = forge(structured, attributes={"invocationId": "inv-1", "arguments": '{"to":"dan@example.com"}',
                                           "count": {"intValue": "7"}, "plain": {"user": "erin@example.com"}})
    applied = kept({"redact": {"detectors": ["email", "card"]}}, [record])
    out = applied.records[0]
    assert out["body"] == {"kvlistValue": {"values": [
        {"key": "user", "value": {"stringValue": "[redacted:email]"}},
        {"key": "[redacted:email]", "value": {"arrayValue": {"values": [{"stringValue": "x [redacted:email]"},
                                                                          {"stringValue": "[redacted:card]"},
                                                                          {"boolValue": True}]}}}]}}
    attributes = {a["key"]: a["value"] for a in out["attributes"]}
    assert attributes["invocationId"] == {"stringValue": "inv-1"}
    assert attributes["arguments"] == {"stringValue": '{"to":"[redacted:email]"}'}
    assert attributes["count"] == {"intValue": "7"}
    assert attributes["plain"] == {"kvlistValue": {"values": [{"key": "user",
                                                               "value": {"stringValue": "[redacted:email]"}}]}}
    assert applied.redacted == 6
    assert b"example.com" not in orjson.dumps(out)


def test_heroku_lines_are_redacted_and_keep_their_header():
    applied = kept({"redact": {"detectors": ["ipv4"]}}, [heroku('at=info fwd="203.0.113.9" path=/', "heroku",
                                                                 "router")], origin="heroku")
    record = applied.records[0]
    assert record["body"]["stringValue"] == 'at=info fwd="[redacted:ipv4]" path=/'
    assert record["heroku"] == {"pri": 190, "app": "heroku", "dyno": "router"}


def test_drop_attributes_takes_forges_names_or_the_ones_otlp_drains_show():
    record = forge("x", attributes={"installationContext": "ari:site", "licenseState": "ACTIVE", "appId": APP_ID,
                                    "functionKey": "run", "custom": "keep"})
    applied = kept({"redact": {"drop_attributes": ["forge.installation_context", "licenseState", "custom2"]}},
                   [record])
    assert [a["key"] for a in applied.records[0]["attributes"]] == ["appId", "functionKey", "custom"]
    assert applied.redacted == 2


# --- owner patterns ----------------------------------------------------------------------------

def test_owner_patterns_replace_with_their_name_after_the_detectors():
    spec = {"redact": {"detectors": ["email"], "patterns": [
        {"name": "ticket", "regex": r"\bPROJ-[0-9]+\b"}, {"name": "customer-id", "regex": r"(?i)cust_[a-z0-9]{6}"}]}}
    applied = kept(spec, [forge("PROJ-12 for CUST_ab12cd (bob@example.com); PROJ-x stays")])
    assert bodies(applied) == ["[redacted:ticket] for [redacted:customer-id] ([redacted:email]); PROJ-x stays"]
    assert applied.redacted == 3


def test_a_pattern_that_matches_empty_text_somewhere_replaces_only_what_it_really_matches():
    # "\b" matches no empty text on its own (so the pattern passes), but matches between "a" and "b" here.
    applied = kept({"redact": {"patterns": [{"name": "at", "regex": r"\b|@"}]}}, [forge("ab @ cd")])
    assert bodies(applied) == ["ab [redacted:at] cd"] and applied.redacted == 1


HOSTILE = [r"(a+)+$", r"(x+x+)+y", r"(a|a)*b", r"(a|aa)+$", r"(.*a){12}", r"([a-z]+)*[0-9]"]


@pytest.mark.parametrize("pattern", HOSTILE)
def test_hostile_patterns_finish_on_100000_characters_with_re2s_answer(pattern):
    compiled = rules.compile({"redact": {"patterns": [{"name": "hostile", "regex": pattern}]}})
    engine = re2.compile(pattern)
    for text in ("a" * 100_000, "a" * 100_000 + "!", "x" * 100_000, "x" * 99_999 + "y", "ab" * 50_000 + "!"):
        applied = compiled.apply([{"body": {"stringValue": text}}], "forge")
        assert bodies(applied) == [engine.sub("[redacted:hostile]", text)]
        assert applied.redacted == sum(1 for m in engine.finditer(text) if m.group(0))


# --- what an owner is told: every 422 ---------------------------------------------------------

def test_rules_must_be_an_object_or_null():
    assert problems([1]) == {"rules": "must be an object (or null for no rules)"}
    assert problems("min_severity=WARN") == {"rules": "must be an object (or null for no rules)"}


@pytest.mark.parametrize("payload, path, message", [
    ({"severity": "WARN"}, "rules.severity", "unknown rule; rules are origins, sources, heroku_apps, processes, "
                                             "min_severity, levels, services, redact"),
    ({"origins": "forge"}, "rules.origins", "must be a list"),
    ({"origins": ["forge", "syslog"]}, "rules.origins", "unknown origin 'syslog'; origins are forge, heroku, otlp"),
    ({"origins": ["forge", 3]}, "rules.origins[1]", "must be a string"),
    ({"sources": ["not-a-uuid"]}, "rules.sources[0]", "must be a source id (a UUID)"),
    ({"sources": [str(uuid.uuid4()) for _ in range(51)]}, "rules.sources", "at most 50 entries"),
    ({"heroku_apps": ["my app"]}, "rules.heroku_apps[0]", "must be an APP-NAME such as app or heroku: 1 to 48 "
                                                          "printable ASCII characters, no spaces"),
    ({"processes": ["web.1"]}, "rules.processes[0]", "must be a process type such as web or router (no '.'): 1 to "
                                                     "48 printable ASCII characters, no spaces"),
    ({"processes": ["x" * 49]}, "rules.processes[0]", "must be a process type such as web or router (no '.'): 1 "
                                                      "to 48 printable ASCII characters, no spaces"),
    ({"min_severity": "NOTICE"}, "rules.min_severity", "must be one of TRACE, DEBUG, INFO, WARN, ERROR, FATAL"),
    ({"min_severity": 3}, "rules.min_severity", "must be one of TRACE, DEBUG, INFO, WARN, ERROR, FATAL"),
    ({"levels": ["INFO", "VERBOSE"]}, "rules.levels", "unknown level 'VERBOSE'; levels are TRACE, DEBUG, INFO, "
                                                      "WARN, ERROR, FATAL"),
    ({"min_severity": "WARN", "levels": ["ERROR"]}, "rules", "give min_severity or levels, not both"),
    ({"services": ["ok", ""]}, "rules.services[1]", "must be 1 to 100 printable characters"),
    ({"services": ["[z-a]"]}, "rules.services[0]", "is not a valid glob (a [set] is malformed)"),
    ({"services": ["a"] * 21}, "rules.services", "at most 20 entries"),
    ({"redact": ["email"]}, "rules.redact", "must be an object with detectors, patterns and drop_attributes"),
    ({"redact": {"detector": ["email"]}}, "rules.redact.detector", "unknown field; redact takes detectors, "
                                                                   "patterns, drop_attributes"),
    ({"redact": {"detectors": ["email", "ssn"]}}, "rules.redact.detectors",
     "unknown detector 'ssn'; detectors are bearer, jwt, atlassian_token, email, card, ipv6, ipv4"),
    ({"redact": {"patterns": {"name": "x", "regex": "y"}}}, "rules.redact.patterns",
     "must be a list of {name, regex}"),
    ({"redact": {"patterns": [{"name": f"p{i}", "regex": "x"} for i in range(21)]}}, "rules.redact.patterns",
     "at most 20 patterns"),
    ({"redact": {"patterns": ["x"]}}, "rules.redact.patterns[0]", "must be an object {name, regex}"),
    ({"redact": {"patterns": [{"name": "x", "regex": "y", "flags": "i"}]}}, "rules.redact.patterns[0].flags",
     "unknown field; a pattern has name and regex"),
    ({"redact": {"patterns": [{"name": "Ticket", "regex": "y"}]}}, "rules.redact.patterns[0].name",
     "must be 1 to 32 characters: a-z, 0-9, _ or -"),
    ({"redact": {"patterns": [{"regex": "y"}]}}, "rules.redact.patterns[0].name",
     "must be 1 to 32 characters: a-z, 0-9, _ or -"),
    ({"redact": {"patterns": [{"name": "card", "regex": "y"}]}}, "rules.redact.patterns[0].name",
     "'card' is a built-in detector's name; choose another"),
    ({"redact": {"patterns": [{"name": "a", "regex": "x"}, {"name": "a", "regex": "y"}]}},
     "rules.redact.patterns[1].name", "another pattern is named 'a' already"),
    ({"redact": {"patterns": [{"name": "long", "regex": "x" * 257}]}}, "rules.redact.patterns[0].regex",
     "pattern 'long' must be 1 to 256 printable characters"),
    ({"redact": {"patterns": [{"name": "nl", "regex": "a\nb"}]}}, "rules.redact.patterns[0].regex",
     "pattern 'nl' must be 1 to 256 printable characters"),
    ({"redact": {"patterns": [{"name": "backref", "regex": r"(a)\1"}]}}, "rules.redact.patterns[0].regex",
     "pattern 'backref': backreferences are not supported: patterns run on RE2, in linear time "
     r"(RE2 says: invalid escape sequence: \1)"),
    ({"redact": {"patterns": [{"name": "ahead", "regex": r"a(?=b)"}]}}, "rules.redact.patterns[0].regex",
     "pattern 'ahead': lookahead and lookbehind are not supported: patterns run on RE2, in linear time "
     "(RE2 says: invalid perl operator: (?=)"),
    ({"redact": {"patterns": [{"name": "behind", "regex": r"(?<!a)b"}]}}, "rules.redact.patterns[0].regex",
     "pattern 'behind': lookahead and lookbehind are not supported: patterns run on RE2, in linear time "
     "(RE2 says: invalid perl operator: (?<!)"),
    ({"redact": {"patterns": [{"name": "open", "regex": "[a-"}]}}, "rules.redact.patterns[0].regex",
     "pattern 'open': it is not a valid RE2 pattern (RE2 says: missing ]: [a-)"),
    ({"redact": {"patterns": [{"name": "huge", "regex": r"\pL{1000}"}]}},
     "rules.redact.patterns[0].regex", "pattern 'huge': it is too large once compiled: use fewer or smaller "
                                       "repetitions (RE2 says: pattern too large - compile failed)"),
    ({"redact": {"patterns": [{"name": "many", "regex": r"(?:a{100}){100}"}]}},
     "rules.redact.patterns[0].regex", "pattern 'many': a repetition is too large: RE2 counts at most 1000 in all "
                                       "(RE2 says: invalid repetition size: {100})"),
    ({"redact": {"patterns": [{"name": "empty", "regex": "x*"}]}}, "rules.redact.patterns[0].regex",
     "pattern 'empty' matches empty text, so it would redact nothing; make it match at least one character"),
    ({"redact": {"drop_attributes": ["ok", ""]}}, "rules.redact.drop_attributes[1]",
     "must be an attribute key of 1 to 256 printable characters"),
])
def test_each_problem_is_named_with_its_field_path(payload, path, message):
    assert problems(payload) == {path: message}


def test_a_source_of_another_resource_is_refused_when_the_resources_sources_are_given():
    ours = uuid.uuid4()
    stranger = str(uuid.uuid4())
    assert problems({"sources": [str(ours), stranger]}, sources=[ours]) == {
        "rules.sources[1]": "no source with this id on this resource"}
    assert rules.validate({"sources": [str(ours).upper()]}, sources=[ours]) == {"sources": [str(ours)]}


def test_every_problem_is_reported_at_once_and_the_error_is_an_input_error():
    with pytest.raises(rules.RulesInvalid) as caught:
        rules.validate({"origins": ["mail"], "min_severity": "LOUD", "services": [""],
                        "redact": {"detectors": ["ssn"], "patterns": [{"name": "x", "regex": "(?=a)"}]}})
    paths = [path for path, _ in caught.value.problems]
    assert paths == ["rules.origins", "rules.min_severity", "rules.services[0]", "rules.redact.detectors",
                     "rules.redact.patterns[0].regex"]
    assert isinstance(caught.value, rules.InputError) and caught.value.field == "rules.origins"
    assert all(message in caught.value.message for _, message in caught.value.problems)


def test_valid_rules_come_back_normalised():
    source = uuid.uuid4()
    assert rules.validate({
        "origins": ["heroku", "forge", "heroku"], "sources": [str(source).upper()], "heroku_apps": ["app", "app"],
        "processes": ["web"], "levels": ["error", "DEBUG"], "services": ["a*", "a*"],
        "redact": {"detectors": ["ipv4", "email"], "patterns": [{"name": "t", "regex": "T-[0-9]+"}],
                   "drop_attributes": ["arguments"]}}) == {
        "origins": ["forge", "heroku"], "sources": [str(source)], "heroku_apps": ["app"], "processes": ["web"],
        "levels": ["DEBUG", "ERROR"], "services": ["a*"],
        "redact": {"detectors": ["email", "ipv4"], "patterns": [{"name": "t", "regex": "T-[0-9]+"}],
                   "drop_attributes": ["arguments"]}}
    assert rules.validate({"min_severity": "warn", "levels": None}) == {"min_severity": "WARN"}


def test_stored_rules_that_no_longer_hold_refuse_to_compile():
    with pytest.raises(rules.RulesInvalid):
        rules.compile({"redact": {"patterns": [{"name": "x", "regex": "(?=y)"}]}})


def test_a_rule_set_is_compiled_once_and_shared_by_every_drain_with_the_same_rules():
    spec = {"min_severity": "WARN", "redact": {"detectors": ["email", "jwt"]}}
    first = rules.compile(spec)
    # The same rules as another drain stores them (keys in another order): the same compiled rules.
    assert rules.compile(orjson.loads(b'{"redact": {"detectors": ["email", "jwt"]}, "min_severity": "WARN"}')) is first
    assert rules.compile({"min_severity": "ERROR"}) is not first
    assert rules.compile({"min_severity": "WARN", "redact": {"detectors": ["email"]}}) is not first


def test_compiled_rule_sets_kept_are_bounded_by_their_re2_programs():
    first = rules.compile({"services": ["svc-0"]})
    assert first.programs == 1
    assert rules.compile({"services": ["a*"], "redact": {"detectors": ["email", "jwt"]}}).programs == 3
    for i in range(1, rules.CACHE_PROGRAMS + 1):
        rules.compile({"services": [f"svc-{i}"]})
    assert rules._compiled.weight <= rules.CACHE_PROGRAMS
    assert rules.compile({"services": ["svc-0"]}) is not first  # the least recently used went first


def test_a_rule_set_that_does_not_compile_is_checked_again_each_time():
    broken = {"redact": {"patterns": [{"name": "x", "regex": "(?<=y)"}]}}
    for _ in range(2):
        with pytest.raises(rules.RulesInvalid):
            rules.compile(broken)


def test_wants_tells_a_batch_excluded_whole_by_origin_or_source_without_its_records():
    source = uuid.uuid4()
    compiled = rules.compile({"origins": ["forge"], "sources": [str(source)], "min_severity": "ERROR"})
    assert compiled.wants("forge", source) and compiled.wants("forge", str(source))
    assert not compiled.wants("forge", uuid.uuid4()) and not compiled.wants("forge", None)
    assert not compiled.wants("heroku")
    # Severity is a record's: a batch may still hold records the drain keeps.
    assert rules.compile({"min_severity": "FATAL"}).wants("heroku")


def test_a_summary_names_every_rule_in_a_few_words_and_no_pattern_text():
    assert rules.summary({}) is None and rules.summary(None) is None
    spec = rules.validate({"origins": ["heroku"], "heroku_apps": ["app"], "processes": ["web", "router"],
                           "levels": ["error", "warn"], "services": ["acme-*"],
                           "redact": {"patterns": [{"name": "t", "regex": "T-[0-9]+"}]}})
    assert rules.summary(spec) == ("origins heroku; apps app; processes web,router; levels WARN,ERROR; "
                                   "services acme-*; redact t")


# --- property: a redacted value never survives -----------------------------------------------

def _luhn_complete(prefix: str) -> str:
    for check in "0123456789":
        if rules._luhn(prefix + check):
            return prefix + check
    raise AssertionError("unreachable")


label = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=12)
token_chars = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", min_size=16, max_size=60)
octet = st.integers(0, 255).map(str)
hextet = st.integers(0, 0xFFFF).map(lambda n: f"{n:x}")

SECRETS = st.one_of(
    st.builds(lambda local, host, tld: f"{local}@{host}.{tld}", label, label,
              st.text("abcdefghijklmnopqrstuvwxyz", min_size=2, max_size=6)).map(lambda s: ("email", s, s)),
    token_chars.map(lambda t: ("bearer", f"Bearer {t}", t)),
    st.tuples(token_chars, token_chars, token_chars).map(
        lambda p: ("jwt", f"eyJ{p[0]}.eyJ{p[1]}.{p[2]}", f"eyJ{p[0]}.eyJ{p[1]}.{p[2]}")),
    st.tuples(st.sampled_from(["ATATT", "ATCTT"]), token_chars.filter(lambda t: len(t) >= 20)).map(lambda p: ("atlassian_token", p[0] + p[1],
                                                                               p[0] + p[1])),
    st.tuples(st.sampled_from("23456"), st.text("0123456789", min_size=11, max_size=17)).map(
        lambda p: _luhn_complete(p[0] + p[1])).map(lambda s: ("card", s, s)),
    st.lists(octet, min_size=4, max_size=4).map(".".join).map(lambda s: ("ipv4", s, s)),
    st.lists(hextet, min_size=8, max_size=8).map(":".join).map(lambda s: ("ipv6", s, s)),
    st.tuples(hextet, hextet, hextet).map(lambda p: f"{p[0]}:{p[1]}::{p[2]}").map(lambda s: ("ipv6", s, s)),
    st.text("0123456789", min_size=4, max_size=8).map(lambda d: ("owner", f"CUST-{d}", f"CUST-{d}")),
)
NOISE = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
SEPARATORS = st.sampled_from([" ", "\n", ", ", "\t", " (", ") ", "\r\n", "; ", '"', "'"])
EVERYTHING = {"redact": {"detectors": list(rules.DETECTORS),
                         "patterns": [{"name": "customer", "regex": r"CUST-[0-9]+"}]}}


@dataclass
class Placed:
    record: dict
    control: dict   # the same record with every placed secret's text replaced by "|"
    secrets: list[str]


def _placed(body: str, where: str) -> dict:
    if where == "body":
        return forge(body)
    if where == "attribute":
        return forge("plain", attributes={"functionKey": "run", "installationContext": body})
    return forge({"kvlistValue": {"values": [{"key": "msg", "value": {"arrayValue": {"values": [
        {"stringValue": body}]}}}]}})


@st.composite
def records_with_secrets(draw) -> Placed:
    found = draw(st.lists(SECRETS, min_size=1, max_size=4))
    pieces, control, values = [draw(NOISE)], None, []
    control = list(pieces)
    for _, text, value in found:
        before, after, noise = draw(SEPARATORS), draw(SEPARATORS), draw(NOISE)
        pieces += [before, text, after, noise]
        control += [before, "|", after, noise]
        values.append(value)
    where = draw(st.sampled_from(["body", "attribute", "nested"]))
    return Placed(_placed("".join(pieces), where), _placed("".join(control), where), values)


def written(record: dict) -> list[bytes]:
    """Every way a drain writes the record: the stored model, logplex, RFC 5424, OTLP/JSON."""
    return [orjson.dumps(record),
            b"".join(logplex.frames(record, logplex.Identity(host="d.token", app_name="acme"))),
            syslog5424.stream([record], syslog5424.Identity(host="d.token", app_name="acme", sd_id="forge@32473")),
            otlp.to_json(otlp.request([record], otlp.Origin("app", "env", "d.token"), 1))]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(placed=records_with_secrets())
def test_a_redacted_value_never_survives_in_the_record_or_any_format(placed):
    """Wherever a secret was placed (body, attribute, nested value; among any text), no format writes it.
    The same text may occur in the noise around it or in what a format adds (a timestamp's zeros):
    those occurrences, counted in the same record without the secrets, are all that may remain."""
    applied = rules.compile(EVERYTHING).apply([placed.record], "forge", Source(service_name="acme"))
    (record,) = applied.records
    assert applied.redacted >= 1
    for data, control in zip(written(record), written(placed.control)):
        for secret in placed.secrets:
            assert data.count(secret.encode()) <= control.count(secret.encode()), (secret, data[:400])


LITERAL_DETECTORS = {"redact": {"detectors": ["bearer", "jwt", "atlassian_token", "email"]}}
LITERAL_KINDS = {"bearer", "jwt", "atlassian_token", "email"}


@st.composite
def batches_with_secrets(draw) -> list[Placed]:
    """A few records, some with secrets the literal detectors find and some without, so a batch's records
    are looked at as JSON first (broker.rules.Redactor.may_match_any) and walked only where that finds one."""
    out = []
    for _ in range(draw(st.integers(1, 5))):
        if draw(st.booleans()):
            body = draw(NOISE)
            out.append(Placed(forge(body), forge(body), []))
            continue
        found = draw(st.lists(SECRETS.filter(lambda s: s[0] in LITERAL_KINDS), min_size=1, max_size=3))
        pieces, control, values = [draw(NOISE)], None, []
        control = list(pieces)
        for _, text, value in found:
            before, after, noise = draw(SEPARATORS), draw(SEPARATORS), draw(NOISE)
            pieces += [before, text, after, noise]
            control += [before, "|", after, noise]
            values.append(value)
        where = draw(st.sampled_from(["body", "attribute", "nested"]))
        out.append(Placed(_placed("".join(pieces), where), _placed("".join(control), where), values))
    return out


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(batch=batches_with_secrets())
def test_detectors_that_need_a_literal_miss_nothing_when_whole_batches_are_looked_at_first(batch):
    applied = rules.compile(LITERAL_DETECTORS).apply([p.record for p in batch], "forge", Source(service_name="acme"))
    assert applied.redacted >= sum(1 for p in batch if p.secrets)
    for placed, record in zip(batch, applied.records):
        for data, control in zip(written(record), written(placed.control)):
            for secret in placed.secrets:
                assert data.count(secret.encode()) <= control.count(secret.encode()), (secret, data[:400])


def test_otlp_ingest_records_are_their_own_origin_and_services_match_their_resource_service_name():
    def received(body: str, service: str | None) -> dict:
        record = forge(body, attributes={"k": "v"})
        record["otlp"] = {"service": service}
        return record

    batch = [received("checkout", "checkout-api"), received("worker", "billing-worker"), received("none", None)]
    assert bodies(kept({"origins": ["otlp"]}, batch, origin="otlp")) == ["checkout", "worker", "none"]
    assert kept({"origins": ["forge", "heroku"]}, batch, origin="otlp").filtered == 3
    assert rules.compile({"origins": ["forge"]}).wants("otlp") is False
    assert bodies(kept({"services": ["checkout-*"]}, batch, origin="otlp")) == ["checkout"]
    assert bodies(kept({"services": ["*-worker"], "min_severity": "INFO"}, batch, origin="otlp")) == ["worker"]
    # Sources and Heroku process rules are about other origins: they leave OTLP-ingested records alone.
    assert bodies(kept({"sources": [str(SOURCE_A)], "processes": ["web"]}, batch, origin="otlp")) == [
        "checkout", "worker", "none"]
    assert rules.validate({"origins": ["otlp"]}) == {"origins": ["otlp"]}
