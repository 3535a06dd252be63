"""Tokens the broker issues: resource API tokens, ingest tokens and drain tokens.

``FORGEDRAIN_TOKEN`` is derived, not stored: ``HMAC-SHA256(SECRET_KEY,
"forgedrain-api-token:<resource id>:<generation>")``. The database keeps
only its SHA-256 digest for lookup. Deriving it lets a replayed provision
(Heroku delivers at least once) and the asynchronous provisioning job hand
Heroku the very token the first response carried, without the token ever
being written down; a rotation bumps the generation.

The OTLP *ingest token* (``X-Forgedrain-Ingest-Token``) is derived the same way
under its own label and generation, ``fdi_<resource id hex>_<mac>``: it only
lets its holder add logs to one resource (a telemetry drain's header, which
Heroku shows to the app's collaborators), so it is not the API token, and a
rotation of either leaves the other alone. It names its resource, so ingest
finds the row by primary key and nothing about the token is stored; a new
``SECRET_KEY`` ends it like every derived token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid

API_TOKEN_PREFIX = "fdr_"
INGEST_TOKEN_PREFIX = "fdi_"


def _mac(secret_key: str, label: str, resource_id: uuid.UUID | str, generation: int) -> str:
    message = f"{label}:{resource_id}:{generation}".encode()
    mac = hmac.new(secret_key.encode(), message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def api_token(secret_key: str, resource_id: uuid.UUID | str, generation: int) -> str:
    return API_TOKEN_PREFIX + _mac(secret_key, "forgedrain-api-token", resource_id, generation)


def ingest_token(secret_key: str, resource_id: uuid.UUID | str, generation: int) -> str:
    """The OTLP ingest token of a resource's ``generation`` (it names the resource: see above)."""
    rid = uuid.UUID(str(resource_id))
    return f"{INGEST_TOKEN_PREFIX}{rid.hex}_{_mac(secret_key, 'forgedrain-ingest-token', rid, generation)}"


def ingest_token_resource(token: str) -> uuid.UUID | None:
    """The resource an ingest token names (None when it is not of that form); whether the token is
    valid is for :func:`ingest_token_valid` to say."""
    if len(token) != 80 or not token.startswith(INGEST_TOKEN_PREFIX) or token[36] != "_":
        return None
    try:
        return uuid.UUID(hex=token[4:36])
    except ValueError:
        return None


def ingest_token_valid(secret_key: str, token: str, resource_id: uuid.UUID | str, generation: int) -> bool:
    """Whether ``token`` is the resource's ingest token of ``generation`` (constant time)."""
    return hmac.compare_digest(token.encode("utf-8", "surrogatepass"),
                               ingest_token(secret_key, resource_id, generation).encode())


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
