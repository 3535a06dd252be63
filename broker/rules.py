"""Per-drain rules: which records a drain receives, and what is redacted from them (SPEC §10, issue 16).

Pure: no database, no clock. An owner's rule set is JSON on the drain
(``drains.rules``); :func:`validate` checks what they submit and returns it
normalised, or raises :class:`RulesInvalid` listing every problem with its
field path; :func:`compile` turns a stored rule set into a :class:`Rules`
(None for a drain without rules, so delivery does nothing extra for it), and
:meth:`Rules.apply` keeps a batch's wanted records, redacted, with their raw
positions in the batch.

A record is kept when it passes every rule given (rules combine with AND, the
entries of one rule with OR); an empty list is the same as leaving the rule
out:

- ``origins``: ``forge`` (records polled from the App logs API), ``heroku``
  (the Heroku app's own logs, drain ingest), ``otlp`` (the app's logs sent to
  OTLP ingest) (:data:`ORIGINS`);
- ``sources``: Forge records only from these source ids;
- ``heroku_apps``, ``processes``: Heroku lines only with these APP-NAMEs
  (``app``, ``heroku``) and process types (PROCID before its first ``.``:
  ``web`` of ``web.1``, ``router``);
- ``min_severity`` or ``levels``: by the severity the formats write
  (:func:`broker.formats.severity.of`; a record without one counts as INFO);
- ``services``: globs (``*``, ``?``, ``[seq]``, ``[!seq]``, case-sensitive)
  on ``service.name`` as OTLP drains show it (the source's service name, else
  ``forge-app-<app id>``; a Heroku line's APP-NAME; an OTLP-ingested record's
  resource ``service.name``).

Then ``redact``: built-in ``detectors`` (:data:`DETECTORS`), the owner's
``patterns`` and ``drop_attributes``, over bodies and every string attribute
value (nested values and keys of structured ones included); a match becomes
``[redacted:<detector or pattern name>]``, a dropped attribute is removed.
Owner patterns are untrusted, so every pattern runs on RE2 (linear time: no
backreferences, no lookaround), bounded in count and length. Each detector is
a pass of its own, in a fixed order, so a candidate one detector declines (a
digit run that fails the Luhn check) never hides another's match. A detector
that needs a literal (``@`` for email, ``bearer`` for bearer tokens …) is
skipped for text without it: RE2's call costs microseconds, a substring test
a fraction of one, and most log lines hold no secret.
"""

from __future__ import annotations

import ipaddress
import re
import threading
import uuid
from bisect import bisect_left
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterable

import orjson
import re2

from broker.formats import fields, severity
from broker.validation import InputError

ORIGINS = ("forge", "heroku", "otlp")
LEVELS = ("TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL")
# The lowest OTLP severity number of each level (research otlp-syslog-forge.md §1.6).
LEVEL_FLOOR = {"TRACE": 1, "DEBUG": 5, "INFO": 9, "WARN": 13, "ERROR": 17, "FATAL": 21}
# A record without a known severity is shown as INFO (the OTel data model's advice), so it is filtered as one.
UNSPECIFIED_AS = 9
FIELDS = ("origins", "sources", "heroku_apps", "processes", "min_severity", "levels", "services", "redact")
REDACT_FIELDS = ("detectors", "patterns", "drop_attributes")
MAX_ENTRIES = 50
MAX_GLOBS = 20
MAX_GLOB_CHARS = 100
MAX_PATTERNS = 20
MAX_PATTERN_CHARS = 256
MAX_ATTRIBUTE_CHARS = 256
PATTERN_NAME = re.compile(r"[a-z0-9_-]{1,32}\Z")
# APP-NAME and PROCID are PRINTUSASCII (RFC 5424 §6.2.5-6), at most 48 and 128 bytes.
HEADER_WORD = re.compile(r"[!-~]{1,48}\Z")
PROCESS_TYPE = re.compile(r"[!-\-/-~]{1,48}\Z")  # PRINTUSASCII but '.': the type is what precedes it
# Memory one compiled pattern may use, its DFA cache included (RE2's default is 8 MiB): a delivery
# job runs 16 drains at once with up to 27 patterns each. A pattern whose program does not fit is
# refused at validation; a DFA that outgrows it makes RE2 fall back to its NFA, slower, still linear.
RE2_MAX_MEM = 2 << 20


