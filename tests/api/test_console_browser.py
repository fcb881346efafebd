"""The operations console in a real browser (headless chromium, selenium), against a real
server on loopback, on every backend.

Staff sign in with an API token, find an entitlement by its license key, open it and see
its devices and timeline; a `fulfill` token suspends and reinstates it, removes a named
user and changes one's email, and finds its own actions on the audit page; a `read` token
sees no action buttons and its forged POSTs are refused; a POST without the CSRF token is
refused and changes nothing; sign-out and
revocation end the session; so does an idle session. Each test leaves its screenshots in
test-artifacts/console/<test>/ (KEYTURN_TEST_ARTIFACTS), the path printed.

Selenium is synchronous and the server runs on the test's event loop, so each browser
step runs in a thread (`asyncio.to_thread`) while the loop serves it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any, TypeVar

import httpx
import pytest
from selenium.webdriver.remote.webdriver import WebDriver

from keyturn.fulfillment.v1 import catalog_pb2 as cat
from keyturn.fulfillment.v1 import catalog_pb2_grpc, fulfillment_pb2_grpc
from keyturn.fulfillment.v1 import fulfillment_pb2 as ful
from keyturn.licensing.v1 import licensing_pb2 as lic
from keyturn.licensing.v1 import licensing_pb2_grpc
from keyturn.server.api.console.session import COOKIE
from keyturn.server.api.server import KeyturnServer
from keyturn.server.app.audit import token_actor
from keyturn.server.app.audit_trail import list_audit_events
from keyturn.server.app.context import AppContext
from keyturn.server.app.devices import list_activations
from keyturn.server.app.entitlement_details import entitlement_details
from keyturn.server.app.fulfillment import get_order
from keyturn.server.app.tokens import create_token, revoke_token
from keyturn.server.clock import SystemClock
from keyturn.server.store.audit_repository import AuditFilter

from conftest import HTTP, Tokens
from support.browser import Browser, chromium
from support.catalog import put_catalog
from support.rpc import PRODUCT_ID, create_sku, order

T = TypeVar("T")
SOURCE, ORDER_ID = "test", "order-console-1"
TEAM_ORDER_ID = "order-console-team"
TEAM = ("ada@initech.example", "bob@initech.example", "cy@initech.example")
EVIL = "http://evil.example"


@pytest.fixture
def transport() -> str:
    return HTTP  # the console lives on the HTTP port


@pytest.fixture(scope="session")
def driver() -> Iterator[WebDriver]:
    """One chromium per test process (each xdist worker has its own); cookies are cleared
    for every test."""
    with chromium() as opened:
        yield opened


@pytest.fixture
def browser(
    driver: WebDriver, server: KeyturnServer, request: pytest.FixtureRequest
) -> Iterator[Browser]:
    opened = Browser(driver, f"http://{server.http_address}", request.node.name)
    yield opened
    print(f"screenshots: {opened.folder}")


async def step(browser: Browser, action: Callable[..., T], *args: Any) -> T:
    """A browser step, in a thread while this loop serves the server; when it fails, the
    page it failed on is kept (screenshot and HTML) beside the test's screenshots."""
    try:
        return await asyncio.to_thread(action, *args)
    except BaseException:
        await asyncio.to_thread(browser.keep_failure)
        raise


class Sale:
    """An entitlement sold by an order with one activated device."""

    def __init__(self, entitlement: ful.Entitlement, activation_id: str) -> None:
        self.entitlement = entitlement
        self.license_key = entitlement.license_key
        self.entitlement_id = entitlement.entitlement_id
        self.activation_id = activation_id


