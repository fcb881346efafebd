"""The console's edges over plain HTTP (httpx, no browser), through a real server: an
expired token cannot sign in, a session ends at its absolute limit however busy, a sign-in
needs the form's own cookie and CSRF token, a cookie this server did not seal is nobody's,
and oversized forms and unknown pages are refused; the audit page pages with its filters and
refuses a bad one with its reason. The browser walks are in
test_console_browser.py.
"""

from __future__ import annotations

import html
import re
from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest

from keyturn.server.api.console import routes
from keyturn.server.api.console.session import COOKIE
from keyturn.server.api.console.web import MAX_FORM_BYTES
from keyturn.server.api.server import KeyturnServer
from keyturn.server.app.context import AppContext
from keyturn.server.app.tokens import create_token
from keyturn.server.clock import SystemClock

from conftest import HTTP

CSRF = re.compile(r'name="csrf_token" value="([0-9a-f]{64})"')
AUDITED = re.compile(r'data-audit="([0-9]+)"')
NEXT = re.compile(r'href="/console/audit(\?[^"]*)" id="older-audit"')


@pytest.fixture
def transport() -> str:
    return HTTP


@pytest.fixture
async def console(server: KeyturnServer) -> AsyncIterator[httpx.AsyncClient]:
    base = f"http://{server.http_address}"
    async with httpx.AsyncClient(base_url=base, headers={"origin": base}, timeout=30) as client:
        yield client


async def sign_in(console: httpx.AsyncClient, secret: str) -> httpx.Response:
    form = await console.get("/console/")
    found = CSRF.search(form.text)
    assert found, form.text
    return await console.post("/console/sign-in", data={"csrf_token": found[1], "token": secret})


def clock_of(app: AppContext) -> SystemClock:
    assert isinstance(app.clock, SystemClock)
    return app.clock


async def test_an_expired_token_cannot_sign_in_and_ends_its_session(
    app: AppContext, console: httpx.AsyncClient
) -> None:
    token, secret = await create_token(app, {"read"}, "short", lifetime=timedelta(hours=1))
    signed = await sign_in(console, secret)
    assert (signed.status_code, signed.headers["location"]) == (303, "/console/")
    for _ in range(2):  # used every 20 minutes: not idle
        clock_of(app).offset += timedelta(minutes=20)
        assert (await console.get("/console/tokens")).status_code == 200
    clock_of(app).offset += timedelta(minutes=20)  # the token's end
    ended = await console.get("/console/tokens")
    assert (ended.status_code, ended.headers["location"]) == (303, "/console/")
    page = await console.get("/console/")
    assert "That API token has expired" in page.text
    assert token.token_id in page.text
    refused = await sign_in(console, secret)
    assert refused.status_code == 401
    assert "That API token has expired" in refused.text


async def test_a_busy_session_still_ends_at_its_absolute_limit(
    app: AppContext, console: httpx.AsyncClient
) -> None:
    _, secret = await create_token(app, {"read"}, "desk", lifetime=None)
    await sign_in(console, secret)
    for _ in range(12 * 3 - 1):  # a request every 20 minutes for 11 h 40 min
        clock_of(app).offset += timedelta(minutes=20)
        assert (await console.get("/console/tokens")).status_code == 200
    clock_of(app).offset += timedelta(minutes=20)
    assert (await console.get("/console/tokens")).status_code == 303
    assert "12 hours after sign-in" in (await console.get("/console/")).text


async def test_a_sign_in_needs_the_forms_cookie_and_token(
    app: AppContext, console: httpx.AsyncClient, server: KeyturnServer
) -> None:
    _, secret = await create_token(app, {"read"}, "desk", lifetime=None)
    form = await console.get("/console/")
    found = CSRF.search(form.text)
    assert found
    base = f"http://{server.http_address}"
    async with httpx.AsyncClient(base_url=base, headers={"origin": base}) as stranger:
        # The form's token without its cookie: another browser's.
        refused = await stranger.post(
            "/console/sign-in", data={"csrf_token": found[1], "token": secret}
        )
        assert refused.status_code == 403
        assert (await stranger.get("/console/tokens")).status_code == 303, "not signed in"
    forged = {COOKIE: "gAAAAABnot-sealed-by-this-server"}
    async with httpx.AsyncClient(base_url=base, cookies=forged) as stranger:
        page = await stranger.get("/console/tokens")
        assert page.status_code == 303, "a cookie this server did not seal is nobody's"
    wrong = await console.post("/console/sign-in", data={"csrf_token": "0" * 64, "token": secret})
    assert wrong.status_code == 403
    assert (await console.get("/console/tokens")).status_code == 303, "not signed in"
    assert (await sign_in(console, secret)).status_code == 303
    assert (await console.get("/console/tokens")).status_code == 200


async def test_oversized_forms_and_unknown_pages_are_refused(
    app: AppContext, console: httpx.AsyncClient
) -> None:
    _, secret = await create_token(app, {"fulfill"}, "desk", lifetime=None)
    await sign_in(console, secret)
    big = await console.post("/console/search", data={"q": "x" * (MAX_FORM_BYTES + 1)})
    assert big.status_code == 413
    assert (await console.get("/console/nowhere")).status_code == 404
    assert (await console.get("/console/entitlements/ent_nope")).status_code == 404
    page = await console.get("/console/")
    assert page.headers["content-security-policy"].startswith("default-src 'none'")
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["cache-control"] == "no-store"
    found = CSRF.search(page.text)
    assert found
    bad_key = await console.post(
        "/console/search", data={"csrf_token": found[1], "by": "license_key", "q": "nope"}
    )
    assert bad_key.status_code == 400
    assert "is not a license key" in bad_key.text
    css = await console.get("/console/static/console.css")
    assert (css.status_code, css.headers["content-type"]) == (200, "text/css; charset=utf-8")


async def test_the_audit_page_pages_with_its_filters_and_refuses_bad_ones(
    app: AppContext, console: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(routes, "AUDIT_PAGE_SIZE", 2)
    created = [(await create_token(app, {"read"}, f"desk {n}", lifetime=None))[0] for n in range(3)]
    _, secret = await create_token(app, {"read"}, "desk", lifetime=None)
    await sign_in(console, secret)
    seen: list[str] = []
    url = "/console/audit?action=token.create&resource=tokens/"
    while url:
        page = await console.get(url)
        assert page.status_code == 200, page.text
        seen += AUDITED.findall(page.text)
        later = NEXT.search(page.text)
        url = "/console/audit" + html.unescape(later[1]) if later else ""
        assert not later or "action=token.create" in url, "the filters go along"
    assert len(seen) == 4, "three pages of two at most, newest first, each record once"
    assert seen == sorted(seen, key=int, reverse=True)
    assert len(created) == 3
    refusals = {
        "since=yesterday": "since must be a date and time",
        "since=2026-02-01T00:00&until=2026-01-01T00:00": "until must be after",
        "page=not-a-token": "page token",
        "actor=" + "x" * 200: "actor",
    }
    for query, said in refusals.items():
        refused = await console.get(f"/console/audit?{query}")
        assert refused.status_code == 400, query
        assert said in html.unescape(refused.text), (query, refused.text)
        assert 'id="audit-filter"' in refused.text, "the form again"