class RulesInvalid(InputError):
    """The submitted rules have problems: ``problems`` lists each as (field path, message)."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__(problems[0][0], "; ".join(f"{path}: {message}" for path, message in problems))


# --- detectors -------------------------------------------------------------------------------

def _luhn(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


_DIGIT_RUN = re.compile(r"[0-9]+")


def _card(text: str) -> str | None:
    """The candidate with its card numbers replaced, or None. A card number is 13–19 digits, grouped
    by single spaces or dashes or not, starting 2–6 as the card networks' numbers do (so epoch
    milliseconds and nanoseconds, which start with 1, are left alone) and passing the Luhn check.
    Within a longer run of groups, the longest run of whole groups that is one is replaced."""
    groups = [(m.start(), m.end()) for m in _DIGIT_RUN.finditer(text)]
    out, last, i = [], 0, 0
    while i < len(groups):
        digits, found = "", None
        for j in range(i, len(groups)):  # at most 19 groups: each holds a digit at least
            digits += text[groups[j][0]:groups[j][1]]
            if len(digits) > 19:
                break
            if len(digits) >= 13 and digits[0] in "23456" and _luhn(digits):
                found = j + 1
        if found is None:
            i += 1
            continue
        out += [text[last:groups[i][0]], "[redacted:card]"]
        last, i = groups[found - 1][1], found
    if not out:
        return None
    out.append(text[last:])
    return "".join(out)


def _ipv4(text: str) -> str | None:
    parts = text.split(".")
    if len(parts) == 4 and all(len(p) <= 3 and int(p) <= 255 for p in parts):
        return "[redacted:ipv4]"
    return None  # a version string or an OID (1.2.3.4.5), or an octet past 255


def _ipv6(text: str) -> str | None:
    for candidate, tail in ((text, ""), (text.rstrip(":"), ":" * (len(text) - len(text.rstrip(":"))))):
        try:
            address = ipaddress.IPv6Address(candidate)
        except ValueError:
            continue
        # "::", "::1" and the "::" of "Foo::bar" name no one: at least two groups, or an IPv4 tail.
        if sum(1 for group in candidate.split(":") if group) >= 2 or address.ipv4_mapped:
            return "[redacted:ipv6]" + tail
        return None
    return None


@dataclass(frozen=True)
class Detector:
    name: str
    pattern: str
    # Substrings one of which text must hold for the pattern to match (None: no such test); ``lowered``
    # tests them against the text in lower case.
    literals: tuple[str, ...] | None = None
    lowered: bool = False
    # Looks at a match and gives its replacement, or None to keep it (a Luhn or address check).
    check: Callable[[str], str | None] | None = None


# In the order they run. Bearer before jwt, so "Bearer eyJ…" reads [redacted:bearer]; ipv6 before ipv4,
# so an IPv4-mapped address goes whole.
DETECTOR_LIST = (
    # RFC 6750 b64token; at least 16 characters, so "bearer of bad news" and "Bearer token missing" stay.
    Detector("bearer", r"(?i:\bbearer)[ \t]+[A-Za-z0-9._~+/-]{16,}=*", ("bearer",), lowered=True),
    # header.payload.signature, each base64url; the header and payload are JSON objects ("ey…").
    Detector("jwt", r"\bey[A-Za-z0-9_-]{10,}\.ey[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]*", (".ey",)),
    # Atlassian API tokens (ATATT…) and admin API keys (ATCTT…): about 190 characters.
    Detector("atlassian_token", r"\bAT[AC]TT[A-Za-z0-9_=-]{20,}", ("ATATT", "ATCTT")),
    Detector("email", r"[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}", ("@",)),
    Detector("card", r"\b[0-9](?:[ -]?[0-9]){12,}\b", tuple("0123456789"), check=_card),
    Detector("ipv6", r"(?:\b[0-9A-Fa-f]{1,4})?(?::[0-9A-Fa-f]{0,4}){2,7}(?:\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3})?",
             (":",), check=_ipv6),
    Detector("ipv4", r"\b[0-9]{1,3}(?:\.[0-9]{1,3}){3,}\b", (".",), check=_ipv4),
)
DETECTORS = tuple(d.name for d in DETECTOR_LIST)


def _options() -> re2.Options:
    options = re2.Options()
    options.log_errors = False  # RE2 would write every refused pattern to stderr
    options.max_mem = RE2_MAX_MEM
    return options


def _re2(pattern: str):
    return re2.compile(pattern, _options())


# --- validation ------------------------------------------------------------------------------

class _Problems:
    def __init__(self):
        self.found: list[tuple[str, str]] = []

    def add(self, path: str, message: str) -> None:
        self.found.append((path, message))


def _strings(value, path: str, problems: _Problems, *, limit: int = MAX_ENTRIES) -> list[str] | None:
    """The list of strings at ``path`` (None when absent or wrong, the problem noted)."""
    if value is None:
        return []
    if not isinstance(value, list):
        problems.add(path, "must be a list")
        return None
    if len(value) > limit:
        problems.add(path, f"at most {limit} entries")
        return None
    if not all(isinstance(item, str) for item in value):
        for index, item in enumerate(value):
            if not isinstance(item, str):
                problems.add(f"{path}[{index}]", "must be a string")
        return None
    return value


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _re2_problem(exc: Exception) -> str:
    detail = exc.args[0] if exc.args else str(exc)
    if isinstance(detail, bytes):
        detail = detail.decode("utf-8", "replace")
    detail = str(detail)
    if any(f"invalid perl operator: (?{c}" in detail for c in "=!<"):
        hint = "lookahead and lookbehind are not supported: patterns run on RE2, in linear time"
    elif "invalid escape sequence: \\" in detail and detail[-1:].isdigit():
        hint = "backreferences are not supported: patterns run on RE2, in linear time"
    elif "too large" in detail:
        hint = "it is too large once compiled: use fewer or smaller repetitions"
    elif "repetition" in detail:
        hint = "a repetition is too large: RE2 counts at most 1000 in all"
    else:
        hint = "it is not a valid RE2 pattern"
    return f"{hint} (RE2 says: {detail})"


def glob_pattern(glob: str) -> str:
    """An RE2 pattern matching what ``glob`` matches as :func:`fnmatch.fnmatchcase` reads it."""
    out, i, n = [], 0, len(glob)
    while i < n:
        char = glob[i]
        i += 1
        if char == "*":
            out.append(".*")
        elif char == "?":
            out.append(".")
        elif char == "[":
            j = i
            if j < n and glob[j] == "!":
                j += 1
            if j < n and glob[j] == "]":
                j += 1
            while j < n and glob[j] != "]":
                j += 1
            if j >= n:
                out.append(re2.escape("["))
                continue
            body = glob[i:j]
            i = j + 1
            negate = body.startswith("!")
            if negate:
                body = body[1:]
            # Escape everything but the '-' of ranges: RE2 then reads the set as fnmatch does.
            members = "".join("\\" + c if c.isascii() and not c.isalnum() and c != "-" else c for c in body)
            out.append(f"[{'^' if negate else ''}{members}]")
        else:
            out.append(re2.escape(char))
    return "(?s:" + "".join(out) + ")"


def validate(payload, *, sources: Iterable | None = None) -> dict:
    """The rules in normalised form ({} for none), or :class:`RulesInvalid` with every problem.

    ``sources``, when given, are the resource's source ids: a rule naming another is a problem.
    """
    if payload is None:
        return {}
    if not isinstance(payload, dict):
        raise RulesInvalid([("rules", "must be an object (or null for no rules)")])
    problems = _Problems()
    out: dict = {}
    for key in payload:
        if key not in FIELDS:
            problems.add(f"rules.{key}", f"unknown rule; rules are {', '.join(FIELDS)}")

    origins = _strings(payload.get("origins"), "rules.origins", problems)
    if origins:
        wrong = [o for o in origins if o not in ORIGINS]
        if wrong:
            problems.add("rules.origins", f"unknown origin {wrong[0]!r}; origins are {', '.join(ORIGINS)}")
        else:
            out["origins"] = [o for o in ORIGINS if o in origins]

    ids = _strings(payload.get("sources"), "rules.sources", problems)
    if ids:
        normal = []
        for index, value in enumerate(ids):
            try:
                normal.append(str(uuid.UUID(value)))
            except ValueError:
                problems.add(f"rules.sources[{index}]", "must be a source id (a UUID)")
        if sources is not None and len(normal) == len(ids):
            problems.found += _foreign_sources(normal, sources)
        out["sources"] = _unique(normal)

    for key, shape, what in (("heroku_apps", HEADER_WORD, "an APP-NAME such as app or heroku"),
                             ("processes", PROCESS_TYPE, "a process type such as web or router (no '.')")):
        values = _strings(payload.get(key), f"rules.{key}", problems)
        if values:
            for index, value in enumerate(values):
                if not shape.match(value):
                    problems.add(f"rules.{key}[{index}]", f"must be {what}: 1 to 48 printable ASCII characters, "
                                                          "no spaces")
            out[key] = _unique(values)

    if payload.get("min_severity") is not None:
        level = payload["min_severity"]
        if not isinstance(level, str) or level.upper() not in LEVELS:
            problems.add("rules.min_severity", f"must be one of {', '.join(LEVELS)}")
        else:
            out["min_severity"] = level.upper()
    levels = _strings(payload.get("levels"), "rules.levels", problems)
    if levels:
        wrong = [v for v in levels if v.upper() not in LEVELS]
        if wrong:
            problems.add("rules.levels", f"unknown level {wrong[0]!r}; levels are {', '.join(LEVELS)}")
        else:
            out["levels"] = [v for v in LEVELS if v in {x.upper() for x in levels}]
    if "min_severity" in out and "levels" in out:
        problems.add("rules", "give min_severity or levels, not both")

    globs = _strings(payload.get("services"), "rules.services", problems, limit=MAX_GLOBS)
    if globs:
        for index, glob in enumerate(globs):
            if not 1 <= len(glob) <= MAX_GLOB_CHARS or not glob.isprintable():
                problems.add(f"rules.services[{index}]", f"must be 1 to {MAX_GLOB_CHARS} printable characters")
                continue
            try:
                _re2(glob_pattern(glob))
            except re2.error:
                problems.add(f"rules.services[{index}]", "is not a valid glob (a [set] is malformed)")
        out["services"] = _unique(globs)

    redact = payload.get("redact")
    if redact is not None:
        normal = _validate_redact(redact, problems)
        if normal:
            out["redact"] = normal
    if problems.found:
        raise RulesInvalid(problems.found)
    return out


def _foreign_sources(ids: list[str], sources: Iterable) -> list[tuple[str, str]]:
    known = {str(s) for s in sources}
    return [(f"rules.sources[{index}]", "no source with this id on this resource")
            for index, value in enumerate(ids) if value not in known]


def check_sources(payload, sources: Iterable) -> None:
    """:class:`RulesInvalid` naming each source id of submitted rules that :func:`validate` accepted
    but is not among ``sources``, the resource's (checked apart, where the resource is locked)."""
    ids = payload.get("sources") if isinstance(payload, dict) else None
    if ids:
        problems = _foreign_sources([str(uuid.UUID(value)) for value in ids], sources)
        if problems:
            raise RulesInvalid(problems)


