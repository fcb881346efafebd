"""What a console POST must show before it is served: that it comes from a console page.

Two checks, both required: the form's CSRF token, an HMAC of the session's nonce
(session.py), which another site cannot read; and the request's origin (its Origin header,
else its Referer), which must be this host. SameSite=Strict on the cookie already keeps it
off requests other sites start; these hold where a browser does not honour that.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

FIELD = "csrf_token"


def same_origin(headers: Mapping[str, str]) -> bool:
    """The request names this host (its Host header) as where it came from. The host and
    port are compared, not the scheme: behind a TLS-terminating proxy the browser's
    https:// origin arrives here over plain HTTP."""
    host = headers.get("host", "")
    source = headers.get("origin") or headers.get("referer") or ""
    if not host or not source or source == "null":
        return False
    parts = urlsplit(source)
    return parts.scheme in ("http", "https") and parts.netloc.lower() == host.lower()
