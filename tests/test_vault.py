import pytest
from cryptography.fernet import Fernet

from broker.vault import Vault, VaultError


def key() -> str:
    return Fernet.generate_key().decode()


def test_it_round_trips_a_secret():
    vault = Vault([key()])
    token = vault.encrypt("atlassian-token-é✓")
    assert token != "atlassian-token-é✓"
    assert "atlassian" not in token
    assert vault.decrypt(token) == "atlassian-token-é✓"


def test_it_encrypts_the_same_secret_differently_each_time():
    vault = Vault([key()])
    assert vault.encrypt("same") != vault.encrypt("same")


def test_it_decrypts_with_any_configured_key_and_encrypts_with_the_first():
    old, new = key(), key()
    before = Vault([old]).encrypt("secret")
    during = Vault([new, old])
    assert during.decrypt(before) == "secret"
    assert not during.is_current(before)
    after_write = during.encrypt("fresh")
    assert during.is_current(after_write)
    assert Vault([new]).decrypt(after_write) == "fresh"


def test_it_rotates_a_secret_to_the_newest_key():
    old, new = key(), key()
    token = Vault([old]).encrypt("secret")
    rotated = Vault([new, old]).rotate(token)
    assert rotated != token
    # Once rotated, the old key can be dropped.
    assert Vault([new]).decrypt(rotated) == "secret"
    with pytest.raises(VaultError):
        Vault([old]).decrypt(rotated)


def test_it_refuses_a_wrong_key_with_a_clear_error_never_garbage():
    token = Vault([key()]).encrypt("secret")
    with pytest.raises(VaultError, match="not in FERNET_KEYS"):
        Vault([key()]).decrypt(token)
    with pytest.raises(VaultError, match="no key in FERNET_KEYS"):
        Vault([key()]).rotate(token)


def test_it_refuses_a_damaged_value():
    vault = Vault([key()])
    token = vault.encrypt("secret")
    damaged = token[:-6] + ("A" if token[-6] != "A" else "B") + token[-5:]
    with pytest.raises(VaultError, match="damaged"):
        vault.decrypt(damaged)
    with pytest.raises(VaultError, match="damaged"):
        vault.decrypt("not-a-token-é")


def test_it_needs_at_least_one_valid_key():
    with pytest.raises(VaultError, match="set FERNET_KEYS"):
        Vault([])
    with pytest.raises(VaultError, match="not a Fernet key"):
        Vault(["too-short"])


def test_errors_never_carry_the_secret():
    vault = Vault([key()])
    token = Vault([key()]).encrypt("hunter2-secret")
    with pytest.raises(VaultError) as info:
        vault.decrypt(token)
    assert "hunter2" not in str(info.value)
    assert token not in str(info.value)