def _validate_redact(redact, problems: _Problems) -> dict:
    if not isinstance(redact, dict):
        problems.add("rules.redact", "must be an object with detectors, patterns and drop_attributes")
        return {}
    out: dict = {}
    for key in redact:
        if key not in REDACT_FIELDS:
            problems.add(f"rules.redact.{key}", f"unknown field; redact takes {', '.join(REDACT_FIELDS)}")
    detectors = _strings(redact.get("detectors"), "rules.redact.detectors", problems)
    if detectors:
        wrong = [d for d in detectors if d not in DETECTORS]
        if wrong:
            problems.add("rules.redact.detectors", f"unknown detector {wrong[0]!r}; detectors are "
                                                   f"{', '.join(DETECTORS)}")
        else:
            out["detectors"] = [d for d in DETECTORS if d in detectors]
    patterns = redact.get("patterns")
    if patterns is not None:
        if not isinstance(patterns, list):
            problems.add("rules.redact.patterns", "must be a list of {name, regex}")
        elif len(patterns) > MAX_PATTERNS:
            problems.add("rules.redact.patterns", f"at most {MAX_PATTERNS} patterns")
        else:
            seen: set[str] = set()
            normal = []
            for index, item in enumerate(patterns):
                path = f"rules.redact.patterns[{index}]"
                if not isinstance(item, dict):
                    problems.add(path, "must be an object {name, regex}")
                    continue
                for key in item:
                    if key not in ("name", "regex"):
                        problems.add(f"{path}.{key}", "unknown field; a pattern has name and regex")
                name, regex = item.get("name"), item.get("regex")
                if not isinstance(name, str) or not PATTERN_NAME.match(name):
                    problems.add(f"{path}.name", "must be 1 to 32 characters: a-z, 0-9, _ or -")
                elif name in DETECTORS:
                    problems.add(f"{path}.name", f"{name!r} is a built-in detector's name; choose another")
                elif name in seen:
                    problems.add(f"{path}.name", f"another pattern is named {name!r} already")
                else:
                    seen.add(name)
                label = f"pattern {name!r}" if isinstance(name, str) and name else "the pattern"
                if not isinstance(regex, str) or not 1 <= len(regex) <= MAX_PATTERN_CHARS or not regex.isprintable():
                    problems.add(f"{path}.regex", f"{label} must be 1 to {MAX_PATTERN_CHARS} printable characters")
                    continue
                try:
                    compiled = _re2(regex)
                except re2.error as exc:
                    problems.add(f"{path}.regex", f"{label}: {_re2_problem(exc)}")
                    continue
                if compiled.search("") is not None:
                    problems.add(f"{path}.regex", f"{label} matches empty text, so it would redact nothing; "
                                                  "make it match at least one character")
                    continue
                normal.append({"name": name, "regex": regex})
            if normal:
                out["patterns"] = normal
    drops = _strings(redact.get("drop_attributes"), "rules.redact.drop_attributes", problems)
    if drops:
        for index, key in enumerate(drops):
            if not 1 <= len(key) <= MAX_ATTRIBUTE_CHARS or not key.isprintable():
                problems.add(f"rules.redact.drop_attributes[{index}]",
                             f"must be an attribute key of 1 to {MAX_ATTRIBUTE_CHARS} printable characters")
        out["drop_attributes"] = _unique(drops)
    return out


