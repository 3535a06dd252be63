"""Tokens the broker issues: resource API tokens and drain tokens.

``FORGEDRAIN_TOKEN`` is derived, not stored: ``HMAC-SHA256(SECRET_KEY,
"forgedrain-api-token:<resource id>:<generation>")``. The database keeps
only its SHA-256 digest for lookup. Deriving it lets a replayed provision
(Heroku delivers at least once) and the asynchronous provisioning job hand
Heroku the very token the first response carried, without the token ever
being written down; a rotation bumps the generation.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid

API_TOKEN_PREFIX = "fdr_"


def api_token(secret_key: str, resource_id: uuid.UUID | str, generation: int) -> str:
    message = f"forgedrain-api-token:{resource_id}:{generation}".encode()
    mac = hmac.new(secret_key.encode(), message, hashlib.sha256).digest()
    return API_TOKEN_PREFIX + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def derived(secret_key: str, token: str, resource_id: uuid.UUID | str, generation: int) -> bool:
    """Whether ``token`` is the one ``secret_key`` derives for this resource and generation
    (compared in constant time)."""
    return hmac.compare_digest(token.encode("utf-8", "surrogatepass"),
                               api_token(secret_key, resource_id, generation).encode())


def digest(token: str) -> bytes:
    """The stored form of a bearer token or password: SHA-256 of its UTF-8 bytes."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def new_drain_token() -> str:
    """A broker-issued drain token in Heroku's form, ``d.<uuid>``."""
    return f"d.{uuid.uuid4()}"


def mask(token: str | None) -> str | None:
    """Enough of a token to recognise it, not enough to use it."""
    if not token:
        return None
    if len(token) <= 12:
        return token[:2] + "…"
    return f"{token[:6]}…{token[-4:]}"
