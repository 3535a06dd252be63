"""Redis clients built one way for web, worker, clock and tests.

Heroku Key-Value Store hands out ``rediss://`` URLs whose certificate is
self-signed, so verification is turned off for ``rediss://`` unless the URL
states ``ssl_cert_reqs`` itself (Heroku Dev Center "heroku-redis", "Connecting
in Python"). The query parameter is only legal on ``rediss://``: a plain
``redis://`` connection rejects the extra keyword.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import redis

# Redis answers in well under a millisecond when it is up; a few seconds means
# it is not, and a request or job should hear about it instead of hanging.
SOCKET_TIMEOUT_SECONDS = 5
CONNECT_TIMEOUT_SECONDS = 2


def effective_url(url: str) -> str:
    """``url`` with ``ssl_cert_reqs=none`` added for ``rediss://`` when not already given."""
    parts = urlsplit(url)
    if parts.scheme != "rediss" or "ssl_cert_reqs" in parse_qs(parts.query):
        return url
    separator = "&" if parts.query else "?"
    return f"{url}{separator}ssl_cert_reqs=none"


def connect(url: str, *, socket_timeout: float | None = SOCKET_TIMEOUT_SECONDS) -> redis.Redis:
    """A client for ``url``; connects lazily, on first command.

    RQ workers pass ``socket_timeout=None``: they block in BLPOP for minutes
    by design, and a read timeout would cut every wait short.
    """
    return redis.Redis.from_url(
        effective_url(url),
        socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
        socket_timeout=socket_timeout,
        health_check_interval=30,
    )