# How :func:`summary` shows each list rule: its values joined, or (ids) how many there are.
_SUMMARY = (("origins", "origins", True), ("sources", "sources", False), ("heroku_apps", "apps", True),
            ("processes", "processes", True), ("min_severity", "min", True), ("levels", "levels", True),
            ("services", "services", True))


def summary(spec: dict | None) -> str | None:
    """A drain's rules (as :func:`validate` normalises them) in a few words for a table cell, such as
    ``min WARN; redact email,jwt; drop attrs 2``; None for no rules. Patterns show by name only."""
    spec = spec or {}
    parts = []
    for key, label, joined in _SUMMARY:
        value = spec.get(key)
        if value:
            shown = value if isinstance(value, str) else ",".join(value) if joined else len(value)
            parts.append(f"{label} {shown}")
    redact = spec.get("redact") or {}
    names = list(redact.get("detectors") or ()) + [p["name"] for p in redact.get("patterns") or ()]
    if names:
        parts.append("redact " + ",".join(names))
    if redact.get("drop_attributes"):
        parts.append(f"drop attrs {len(redact['drop_attributes'])}")
    return "; ".join(parts) or None


# --- applying --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Applied:
    """What :meth:`Rules.apply` made of a batch's records: the kept ones (redacted) with their raw
    positions in the batch, how many were filtered out, how many values were redacted in all and,
    when any was, how many in each kept record (None: none)."""

    records: list[dict]
    positions: list[int]
    filtered: int
    redacted: int
    redactions: list[int] | None = None

    def counts(self, start: int, end: int) -> tuple[int, int]:
        """(filtered, redacted) among the raw positions ``[start, end)``."""
        low, high = bisect_left(self.positions, start), bisect_left(self.positions, end)
        redacted = sum(self.redactions[low:high]) if self.redactions is not None else 0
        return (end - start) - (high - low), redacted


