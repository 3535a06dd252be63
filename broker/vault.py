"""Encryption of secrets at rest (Forge API tokens, OAuth tokens, log_input_url, ...).

``FERNET_KEYS`` holds one or more keys; the first encrypts, all of them
decrypt, so a new key can be put in front, everything re-encrypted with
:meth:`Vault.rotate`, and the old key removed afterwards. Fernet authenticates
every token, so a wrong key or a damaged value fails loudly instead of
returning garbage.
"""

from __future__ import annotations

from typing import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet


class VaultError(Exception):
    """A secret could not be encrypted or decrypted. Never carries the secret."""


class Vault:
    def __init__(self, keys: Sequence[str]):
        if not keys:
            raise VaultError("no encryption key configured: set FERNET_KEYS")
        try:
            self._fernet = MultiFernet([Fernet(k) for k in keys])
        except (ValueError, TypeError):
            raise VaultError("FERNET_KEYS holds a value that is not a Fernet key") from None
        self._newest = Fernet(keys[0])

    def encrypt(self, plaintext: str) -> str:
        """Encrypt ``plaintext`` under the newest key; returns an ASCII token."""
        if not isinstance(plaintext, str):
            raise VaultError("only text secrets can be encrypted")
        return self._fernet.encrypt(plaintext.encode("utf-8")).decode("ascii")

    def decrypt(self, token: str) -> str:
        """Decrypt a token made by any configured key."""
        try:
            return self._fernet.decrypt(_as_bytes(token)).decode("utf-8")
        except InvalidToken:
            raise VaultError(
                "cannot decrypt secret: it was encrypted with a key that is not in "
                "FERNET_KEYS, or the stored value is damaged"
            ) from None

    def rotate(self, token: str) -> str:
        """Re-encrypt ``token`` under the newest key (same plaintext)."""
        try:
            return self._fernet.rotate(_as_bytes(token)).decode("ascii")
        except InvalidToken:
            raise VaultError(
                "cannot re-encrypt secret: no key in FERNET_KEYS opens it"
            ) from None

    def is_current(self, token: str) -> bool:
        """Whether ``token`` already opens with the newest key (nothing to rotate)."""
        try:
            self._newest.decrypt(_as_bytes(token))
            return True
        except InvalidToken:
            return False


def _as_bytes(token: str | bytes) -> bytes:
    if isinstance(token, bytes):
        return token
    if not isinstance(token, str):
        raise VaultError("encrypted secret must be text")
    try:
        return token.encode("ascii")
    except UnicodeEncodeError:
        raise VaultError("encrypted secret is damaged (not ASCII)") from None