@pytest.fixture
async def sale(
    catalog_stub: catalog_pb2_grpc.CatalogServiceStub,
    fulfillment_stub: fulfillment_pb2_grpc.FulfillmentServiceStub,
    licensing_stub: licensing_pb2_grpc.LicensingServiceStub,
    tokens: Tokens,
) -> Sale:
    await put_catalog(catalog_stub, tokens("catalog"), create_sku("SEATS-3", seats=3))
    request = order(ORDER_ID, "SEATS-3")
    request.ship_to_email = "it@initech.example"
    sold = await fulfillment_stub.FulfillOrder(request, metadata=tokens("fulfill"))
    entitlement = sold.entitlements[0]
    activated = await licensing_stub.ActivateSeat(
        lic.ActivateSeatRequest(
            license_key=entitlement.license_key,
            product_id=entitlement.product_id,
            fingerprint="fp-console-laptop-1",
            label="Ada's laptop",
        )
    )
    return Sale(entitlement, activated.activation_id)


@pytest.fixture
async def team(
    sale: Sale,
    catalog_stub: catalog_pb2_grpc.CatalogServiceStub,
    fulfillment_stub: fulfillment_pb2_grpc.FulfillmentServiceStub,
    tokens: Tokens,
) -> ful.Entitlement:
    """A second entitlement of the same customer, with three named users (and a SKU that
    cancels an entitlement, for the refusals)."""
    cancel = cat.Sku(
        sku_id="CANCEL",
        product_id=PRODUCT_ID,
        display_name="cancel",
        operations=[cat.Operation(cancel=cat.CancelOperation())],
    )
    await catalog_stub.PutSku(cat.PutSkuRequest(sku=cancel), metadata=tokens("catalog"))
    request = order(TEAM_ORDER_ID, "SEATS-3")
    request.lines[0].named_user_emails.extend(TEAM)
    sold = await fulfillment_stub.FulfillOrder(request, metadata=tokens("fulfill"))
    return sold.entitlements[0]


async def audit_rows(app: AppContext, entitlement_id: str) -> list[tuple[str, str]]:
    audited, _ = await list_audit_events(app, where=AuditFilter(entitlement_id=entitlement_id))
    return [(a.actor, a.action) for a in audited]


async def user_emails(app: AppContext, entitlement_id: str) -> list[str]:
    details = await entitlement_details(app, entitlement_id)
    return sorted(u.email for u in details.view.named_users)


def form_token(page: str) -> str:
    return page.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]


def action_paths(entitlement_id: str, user_id: str) -> list[str]:
    """The POST routes this console added beside Resend and Deactivate."""
    base = f"/console/entitlements/{entitlement_id}"
    user = f"{base}/named-users/{user_id}"
    return [
        f"{base}/suspend",
        f"{base}/reinstate",
        f"{user}/remove",
        f"{user}/email",
        f"{user}/resend",
    ]


async def emails_of(app: AppContext) -> int:
    return len((await get_order(app, SOURCE, ORDER_ID)).messages)


async def device_states(app: AppContext, sale: Sale) -> list[str]:
    listed, _ = await list_activations(app, entitlement_id=sale.entitlement_id)
    return [view.state.value for view in listed]


def find_by_key_and_open(browser: Browser, sale: Sale) -> None:
    browser.search("license_key", sale.license_key)
    browser.shot("search-results")
    links = browser.all("#results a")
    assert [link.text for link in links] == [sale.entitlement_id]
    assert sale.license_key not in browser.driver.page_source, "the key is never shown"
    browser.click(links[0])
    browser.shot("entitlement")


def hour_peaks(browser: Browser) -> list[str]:
    """The hour chart's bars as their titles say (`HH:00: peak N, average A, limit L`),
    the hour under way last."""
    return [str(t.get_attribute("textContent")) for t in browser.all("#usage-chart svg rect title")]


