"""API keys: only the SHA-256 of a key is stored; the plaintext is shown once, at creation."""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from service.store._base import StoreBase, keys_table
from service.store.exceptions import ApiKeyNotFound, DuplicateKeyName
from service.store.records import ApiKeyRecord

__all__ = ["API_KEY_PREFIX", "KeyStore", "hash_api_key"]

logger = logging.getLogger(__name__)

API_KEY_PREFIX = "rk_"
_KEY_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_keys = keys_table


def hash_api_key(plaintext: str) -> str:
    """SHA-256 hex digest of an API key (what the database stores)."""
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


class KeyStore(StoreBase):
    """Create, authenticate, revoke and list API keys."""

    def create_api_key(self, name: str) -> tuple[str, ApiKeyRecord]:
        """Create an API key called ``name``; return the plaintext key (shown once, never
        stored: only its SHA-256 is) and its record.

        Raises:
            ValueError: ``name`` is not 1-64 letters, digits, ``.``, ``_``, ``@``, ``-``.
            DuplicateKeyName: a key of that name exists (revoked keys keep their names).
        """
        if not isinstance(name, str) or not _KEY_NAME_RE.match(name):
            raise ValueError(
                f"invalid API key name {name!r}: use 1-64 letters, digits, '.', '_', '@' or '-', "
                "starting with a letter or digit"
            )
        plaintext = API_KEY_PREFIX + secrets.token_urlsafe(32)
        now = self._clock()
        values = {
            "name": name,
            "key_hash": hash_api_key(plaintext),
            "prefix": plaintext[:8],
            "created_at": now,
            "revoked_at": None,
        }
        try:
            with self._write() as conn:
                exists = conn.execute(select(_keys.c.id).where(_keys.c.name == name)).first()
                if exists is not None:
                    raise DuplicateKeyName(name)
                key_id = conn.execute(
                    insert(_keys).values(values).returning(_keys.c.id)
                ).scalar_one()
        except IntegrityError as exc:  # a concurrent create of the same name
            raise DuplicateKeyName(name) from exc
        logger.info("created API key %r (id %d, prefix %s)", name, key_id, values["prefix"])
        return plaintext, ApiKeyRecord(
            id=key_id, name=name, prefix=plaintext[:8], created_at=now, revoked_at=None
        )

    def authenticate(self, plaintext: str) -> ApiKeyRecord | None:
        """The record of an active key, or ``None`` for an unknown, malformed or revoked key."""
        if (
            not isinstance(plaintext, str)
            or not plaintext.startswith(API_KEY_PREFIX)
            or len(plaintext) > 256
        ):
            return None
        digest = hash_api_key(plaintext)
        with self._read() as conn:
            row = conn.execute(select(_keys).where(_keys.c.key_hash == digest)).mappings().first()
        if row is None or not hmac.compare_digest(row["key_hash"], digest):
            return None
        if row["revoked_at"] is not None:
            return None
        return ApiKeyRecord.from_row(row)

    def revoke_api_key(self, name: str) -> ApiKeyRecord:
        """Revoke the key called ``name`` (idempotent); its jobs stay.

        Raises:
            ApiKeyNotFound: no key has that name.
        """
        with self._write() as conn:
            conn.execute(
                update(_keys)
                .where(_keys.c.name == name, _keys.c.revoked_at.is_(None))
                .values(revoked_at=self._clock())
            )
            row = conn.execute(select(_keys).where(_keys.c.name == name)).mappings().first()
        if row is None:
            raise ApiKeyNotFound(name)
        logger.info("revoked API key %r", name)
        return ApiKeyRecord.from_row(row)

    def list_api_keys(self) -> list[ApiKeyRecord]:
        """Every key, revoked ones included, oldest first."""
        with self._read() as conn:
            rows = conn.execute(select(_keys).order_by(_keys.c.id)).mappings().all()
        return [ApiKeyRecord.from_row(row) for row in rows]
