"""Stored-credential encryption: round trip, key rotation (newest first), tampering and bad keys."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet
from pydantic import ValidationError

from shared import crypto
from shared.config import Settings


def settings(*keys: str, secret_key: str = "s") -> Settings:
    return Settings(_env_file=None, encryption_keys=",".join(keys), secret_key=secret_key)  # type: ignore[call-arg]


def test_round_trip_and_rotation_by_prepending_a_key() -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    token = crypto.encrypt_json({"secret_access_key": "wJalrXUtnFEMI"}, settings(old))
    assert "wJalrXUtnFEMI" not in token
    rotated = settings(new, old)  # the new key encrypts, the old one still decrypts
    assert crypto.decrypt_json(token, rotated) == {"secret_access_key": "wJalrXUtnFEMI"}
    assert crypto.decrypt(crypto.encrypt("x", rotated), settings(new)) == "x"
    with pytest.raises(crypto.UnreadableSecret):
        crypto.decrypt(token, settings(new))  # the old key removed: unreadable, said clearly


def test_tampered_ciphertext_and_dev_key_derivation() -> None:
    token = crypto.encrypt("payload", settings(secret_key="one"))
    assert crypto.decrypt(token, settings(secret_key="one")) == "payload"
    with pytest.raises(crypto.UnreadableSecret):
        crypto.decrypt(token, settings(secret_key="two"))  # another secret_key derives another key
    with pytest.raises(crypto.UnreadableSecret):
        crypto.decrypt(token[:-4] + "AAAA", settings(secret_key="one"))


def test_a_malformed_key_fails_at_start_up() -> None:
    with pytest.raises(ValidationError, match="Fernet key"):
        settings("not-a-key")