async def test_fulfill_staff_find_an_entitlement_by_key_and_see_devices_and_timeline(
    app: AppContext,
    browser: Browser,
    sale: Sale,
    licensing_stub: licensing_pb2_grpc.LicensingServiceStub,
) -> None:
    token, secret = await create_token(app, {"fulfill"}, "support desk", lifetime=None)
    emails_before = await emails_of(app)

    def walk() -> None:
        browser.open("/console/")
        browser.shot("sign-in")
        assert browser.find("#token").get_attribute("type") == "password"
        browser.sign_in(secret)
        assert token.token_id in browser.text("#who")
        assert "Signed in" in browser.text("#notice")
        browser.shot("signed-in")
        find_by_key_and_open(browser, sale)
        assert browser.text("#entitlement-id") == sale.entitlement_id
        assert browser.text("#status") == "active"
        assert browser.text("#seats") == "1 / 3"
        devices = browser.all("#devices tr.device")
        assert len(devices) == 1
        assert devices[0].get_attribute("data-activation") == sale.activation_id
        assert "fp-console-laptop-1" in devices[0].text
        assert "Ada's laptop" in devices[0].text
        kinds = [li.get_attribute("data-type") for li in browser.all("#timeline li.event")]
        assert kinds == ["created", "seat_activated"]
        actors = [e.text for e in browser.all("#timeline li.event .actor")]
        assert actors[0].startswith("by token:tok_"), actors  # the order's connector
        assert actors[1] == f"by device:{sale.activation_id}"
        assert "it@initech.example" in browser.text("#orders")
        chart = browser.find("#usage-chart svg")
        assert "Seats in use by day" in chart.get_attribute("aria-label")
        assert chart.size["height"] > 100, "drawn, not blocked by the page's policy"
        browser.click(browser.find("#usage-by-hour"))
        assert "Seats in use by hour" in browser.find("#usage-chart svg").get_attribute(
            "aria-label"
        )
        browser.shot("usage-by-hour")
        assert "peak 1," in hour_peaks(browser)[-1], "the sale's device, this hour"

    def deactivate() -> None:
        browser.driver.refresh()
        assert "peak 2," in hour_peaks(browser)[-1], "the chart counts the second device"
        assert browser.text("#seats") == "2 / 3"
        browser.shot("usage-updated")
        browser.submit("#resend")
        assert "Queued 1 email again." in browser.text("#notice")
        browser.shot("resent")
        row = f"#devices tr[data-activation='{sale.activation_id}']"
        browser.find(row + " input[name=reason]").send_keys("laptop stolen")
        browser.submit(row + " button.deactivate")
        browser.shot("deactivated")
        assert "Deactivated the device fp-console-laptop-1" in browser.text("#notice")
        assert browser.find(row + " td.state").text == "deactivated"
        assert f"by {token_actor(token.token_id)}: laptop stolen" in browser.text(row)
        assert browser.all(row + " button.deactivate") == [], "nothing left to deactivate"
        assert browser.text("#seats") == "1 / 3"
        kinds = [li.get_attribute("data-type") for li in browser.all("#timeline li.event")]
        assert kinds[-2:] == ["seat_activated", "seat_deactivated"]

    await step(browser, walk)
    # A second device takes a seat while the page is open: the reloaded chart shows it.
    await licensing_stub.ActivateSeat(
        lic.ActivateSeatRequest(
            license_key=sale.license_key,
            product_id=sale.entitlement.product_id,
            fingerprint="fp-console-laptop-2",
            label="Ada's new laptop",
        )
    )
    await step(browser, deactivate)
    assert await emails_of(app) == emails_before + 1
    # The same audit as the RPCs', by the staff member's token.
    for action in ("credentials.resend", "seat.deactivate"):
        where = AuditFilter(action=action, entitlement_id=sale.entitlement_id)
        audited, _ = await list_audit_events(app, where=where)
        assert [a.actor for a in audited] == [token_actor(token.token_id)], action


