"""A held seat: the current verified lease, replaced in place at every renewal.

Not frozen on purpose: the heartbeat swaps in a new token every renewal while
the app keeps one object. `Lease` belongs to the sync client, `AsyncLease`
to the asyncio client; both read their data from the same base.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from keyturn.licensing.v1 import licensing_pb2

from .conversion import EntitlementInfo, LeaseGrant
from .errors import KeyturnError

if TYPE_CHECKING:
    from .heartbeat import AsyncHeartbeat, Heartbeat


class LeaseBase:
    """The data of a lease: token, claims, times, entitlement, and whether it was lost."""

    def __init__(self, grant: LeaseGrant) -> None:
        self._grant = grant
        self.lost: KeyturnError | None = None  # set once the heartbeat gives the seat up
        self.released = False
        # The ActivateSeat request that took the seat: the heartbeat sends it again when a
        # renewal whose answer was lost had in fact renewed (see heartbeat.py).
        self.activation: licensing_pb2.ActivateSeatRequest | None = None

    def _apply(self, grant: LeaseGrant) -> None:
        self._grant = grant

    @property
    def token(self) -> str:
        """The current lease JWT: store it to verify offline at the next start."""
        return self._grant.token

    @property
    def claims(self) -> dict[str, Any]:
        """The verified claims (iss, aud, sub, exp, edition, features...), as signed."""
        return self._grant.claims

    @property
    def activation_id(self) -> str:
        return self._grant.activation_id

    @property
    def entitlement(self) -> EntitlementInfo:
        return self._grant.entitlement

    @property
    def entitlement_id(self) -> str:
        return str(self.claims.get("entitlement_id", self.entitlement.entitlement_id))

    @property
    def product_id(self) -> str:
        return str(self.claims.get("aud", self.entitlement.product_id))

    @property
    def edition(self) -> str:
        return str(self.claims.get("edition", self.entitlement.edition_id))

    @property
    def features(self) -> dict[str, int | None]:
        """Feature name -> numeric limit, or None for a feature without a limit."""
        raw = self.claims.get("features")
        if isinstance(raw, Mapping):
            return {str(k): (int(v) if isinstance(v, int) else None) for k, v in raw.items()}
        return dict(self.entitlement.features)

    @property
    def overage(self) -> bool:
        """True when this seat is beyond the paid count (allowed by an overage policy)."""
        return bool(self.claims.get("overage", False))

    @property
    def expire_time(self) -> datetime:
        return self._grant.expire_time

    @property
    def renew_time(self) -> datetime:
        return self._grant.renew_time

    def expired(self, now: datetime | None = None) -> bool:
        return (now or datetime.now(UTC)) >= self.expire_time

    def has_feature(self, name: str) -> bool:
        return name in self.features

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(activation_id={self.activation_id!r}, "
            f"edition={self.edition!r}, expire_time={self.expire_time.isoformat()})"
        )


class _SyncOwner(Protocol):
    def renew(self, lease: Lease) -> Lease: ...

    def release(self, lease: Lease | str) -> None: ...


class _AsyncOwner(Protocol):
    async def renew(self, lease: AsyncLease) -> AsyncLease: ...

    async def release(self, lease: AsyncLease | str) -> None: ...


class Lease(LeaseBase):
    """A seat held through the sync client; `with` releases it on exit."""

    def __init__(self, grant: LeaseGrant, owner: _SyncOwner) -> None:
        super().__init__(grant)
        self._owner = owner
        self.heartbeat: Heartbeat | None = None
        self.lock = threading.RLock()  # one renewal or release at a time

    def renew(self) -> Lease:
        return self._owner.renew(self)

    def release(self) -> None:
        """Stop the heartbeat and give the seat back."""
        self._owner.release(self)

    close = release

    def __enter__(self) -> Lease:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.release()
        except KeyturnError:
            # Do not mask the error that ended the block, nor fail over a seat
            # already lost: the server frees it when the lease lapses.
            if exc is None and self.lost is None:
                raise


class AsyncLease(LeaseBase):
    """A seat held through the asyncio client; `async with` releases it on exit."""

    def __init__(self, grant: LeaseGrant, owner: _AsyncOwner) -> None:
        super().__init__(grant)
        self._owner = owner
        self.heartbeat: AsyncHeartbeat | None = None
        self.lock = asyncio.Lock()  # one renewal or release at a time

    async def renew(self) -> AsyncLease:
        return await self._owner.renew(self)

    async def release(self) -> None:
        """Stop the heartbeat and give the seat back."""
        await self._owner.release(self)

    close = release

    async def __aenter__(self) -> AsyncLease:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self.release()
        except KeyturnError:
            if exc is None and self.lost is None:
                raise