class _Pass:
    """One detector or owner pattern: a compiled RE2 program and its replacement."""

    def __init__(self, name: str, pattern: str, literals=None, lowered: bool = False, check=None):
        self.regex = _re2(pattern)
        self.replacement = f"[redacted:{name}]"
        self.literals = literals
        self.lowered = lowered
        self.check = check

    def run(self, text: str) -> tuple[str, int]:
        """``text`` with this pass's matches replaced, and how many were."""
        if self.literals is not None:
            haystack = text.lower() if self.lowered else text
            for literal in self.literals:
                if literal in haystack:
                    break
            else:
                return text, 0
        count = 0
        check, replacement = self.check, self.replacement

        def replace(match) -> str:
            nonlocal count
            found = match.group(0)
            if not found:
                return found  # an empty match replaces nothing
            if check is None:
                count += 1
                return replacement
            replaced = check(found)
            if replaced is None:
                return found
            count += replaced.count("[redacted:")
            return replaced

        out = self.regex.sub(replace, text)
        return out, count


# An attribute's key as the record holds it (Forge's name) and as OTLP drains show it.
_OTLP_NAMES = {"appId": "forge.app.id", "environmentId": "forge.environment.id", "appVersion": "service.version",
               "invocationId": "faas.invocation_id", "functionKey": "forge.function.key",
               "moduleType": "forge.module.type", "installationContext": "forge.installation_context",
               "licenseState": "forge.license.state", "edition": "forge.edition", "arguments": "forge.arguments"}


