"""The console's routes: each reads its request, calls the app layer, renders a page.

Every request opens the session cookie, ends it when it is past its limits, and
authenticates its API token again (session.py); every POST must pass the CSRF checks
(csrf.py) before anything else is looked at, and every route needs its permission
(roles.py), so a page that hides a button and a route that refuses it say the same. Changes
are made by the same use cases the RPCs call, as the token's actor (app/audit.py), with
conflicts retried as the call guard retries them.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

from keyturn.server.app import (
    catalog,
    devices,
    entitlements,
    fulfillment,
    named_user_admin,
    suspension,
    tokens,
)
from keyturn.server.app.audit import acting_as, token_actor
from keyturn.server.app.audit_trail import list_audit_events
from keyturn.server.app.conflicts import retry_conflicts
from keyturn.server.app.context import AppContext
from keyturn.server.app.entitlement_details import entitlement_details, find_by_license_key
from keyturn.server.app.tokens import TokenAuthenticator
from keyturn.server.domain.errors import DomainError, Reason
from keyturn.server.store.audit_repository import AuditFilter
from keyturn.server.store.entitlement_repository import EntitlementFilter
from keyturn.server.store.token_repository import ApiToken

from . import csrf
from .audit_page import (
    AUDIT_PAGE_SIZE,
    ENTITLEMENT_AUDIT_SIZE,
    BadFilter,
    audit_filter,
    next_link,
    why_refused,
)
from .pages import Pages, http_status_of
from .roles import GRANTED_BY, Permission, allows
from .session import (
    COOKIE,
    Session,
    SessionCodec,
    SessionLimits,
    anonymous,
    ended,
    seen_at,
    set_cookie,
    signed_in,
)
from .usage_panel import granularity_of, usage_chart
from .web import FormTooLarge, Receive, Request, Response, Scope, Send, read_request, redirect

log = logging.getLogger("keyturn.console")

PREFIX = "/console/"
STYLESHEET = PREFIX + "static/console.css"
_CSS = (Path(__file__).parent / "static" / "console.css").read_bytes()
# What the search form searches by, and the EntitlementFilter field of each but the key.
SEARCH_BY = {
    "license_key": "license key",
    "customer_id": "customer id",
    "email": "customer email",
    "external_reference": "external reference",
}
SEARCH_PAGE_SIZE = 100
TIMELINE_PAGE_SIZE = 100
CATALOG_PAGE_SIZE = 500


@dataclass
class Visit:
    """One request as the routes see it: the session it came with (replaced by sign-in and
    sign-out), its staff member's token once authenticated, and the line to show."""

    request: Request
    session: Session
    token: ApiToken | None
    notice: str
    params: dict[str, str]

    @property
    def actor(self) -> str:
        assert self.token is not None
        return token_actor(self.token.token_id)


Handler = Callable[["ConsoleApp", Visit], Awaitable[Response]]


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler
    permission: Permission | None  # None: open before sign-in (sign-in itself, the home page)


