"""Console sessions: stateless, sealed into a cookie.

The cookie holds the API token the staff member signed in with, when they signed in and
when they were last seen, sealed by the server's Sealer (keys of their own, derived from the
master secret): no session table, so any worker or replica opens it, and since the token
travels along every request authenticates it again (a revocation or an expiry ends the
session at once). A session ends after `SessionLimits.idle` unused or `absolute` after its
sign-in; the cookie is sealed anew on every answer, which moves "last seen".

Before sign-in the cookie holds a nonce only, which the sign-in form's CSRF token is derived
from; signing in draws a new one, so a nonce planted before cannot follow the session.
"""

from __future__ import annotations

import hmac
import json
import secrets
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from keyturn.server.sealing import Sealer

COOKIE = "keyturn_console"
PATH = "/console/"


@dataclass(frozen=True)
class SessionLimits:
    """KEYTURN_CONSOLE_SESSION_IDLE_MINUTES and KEYTURN_CONSOLE_SESSION_HOURS."""

    idle: timedelta = timedelta(minutes=30)
    absolute: timedelta = timedelta(hours=12)


@dataclass(frozen=True)
class Session:
    nonce: str  # what the CSRF token is derived from
    token: str = ""  # the API token's secret; "" before sign-in
    issued: datetime | None = None  # the sign-in
    seen: datetime | None = None  # the last request
    notice: str = ""  # one line for the next page (after a redirect), then gone

    @property
    def signed_in(self) -> bool:
        return bool(self.token)


def anonymous(notice: str = "") -> Session:
    return Session(nonce=secrets.token_urlsafe(18), notice=notice)


def signed_in(token: str, now: datetime) -> Session:
    return Session(nonce=secrets.token_urlsafe(18), token=token, issued=now, seen=now)


def ended(session: Session, now: datetime, limits: SessionLimits) -> str:
    """Why a signed-in session is over at `now`, or "" while it lasts."""
    if session.issued is None or session.seen is None:
        return "Your session is not valid; sign in again."
    if now - session.issued >= limits.absolute:
        hours = limits.absolute.total_seconds() / 3600
        return f"Your session ended {hours:g} hours after sign-in; sign in again."
    if now - session.seen >= limits.idle:
        minutes = limits.idle.total_seconds() / 60
        return f"Your session ended after {minutes:g} minutes without use; sign in again."
    return ""


def _stamp(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def _time(value: object) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if isinstance(value, int | float) else None


class SessionCodec:
    """Seals and opens session cookies, and derives their CSRF tokens."""

    def __init__(self, sealer: Sealer) -> None:
        self._sealer = sealer

    def seal(self, session: Session) -> str:
        payload = {
            "n": session.nonce,
            "t": session.token,
            "i": _stamp(session.issued),
            "s": _stamp(session.seen),
            "m": session.notice,
        }
        return self._sealer.seal_session(json.dumps(payload, separators=(",", ":")).encode())

    def open(self, value: str) -> Session | None:
        """The session sealed in `value`; None for anything this server did not seal."""
        plain = self._sealer.unseal_session(value) if value else None
        if plain is None:
            return None
        try:
            payload = json.loads(plain)
        except ValueError:
            return None
        if not isinstance(payload, dict) or not isinstance(payload.get("n"), str):
            return None
        return Session(
            nonce=payload["n"],
            token=str(payload.get("t") or ""),
            issued=_time(payload.get("i")),
            seen=_time(payload.get("s")),
            notice=str(payload.get("m") or ""),
        )

    def csrf_token(self, session: Session) -> str:
        return self._sealer.session_mac("csrf:" + session.nonce)

    def csrf_valid(self, session: Session, sent: str) -> bool:
        return hmac.compare_digest(self.csrf_token(session), sent)


def seen_at(session: Session, now: datetime) -> Session:
    return replace(session, seen=now) if session.signed_in else session


def set_cookie(value: str, *, secure: bool) -> bytes:
    """The Set-Cookie header of a session: for the console's pages only, never to scripts
    (HttpOnly), never on a request another site starts (SameSite=Strict), over TLS only
    when the port speaks it. No Max-Age: the browser forgets it when it closes."""
    attributes = [f"{COOKIE}={value}", f"Path={PATH}", "HttpOnly", "SameSite=Strict"]
    if secure:
        attributes.append("Secure")
    return "; ".join(attributes).encode()