class Redactor:
    def __init__(self, spec: dict):
        chosen = set(spec.get("detectors") or ())
        self.passes = [_Pass(d.name, d.pattern, d.literals, d.lowered, d.check)
                       for d in DETECTOR_LIST if d.name in chosen]
        self.passes += [_Pass(p["name"], p["regex"]) for p in spec.get("patterns") or ()]
        drops = set(spec.get("drop_attributes") or ())
        # A key given either way drops the attribute: Forge's own name or the name OTLP drains show.
        self.drop = frozenset(key for key, shown in _OTLP_NAMES.items() if shown in drops) | drops \
            | frozenset(key[len("forge."):] for key in drops if key.startswith("forge."))
        # When every pass needs a literal, one test of them all skips text none of them can match.
        if self.passes and all(p.literals is not None for p in self.passes):
            self.literals = tuple({lit for p in self.passes if not p.lowered for lit in p.literals})
            self.lowered = tuple({lit for p in self.passes if p.lowered for lit in p.literals})
        else:
            self.literals = self.lowered = None
        # The same test over records as JSON (orjson escapes none of these literals: only '"', '\\' and
        # control characters), a C-speed look at a whole batch, then at a record, before any walk of
        # their values. Pointless when a literal is JSON's own ':' or a digit (every record's time has
        # them) or when drops are asked for: those records are always walked.
        self.json_literals = self.json_lowered = None
        if self.literals is not None and not self.drop and not any(
                lit == ":" or lit.isdigit() for lit in self.literals + self.lowered):
            self.json_literals = tuple(lit.encode() for lit in self.literals)
            self.json_lowered = tuple(lit.encode() for lit in self.lowered)

    def may_match_any(self, value) -> bool:
        """Whether any string in ``value`` (a record, a list of them) may hold a match (True when
        there is no cheap way to tell)."""
        if self.json_literals is None:
            return True
        try:
            data = orjson.dumps(value)
        except (TypeError, orjson.JSONEncodeError):
            return True
        for literal in self.json_literals:
            if literal in data:
                return True
        if self.json_lowered:
            data = data.lower()
            for literal in self.json_lowered:
                if literal in data:
                    return True
        return False

    def _may_match(self, text: str) -> bool:
        if self.literals is None:
            return True
        for literal in self.literals:
            if literal in text:
                return True
        if self.lowered:
            lowered = text.lower()
            for literal in self.lowered:
                if literal in lowered:
                    return True
        return False

    def _fresh(self, text: str) -> tuple[str, int]:
        total = 0
        if self._may_match(text):
            for step in self.passes:
                text, count = step.run(text)
                total += count
        return text, total

    def text(self, text: str, cache: dict | None = None) -> tuple[str, int]:
        """``text`` redacted, and how many values were (``cache``: what texts came to, by text)."""
        if cache is None:
            return self._fresh(text)
        hit = cache.get(text)
        if hit is None:
            hit = cache[text] = self._fresh(text)
        return hit

    def value(self, value, cache: dict | None) -> tuple[object, int]:
        """An AnyValue (or a bare value) with its strings redacted, and the count; the value itself
        when nothing was."""
        kind = type(value)
        if kind is str:
            return self.text(value, cache)
        if kind is not dict:
            return value, 0
        if len(value) == 1 and type(value.get("stringValue")) is str:  # the common case
            out, count = self.text(value["stringValue"], cache)
            return ({"stringValue": out}, count) if count else (value, 0)
        # Anything else is read as the formats read it (a plain object is a kvlist, a stringValue
        # holding an object is its JSON text …), so what is checked here is what they would write.
        value = fields.any_value(value)
        if len(value) != 1:
            return value, 0
        (key, inner), = value.items()
        if key == "stringValue":
            out, count = self.text(inner, cache)
            return ({"stringValue": out}, count) if count else (value, 0)
        if key == "intValue":  # a card number logged as a number
            out, count = self.text(str(inner), cache)
            return ({"stringValue": out}, count) if count else (value, 0)
        if key == "arrayValue" and type(inner) is dict and type(inner.get("values")) is list:
            items, total = [], 0
            for item in inner["values"]:
                out, count = self.value(item, cache)
                items.append(out)
                total += count
            return ({"arrayValue": {"values": items}}, total) if total else (value, 0)
        if key == "kvlistValue" and type(inner) is dict and type(inner.get("values")) is list:
            items, total = [], 0
            for item in inner["values"]:
                if type(item) is not dict:
                    items.append(item)
                    continue
                name, named = item.get("key"), 0
                if type(name) is str:
                    name, named = self.text(name, cache)
                out, count = self.value(item.get("value"), cache)
                items.append({**item, "key": name, "value": out})
                total += count + named
            return ({"kvlistValue": {"values": items}}, total) if total else (value, 0)
        return value, 0

    def record(self, record: dict, cache: dict) -> tuple[dict, int]:
        """The record with its body and attribute values redacted (a copy when anything changed).
        ``cache`` holds what attribute values came to, for this batch: most repeat from record to record."""
        total = 0
        body = record.get("body")
        new_body = body
        if body is not None:
            if type(body) is dict and len(body) == 1 and type(body.get("stringValue")) is str:
                text, total = self.text(body["stringValue"])
                if total:
                    new_body = {"stringValue": text}
            else:
                new_body, total = self.value(body, None)
        attributes = record.get("attributes")
        out = None  # the new attribute list, from the first change on
        if attributes:
            drop, fresh = self.drop, self._fresh
            for index, item in enumerate(attributes):
                count = 0
                if type(item) is dict:
                    if drop and item.get("key") in drop:
                        total += 1
                        if out is None:
                            out = attributes[:index]
                        continue
                    value = item.get("value")
                    text = value.get("stringValue") if type(value) is dict else None
                    if type(text) is str and len(value) == 1:  # the common case: a stringValue
                        hit = cache.get(text)
                        if hit is None:
                            hit = cache[text] = fresh(text)
                        count = hit[1]
                        if count:
                            item = {**item, "value": {"stringValue": hit[0]}}
                    else:
                        new, count = self.value(value, cache)
                        if count:
                            item = {**item, "value": new}
                if count:
                    total += count
                    if out is None:
                        out = attributes[:index]
                if out is not None:
                    out.append(item)
        if not total:
            return record, 0
        copy = dict(record)
        if body is not None:
            copy["body"] = new_body
        if out is not None:
            copy["attributes"] = out
        return copy, total