async def test_fulfill_staff_suspend_reinstate_manage_named_users_and_read_the_audit(
    app: AppContext,
    browser: Browser,
    team: ful.Entitlement,
    server: KeyturnServer,
    fulfillment_stub: fulfillment_pb2_grpc.FulfillmentServiceStub,
    tokens: Tokens,
) -> None:
    token, secret = await create_token(app, {"fulfill"}, "support desk", lifetime=None)
    actor = token_actor(token.token_id)
    page = f"/console/entitlements/{team.entitlement_id}"

    def kinds() -> list[str | None]:
        return [li.get_attribute("data-type") for li in browser.all("#timeline li.event")]

    def manage() -> tuple[str, str]:
        browser.sign_in(secret)
        browser.open(page)
        assert browser.text("#status") == "active"
        browser.find("#suspend-reason").send_keys("payment failed")
        browser.submit("#suspend")
        browser.shot("suspended")
        assert "Suspended" in browser.text("#notice")
        assert browser.text("#status") == "suspended"
        assert kinds()[-1] == "suspended"
        assert browser.all("#suspend") == [], "a suspended one offers Reinstate only"
        browser.submit("#reinstate")
        browser.shot("reinstated")
        assert browser.text("#status") == "active"
        assert kinds()[-2:] == ["suspended", "reinstated"]
        rows = {
            r.find_element("css selector", "td.email").text: r for r in browser.all("tr.named-user")
        }
        assert sorted(rows) == sorted(TEAM)
        ada, bob = (rows[email].get_attribute("data-user") for email in TEAM[:2])
        assert ada
        assert bob
        browser.submit(f"tr[data-user='{ada}'] button.remove-user")
        browser.shot("user-removed")
        assert f"Removed the named user {ada}" in browser.text("#notice")
        assert ada not in [r.get_attribute("data-user") for r in browser.all("tr.named-user")]
        assert len(browser.all("tr.named-user")) == 2
        assert kinds()[-1] == "named_user_removed"
        browser.find(f"tr[data-user='{bob}'] input[name=email]").send_keys("rob@initech.example")
        browser.submit(f"tr[data-user='{bob}'] button.change-email")
        assert f"Changed the email of {bob} to rob@initech.example" in browser.text("#notice")
        assert browser.text(f"tr[data-user='{bob}'] td.email") == "rob@initech.example"
        browser.submit(f"tr[data-user='{bob}'] button.resend-invitation")
        assert f"Queued the invitation of {bob} again." in browser.text("#notice")
        recent = [
            r.get_attribute("data-action")
            for r in browser.all("#entitlement-audit-table tr.audit-event")
        ]
        assert recent[:3] == ["credentials.resend", "named_user.change_email", "named_user.remove"]
        browser.click(browser.find("#entitlement-audit"))
        browser.shot("entitlement-audit")
        assert browser.find("#entitlement_id").get_attribute("value") == team.entitlement_id
        # The whole trail, by this staff member's token, then one action of it.
        browser.click(browser.find("#nav-audit"))
        browser.find("#actor").send_keys(actor)
        browser.submit("#filter")
        browser.shot("audit-by-actor")
        assert {a.text for a in browser.all("#audit td.actor")} == {actor}
        assert [r.get_attribute("data-action") for r in browser.all("#audit tr.audit-event")] == [
            "credentials.resend",
            "named_user.change_email",
            "named_user.remove",
            "entitlement.reinstate",
            "entitlement.suspend",
        ]
        browser.find("#action").send_keys("entitlement.suspend")
        browser.submit("#filter")
        browser.shot("audit-by-action")
        suspended = browser.all("#audit tr.audit-event")
        assert [r.get_attribute("data-action") for r in suspended] == ["entitlement.suspend"]
        assert '"payment failed"' in browser.text("#audit td.details")
        browser.click(browser.find("#audit td.resource a"))
        assert browser.text("#entitlement-id") == team.entitlement_id
        browser.open("/console/audit?since=yesterday")
        browser.shot("audit-bad-filter")
        assert "since must be a date and time" in browser.text("#notice")
        return browser.cookie()[COOKIE], bob

    cookie, bob = await step(browser, manage)
    assert await user_emails(app, team.entitlement_id) == [
        "cy@initech.example",
        "rob@initech.example",
    ]
    base = f"http://{server.http_address}"
    async with httpx.AsyncClient(base_url=base, cookies={COOKIE: cookie}) as client:
        csrf = form_token((await client.get(page)).text)

        async def post(path: str, **fields: str) -> httpx.Response:
            data = {"csrf_token": csrf, **fields}
            return await client.post(page + path, data=data, headers={"origin": base})

        # Refusals show their reason with their status, never a 500, and change nothing.
        before = await audit_rows(app, team.entitlement_id)
        refusals = [
            (f"/named-users/{bob}/email", {"email": TEAM[2]}, 409, TEAM[2]),
            (f"/named-users/{bob}/email", {"email": "not an email"}, 400, "email"),
            ("/named-users/usr_nobody/remove", {}, 404, "usr_nobody"),
            ("/named-users/usr_nobody/resend", {}, 404, "usr_nobody"),
            ("/suspend", {"reason": "bad\x00reason"}, 400, "reason"),
        ]
        cancel = order("order-console-cancel", "CANCEL")
        cancel.lines[0].entitlement_id = team.entitlement_id
        await fulfillment_stub.FulfillOrder(cancel, metadata=tokens("fulfill"))
        refusals.append(("/suspend", {"reason": "late"}, 409, "cancelled"))
        after_cancel = await audit_rows(app, team.entitlement_id)
        for path, fields, status, said in refusals:
            refused = await post(path, **fields)
            assert (refused.status_code, path) == (status, path), refused.text
            assert 'id="error"' in refused.text, path
            assert said in refused.text, (path, refused.text)
        assert len(after_cancel) == len(before) + 1, "the cancelling order's record"
        assert await audit_rows(app, team.entitlement_id) == after_cancel, "nothing written"
        cancelled = await client.get(page)
        assert 'id="suspend"' not in cancelled.text
        assert 'id="reinstate"' not in cancelled.text


