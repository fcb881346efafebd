"""KEYTURN_READ_DATABASE_URL: refused unless both databases are PostgreSQL; and how long
a signing key superseded by a rotation may still sign while a standby lags.

(The standby itself is exercised in tests/e2e/test_standby.py.)
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from keyturn.server.bootstrap import build_context
from keyturn.server.config import Settings, SettingsError, describe_invalid
from keyturn.server.leases.keyring import RETIRE_MARGIN, Keyring, SigningKey, may_still_sign

from conftest import TEST_SECRET

PG = "postgresql+asyncpg://postgres@127.0.0.1:5432/keyturn"
PG_STANDBY = "postgresql+asyncpg://postgres@127.0.0.1:5433/keyturn"


def settings(database_url: str, read_database_url: str) -> Settings:
    return Settings(
        database_url=database_url,
        read_database_url=read_database_url,
        secret_key=TEST_SECRET,
        auto_migrate=False,
    )


@pytest.mark.parametrize(
    ("primary_url", "read_database_url", "message"),
    [
        ("sqlite+aiosqlite:///{tmp}/k.db", PG_STANDBY, "KEYTURN_DATABASE_URL is sqlite"),
        (PG, "sqlite+aiosqlite:///{tmp}/k.db", "KEYTURN_READ_DATABASE_URL is sqlite"),
    ],
)
async def test_a_read_database_needs_postgresql_on_both_sides(
    tmp_path: Path, primary_url: str, read_database_url: str, message: str
) -> None:
    """Refused by the composition root before any connection is made."""
    wrong = settings(primary_url.format(tmp=tmp_path), read_database_url.format(tmp=tmp_path))
    with pytest.raises(SettingsError, match=message):
        await build_context(wrong)
    assert not (tmp_path / "k.db").exists()


@pytest.mark.parametrize(
    ("read_database_url", "message"),
    [
        ("mysql+aiomysql://root@127.0.0.1/keyturn", "mysql+aiomysql:// is not a database"),
        ("not a url", "not a database URL"),
    ],
)
def test_a_read_database_url_of_no_known_form_is_refused_in_the_settings(
    read_database_url: str, message: str
) -> None:
    with pytest.raises(ValidationError) as refused:
        settings(PG, read_database_url)
    assert describe_invalid(refused.value).startswith(f"KEYTURN_READ_DATABASE_URL: {message}"), (
        describe_invalid(refused.value)
    )


def test_no_read_database_by_default() -> None:
    assert not Settings().has_read_database
    assert settings(PG, PG_STANDBY).has_read_database


T0 = datetime(2026, 1, 1, tzinfo=UTC)
REFRESH = timedelta(seconds=10)


def key(kid: str, created: datetime) -> SigningKey:
    return SigningKey(kid, Ed25519PrivateKey.generate(), created)


OLD, NEW = key("key_old", T0), key("key_new", T0 + timedelta(hours=1))
KEYRING = Keyring([NEW, OLD])


def test_the_newest_key_may_always_sign() -> None:
    assert may_still_sign(KEYRING, NEW, T0 + timedelta(days=400), REFRESH)


def test_a_superseded_key_may_sign_until_the_margin_after_the_rotation_less_a_refresh() -> None:
    """The rotation retired it at rotation + longest lease + RETIRE_MARGIN: a lease it signs
    within RETIRE_MARGIN of the rotation (counting the refresh it is kept for) expires
    before that."""
    last_moment = NEW.create_time + RETIRE_MARGIN - REFRESH
    assert may_still_sign(KEYRING, OLD, last_moment, REFRESH)
    assert not may_still_sign(KEYRING, OLD, last_moment + timedelta(microseconds=1), REFRESH)


def test_the_first_rotation_after_a_key_is_the_one_that_counts() -> None:
    newest = key("key_newest", NEW.create_time + timedelta(minutes=3))
    keyring = Keyring([newest, NEW, OLD])
    moment = NEW.create_time + timedelta(minutes=6)
    assert not may_still_sign(keyring, OLD, moment, REFRESH)  # NEW's rotation retired it
    assert may_still_sign(keyring, NEW, moment, REFRESH)  # newest's came three minutes ago
