"""The composition root: settings in, a ready application context out."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

from sqlalchemy.engine import make_url

from .app.context import AppContext
from .app.delivery import Dispatcher, DispatchSettings
from .clock import Clock, SystemClock
from .config import Settings
from .dispatch.rendering import MailRenderer
from .dispatch.smtp import SmtpSender, SmtpSettings
from .leases.keyring import SigningKeys, load_keyring
from .sealing import Sealer, SecretError, load_or_create_secret_file
from .store.database import create_engine
from .store.migrate import upgrade
from .store.unit_of_work import Store


def secrets_file_for(settings: Settings) -> Path:
    if settings.secrets_file is not None:
        return settings.secrets_file
    database = make_url(settings.database_url).database or "keyturn.db"
    return Path(f"{database}.secrets")


def resolve_secret(settings: Settings) -> str:
    """The master secret: from settings, or for SQLite from (or into) a file beside the database."""
    if settings.secret_key is not None:
        return settings.secret_key.get_secret_value()
    if not settings.is_sqlite:
        raise SecretError(
            "KEYTURN_SECRET_KEY is required with PostgreSQL (every replica needs the same one); "
            "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(48))'"
        )
    return load_or_create_secret_file(secrets_file_for(settings))


def prepare_sqlite_folder(settings: Settings) -> None:
    if settings.is_sqlite:
        database = make_url(settings.database_url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)


async def migrate(settings: Settings) -> None:
    prepare_sqlite_folder(settings)
    await asyncio.to_thread(upgrade, settings.database_url)


async def build_context(settings: Settings, clock: Clock | None = None) -> AppContext:
    """Open the database (migrating it when allowed), unseal the signing keys."""
    clock = clock or SystemClock(timedelta(seconds=settings.clock_offset_seconds))
    sealer = Sealer(resolve_secret(settings))
    if settings.auto_migrate:
        await migrate(settings)
    store = Store(create_engine(settings.database_url, pool_size=settings.db_pool_size))
    try:
        keyring = await load_keyring(store, sealer, clock.now())
    except BaseException:
        await store.close()
        raise
    return AppContext(
        store=store,
        sealer=sealer,
        keys=SigningKeys(store, sealer, keyring),
        clock=clock,
        issuer=settings.issuer,
        lapse_grace=timedelta(seconds=settings.lapse_grace_seconds),
        watch_poll_seconds=settings.watch_poll_seconds,
        lapse_sweep_seconds=settings.lapse_sweep_seconds,
    )


def build_dispatcher(ctx: AppContext, settings: Settings) -> Dispatcher | None:
    """The email dispatcher, or None when no SMTP server is configured."""
    if not settings.smtp_host:
        return None
    sender = SmtpSender(
        SmtpSettings(
            host=settings.smtp_host,
            port=settings.smtp_port,
            security=settings.smtp_security,
            username=settings.smtp_username,
            password=settings.smtp_password.get_secret_value() if settings.smtp_password else "",
            timeout_seconds=settings.smtp_timeout_seconds,
        )
    )
    return Dispatcher(
        ctx,
        sender,
        MailRenderer(settings.mail_templates),
        DispatchSettings(
            mail_from=settings.mail_from,
            poll_seconds=settings.dispatch_poll_seconds,
            retry_initial=timedelta(seconds=settings.dispatch_retry_initial_seconds),
            retry_max=timedelta(seconds=settings.dispatch_retry_max_seconds),
            max_attempts=settings.dispatch_max_attempts,
            claim_for=timedelta(seconds=settings.smtp_timeout_seconds * 4 + 60),
        ),
    )
