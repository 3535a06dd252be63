"""Partners: who may call the Partner API, and with which passwords.

Heroku is the partner configured in the environment (``ADDON_ID`` and one or
more ``ADDON_PASSWORDS``). Integrators are stored in the database with the
SHA-256 digests of broker-generated passwords. Every comparison is constant
time, and every configured password is compared, so timing tells nothing
about which password, or how much of one, matched.

SSO is scoped the same way: Heroku signs its users' logins with ``SSO_SALT``
(the manifest's ``sso_salt``); each integrator gets its own broker-generated
salt, stored encrypted (it must be read back in clear to recompute a token)
and shown once. :func:`sso_salts` names the salts that may open a resource of
a given partner, so one partner's salt never opens another's resources.
"""

from __future__ import annotations

import hmac
import re
import secrets
from dataclasses import dataclass

import psycopg

from broker import tokens
from broker.config import Settings
from broker.vault import Vault


# The partners table's CHECK: lowercase letters, digits and dashes.
PARTNER_ID = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}\Z")
# After a rotation the previous SSO salt keeps working this long by default: time for the
# partner to deploy the new one; a login link lives only minutes (web/sso.py), so no more.
SSO_SALT_OVERLAP_SECONDS = 3600
MAX_SSO_SALT_OVERLAP_SECONDS = 24 * 3600


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
        SELECT p.id, p.name, p.created_at, count(pp.id) AS passwords,
               p.sso_salt_enc IS NOT NULL AS has_sso_salt,
               CASE WHEN p.sso_salt_previous_until > now() THEN p.sso_salt_previous_until END
                   AS sso_salt_previous_until
        FROM partners p LEFT JOIN partner_passwords pp ON pp.partner_id = p.id
        GROUP BY p.id ORDER BY p.id
        """
    ).fetchall()


# --- SSO salts ---------------------------------------------------------------------------

def new_sso_salt() -> str:
    return secrets.token_urlsafe(32)


def rotate_sso_salt(conn: psycopg.Connection, vault: Vault, partner_id: str,
                    overlap_seconds: int = SSO_SALT_OVERLAP_SECONDS) -> str:
    """Give an integrator a new SSO salt; return it (shown once).

    The salt it replaces keeps opening the partner's resources for
    ``overlap_seconds`` (0: not at all, for a salt that leaked). The first salt
    of a partner is issued the same way, with nothing to overlap.
    """
    if not 0 <= overlap_seconds <= MAX_SSO_SALT_OVERLAP_SECONDS:
        raise PartnerError(f"the overlap is 0 to {MAX_SSO_SALT_OVERLAP_SECONDS // 60} minutes")
    salt = new_sso_salt()
    with conn.transaction():
        # Every right-hand side reads the row as it was: the old current salt becomes the previous one.
        updated = conn.execute(
            """
            UPDATE partners SET
                sso_salt_previous_enc = CASE WHEN %(overlap)s > 0 THEN sso_salt_enc END,
                sso_salt_previous_until = CASE WHEN %(overlap)s > 0 AND sso_salt_enc IS NOT NULL
                                               THEN now() + make_interval(secs => %(overlap)s) END,
                sso_salt_enc = %(salt)s, sso_salt_rotated_at = now()
            WHERE id = %(id)s
            """,
            {"overlap": overlap_seconds, "salt": vault.encrypt(salt), "id": partner_id},
        ).rowcount
    if not updated:
        raise PartnerError(f"no partner {partner_id!r}")
    return salt


def end_sso_salt_overlap(conn: psycopg.Connection, partner_id: str) -> bool:
    """Stop the previous SSO salt opening anything now; whether one was still valid."""
    with conn.transaction():
        row = conn.execute(
            """
            UPDATE partners p SET sso_salt_previous_enc = NULL, sso_salt_previous_until = NULL
            FROM partners old WHERE p.id = %s AND old.id = p.id
            RETURNING old.sso_salt_previous_until > now() AS was_valid
            """,
            (partner_id,),
        ).fetchone()
    if row is None:
        raise PartnerError(f"no partner {partner_id!r}")
    return bool(row["was_valid"])


def sso_salts(conn: psycopg.Connection, vault: Vault, settings: Settings, partner_id: str) -> list[str]:
    """The salts that may sign an SSO login to a resource of ``partner_id`` (none: nothing opens it).

    Heroku's resources open only with ``SSO_SALT``; an integrator's only with its
    own current salt, or its previous one during the overlap after a rotation.
    """
    if partner_id == settings.addon_id:
        return [settings.sso_salt]
    row = conn.execute(
        """
        SELECT sso_salt_enc,
               CASE WHEN sso_salt_previous_until > now() THEN sso_salt_previous_enc END AS previous_enc
        FROM partners WHERE id = %s
        """,
        (partner_id,),
    ).fetchone()
    if row is None:
        return []
    return [vault.decrypt(token) for token in (row["sso_salt_enc"], row["previous_enc"]) if token is not None]
