"""The composition root: settings in, a ready application context out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sqlite3
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import asyncpg
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from .app.context import AppContext
from .app.delivery import Dispatcher, DispatchSettings
from .app.event_feed import EventFeed
from .app.token_use import UseRecorder, write_identity_use
from .app.webhook_notice import PauseNotice
from .app.webhook_sender import EventPoster, SenderSettings, WebhookSender
from .clock import Clock, SystemClock
from .config import Settings, SettingsError
from .dispatch.rendering import MailRenderer
from .dispatch.smtp import SmtpSender, SmtpSettings
from .dispatch.webhook_http import WebhookHttp
from .domain.webhooks import RetryPolicy
from .leases.keyring import SigningKeys, load_keyring
from .sealing import HOW_TO_SET, Sealer, SecretError, checked_secret, load_or_create_secret_file
from .store.database import create_engine, create_sqlite_file, sqlite_file, sqlite_side_files
from .store.migrate import current_revision, head_revision, upgrade
from .store.pg_seats import PgSeats
from .store.seats import SeatCheck, SeatStore
from .store.sql_seats import SqlSeats
from .store.unit_of_work import ReadStore, Store

log = logging.getLogger("keyturn")


def secrets_file_for(settings: Settings) -> Path:
    if settings.secrets_file is not None:
        return settings.secrets_file
    database = make_url(settings.database_url).database or "keyturn.db"
    return Path(f"{database}.secrets")


def resolve_secret(settings: Settings) -> str:
    """The master secret: from settings, or for SQLite from (or into) a file beside the
    database (the quick start). A weak one is refused, wherever it comes from."""
    if settings.secret_key is not None:
        return checked_secret(settings.secret_key.get_secret_value(), "KEYTURN_SECRET_KEY")
    if not settings.is_sqlite:
        raise SecretError(
            "KEYTURN_SECRET_KEY is required with PostgreSQL (every replica needs the same "
            f"one): {HOW_TO_SET}"
        )
    path = secrets_file_for(settings)
    database = sqlite_file(settings.database_url)
    if not path.exists() and database is not None and holds_sealed_data(database):
        raise SecretError(
            f"{path.resolve()} is missing: it holds the secret of {database.resolve()}, whose "
            "keys cannot be "
            "opened without it; copy it beside the database (it is made with the database "
            "and kept with it by keyturn backup), or set KEYTURN_SECRET_KEY to that secret"
        )
    secret = load_or_create_secret_file(path)
    warn_if_others_may_read(path)
    return secret


def holds_sealed_data(database: Path) -> bool:
    """Whether the SQLite file has signing keys: sealed with its secret (every database
    that served or was written by a command has one), so a new secret cannot do."""
    if not database.exists():
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
            return db.execute("SELECT 1 FROM signing_keys LIMIT 1").fetchone() is not None
    except sqlite3.Error:  # not a database yet, or no schema: nothing sealed in it
        return False


def describe_database(settings: Settings) -> str:
    """The database settings point at, as a person would look for it (no password)."""
    database = sqlite_file(settings.database_url)
    if database is not None:
        return str(database.resolve())
    return make_url(settings.database_url).render_as_string(hide_password=True)


def admin_database(settings: Settings, *, create: bool) -> str:
    """`describe_database`, once sure an admin command will not make a database or secret
    unless `create`: SettingsError naming what is missing and how to point at the right one."""
    shown = describe_database(settings)
    database = sqlite_file(settings.database_url)
    if create or database is None:
        return shown
    if not database.exists():
        raise SettingsError(
            f"no database at {shown}: run this where the server's database is, or set "
            "KEYTURN_DATABASE_URL to it; --create makes a new one"
        )
    secrets = secrets_file_for(settings)
    if settings.secret_key is None and not secrets.exists() and not holds_sealed_data(database):
        raise SettingsError(
            f"{secrets.resolve()} (the secret of {shown}) does not exist: set KEYTURN_SECRET_KEY or "
            "KEYTURN_SECRETS_FILE to the server's; --create makes a new one"
        )
    return shown


def warn_if_others_may_read(*paths: Path) -> None:
    """Files made before Keyturn created them private (0600) keep their mode: say so."""
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            mode = stat.S_IMODE(path.stat().st_mode)
            if mode & 0o077:
                log.warning(
                    "%s is open to other users (mode %03o): it holds secrets or customer "
                    "data; make it private with: chmod 600 %s",
                    path,
                    mode,
                    path,
                )


def prepare_sqlite_folder(settings: Settings) -> None:
    """The SQLite file's folder, and the file itself (private), before a migration opens it."""
    database = sqlite_file(settings.database_url)
    if database is not None:
        database.parent.mkdir(parents=True, exist_ok=True)
        create_sqlite_file(settings.database_url)


