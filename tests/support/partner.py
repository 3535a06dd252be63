"""Helpers for talking to the Partner API the way Heroku and kensa do."""

from __future__ import annotations

import base64
import hashlib
import time
import uuid

HEROKU_ID = "forgedrain"
HEROKU_PASSWORD = "forgedrain-dev-password"
SSO_SALT = "forgedrain-dev-sso-salt"
VENDOR_TYPE = "application/vnd.heroku-addons+json; version=3"


def basic(user: str = HEROKU_ID, password: str = HEROKU_PASSWORD) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def heroku_headers(**extra: str) -> dict[str, str]:
    return {**basic(), "Accept": VENDOR_TYPE, "Content-Type": "application/json", **extra}


def provision_body(**overrides) -> dict:
    """A provision request as Heroku sends it (v3)."""
    resource_id = str(uuid.uuid4())
    body = {
        "uuid": resource_id,
        "name": "acme-forgedrain-1",
        "plan": "basic",
        "region": "amazon-web-services::us-east-1",
        "callback_url": f"https://api.heroku.com/addons/{resource_id}",
        "options": {},
        "log_drain_token": f"d.{uuid.uuid4()}",
        "log_input_url": "https://token:t.5f1d6c0e@1.us.logplex.io/logs",
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


def sso_token(resource_id: str, timestamp: int | None = None, salt: str = SSO_SALT) -> tuple[str, str]:
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    return stamp, hashlib.sha1(f"{resource_id}:{salt}:{stamp}".encode()).hexdigest()


def user_scoped_token(resource_id: str, user_id: str, email: str, timestamp: int | None = None,
                      salt: str = SSO_SALT) -> tuple[str, str]:
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    raw = f"{resource_id}:{salt}:{stamp}:{user_id}:{email}"
    return stamp, hashlib.sha256(raw.encode()).hexdigest()
