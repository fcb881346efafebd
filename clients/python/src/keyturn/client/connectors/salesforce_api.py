"""Salesforce's REST API, as far as the connector reads it: one SOQL query, as the
session an outbound message carries or as a connected app (client credentials).

A plain HTTP client (the standard library's): the connector makes one GET per record
and, with a connected app, one token POST; simple-salesforce would bring requests,
zeep and lxml for that.

The API is only ever called at the configured instance URL (the org's My Domain), never
at a URL a message names: a forged message cannot send the connector elsewhere, and a
session it makes up is refused by Salesforce itself.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("keyturn.connect.salesforce")
Json = dict[str, Any]
TIMEOUT_S = 20.0  # Salesforce waits 60 s for the whole message's answer


class SalesforceApiError(Exception):
    """The query failed; `temporary` when a later delivery may find it working (Salesforce
    down or busy, a session that expired) rather than a query this org refuses."""

    def __init__(self, message: str, *, temporary: bool, expired: bool = False) -> None:
        super().__init__(message)
        self.temporary = temporary
        self.expired = expired  # the bearer token is no longer valid (HTTP 401)


@dataclass(frozen=True)
class ClientCredentials:
    """A connected app with the client credentials flow enabled (and a run-as user)."""

    client_id: str
    client_secret: str


class SalesforceApi:
    """SOQL queries at one org's instance."""

    def __init__(
        self,
        instance_url: str,
        api_version: str,
        credentials: ClientCredentials | None = None,
        timeout: float = TIMEOUT_S,
    ) -> None:
        self.instance_url = instance_url.rstrip("/")
        self._version = api_version.removeprefix("v")
        self._credentials = credentials
        self._timeout = timeout
        self._token: str | None = None
        self._lock = threading.Lock()

    @property
    def uses_session(self) -> bool:
        """Whether queries run as the session of each message (no connected app set)."""
        return self._credentials is None

    def query(self, soql: str, session_id: str | None) -> list[Json]:
        """The records of `soql`, as the message's session or the connected app."""
        if self._credentials is None:
            if not session_id:
                raise SalesforceApiError(
                    "the outbound message carries no session: tick Send Session ID on it, "
                    "or give the connector a connected app (KEYTURN_SALESFORCE_CLIENT_ID)",
                    temporary=False,
                )
            return self._query(soql, session_id)
        token = self._app_token()
        try:
            return self._query(soql, token)
        except SalesforceApiError as exc:
            if not exc.expired:
                raise
        with self._lock:  # the app's token expired: one fresh one, one more try
            if self._token == token:
                self._token = None
        return self._query(soql, self._app_token())

    def _query(self, soql: str, bearer: str) -> list[Json]:
        url = f"{self.instance_url}/services/data/v{self._version}/query?" + (
            urllib.parse.urlencode({"q": soql})
        )
        request = urllib.request.Request(
            url, headers={"Authorization": f"Bearer {bearer}", "Accept": "application/json"}
        )
        answer = self._call(request)
        records = answer.get("records")
        if not isinstance(records, list):
            raise SalesforceApiError("the query answer holds no records", temporary=True)
        return records

    def _app_token(self) -> str:
        with self._lock:
            if self._token is not None:
                return self._token
        assert self._credentials is not None
        form = urllib.parse.urlencode(
            {
                "grant_type": "client_credentials",
                "client_id": self._credentials.client_id,
                "client_secret": self._credentials.client_secret,
            }
        ).encode()
        request = urllib.request.Request(
            f"{self.instance_url}/services/oauth2/token",
            data=form,
            method="POST",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        token = self._call(request).get("access_token")
        if not isinstance(token, str) or not token:
            raise SalesforceApiError("the token answer holds no access_token", temporary=True)
        with self._lock:
            self._token = token
        return token

    def _call(self, request: urllib.request.Request) -> Json:
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as error:
            with error:
                raise _refusal(error.code, error.read()) from None
        except (OSError, ValueError) as exc:  # unreachable, timed out, not JSON
            raise SalesforceApiError(f"Salesforce API unreachable: {exc}", temporary=True) from exc
        if not isinstance(answer, dict):
            raise SalesforceApiError("the Salesforce API answered no JSON object", temporary=True)
        return answer


def _refusal(status: int, body: bytes) -> SalesforceApiError:
    """Salesforce's error answer (`[{"message", "errorCode"}]`, or OAuth's
    `{"error", "error_description"}`) as a SalesforceApiError."""
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    first = parsed[0] if isinstance(parsed, list) and parsed else parsed
    if isinstance(first, dict):
        code = str(first.get("errorCode") or first.get("error") or status)
        text = str(first.get("message") or first.get("error_description") or "")
    else:
        code, text = str(status), body[:200].decode("utf-8", "replace")
    return SalesforceApiError(
        f"Salesforce API {status} {code}: {text}".rstrip(": "),
        # Expired sessions, limits and outages pass; a query the org refuses does not.
        temporary=status == 401 or status >= 500 or code == "REQUEST_LIMIT_EXCEEDED",
        expired=status == 401,
    )