def _causes(error: BaseException) -> Iterator[BaseException]:
    seen: BaseException | None = error
    while seen is not None:
        yield seen
        seen = seen.__cause__ or seen.__context__


def database_problem(error: BaseException, database_url: str) -> str | None:
    """Why PostgreSQL at `database_url` cannot be used, in one line naming the fix; None
    for an error that is not one of the usual first-hour mistakes."""
    url = make_url(database_url)
    if url.get_backend_name() != "postgresql":
        return None
    where = f"{url.host or 'localhost'}:{url.port or 5432}"
    for cause in _causes(error):
        if isinstance(cause, asyncpg.InvalidCatalogNameError):
            return (
                f"database {url.database!r} does not exist on the PostgreSQL server at {where}: "
                f"create it ({_createdb(url)}) or fix KEYTURN_DATABASE_URL"
            )
        if isinstance(
            cause, asyncpg.InvalidAuthorizationSpecificationError | asyncpg.InvalidPasswordError
        ):
            return (
                f"the PostgreSQL server at {where} refused the login: {cause}; fix the user "
                "or password in KEYTURN_DATABASE_URL"
            )
        if isinstance(cause, ConnectionRefusedError | socket.gaierror | TimeoutError):
            reason = (
                cause.strerror if isinstance(cause, OSError) and cause.strerror else "timed out"
            )
            return (
                f"cannot connect to PostgreSQL at {where} ({reason}): is it running there? "
                "Fix the host or port in KEYTURN_DATABASE_URL"
            )
    return None


def _createdb(url: URL) -> str:
    options = [f"-h {url.host}" if url.host else "", f"-p {url.port}" if url.port else ""]
    options.append(f"-U {url.username}" if url.username else "")
    return " ".join(["createdb", *filter(None, options), str(url.database)])


@contextlib.contextmanager
def explained_database_errors(settings: Settings) -> Iterator[None]:
    """A database that cannot be reached, or does not exist, as one SettingsError line."""
    try:
        yield
    except (SQLAlchemyError, OSError, asyncpg.PostgresError) as error:
        problem = database_problem(error, settings.database_url)
        if problem is None:
            raise
        raise SettingsError(problem) from None


@dataclass(frozen=True)
class Migration:
    """What a migration did: from which schema revision (None: no schema) to which."""

    before: str | None
    after: str | None

    def describe(self) -> str:
        if self.before is None:
            return f"created the schema at {self.after}"
        if self.before == self.after:
            return f"schema is up to date at {self.after}"
        return f"migrated from {self.before} to {self.after}"


async def migrate(settings: Settings) -> Migration:
    prepare_sqlite_folder(settings)
    engine = create_engine(settings.database_url, pool_size=1, limits=settings.database_limits)
    try:
        with explained_database_errors(settings):
            before = await current_revision(engine)
            await asyncio.to_thread(upgrade, settings.database_url)
    finally:
        await engine.dispose()
    return Migration(before, head_revision() if before != head_revision() else before)


def seat_store(store: Store, clock: Clock, lapse_grace: timedelta) -> SeatStore:
    """asyncpg on PostgreSQL (the hot path, few round trips); SQLAlchemy on SQLite."""
    if store.dialect == "postgresql":
        return PgSeats(store, clock, lapse_grace)
    return SqlSeats(store, clock, lapse_grace)


def check_read_database(settings: Settings) -> None:
    """A read database is a streaming standby of a PostgreSQL primary: nothing else."""
    if not settings.has_read_database:
        return
    for variable, url in (
        ("KEYTURN_DATABASE_URL", settings.database_url),
        ("KEYTURN_READ_DATABASE_URL", settings.read_database_url),
    ):
        try:
            backend = make_url(url).get_backend_name()
        except ArgumentError as error:
            raise SettingsError(f"{variable} is not a database URL: {error}") from None
        if backend != "postgresql":
            raise SettingsError(
                "KEYTURN_READ_DATABASE_URL (a streaming standby) needs PostgreSQL for both "
                f"databases; {variable} is {backend}. Leave it empty to read from the database"
            )


def read_side(
    settings: Settings, store: Store, seats: SeatStore, clock: Clock, lapse_grace: timedelta
) -> tuple[ReadStore, SeatCheck]:
    """Where the read-only RPCs read: the standby if one is set, else the primary itself."""
    if not settings.has_read_database:
        return store, seats
    standby = Store.from_url(
        settings.read_database_url,
        settings.database_pool_size,
        settings.database_transaction_pooler,
        read_only=True,
        limits=settings.database_limits,
    )
    return standby, PgSeats(standby, clock, lapse_grace)