class Rules:
    """A drain's rules, compiled once (:func:`compile` keeps them for every drain with the same rules) and
    applied to each batch it receives. Delivery threads share one: nothing here changes once built but
    a bounded cache of service names, which a lost race only fills twice."""

    def __init__(self, spec: dict):
        self.spec = spec
        self.origins = frozenset(spec["origins"]) if spec.get("origins") else None
        self.sources = frozenset(spec["sources"]) if spec.get("sources") else None
        self.heroku_apps = frozenset(spec["heroku_apps"]) if spec.get("heroku_apps") else None
        self.processes = frozenset(spec["processes"]) if spec.get("processes") else None
        allowed = None
        if spec.get("min_severity"):
            floor = LEVEL_FLOOR[spec["min_severity"]]
            allowed = [(n or UNSPECIFIED_AS) >= floor for n in range(25)]
        elif spec.get("levels"):
            floors = [LEVEL_FLOOR[level] for level in spec["levels"]]
            allowed = [any(f <= (n or UNSPECIFIED_AS) < f + 4 for f in floors) for n in range(25)]
        self.allowed = allowed
        self.services = _re2("|".join(glob_pattern(g) for g in spec["services"])) if spec.get("services") else None
        self._service_cache: dict[str, bool] = {}
        redact = spec.get("redact") or {}
        self.redactor = Redactor(redact) if redact else None

    @property
    def programs(self) -> int:
        """How many RE2 programs these rules hold (what a compiled rule set weighs in memory)."""
        return (self.services is not None) + (len(self.redactor.passes) if self.redactor is not None else 0)

    def wants(self, origin: str, source_id=None) -> bool:
        """Whether a batch of this origin (and, for a Forge batch, this source id) may hold a record
        the drain keeps. False: the whole batch is filtered out, and delivery need not decode it."""
        if self.origins is not None and origin not in self.origins:
            return False
        return not (origin == "forge" and self.sources is not None and str(source_id or "") not in self.sources)

    def _service_wanted(self, name: str) -> bool:
        wanted = self._service_cache.get(name)
        if wanted is None:
            wanted = self.services.fullmatch(name) is not None
            if len(self._service_cache) < 1024:
                self._service_cache[name] = wanted
        return wanted

    def apply(self, records: list[dict], origin: str, source=None, start: int = 0) -> Applied:
        """Keep the records of one batch that the drain wants, redacted.

        ``origin`` is the batch's (``forge``, ``heroku``, ``otlp``); ``source`` its Forge source (anything with
        ``id``, ``service_name`` and ``app_id``; None for Heroku batches); ``start`` the raw position
        in the batch of ``records[0]`` (a drain resuming inside a batch). The records given are not
        changed: a redacted record is a copy.
        """
        count = len(records)
        if not self.wants(origin, getattr(source, "id", None)):
            return Applied([], [], count, 0)
        heroku = origin == "heroku"
        allowed = self.allowed
        services = self.services
        apps = self.heroku_apps if heroku else None
        processes = self.processes if heroku else None
        if allowed is None and services is None and apps is None and processes is None:
            kept, positions = records, list(range(start, start + count))
        else:
            kept, positions = [], []
            of = severity.of
            fixed_service = None
            otlp = origin == "otlp"
            if services is not None and not heroku and not otlp:
                fixed_service = getattr(source, "service_name", None) or None
            for index, record in enumerate(records):
                if allowed is not None and not allowed[of(record)[0]]:
                    continue
                if heroku and (apps is not None or processes is not None or services is not None):
                    app, dyno = fields.heroku_header(record) or ("-", "-")
                    if apps is not None and app not in apps:
                        continue
                    if processes is not None and dyno.split(".", 1)[0] not in processes:
                        continue
                    if services is not None and not self._service_wanted(app):
                        continue
                elif services is not None and otlp:
                    # Received over OTLP: the service.name the app's resource gave (broker.formats.otlp_ingest).
                    part = record.get("otlp")
                    if not self._service_wanted(str(part.get("service") or "") if isinstance(part, dict) else ""):
                        continue
                elif services is not None:
                    name = fixed_service or fields.service_name(
                        None, fields.attribute(record, "appId") or getattr(source, "app_id", "") or "")
                    if not self._service_wanted(name):
                        continue
                kept.append(record)
                positions.append(start + index)
        filtered = count - len(kept)
        redactor = self.redactor
        if redactor is None or not kept or not redactor.may_match_any(kept):
            return Applied(kept, positions, filtered, 0)
        cache: dict = {}
        redacted, out, per_record = 0, [], []
        record_of, may_match = redactor.record, redactor.may_match_any
        for record in kept:
            n = 0
            if may_match(record):
                record, n = record_of(record, cache)
            out.append(record)
            per_record.append(n)
            redacted += n
        return Applied(out, positions, filtered, redacted, per_record if redacted else None)

    def probe(self, record: dict, origin: str, source=None) -> tuple[dict, bool, int]:
        """A test record as these rules treat it: (the record redacted, whether they would filter it
        out, how many values were redacted). It is redacted even when filtered out: a drain's test
        sends it anyway, so the owner sees the destination work and the redaction with it."""
        applied = self.apply([record], origin, source)
        if applied.records:
            return applied.records[0], False, applied.redacted
        if self.redactor is None:
            return record, True, 0
        redacted, count = self.redactor.record(record, {})
        return redacted, True, count