async def test_a_read_token_sees_no_actions_and_its_forged_post_is_refused(
    app: AppContext, browser: Browser, sale: Sale, server: KeyturnServer
) -> None:
    _, secret = await create_token(app, {"read"}, "viewer", lifetime=None)
    emails_before = await emails_of(app)

    def look() -> tuple[str, str]:
        browser.sign_in(secret)
        find_by_key_and_open(browser, sale)
        assert browser.all("#resend") == [], "no action button for a read token"
        assert browser.all("button.deactivate") == []
        assert len(browser.all("#devices tr.device")) == 1
        assert browser.all("header nav a[href='/console/catalog']") == []
        csrf = browser.find("header form input[name=csrf_token]").get_attribute("value")
        assert csrf
        return browser.cookie()[COOKIE], csrf

    cookie, csrf = await step(browser, look)
    base = f"http://{server.http_address}"
    async with httpx.AsyncClient(base_url=base, cookies={COOKIE: cookie}) as client:
        # Everything a console form sends, CSRF token and origin right: the scope refuses it.
        forged = await client.post(
            f"/console/entitlements/{sale.entitlement_id}/resend",
            data={"csrf_token": csrf},
            headers={"origin": base},
        )
        assert forged.status_code == 403
        assert "may not act on entitlements" in forged.text
        deactivation = await client.post(
            f"/console/entitlements/{sale.entitlement_id}/devices/{sale.activation_id}/deactivate",
            data={"csrf_token": csrf, "reason": "forged"},
            headers={"origin": base},
        )
        assert deactivation.status_code == 403
        catalog_page = await client.get("/console/catalog")
        assert catalog_page.status_code == 403
    assert await emails_of(app) == emails_before
    assert await device_states(app, sale) == ["live"], "nothing was deactivated"


