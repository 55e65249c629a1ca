"""Encryption of stored credentials (a customer's DAM bucket keys, v1a signing keys).

Fernet (AES-128-CBC + HMAC-SHA256) with the keys in ONBRAND_ENCRYPTION_KEYS, newest first: the
first encrypts, any decrypts, so keys can be rotated by prepending a new one (and re-encrypting at
leisure). Without the setting a key is derived from secret_key, which is only fit for development.
"""

from __future__ import annotations

import base64
import hashlib
import json
from functools import lru_cache
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from shared.config import Settings, get_settings


class UnreadableSecret(Exception):
    """Stored ciphertext no configured key opens (a key was removed, or the data was altered)."""


def _derived(secret_key: str) -> str:
    digest = hashlib.sha256(b"onbrand-credentials-v1:" + secret_key.encode()).digest()
    return base64.urlsafe_b64encode(digest).decode()


@lru_cache(maxsize=8)
def _fernet(keys: tuple[str, ...]) -> MultiFernet:
    return MultiFernet([Fernet(k.encode()) for k in keys])


def _keys(settings: Settings) -> tuple[str, ...]:
    return tuple(settings.encryption_keys) or (_derived(settings.secret_key),)


def encrypt(value: str, settings: Settings | None = None) -> str:
    return _fernet(_keys(settings or get_settings())).encrypt(value.encode()).decode()


def decrypt(token: str, settings: Settings | None = None) -> str:
    try:
        return _fernet(_keys(settings or get_settings())).decrypt(token.encode()).decode()
    except InvalidToken as exc:
        raise UnreadableSecret("stored credentials cannot be decrypted with the configured keys") from exc


def encrypt_json(value: dict[str, Any], settings: Settings | None = None) -> str:
    return encrypt(json.dumps(value, separators=(",", ":")), settings)


def decrypt_json(token: str, settings: Settings | None = None) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(decrypt(token, settings))  # an object: written by encrypt_json
    return value
