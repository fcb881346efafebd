"""Posting one signed webhook over HTTP (httpx), with every outcome told as an answer.

Signed per Standard Webhooks by its reference library (`standardwebhooks`): headers
`webhook-id`, `webhook-timestamp` (Unix seconds) and `webhook-signature` (`v1,` and the
base64 HMAC-SHA256 of `ID.TIMESTAMP.BODY` under the secret), which a receiver checks with
`standardwebhooks.Webhook(secret).verify(body, headers)`. Redirects are not followed:
an endpoint that moved is a failure the delivery log shows, not a silent hop.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import httpx
from standardwebhooks.webhooks import Webhook

USER_AGENT = "Keyturn-Webhooks/1"
EXCERPT_BYTES = 2000  # read at most this much of an answer's body


@dataclass(frozen=True)
class Answer:
    """How one POST went: `status` 0 when no HTTP answer came, `text` the start of the
    body or what went wrong."""

    status: int
    text: str

    @property
    def delivered(self) -> bool:
        return 200 <= self.status < 300


def signed_headers(secret: str, webhook_id: str, sent: datetime, body: str) -> dict[str, str]:
    """The Standard Webhooks headers of `body` sent at `sent` under `secret` (whsec_...)."""
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(sent.timestamp())),
        "webhook-signature": Webhook(secret).sign(webhook_id, sent, body),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }


class WebhookHttp:
    """One connection pool for every endpoint of a process."""

    def __init__(self, timeout_seconds: float) -> None:
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_seconds),
            follow_redirects=False,
            trust_env=False,  # no proxy from the environment: the operator's URLs, as given
        )

    async def post(self, url: str, headers: dict[str, str], body: str) -> Answer:
        try:
            async with self._client.stream(
                "POST", url, headers=headers, content=body.encode()
            ) as response:
                text = b""
                async for chunk in response.aiter_bytes():
                    text += chunk
                    if len(text) >= EXCERPT_BYTES:
                        break
                return Answer(response.status_code, text[:EXCERPT_BYTES].decode(errors="replace"))
        except httpx.TimeoutException as error:
            return Answer(0, f"timed out: {type(error).__name__}")
        except httpx.HTTPError as error:
            return Answer(0, f"{type(error).__name__}: {error}")
        except OSError as error:  # below httpx: a socket the system refused
            return Answer(0, f"{type(error).__name__}: {error}")

    async def close(self) -> None:
        await self._client.aclose()
