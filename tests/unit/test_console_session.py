"""The console's session cookie and CSRF rules, alone: what opens, what ends a session,
what a POST must show (the browser tests, tests/api/test_console_browser.py, drive them
through a real server)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from keyturn.server.api.console.csrf import same_origin
from keyturn.server.api.console.roles import Permission, allows, permissions_of
from keyturn.server.api.console.session import (
    Session,
    SessionCodec,
    SessionLimits,
    anonymous,
    ended,
    set_cookie,
    signed_in,
)
from keyturn.server.sealing import Sealer

from conftest import TEST_SECRET

NOW = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
LIMITS = SessionLimits(idle=timedelta(minutes=30), absolute=timedelta(hours=12))


def test_a_sealed_session_opens_as_it_was_and_nothing_else_opens() -> None:
    codec = SessionCodec(Sealer(TEST_SECRET))
    session = signed_in("kt_secret", NOW)
    assert codec.open(codec.seal(session)) == session
    sealed = codec.seal(session)
    assert codec.open(sealed[:-4] + "AAAA") is None, "altered"
    assert codec.open("") is None
    assert codec.open("not-a-cookie") is None
    other = SessionCodec(Sealer(TEST_SECRET + "-other"))
    assert other.open(sealed) is None, "another server's secret"
    at_rest = Sealer(TEST_SECRET).seal(b'{"n": "x", "t": "kt_secret"}').decode()
    assert codec.open(at_rest) is None, "what is sealed at rest never opens as a session"


def test_a_session_ends_when_idle_or_past_its_absolute_limit() -> None:
    session = signed_in("kt_secret", NOW)
    assert ended(session, NOW + timedelta(minutes=29), LIMITS) == ""
    assert "30 minutes without use" in ended(session, NOW + timedelta(minutes=30), LIMITS)
    busy = session
    for minutes in range(20, 12 * 60, 20):  # used every 20 minutes
        busy = replace(busy, seen=NOW + timedelta(minutes=minutes))
        assert ended(busy, NOW + timedelta(minutes=minutes + 1), LIMITS) == ""
    assert "12 hours after sign-in" in ended(busy, NOW + timedelta(hours=12), LIMITS)
    assert ended(Session("n", "kt_secret"), NOW, LIMITS), "no times: not valid"


def test_the_csrf_token_belongs_to_its_session() -> None:
    codec = SessionCodec(Sealer(TEST_SECRET))
    one, two = anonymous(), signed_in("kt_secret", NOW)
    assert codec.csrf_valid(one, codec.csrf_token(one))
    assert not codec.csrf_valid(two, codec.csrf_token(one))
    assert not codec.csrf_valid(one, "")
    assert signed_in("kt_secret", NOW).nonce != two.nonce, "each sign-in draws a new nonce"


@pytest.mark.parametrize(
    ("headers", "same"),
    [
        ({"host": "console.example:8443", "origin": "https://console.example:8443"}, True),
        ({"host": "127.0.0.1:5", "origin": "http://127.0.0.1:5"}, True),
        ({"host": "127.0.0.1:5", "referer": "http://127.0.0.1:5/console/x"}, True),
        ({"host": "127.0.0.1:5", "origin": "http://127.0.0.1:6"}, False),
        ({"host": "127.0.0.1:5", "origin": "http://evil.example"}, False),
        ({"host": "127.0.0.1:5", "origin": "null"}, False),
        ({"host": "127.0.0.1:5", "referer": "http://127.0.0.1:5.evil.example/"}, False),
        ({"host": "127.0.0.1:5"}, False),  # neither: refused
        ({"origin": "http://127.0.0.1:5"}, False),
        ({"host": "127.0.0.1:5", "origin": "javascript://127.0.0.1:5"}, False),
    ],
)
def test_a_post_must_name_this_host_as_its_origin(headers: dict[str, str], same: bool) -> None:
    assert same_origin(headers) is same


def test_the_cookie_is_for_the_console_only_and_secure_over_tls() -> None:
    plain = set_cookie("v", secure=False).decode()
    assert plain == "keyturn_console=v; Path=/console/; HttpOnly; SameSite=Strict"
    assert set_cookie("v", secure=True).decode().endswith("; Secure")


def test_roles_follow_the_scopes() -> None:
    assert permissions_of({"read"}) == {Permission.VIEW_ENTITLEMENTS, Permission.VIEW_TOKENS}
    assert allows({"fulfill"}, Permission.ACT_ON_ENTITLEMENTS)
    assert not allows({"read", "catalog"}, Permission.ACT_ON_ENTITLEMENTS)
    assert permissions_of({"catalog"}) == {Permission.VIEW_CATALOG}
