"""API keys: only hashes are stored; authentication and revocation."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
import sqlalchemy as sa

from service.store import (
    API_KEY_PREFIX,
    ApiKeyNotFound,
    DuplicateKeyName,
    Store,
    hash_api_key,
)


def _all_cells(store: Store) -> list[str]:
    cells: list[str] = []
    with store.engine.connect() as conn:
        for table in sa.inspect(conn).get_table_names():
            for row in conn.execute(sa.text(f'SELECT * FROM "{table}"')):
                cells.extend(str(value) for value in row)
    return cells


def test_plaintext_is_never_stored(store: Store, migrated_url: str) -> None:
    plaintext, record = store.create_api_key("alice")
    assert plaintext.startswith(API_KEY_PREFIX) and len(plaintext) > 40
    assert record.prefix == plaintext[:8]
    secret_part = plaintext[len(API_KEY_PREFIX) :]
    cells = _all_cells(store)
    assert hash_api_key(plaintext) in cells
    assert not any(secret_part in cell for cell in cells)
    if migrated_url.startswith("sqlite"):
        store.dispose()  # checkpoint the WAL into the file, then scan the raw bytes
        db_file = Path(migrated_url.removeprefix("sqlite:///"))
        with closing(sqlite3.connect(db_file)) as raw:
            raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        for path in db_file.parent.iterdir():
            assert secret_part.encode() not in path.read_bytes(), path


def test_authenticate(store: Store) -> None:
    key_a, alice = store.create_api_key("alice")
    key_b, bob = store.create_api_key("bob")
    assert key_a != key_b
    assert store.authenticate(key_a) == alice
    assert store.authenticate(key_b) == bob
    assert store.authenticate(key_a + "x") is None
    assert store.authenticate(key_a[:-1]) is None
    assert store.authenticate("") is None
    assert store.authenticate("Bearer " + key_a) is None
    assert store.authenticate(hash_api_key(key_a)) is None


def test_revocation(store: Store) -> None:
    key, _ = store.create_api_key("alice")
    revoked = store.revoke_api_key("alice")
    assert revoked.revoked and revoked.revoked_at is not None
    assert revoked.revoked_at.tzinfo is not None
    assert store.authenticate(key) is None
    again = store.revoke_api_key("alice")  # idempotent, keeps the first time
    assert again.revoked_at == revoked.revoked_at
    with pytest.raises(ApiKeyNotFound, match="no API key named 'nobody'"):
        store.revoke_api_key("nobody")
    # A revoked key keeps its name.
    with pytest.raises(DuplicateKeyName):
        store.create_api_key("alice")


def test_duplicate_and_invalid_names(store: Store) -> None:
    store.create_api_key("alice")
    with pytest.raises(DuplicateKeyName, match="'alice' exists already"):
        store.create_api_key("alice")
    for bad in ["", " alice", "a/b", "x" * 65, "-lead"]:
        with pytest.raises(ValueError, match="invalid API key name"):
            store.create_api_key(bad)


def test_list_api_keys(store: Store) -> None:
    store.create_api_key("alice")
    store.create_api_key("bob")
    store.revoke_api_key("bob")
    keys = store.list_api_keys()
    assert [(k.name, k.revoked) for k in keys] == [("alice", False), ("bob", True)]
    assert all(k.created_at.tzinfo is not None for k in keys)
    assert "key_hash" not in keys[0].to_public()
