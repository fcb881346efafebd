"""The catalog: products with editions and features, and SKUs as operation lists."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import ClassVar

from .deactivation_limits import DeactivationLimit


class LicenseModel(StrEnum):
    FLOATING = "floating"
    NODE_LOCKED = "node_locked"


class Dispatch(StrEnum):
    LICENSE_KEY = "license_key"
    INVITATION = "invitation"
    NONE = "none"


class Overage(StrEnum):
    """Seats usable beyond the paid count, as a share of it."""

    NONE = "none"
    ALLOW_125_PERCENT = "allow_125_percent"
    ALLOW_150_PERCENT = "allow_150_percent"
    ALLOW_200_PERCENT = "allow_200_percent"

    @property
    def percent(self) -> int:
        """Seats usable at once, in percent of the paid seats."""
        return _OVERAGE_PERCENT[self]

    def seat_limit(self, seats: int) -> int:
        """Seats usable at once for `seats` paid ones (rounded down, never below `seats`)."""
        return seats * self.percent // 100


_OVERAGE_PERCENT = {
    Overage.NONE: 100,
    Overage.ALLOW_125_PERCENT: 125,
    Overage.ALLOW_150_PERCENT: 150,
    Overage.ALLOW_200_PERCENT: 200,
}


class RenewalAnchor(StrEnum):
    """Where a renewal's term starts."""

    FROM_EXPIRY = "from_expiry"
    FROM_NOW = "from_now"
    FROM_NOW_IF_EXPIRED = "from_now_if_expired"


DEFAULT_LEASE_DURATION = timedelta(minutes=15)
MIN_LEASE_DURATION = timedelta(minutes=1)
MAX_LEASE_DURATION = timedelta(days=30)
MAX_SEATS_PER_UNIT = 100_000
MAX_SEATS = 1_000_000
MAX_GRACE = timedelta(days=90)


@dataclass(frozen=True)
class Feature:
    """A capability; `limit` is None when the feature is simply on."""

    name: str
    limit: int | None = None


@dataclass(frozen=True)
class Edition:
    edition_id: str
    display_name: str = ""
    features: tuple[Feature, ...] = ()


@dataclass(frozen=True)
class Product:
    product_id: str
    display_name: str = ""
    editions: tuple[Edition, ...] = ()
    etag: str = ""
    update_time: datetime | None = None

    def edition(self, edition_id: str) -> Edition | None:
        return next((e for e in self.editions if e.edition_id == edition_id), None)


@dataclass(frozen=True)
class Create:
    """Create a new entitlement; `term` is None when perpetual."""

    name: ClassVar[str] = "create"
    edition_id: str
    seats_per_unit: int
    term: str | None
    trial: bool = False
    features: tuple[Feature, ...] = ()
    license_model: LicenseModel = LicenseModel.FLOATING
    lease_duration: timedelta = DEFAULT_LEASE_DURATION
    dispatch: Dispatch = Dispatch.LICENSE_KEY
    grace: timedelta = timedelta(0)
    overage: Overage = Overage.NONE
    deactivation_limit: DeactivationLimit | None = None  # None: deactivations unlimited


@dataclass(frozen=True)
class Renew:
    """Extend the end date by `term` per unit, starting where `anchor` says."""

    name: ClassVar[str] = "renew"
    term: str
    anchor: RenewalAnchor = RenewalAnchor.FROM_NOW_IF_EXPIRED


@dataclass(frozen=True)
class AddSeats:
    name: ClassVar[str] = "add_seats"
    seats_per_unit: int


@dataclass(frozen=True)
class RemoveSeats:
    name: ClassVar[str] = "remove_seats"
    seats_per_unit: int


@dataclass(frozen=True)
class ChangeEdition:
    name: ClassVar[str] = "change_edition"
    edition_id: str


@dataclass(frozen=True)
class AddFeatures:
    name: ClassVar[str] = "add_features"
    features: tuple[Feature, ...]


@dataclass(frozen=True)
class RemoveFeatures:
    name: ClassVar[str] = "remove_features"
    feature_names: tuple[str, ...]


@dataclass(frozen=True)
class ConvertTrial:
    """Trial to paid; `term` is None when the paid entitlement is perpetual."""

    name: ClassVar[str] = "convert_trial"
    term: str | None


@dataclass(frozen=True)
class Cancel:
    name: ClassVar[str] = "cancel"


@dataclass(frozen=True)
class Suspend:
    """Hold the entitlement (failed payment): seats and devices stay, none may be used."""

    name: ClassVar[str] = "suspend"


@dataclass(frozen=True)
class Reinstate:
    """Lift a suspension: the entitlement goes on where it was."""

    name: ClassVar[str] = "reinstate"


Operation = (
    Create
    | Renew
    | AddSeats
    | RemoveSeats
    | ChangeEdition
    | AddFeatures
    | RemoveFeatures
    | ConvertTrial
    | Cancel
    | Suspend
    | Reinstate
)


@dataclass(frozen=True)
class Sku:
    sku_id: str
    product_id: str
    operations: tuple[Operation, ...]
    display_name: str = ""
    etag: str = ""
    update_time: datetime | None = field(default=None, compare=False)

    @property
    def creates(self) -> bool:
        """True when the SKU makes a new entitlement rather than changing one."""
        return bool(self.operations) and isinstance(self.operations[0], Create)


def without_features(features: tuple[Feature, ...], names: tuple[str, ...]) -> tuple[Feature, ...]:
    return tuple(f for f in features if f.name not in names)


def merge_features(base: tuple[Feature, ...], extra: tuple[Feature, ...]) -> tuple[Feature, ...]:
    """`base` with `extra` added; a name in both takes the limit from `extra`. Sorted by name."""
    merged = {f.name: f for f in base}
    merged.update({f.name: f for f in extra})
    return tuple(sorted(merged.values(), key=lambda f: f.name))