def _days(days: int) -> timedelta | None:
    """A lifetime setting in days; 0 means none."""
    return timedelta(days=days) if days else None


async def build_context(settings: Settings, clock: Clock | None = None) -> AppContext:
    """Open the database (migrating it when allowed), unseal the signing keys."""
    clock = clock or SystemClock(timedelta(seconds=settings.clock_offset_seconds))
    sealer = Sealer(resolve_secret(settings))
    if settings.auto_migrate and settings.database_transaction_pooler:
        raise SettingsError(
            "KEYTURN_AUTO_MIGRATE must be false with KEYTURN_DATABASE_TRANSACTION_POOLER: "
            "migrations hold a session lock a transaction pooler cannot keep; run "
            "`keyturn migrate` with the database's own URL first"
        )
    check_read_database(settings)
    if settings.auto_migrate:
        await migrate(settings)
    store = Store.from_url(
        settings.database_url,
        settings.database_pool_size,
        settings.database_transaction_pooler,
        limits=settings.database_limits,
    )
    database_file = sqlite_file(settings.database_url)
    if database_file is not None:
        warn_if_others_may_read(database_file, *sqlite_side_files(database_file))
    try:
        with explained_database_errors(settings):
            keyring = await load_keyring(store, sealer, clock.now())
    except BaseException:
        await store.close()
        raise
    lapse_grace = timedelta(seconds=settings.lapse_grace_seconds)
    seats = seat_store(store, clock, lapse_grace)
    read_store, read_seats = read_side(settings, store, seats, clock, lapse_grace)
    keys = SigningKeys(
        store,
        sealer,
        keyring,
        settings.signing_key_refresh_seconds,
        published=read_store,
        clock=clock,
    )
    ctx = AppContext(
        store=store,
        sealer=sealer,
        keys=keys,
        clock=clock,
        seats=seats,
        feed=EventFeed(
            read_store,
            store.bell,
            poll_seconds=settings.watch_poll_seconds,
            max_streams=settings.watch_max_streams,
        ),
        read_store=read_store,
        read_seats=read_seats,
        identity_uses=UseRecorder(store, clock, write_identity_use, what="identity token"),
        issuer=settings.issuer,
        api_token_lifetime=_days(settings.api_token_lifetime_days),
        identity_idle_limit=_days(settings.identity_token_idle_days),
        lapse_grace=lapse_grace,
        lapse_sweep_seconds=settings.lapse_sweep_seconds,
        readiness_timeout=settings.health_check_timeout_seconds,
    )
    ctx.webhooks = _event_poster(ctx, settings)
    return ctx


def _event_poster(ctx: AppContext, settings: Settings) -> EventPoster:
    """Signs and posts webhooks with the API's JSON of an event (app may not import api)."""
    from .api.webhooks_convert import event_json

    return EventPoster(ctx, WebhookHttp(settings.webhooks_timeout_seconds), event_json)


def _smtp_sender(settings: Settings) -> SmtpSender:
    return SmtpSender(
        SmtpSettings(
            host=settings.smtp_host,
            port=settings.smtp_port,
            security=settings.smtp_security,
            username=settings.smtp_username,
            password=settings.smtp_password.get_secret_value() if settings.smtp_password else "",
            timeout_seconds=settings.smtp_timeout_seconds,
        )
    )


def build_webhook_sender(ctx: AppContext, settings: Settings) -> WebhookSender | None:
    """The outbound webhook sender of a serving process, unless turned off; with the
    pause notice when an address and an SMTP server are set."""
    if not settings.webhooks_in_server or ctx.webhooks is None:
        return None
    notice = None
    if settings.webhooks_notify_email and settings.smtp_host:
        notice = PauseNotice(
            _smtp_sender(settings), settings.mail_from, settings.webhooks_notify_email
        )
    return WebhookSender(
        ctx,
        ctx.webhooks,
        SenderSettings(
            poll_seconds=settings.webhooks_poll_seconds,
            claim_for=timedelta(seconds=settings.webhooks_timeout_seconds * 4 + 60),
            log_attempts=settings.webhooks_log_attempts,
            retry=RetryPolicy(
                initial=timedelta(seconds=settings.webhooks_retry_initial_seconds),
                maximum=timedelta(seconds=settings.webhooks_retry_max_seconds),
                pause_after=timedelta(seconds=settings.webhooks_pause_after_seconds),
            ),
        ),
        notice,
    )


def build_dispatcher(ctx: AppContext, settings: Settings) -> Dispatcher | None:
    """The email dispatcher, or None when no SMTP server is configured."""
    if not settings.smtp_host:
        return None
    return Dispatcher(
        ctx,
        _smtp_sender(settings),
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
