"""How much data the benchmark seeds and how long it measures, per `--scale`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Scale:
    name: str
    bulk_entitlements: int  # seeded by SQL as background rows (no license key known)
    driven_entitlements: int  # created through FulfillOrder: the load uses their keys
    history_released: int  # released activations on the 'history' entitlement
    big_live: int  # live activations on the 'big' entitlement
    activations: int  # activation rows in all once seeded
    memory_activations: int  # new devices activated to see the server's memory after them
    duration: float  # default seconds per measurement
    warmup: float  # seconds of calls before each measurement, not counted

    @property
    def big_seats(self) -> int:
        """Seats of the 'big' entitlement: twice its live seats, so activations still fit."""
        return 2 * self.big_live

    @property
    def spread_activations(self) -> int:
        """Background activation rows spread over the other entitlements."""
        return self.activations - self.history_released - self.big_live


SCALES = {
    "small": Scale(
        name="small",
        bulk_entitlements=200,
        driven_entitlements=50,
        history_released=2_000,
        big_live=2_000,
        activations=20_000,
        memory_activations=2_000,
        duration=3.0,
        warmup=0.5,
    ),
    "full": Scale(
        name="full",
        bulk_entitlements=10_000,
        driven_entitlements=300,
        history_released=100_000,
        big_live=100_000,
        activations=1_000_000,
        memory_activations=100_000,
        duration=10.0,
        warmup=1.0,
    ),
}