# Compiled rule sets a process keeps, weighed by their RE2 programs: each may grow its DFA cache to
# RE2_MAX_MEM, so this bounds what the cache can hold on to at 256 MiB (a typical set, a minimum
# severity and two detectors, weighs 2 and takes kilobytes).
CACHE_PROGRAMS = 128
_MISSING = object()


class _Cache:
    """Least recently used compiled rule sets by their canonical JSON, at most ``capacity`` programs."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.entries: OrderedDict[bytes, tuple[Rules | None, int]] = OrderedDict()
        self.weight = 0
        self.lock = threading.Lock()

    def get(self, key: bytes):
        with self.lock:
            entry = self.entries.get(key)
            if entry is None:
                return _MISSING
            self.entries.move_to_end(key)
            return entry[0]

    def put(self, key: bytes, compiled: Rules | None) -> None:
        weight = compiled.programs if compiled is not None else 1
        with self.lock:
            if key in self.entries:
                return
            self.entries[key] = (compiled, weight)
            self.weight += weight
            while self.weight > self.capacity and len(self.entries) > 1:
                _, (_, dropped) = self.entries.popitem(last=False)
                self.weight -= dropped

    def clear(self) -> None:
        with self.lock:
            self.entries.clear()
            self.weight = 0


_compiled = _Cache(CACHE_PROGRAMS)


def compile(rules: dict | None) -> Rules | None:
    """The drain's stored rules, compiled; None when it has none (delivery then does nothing extra).
    Stored rules are checked again (:class:`RulesInvalid` if they no longer hold), so a rule set
    written by another version is never half applied.

    A rule set is validated and compiled once per process, not once per delivery turn (RE2 programs
    took about half of a turn's time for a typical set): the result is kept by the rule set's
    canonical JSON, so every drain with the same rules shares it. A rule set that does not compile
    is not kept: it is checked again at the drain's next try."""
    if not rules:
        return None
    key = orjson.dumps(rules, option=orjson.OPT_SORT_KEYS)
    found = _compiled.get(key)
    if found is not _MISSING:
        return found
    spec = validate(rules)
    compiled = Rules(spec) if spec else None
    _compiled.put(key, compiled)
    return compiled