async def test_a_read_token_sees_the_audit_but_cannot_suspend_or_manage_named_users(
    app: AppContext, browser: Browser, team: ful.Entitlement, server: KeyturnServer
) -> None:
    _, secret = await create_token(app, {"read"}, "viewer", lifetime=None)
    page = f"/console/entitlements/{team.entitlement_id}"
    audited = await audit_rows(app, team.entitlement_id)
    users = await user_emails(app, team.entitlement_id)

    def look() -> tuple[str, str, str]:
        browser.sign_in(secret)
        browser.open(page)
        browser.shot("read-entitlement")
        assert len(browser.all("tr.named-user")) == len(TEAM)
        for button in ("#suspend", "#reinstate", "button.remove-user", "button.change-email"):
            assert browser.all(button) == [], button
        assert browser.all("button.resend-invitation") == []
        user_id = browser.find("tr.named-user").get_attribute("data-user")
        assert user_id
        browser.click(browser.find("#nav-audit"))
        browser.shot("read-audit")
        actions = [r.get_attribute("data-action") for r in browser.all("#audit tr.audit-event")]
        assert "order.fulfil" in actions
        return browser.cookie()[COOKIE], form_token(browser.driver.page_source), user_id

    cookie, csrf, user_id = await step(browser, look)
    base = f"http://{server.http_address}"
    async with httpx.AsyncClient(base_url=base, cookies={COOKIE: cookie}) as client:
        for path in action_paths(team.entitlement_id, user_id):
            data = {"csrf_token": csrf, "reason": "forged", "email": "eve@evil.example"}
            forged = await client.post(path, data=data, headers={"origin": base})
            assert forged.status_code == 403, path
            assert "may not act on entitlements" in forged.text, path
    assert await audit_rows(app, team.entitlement_id) == audited, "nothing written"
    assert await user_emails(app, team.entitlement_id) == users
    assert (await entitlement_details(app, team.entitlement_id)).view.status.value == "active"


async def test_a_post_without_the_csrf_token_is_refused_and_changes_nothing(
    app: AppContext, browser: Browser, sale: Sale, server: KeyturnServer
) -> None:
    _, secret = await create_token(app, {"fulfill"}, "support desk", lifetime=None)
    emails_before = await emails_of(app)
    audited = await audit_rows(app, sale.entitlement_id)

    def forge() -> str:
        browser.sign_in(secret)
        find_by_key_and_open(browser, sale)
        # The page's own form, its CSRF field taken out: what a forged form would send.
        browser.driver.execute_script(
            "document.querySelector('#resend').form.querySelector('[name=csrf_token]').remove()"
        )
        browser.submit("#resend")
        browser.shot("refused")
        assert "CSRF token or origin is wrong" in browser.text("#error")
        return browser.cookie()[COOKIE]

    cookie = await step(browser, forge)
    assert await emails_of(app) == emails_before
    base = f"http://{server.http_address}"
    async with httpx.AsyncClient(base_url=base, cookies={COOKIE: cookie}) as client:
        page = await client.get(f"/console/entitlements/{sale.entitlement_id}")
        assert page.status_code == 200, "the session outlived the refusal"
        token = page.text.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
        paths = (
            f"/console/entitlements/{sale.entitlement_id}/resend",
            f"/console/entitlements/{sale.entitlement_id}/devices/{sale.activation_id}/deactivate",
            *action_paths(sale.entitlement_id, "usr_any"),
        )
        # A right token from another site (the origin is checked too), and a wrong token.
        for path in paths:
            for origin, sent in ((EVIL, token), (base, "0" * 64), (None, token), (base, None)):
                headers = {"origin": origin} if origin else {}
                data = {"reason": "forged"} | ({"csrf_token": sent} if sent else {})
                refused = await client.post(path, data=data, headers=headers)
                assert refused.status_code == 403, (path, origin, sent)
    assert await emails_of(app) == emails_before
    assert await device_states(app, sale) == ["live"], "nothing was deactivated"
    assert await audit_rows(app, sale.entitlement_id) == audited, "nothing suspended"