class ConsoleApp:
    """The ASGI application of everything under /console/ (api/http_port.py routes it).

    `authenticator` checks the session's token on every request; the server gives the
    console one that remembers no answer, so that a revoked token is refused at its next
    request, not a few seconds later (the console's traffic is people clicking). `tls`:
    the port speaks TLS, so cookies are Secure."""

    def __init__(
        self,
        ctx: AppContext,
        authenticator: TokenAuthenticator,
        *,
        limits: SessionLimits,
        tls: bool,
    ) -> None:
        self._ctx = ctx
        self._auth = authenticator
        self._limits = limits
        self._tls = tls
        self._codec = SessionCodec(ctx.sealer)
        self._pages = Pages(self._codec)

    async def __call__(
        self, scope: Scope, receive: Receive, send: Send, extra: list[tuple[bytes, bytes]]
    ) -> None:
        started = time.perf_counter()
        if scope["path"] == PREFIX.rstrip("/"):
            await redirect(PREFIX).send(send, extra)
            return
        if scope["path"] == STYLESHEET:
            css = Response(body=_CSS, content_type=b"text/css; charset=utf-8")
            css.headers.append((b"cache-control", b"public, max-age=3600"))
            await css.send(send, extra)
            return
        try:
            request = await read_request(scope, receive)
        except FormTooLarge:
            await Response(413, b"form too large").send(send, extra)
            return
        visit = Visit(request, anonymous(), None, "", {})
        route = "-"
        try:
            response, route = await self._answer(visit)
        except Exception as error:  # a bug: said so, with the id of its log line
            response = self._pages.unexpected(visit, error, log)
        if visit.token is not None:  # served to a signed-in member: the session lives on
            visit.session = seen_at(visit.session, self._ctx.clock.now())
        cookie = set_cookie(
            self._codec.seal(visit.session), secure=self._tls or visit.request.secure
        )
        response.headers.append((b"set-cookie", cookie))
        await response.send(send, extra)
        duration_ms = round(1000 * (time.perf_counter() - started), 1)
        actor = visit.actor if visit.token is not None else "-"
        # One line per request, as the call guard's per call; never a token or a key.
        log.info(
            "console method=%s route=%s status=%d duration_ms=%.1f actor=%s",
            request.method,
            route,
            response.status,
            duration_ms,
            actor,
            extra={
                "method": request.method,
                "route": route,
                "status": response.status,
                "duration_ms": duration_ms,
                "actor": actor,
            },
        )

    async def _answer(self, visit: Visit) -> tuple[Response, str]:
        request = visit.request
        opened = self._codec.open(request.cookies.get(COOKIE, ""))
        visit.session = opened or anonymous()  # kept as it came whatever the answer
        found = _route_of(request.method, request.path)
        if found is None:
            return self._pages.error(visit, 404, "There is no such console page."), "-"
        route, params = found
        name = route.handler.__name__
        visit.params = params
        if request.method == "POST" and not self._csrf_passes(request, opened):
            return self._pages.error(
                visit,
                403,
                "This form did not come from this console (its CSRF token or origin is "
                "wrong); nothing was changed. Reload the page and try again.",
            ), name
        visit.notice = visit.session.notice
        visit.session = replace(visit.session, notice="")
        try:
            return await self._serve(route, visit), name
        except DomainError as error:  # a refusal, or a database down (the session stays)
            return self._pages.error(visit, http_status_of(error), error.message), name

    async def _serve(self, route: Route, visit: Visit) -> Response:
        """The route's answer to a visit that passed the CSRF checks, if it may have one."""
        await self._authenticate(visit)
        if route.permission is not None:
            if visit.token is None:
                if visit.request.method == "GET":
                    visit.session = replace(visit.session, notice=visit.notice or "Sign in.")
                    return redirect(PREFIX)
                return self._pages.error(visit, 401, "Sign in first; nothing was changed.")
            if not allows(visit.token.scopes, route.permission):
                needs = " or ".join(sorted(GRANTED_BY[route.permission]))
                return self._pages.error(
                    visit,
                    403,
                    f"Your API token may not {route.permission.value} (that needs the "
                    f"scope {needs}); nothing was changed.",
                )
        return await route.handler(self, visit)

    def _csrf_passes(self, request: Request, session: Session | None) -> bool:
        if session is None or not csrf.same_origin(request.headers):
            return False
        return self._codec.csrf_valid(session, request.form.get(csrf.FIELD, ""))

    async def _authenticate(self, visit: Visit) -> None:
        """The session's token, authenticated as the API does; a session past its limits
        or whose token is refused ends here, saying why."""
        session = visit.session
        if not session.signed_in:
            return
        why = ended(session, self._ctx.clock.now(), self._limits)
        if not why:
            try:
                visit.token = await self._auth.authenticate(session.token)
                return
            except DomainError as error:
                why = _refusal_of(error)  # re-raises what says nothing of the token
        visit.session, visit.notice = anonymous(), why

    # The routes (each named by its function in the log line).

    async def home(self, visit: Visit) -> Response:
        if visit.token is None:
            return self._pages.render(visit, "sign_in.html.j2")
        if not allows(visit.token.scopes, Permission.VIEW_ENTITLEMENTS):  # catalog staff
            visit.session = replace(visit.session, notice=visit.notice)
            return redirect(PREFIX + "catalog")
        return self._search_page(visit, [], searched=False)

    async def sign_in(self, visit: Visit) -> Response:
        secret = visit.request.field("token")
        try:
            token = await self._auth.authenticate(secret)
        except DomainError as error:
            visit.token, visit.session = None, anonymous()
            visit.notice = _refusal_of(error)
            return self._pages.render(visit, "sign_in.html.j2", status=401)
        visit.token = token
        visit.session = replace(
            signed_in(secret, self._ctx.clock.now()),
            notice=f"Signed in with {token.token_id} ({', '.join(sorted(token.scopes))}).",
        )
        log.info("console sign-in actor=%s", token_actor(token.token_id))
        return redirect(PREFIX)

    async def sign_out(self, visit: Visit) -> Response:
        visit.token = None
        visit.session = anonymous("Signed out.")
        return redirect(PREFIX)

    async def search(self, visit: Visit) -> Response:
        by, text = visit.request.field("by"), visit.request.field("q")
        if by not in SEARCH_BY or not text:
            visit.notice = "Choose what to search by and type what to find."
            return self._search_page(visit, [], searched=False, status=400)
        # The key is never shown back, not even in the search box.
        shown = "" if by == "license_key" else text
        try:
            if by == "license_key":
                view = await find_by_license_key(self._ctx, text)
                found = [] if view is None else [view]
            else:
                where = _filter(by, text)
                found, _ = await entitlements.list_entitlements(
                    self._ctx, where, SEARCH_PAGE_SIZE, ""
                )
        except DomainError as error:
            if error.reason is not Reason.INVALID_REQUEST:
                raise
            why = error.violations[0].description if error.violations else error.message
            visit.notice = f"Not a {SEARCH_BY[by]} to search by: {why}."
            return self._search_page(visit, [], searched=False, by=by, text=shown, status=400)
        return self._search_page(visit, found, searched=True, by=by, text=shown)

    def _search_page(
        self,
        visit: Visit,
        found: list[Any],
        *,
        searched: bool,
        by: str = "license_key",
        text: str = "",
        status: int = 200,
    ) -> Response:
        return self._pages.render(
            visit,
            "search.html.j2",
            status=status,
            found=found,
            searched=searched,
            search_by=SEARCH_BY,
            by=by,
            text=text,
            limit=SEARCH_PAGE_SIZE,
        )

    async def entitlement(self, visit: Visit) -> Response:
        entitlement_id = visit.params["entitlement_id"]
        details = await entitlement_details(self._ctx, entitlement_id)
        events, more = await entitlements.list_entitlement_events(
            self._ctx, entitlement_id, TIMELINE_PAGE_SIZE, visit.request.query.get("events", "")
        )
        granularity = granularity_of(visit.request.query.get("usage", ""))
        chart = await usage_chart(self._ctx, entitlement_id, granularity)
        audited, _ = await list_audit_events(
            self._ctx,
            where=AuditFilter(entitlement_id=entitlement_id),
            page_size=ENTITLEMENT_AUDIT_SIZE,
        )
        return self._pages.render(
            visit,
            "entitlement.html.j2",
            details=details,
            events=events,
            more_events=more,
            usage_chart=chart,
            usage_by=granularity.value,
            audited=audited,
        )

    async def resend(self, visit: Visit) -> Response:
        entitlement_id = visit.params["entitlement_id"]

        async def resend() -> str:
            queued = len(await fulfillment.resend_credentials(self._ctx, entitlement_id))
            log.info(
                "console resend entitlement=%s queued=%d actor=%s",
                entitlement_id,
                queued,
                visit.actor,
            )
            if not queued:
                return "Nothing to send: no recipient, or every invitation is redeemed."
            return f"Queued {queued} email{'s' if queued != 1 else ''} again."

        return await self._act(visit, resend)

    async def deactivate(self, visit: Visit) -> Response:
        entitlement_id, activation_id = (
            visit.params["entitlement_id"],
            visit.params["activation_id"],
        )
        reason = visit.request.field("reason")

        async def deactivate() -> str:
            view = await devices.deactivate_seat(
                self._ctx, entitlement_id=entitlement_id, activation_id=activation_id, reason=reason
            )
            return f"Deactivated the device {view.activation.fingerprint}: its seat is free."

        return await self._act(visit, deactivate)

    async def suspend(self, visit: Visit) -> Response:
        entitlement_id, reason = visit.params["entitlement_id"], visit.request.field("reason")

        async def suspend() -> str:
            await suspension.suspend_entitlement(
                self._ctx, entitlement_id=entitlement_id, reason=reason
            )
            return "Suspended: no new seat and no renewal until it is reinstated."

        return await self._act(visit, suspend)

    async def reinstate(self, visit: Visit) -> Response:
        entitlement_id = visit.params["entitlement_id"]

        async def reinstate() -> str:
            await suspension.reinstate_entitlement(self._ctx, entitlement_id=entitlement_id)
            return "Reinstated: its devices and named users go on."

        return await self._act(visit, reinstate)

    async def remove_user(self, visit: Visit) -> Response:
        entitlement_id, user_id = visit.params["entitlement_id"], visit.params["user_id"]

        async def remove() -> str:
            removed = await named_user_admin.remove_named_user(
                self._ctx, entitlement_id=entitlement_id, user_id=user_id
            )
            released = removed.released_seats
            seats = f" and released {released} seat{'s' if released != 1 else ''}"
            return f"Removed the named user {user_id}{seats if released else ''}."

        return await self._act(visit, remove)

    async def change_email(self, visit: Visit) -> Response:
        entitlement_id, user_id = visit.params["entitlement_id"], visit.params["user_id"]
        email = visit.request.field("email")

        async def change() -> str:
            changed = await named_user_admin.change_named_user_email(
                self._ctx, entitlement_id=entitlement_id, user_id=user_id, email=email
            )
            sent = " and sent a new invitation there" if changed.messages else ""
            return f"Changed the email of {user_id} to {changed.user.email}{sent}."

        return await self._act(visit, change)

    async def resend_invitation(self, visit: Visit) -> Response:
        entitlement_id, user_id = visit.params["entitlement_id"], visit.params["user_id"]

        async def resend() -> str:
            queued = await fulfillment.resend_credentials(
                self._ctx, entitlement_id, user_id=user_id
            )
            return (
                f"Queued the invitation of {user_id} again."
                if queued
                else f"Nothing to send: {user_id} redeemed the invitation (identity still valid)."
            )

        return await self._act(visit, resend)

    async def _act(self, visit: Visit, action: Callable[[], Awaitable[str]]) -> Response:
        """Run one use case as the token's actor (conflicts retried) and go back to the
        entitlement's page with the notice it returns. A refusal (DomainError) goes up to
        `_answer`, which shows it with its status, as for every route."""
        with acting_as(visit.actor):
            notice = await retry_conflicts(action)
        visit.session = replace(visit.session, notice=notice)
        return redirect(_entitlement_path(visit.params["entitlement_id"]))

    async def audit_page(self, visit: Visit) -> Response:
        query = visit.request.query
        try:
            where = audit_filter(query)
            found, more = await list_audit_events(
                self._ctx,
                where=where,
                page_size=AUDIT_PAGE_SIZE,
                page_token=query.get("page", ""),
            )
        except BadFilter as error:
            visit.notice = f"Not a filter to list by: {error}."
            return self._audit_page(visit, [], "", status=400)
        except DomainError as error:
            if error.reason is not Reason.INVALID_REQUEST:
                raise
            why = why_refused(error.violations) or error.message
            visit.notice = f"Not a filter to list by: {why}."
            return self._audit_page(visit, [], "", status=400)
        return self._audit_page(visit, found, next_link(query, more))

    def _audit_page(
        self, visit: Visit, found: list[Any], later: str, *, status: int = 200
    ) -> Response:
        return self._pages.render(
            visit,
            "audit.html.j2",
            status=status,
            found=found,
            later=later,
            query=visit.request.query,
            limit=AUDIT_PAGE_SIZE,
        )

    async def catalog_page(self, visit: Visit) -> Response:
        products, more_products = await catalog.list_products(self._ctx, CATALOG_PAGE_SIZE, "")
        skus, more_skus = await catalog.list_skus(self._ctx, CATALOG_PAGE_SIZE, "", "")
        return self._pages.render(
            visit,
            "catalog.html.j2",
            products=products,
            skus=skus,
            truncated=bool(more_products or more_skus),
        )

    async def tokens_page(self, visit: Visit) -> Response:
        listed = await tokens.list_tokens(self._ctx, include_revoked=True)
        return self._pages.render(visit, "tokens.html.j2", tokens=listed)


