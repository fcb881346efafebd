"""Sending one email over SMTP (aiosmtplib), with failures sorted into retry or give up.

A 4xx answer, a refused or dropped connection and a timeout are temporary:
the message is tried again later. A 5xx answer is permanent.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.message import EmailMessage
from typing import Literal

import aiosmtplib

Security = Literal["auto", "starttls", "tls", "none"]


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int = 25
    security: Security = "auto"  # auto: STARTTLS when the server offers it
    username: str = ""
    password: str = ""
    timeout_seconds: float = 30.0


class DeliveryError(Exception):
    """An attempt failed; `permanent` says whether trying again can help."""

    def __init__(self, reason: str, permanent: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent


def _answer(code: int, message: str) -> DeliveryError:
    return DeliveryError(f"SMTP {code}: {message.strip()}"[:500], permanent=500 <= code < 600)


class SmtpSender:
    def __init__(self, settings: SmtpSettings) -> None:
        self._settings = settings

    async def send(self, message: EmailMessage) -> None:
        s = self._settings
        try:
            await aiosmtplib.send(
                message,
                hostname=s.host,
                port=s.port,
                username=s.username or None,
                password=s.password or None,
                use_tls=s.security == "tls",
                start_tls={"auto": None, "starttls": True, "tls": False, "none": False}[s.security],
                timeout=s.timeout_seconds,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            worst = max(exc.recipients, key=lambda r: r.code)
            raise _answer(worst.code, worst.message) from exc
        except aiosmtplib.SMTPResponseException as exc:
            raise _answer(exc.code, exc.message) from exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise DeliveryError(f"{type(exc).__name__}: {exc}"[:500], permanent=False) from exc
