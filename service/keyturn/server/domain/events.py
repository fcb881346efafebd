"""What an entitlement event records: one kind per change an order or a device makes."""

from __future__ import annotations

from enum import StrEnum


class EventType(StrEnum):
    CREATED = "created"
    RENEWED = "renewed"
    SEATS_CHANGED = "seats_changed"
    EDITION_CHANGED = "edition_changed"
    FEATURES_CHANGED = "features_changed"
    TRIAL_CONVERTED = "trial_converted"
    CANCELLED = "cancelled"
    SEAT_ACTIVATED = "seat_activated"
    SEAT_RELEASED = "seat_released"
    LEASE_LAPSED = "lease_lapsed"
    SUSPENDED = "suspended"
    REINSTATED = "reinstated"
    SEAT_DEACTIVATED = "seat_deactivated"  # an administrator took the seat back
    NAMED_USER_REMOVED = "named_user_removed"
    NAMED_USER_CHANGED = "named_user_changed"
