"""Partners: who may call the Partner API, and with which passwords.

Heroku is the partner configured in the environment (``ADDON_ID`` and one or
more ``ADDON_PASSWORDS``). Integrators are stored in the database with the
SHA-256 digests of broker-generated passwords. Every comparison is constant
time, and every configured password is compared, so timing tells nothing
about which password, or how much of one, matched.
"""

from __future__ import annotations

import hmac
import re
import secrets
from dataclasses import dataclass

import psycopg

from broker import tokens
from broker.config import Settings


# The partners table's CHECK: lowercase letters, digits and dashes.
PARTNER_ID = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}\Z")


@dataclass(frozen=True)
class Partner:
    id: str
    # Heroku sends its own drain tokens; integrators may leave it to the broker.
    is_heroku: bool


class PartnerError(Exception):
    """A partner change that cannot be made (message is safe to print)."""


def _matches(given: bytes, candidates: list[bytes]) -> bool:
    found = False
    for candidate in candidates:
        found |= hmac.compare_digest(given, candidate)
    return found


def authenticate(conn_factory, settings: Settings, partner_id: str, password: str) -> Partner | None:
    """The partner these Basic-auth credentials belong to, or None.

    ``conn_factory`` is called only for integrator ids, so Heroku's calls do not
    need a database connection to be authenticated.
    """
    given = tokens.digest(password)
    if hmac.compare_digest(partner_id.encode("utf-8", "surrogatepass"), settings.addon_id.encode()):
        configured = [tokens.digest(p) for p in settings.addon_passwords]
        return Partner(settings.addon_id, is_heroku=True) if _matches(given, configured) else None
    stored: list[bytes] = []
    if PARTNER_ID.match(partner_id):
        with conn_factory() as conn:
            rows = conn.execute(
                "SELECT digest FROM partner_passwords WHERE partner_id = %s", (partner_id,)
            ).fetchall()
        stored = [bytes(r["digest"]) for r in rows]
    if not stored:
        # Compare anyway so an unknown id costs what a known one does.
        _matches(given, [tokens.digest("")])
        return None
    return Partner(partner_id, is_heroku=False) if _matches(given, stored) else None


def new_password() -> str:
    return secrets.token_urlsafe(32)


def create(conn: psycopg.Connection, settings: Settings, partner_id: str, name: str) -> str:
    """Create an integrator partner; return its first password (shown once)."""
    if partner_id == settings.addon_id:
        raise PartnerError(f"{partner_id!r} is the Heroku partner configured by ADDON_ID")
    password = new_password()
    try:
        with conn.transaction():
            conn.execute("INSERT INTO partners (id, name) VALUES (%s, %s)", (partner_id, name))
            conn.execute(
                "INSERT INTO partner_passwords (partner_id, digest) VALUES (%s, %s)",
                (partner_id, tokens.digest(password)),
            )
    except psycopg.errors.UniqueViolation:
        raise PartnerError(f"partner {partner_id!r} already exists") from None
    except psycopg.errors.CheckViolation:
        raise PartnerError(
            "partner ids are 2 to 63 lowercase letters, digits and dashes, starting with a letter or digit"
        ) from None
    return password


def add_password(conn: psycopg.Connection, partner_id: str) -> str:
    """Add a password for a rotation; the old ones keep working until removed."""
    password = new_password()
    with conn.transaction():
        if not conn.execute("SELECT 1 FROM partners WHERE id = %s", (partner_id,)).fetchone():
            raise PartnerError(f"no partner {partner_id!r}")
        conn.execute(
            "INSERT INTO partner_passwords (partner_id, digest) VALUES (%s, %s)",
            (partner_id, tokens.digest(password)),
        )
    return password


def remove_password(conn: psycopg.Connection, partner_id: str, password: str) -> None:
    with conn.transaction():
        removed = conn.execute(
            "DELETE FROM partner_passwords WHERE partner_id = %s AND digest = %s",
            (partner_id, tokens.digest(password)),
        ).rowcount
    if not removed:
        raise PartnerError("no such password for that partner")


def list_all(conn: psycopg.Connection) -> list[dict]:
    return conn.execute(
        """
        SELECT p.id, p.name, p.created_at, count(pp.id) AS passwords
        FROM partners p LEFT JOIN partner_passwords pp ON pp.partner_id = p.id
        GROUP BY p.id ORDER BY p.id
        """
    ).fetchall()
