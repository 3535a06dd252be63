"""Severity of a Forge record, from its text first (research otlp-syslog-forge.md §1.6).

Forge's sample sends ``"severityNumber": 30`` for INFO — the pino/bunyan scale,
outside OTLP's 1..24 — so the text decides and the number is only a fallback.
"""

from __future__ import annotations

# text → (OTLP SeverityNumber, syslog severity)
BY_TEXT = {
    "TRACE": (1, 7), "DEBUG": (5, 7), "INFO": (9, 6), "INFORMATION": (9, 6),
    "WARN": (13, 4), "WARNING": (13, 4), "ERROR": (17, 3),
    # FATAL → crit (2), not emerg (0): a Forge function dying should not page like a kernel panic.
    "FATAL": (21, 2), "CRITICAL": (21, 2),
}
PINO = {10: "TRACE", 20: "DEBUG", 30: "INFO", 40: "WARN", 50: "ERROR", 60: "FATAL"}


def _syslog_for_otlp(number: int) -> int:
    if number <= 8:
        return 7
    if number <= 12:
        return 6
    if number <= 16:
        return 4
    if number <= 20:
        return 3
    return 2


def of(record: dict) -> tuple[int, int]:
    """(OTLP severity number 0..24, syslog severity 0..7) of a Forge record. A record received over
    OTLP (an ``otlp`` part) keeps its number when it is in 1..24: there the number is the
    standard and the text free-form."""
    if "otlp" in record:
        number = record.get("severityNumber")
        if type(number) is int and 1 <= number <= 24:
            return number, _syslog_for_otlp(number)
    text = record.get("severityText")
    if isinstance(text, str) and text.upper() in BY_TEXT:
        return BY_TEXT[text.upper()]
    number = record.get("severityNumber")
    if isinstance(number, int) and not isinstance(number, bool):
        if 1 <= number <= 24:
            return number, _syslog_for_otlp(number)
        if number in PINO:
            return BY_TEXT[PINO[number]]
    return 0, 6  # unspecified: shown as info, as the OTel spec suggests