def _entitlement_path(entitlement_id: str) -> str:
    return f"{PREFIX}entitlements/{quote(entitlement_id, safe='')}"


def _filter(by: str, text: str) -> EntitlementFilter:
    match by:
        case "customer_id":
            return EntitlementFilter(customer_id=text)
        case "email":
            return EntitlementFilter(email=text)
        case _:
            return EntitlementFilter(external_reference=text)


def _refusal_of(error: DomainError) -> str:
    """What to tell someone whose token was refused; any other error (the database is
    down) is raised again: it ends no session."""
    match error.reason:
        case Reason.INVALID_TOKEN | Reason.MISSING_CREDENTIALS:
            return "That API token is not valid: unknown, mistyped or revoked."
        case Reason.TOKEN_EXPIRED:
            return f"That API token has expired: {error.message}."
        case _:
            raise error


ENTITLEMENT = r"/console/entitlements/(?P<entitlement_id>[^/]{1,64})"
NAMED_USER = ENTITLEMENT + r"/named-users/(?P<user_id>[^/]{1,64})"
ACT = Permission.ACT_ON_ENTITLEMENTS
ROUTES = (
    Route("GET", re.compile(r"/console/"), ConsoleApp.home, None),
    Route("POST", re.compile(r"/console/sign-in"), ConsoleApp.sign_in, None),
    Route("POST", re.compile(r"/console/sign-out"), ConsoleApp.sign_out, None),
    Route("POST", re.compile(r"/console/search"), ConsoleApp.search, Permission.VIEW_ENTITLEMENTS),
    Route("GET", re.compile(ENTITLEMENT), ConsoleApp.entitlement, Permission.VIEW_ENTITLEMENTS),
    Route(
        "POST",
        re.compile(ENTITLEMENT + "/resend"),
        ConsoleApp.resend,
        Permission.ACT_ON_ENTITLEMENTS,
    ),
    Route(
        "POST",
        re.compile(ENTITLEMENT + r"/devices/(?P<activation_id>[^/]{1,64})/deactivate"),
        ConsoleApp.deactivate,
        Permission.ACT_ON_ENTITLEMENTS,
    ),
    Route("POST", re.compile(ENTITLEMENT + "/suspend"), ConsoleApp.suspend, ACT),
    Route("POST", re.compile(ENTITLEMENT + "/reinstate"), ConsoleApp.reinstate, ACT),
    Route("POST", re.compile(NAMED_USER + "/remove"), ConsoleApp.remove_user, ACT),
    Route("POST", re.compile(NAMED_USER + "/email"), ConsoleApp.change_email, ACT),
    Route("POST", re.compile(NAMED_USER + "/resend"), ConsoleApp.resend_invitation, ACT),
    Route(
        "GET", re.compile(r"/console/audit"), ConsoleApp.audit_page, Permission.VIEW_ENTITLEMENTS
    ),
    Route("GET", re.compile(r"/console/catalog"), ConsoleApp.catalog_page, Permission.VIEW_CATALOG),
    Route("GET", re.compile(r"/console/tokens"), ConsoleApp.tokens_page, Permission.VIEW_TOKENS),
)


def _route_of(method: str, path: str) -> tuple[Route, dict[str, str]] | None:
    for route in ROUTES:
        match = route.pattern.fullmatch(path)
        if match and route.method == method:
            return route, match.groupdict()
    return None


__all__ = ["ConsoleApp", "SessionLimits"]
