"""The wire to drains: HTTP sessions, TLS sockets, retry classes, the SSRF guard and the per-send deadline."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Result:
    """What one send tells the delivery loop to do. Never carries a secret."""

    outcome: str  # delivered | retry | drop | split
    status: int | None = None
    detail: str = ""
    retry_after: float | None = None
    rejected: int = 0
