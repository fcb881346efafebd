"""The store: an engine and the transactions that group repository calls."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from typing import Protocol

import asyncpg
from sqlalchemy import exc, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from keyturn.server.domain.errors import (
    DomainError,
    database_busy,
    database_unavailable,
    transaction_conflict,
)

from .activation_repository import ActivationRepository
from .audit_repository import AuditRepository
from .catalog_repository import CatalogRepository
from .credential_failure_repository import CredentialFailureRepository
from .database import DEFAULT_LIMITS, READ_ONLY, DatabaseLimits, create_engine, create_pool
from .entitlement_repository import EntitlementRepository
from .event_numbering import EventNumbering
from .event_repository import EventRepository
from .migrate import current_revision, serves_schema
from .named_user_repository import NamedUserRepository
from .order_repository import OrderRepository
from .outbox_repository import OutboxRepository
from .signing_key_repository import SigningKeyRepository
from .token_repository import TokenRepository
from .webhook_repository import WebhookRepository

# Serialization failure (on a standby also a query cancelled by a recovery conflict), deadlock.
RETRYABLE_SQLSTATES = {"40001", "40P01"}
# Connection, resources, operator intervention (a server starting up or shutting down).
UNAVAILABLE_SQLSTATE_CLASSES = ("08", "53", "57")
# The session's own limits (DatabaseLimits): a statement or a lock wait that took too long.
BUSY_SQLSTATES = {"57014": "statement_timeout", "55P03": "lock_timeout"}
SQLITE_BUSY = 5  # another writer held the file past busy_timeout
# asyncpg's "cannot switch to state N; another operation is in progress": the database
# ended the connection (pg_terminate_backend, a shutdown) between two statements, and
# the next one finds the protocol in the state the lost one left.
BROKEN_CONNECTION = (asyncpg.InternalClientError,)


def storage_error(sqlstate: str | None) -> DomainError | None:
    """What a database failure with this SQLSTATE means to a caller, through either
    driver: the database busy or unavailable, a conflict worth retrying, or None (a bug)."""
    state = sqlstate or ""
    if state in BUSY_SQLSTATES:
        return database_busy(BUSY_SQLSTATES[state])
    if state[:2] in UNAVAILABLE_SQLSTATE_CLASSES:
        return database_unavailable()
    if state in RETRYABLE_SQLSTATES:
        return transaction_conflict(attempts=1)
    return None


def _sqlstate(error: exc.DBAPIError) -> str | None:
    """The PostgreSQL error code behind a driver error, if there is one."""
    for candidate in (error.orig, getattr(error.orig, "__cause__", None)):
        code = getattr(candidate, "sqlstate", None)
        if isinstance(code, str):
            return code
    return None


class DuplicateKeyError(Exception):
    """A unique key was taken by a concurrent transaction; the whole transaction is undone."""


class Transaction:
    """The repositories of one database transaction."""

    def __init__(self, connection: AsyncConnection) -> None:
        self.connection = connection
        self.catalog = CatalogRepository(connection)
        self.orders = OrderRepository(connection)
        self.entitlements = EntitlementRepository(connection)
        self.activations = ActivationRepository(connection)
        self.events = EventRepository(connection)
        self.tokens = TokenRepository(connection)
        self.signing_keys = SigningKeyRepository(connection)
        self.named_users = NamedUserRepository(connection)
        self.outbox = OutboxRepository(connection)
        self.credential_failures = CredentialFailureRepository(connection)
        self.audit = AuditRepository(connection)
        self.webhooks = WebhookRepository(connection)


class CommitBell:
    """Wakes those waiting for new events as soon as a transaction in this process commits some.

    Take `armed()` before reading, then `wait` on it: a commit in between is not missed.
    """

    def __init__(self) -> None:
        self._signal = asyncio.Event()

    def armed(self) -> asyncio.Event:
        return self._signal

    def ring(self) -> None:
        self._signal.set()
        self._signal = asyncio.Event()

    @staticmethod
    async def wait(signal: asyncio.Event, poll_seconds: float) -> None:
        """Until `signal` rings or `poll_seconds` pass (to look for events of other replicas)."""
        with suppress(TimeoutError):
            async with asyncio.timeout(poll_seconds):
                await signal.wait()


class ReadStore(Protocol):
    """What the read-only RPCs may use: read transactions only, so that code given the
    store of a standby (see bootstrap) cannot even try to write there."""

    @property
    def dialect(self) -> str: ...

    def read(self) -> AbstractAsyncContextManager[Transaction]: ...

    async def is_ready(self, within_seconds: float) -> bool: ...

    async def close(self) -> None: ...


class Store:
    """Opens transactions; commits when the block ends, rolls back when it raises.

    `read_only`: the store of a streaming standby. It numbers no events and refuses
    `write`: a hot standby would refuse them anyway, this only says so earlier.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        transaction_pooler: bool = False,
        *,
        read_only: bool = False,
        limits: DatabaseLimits = DEFAULT_LIMITS,
    ) -> None:
        self.engine = engine
        self.limits = limits
        self._transaction_pooler = transaction_pooler
        self.read_only = read_only
        self.bell = CommitBell()
        # PostgreSQL numbers events after commit; SQLite at insert (one writer at a time).
        self.numbering = (
            EventNumbering(self.driver_pool, self.bell.ring)
            if engine.dialect.name == "postgresql" and not read_only
            else None
        )
        # SQLite: a deferred BEGIN that takes no write lock; PostgreSQL: BEGIN READ ONLY.
        self._pool: asyncpg.Pool | None = None
        self._pool_lock = asyncio.Lock()
        self._read_only_options: dict[str, bool] = {READ_ONLY: True}
        if engine.dialect.name == "postgresql":
            self._read_only_options["postgresql_readonly"] = True

    async def driver_pool(self) -> asyncpg.Pool:
        """PostgreSQL connections of the seat path (store/pg_seats.py), opened at first use
        and closed with the store."""
        if self._pool is None:
            async with self._pool_lock:
                if self._pool is None:
                    url = self.engine.url.render_as_string(hide_password=False)
                    self._pool = await create_pool(
                        url, self.pool_size, self._transaction_pooler, self.limits
                    )
        return self._pool

    @classmethod
    def from_url(
        cls,
        database_url: str,
        pool_size: int = 10,
        transaction_pooler: bool = False,
        *,
        read_only: bool = False,
        limits: DatabaseLimits = DEFAULT_LIMITS,
    ) -> Store:
        engine = create_engine(database_url, pool_size, transaction_pooler, limits)
        return cls(engine, transaction_pooler, read_only=read_only, limits=limits)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @property
    def pool_size(self) -> int:
        """Connections each pool keeps (the seat path's and SQLAlchemy's)."""
        size: int = self.engine.pool.size()  # type: ignore[attr-defined]
        return size

    @asynccontextmanager
    async def write(self) -> AsyncIterator[Transaction]:
        """A write transaction; its events are written last, just before commit, and are
        readable (numbered) when this returns.

        Its commit rings the bell when it wrote events or queued emails."""
        if self.read_only:
            raise RuntimeError("a write transaction on the store of a read-only database")
        async with self._transaction(read_only=False) as tx:
            yield tx
            written = await tx.events.flush()
        if written:
            await self.events_committed()
        elif tx.outbox.queued:
            self.bell.ring()

    async def events_committed(self) -> None:
        """After a commit that wrote events: wait for their numbers, then wake the watchers."""
        if self.numbering is not None:
            await self.numbering.settle()
        self.bell.ring()

    def start(self) -> None:
        """Background work of a serving process: numbering events nobody waits for."""
        if self.numbering is not None:
            self.numbering.start()

    @asynccontextmanager
    async def read(self) -> AsyncIterator[Transaction]:
        async with self._transaction(read_only=True) as tx:
            yield tx

    @asynccontextmanager
    async def _transaction(self, read_only: bool) -> AsyncIterator[Transaction]:
        try:
            async with self.engine.connect() as connection:
                if read_only:
                    await connection.execution_options(**self._read_only_options)
                async with connection.begin():
                    yield Transaction(connection)
        except exc.IntegrityError as error:
            raise DuplicateKeyError(str(error.orig)) from error
        except exc.TimeoutError as error:  # no pooled connection came free in time
            raise database_busy("pool_timeout") from error
        except TimeoutError as error:  # the driver's own bound: the database did not answer
            raise database_busy("statement_timeout") from error
        except exc.DBAPIError as error:
            answer = storage_error(_sqlstate(error))
            if answer is not None:
                raise answer from error
            if isinstance(error.orig, BROKEN_CONNECTION) or isinstance(
                getattr(error.orig, "__cause__", None), BROKEN_CONNECTION
            ):
                raise database_unavailable() from error
            if getattr(error.orig, "sqlite_errorcode", None) == SQLITE_BUSY:
                raise database_busy("lock_timeout") from error
            if isinstance(error, exc.OperationalError | exc.InterfaceError):
                raise database_unavailable() from error
            raise
        except OSError as error:
            raise database_unavailable() from error

    async def is_ready(self, within_seconds: float) -> bool:
        """True when the database answers within `within_seconds` and its schema is one this
        code serves (migrate.serves_schema): a frozen database makes this False as fast as
        a stopped one."""
        try:
            async with asyncio.timeout(within_seconds):
                async with self.engine.connect() as connection:
                    await connection.execution_options(**{READ_ONLY: True})
                    await connection.execute(text("SELECT 1"))
                return serves_schema(await current_revision(self.engine))
        except (exc.SQLAlchemyError, OSError):  # TimeoutError is an OSError
            return False

    async def close(self) -> None:
        if self.numbering is not None:
            await self.numbering.close()
        if self._pool is not None:
            await self._pool.close()
        await self.engine.dispose()