async def test_sign_out_and_revocation_end_the_session(
    app: AppContext, browser: Browser, sale: Sale
) -> None:
    token, secret = await create_token(app, {"fulfill"}, "support desk", lifetime=None)
    page = f"/console/entitlements/{sale.entitlement_id}"

    def sign_out() -> None:
        browser.sign_in(secret)
        browser.open(page)
        assert browser.text("#entitlement-id") == sale.entitlement_id
        browser.submit("#sign-out")
        browser.shot("signed-out")
        assert browser.text("#notice") == "Signed out."
        browser.open(page)
        assert browser.all("#entitlement-id") == [], "signed out: the page is not shown"
        assert browser.find("#token").is_displayed()
        browser.sign_in(secret)
        browser.open(page)
        assert browser.text("#entitlement-id") == sale.entitlement_id

    await step(browser, sign_out)
    assert await revoke_token(app, token.token_id) == token.token_id

    def after_revocation() -> None:
        browser.open(page)
        browser.shot("revoked")
        assert browser.all("#entitlement-id") == []
        assert "not valid" in browser.text("#notice")
        browser.find("#token").send_keys(secret)
        browser.submit("#sign-in")
        assert "not valid" in browser.text("#notice"), "a revoked token cannot sign in"

    await step(browser, after_revocation)


async def test_an_idle_session_ends(app: AppContext, browser: Browser, sale: Sale) -> None:
    _, secret = await create_token(app, {"read"}, "viewer", lifetime=None)
    page = f"/console/entitlements/{sale.entitlement_id}"
    await step(browser, browser.sign_in, secret)
    await step(browser, browser.open, page)
    assert isinstance(app.clock, SystemClock)
    app.clock.offset += timedelta(minutes=29)
    await step(browser, browser.open, page)
    assert await step(browser, browser.text, "#entitlement-id") == sale.entitlement_id
    app.clock.offset += timedelta(minutes=30)  # 30 since the last request
    await step(browser, browser.open, page)
    await step(browser, browser.shot, "idle")
    assert "30 minutes without use" in await step(browser, browser.text, "#notice")


async def test_the_catalog_and_the_api_tokens_are_shown_read_only(
    app: AppContext, browser: Browser, sale: Sale
) -> None:
    _, catalog_secret = await create_token(app, {"catalog"}, "catalog team", lifetime=None)
    staff, staff_secret = await create_token(app, {"fulfill"}, "support desk", lifetime=None)
    gone, _ = await create_token(app, {"read"}, "old laptop", lifetime=None)
    assert await revoke_token(app, gone.token_id) == gone.token_id

    def catalog_staff() -> None:
        browser.sign_in(catalog_secret)  # lands on the catalog: it may see nothing else
        browser.shot("catalog")
        assert browser.driver.current_url.endswith("/console/catalog")
        assert "acme-cad" in browser.text("#products")
        assert "SEATS-3" in browser.text("#skus")
        assert "create(edition_id=standard, seats_per_unit=3" in browser.text("#skus")
        assert [a.text for a in browser.all("header nav a")] == ["Catalog"]
        assert browser.all("form[method=post]:not(.sign-out)") == [], "read-only"
        browser.open("/console/tokens")
        assert "may not view API tokens" in browser.text("#error")
        browser.submit("#sign-out")

    def fulfill_staff() -> None:
        browser.sign_in(staff_secret)
        browser.open("/console/tokens")
        browser.shot("tokens")
        rows = {
            row.find_element("css selector", "td").text: row
            for row in browser.all("#tokens tbody tr")
        }
        assert {staff.token_id, gone.token_id} <= rows.keys()
        assert "support desk" in rows[staff.token_id].text
        assert rows[gone.token_id].get_attribute("class") == "gone"
        assert staff_secret not in browser.driver.page_source, "never a secret"
        browser.open("/console/catalog")
        assert "may not view the catalog" in browser.text("#error")

    await step(browser, catalog_staff)
    await step(browser, fulfill_staff)
