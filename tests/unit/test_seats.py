"""Seat rules: which activations hold a seat at a given instant."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keyturn.server.domain.catalog import LicenseModel
from keyturn.server.domain.seats import Activation, holds_seat, renew_time, seat_freed_time
from keyturn.server.domain.usage import Granularity, SeatChange, usage_buckets

EXPIRES = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
GRACE = timedelta(seconds=30)
US = timedelta(microseconds=1)
ACTIVATION = Activation(
    activation_id="act_1",
    entitlement_id="ent_1",
    fingerprint="device-0001",
    label="laptop",
    lease_jti="jti_1",
    lease_expire_time=EXPIRES,
    create_time=EXPIRES - timedelta(minutes=15),
)
FLOATING = LicenseModel.FLOATING
NODE_LOCKED = LicenseModel.NODE_LOCKED


def test_a_floating_seat_is_held_while_its_lease_runs() -> None:
    assert holds_seat(ACTIVATION, FLOATING, EXPIRES - timedelta(minutes=5), GRACE)


def test_a_floating_seat_is_held_through_the_lapse_grace() -> None:
    assert holds_seat(ACTIVATION, FLOATING, EXPIRES, GRACE)
    assert holds_seat(ACTIVATION, FLOATING, EXPIRES + GRACE - US, GRACE)


def test_a_floating_seat_is_free_once_lease_and_grace_have_lapsed() -> None:
    assert not holds_seat(ACTIVATION, FLOATING, EXPIRES + GRACE, GRACE)
    assert not holds_seat(ACTIVATION, FLOATING, EXPIRES + timedelta(days=1), GRACE)


def test_without_grace_a_floating_seat_is_free_when_the_lease_expires() -> None:
    assert holds_seat(ACTIVATION, FLOATING, EXPIRES - US, timedelta(0))
    assert not holds_seat(ACTIVATION, FLOATING, EXPIRES, timedelta(0))


def test_a_node_locked_seat_is_held_after_its_lease_lapses() -> None:
    assert holds_seat(ACTIVATION, NODE_LOCKED, EXPIRES - timedelta(minutes=5), GRACE)
    assert holds_seat(ACTIVATION, NODE_LOCKED, EXPIRES + GRACE, GRACE)
    assert holds_seat(ACTIVATION, NODE_LOCKED, EXPIRES + timedelta(days=365), GRACE)


@pytest.mark.parametrize("model", list(LicenseModel))
def test_a_released_activation_holds_no_seat(model: LicenseModel) -> None:
    released = replace(ACTIVATION, released_time=EXPIRES - timedelta(minutes=10))
    assert not holds_seat(released, model, EXPIRES - timedelta(minutes=5), GRACE)
    assert not holds_seat(released, model, EXPIRES + GRACE, GRACE)


@given(
    offset=st.integers(-(10**10), 10**10),
    grace=st.integers(0, 10**9).map(lambda us: timedelta(microseconds=us)),
    released=st.booleans(),
)
def test_holds_seat_rule(offset: int, grace: timedelta, released: bool) -> None:
    activation = replace(ACTIVATION, released_time=EXPIRES if released else None)
    now = EXPIRES + timedelta(microseconds=offset)
    assert holds_seat(activation, FLOATING, now, grace) is (not released and now < EXPIRES + grace)
    assert holds_seat(activation, NODE_LOCKED, now, grace) is (not released)


def test_renew_time_is_half_way_through_the_lease() -> None:
    issued = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
    assert renew_time(issued, issued + timedelta(minutes=15)) == issued + timedelta(
        minutes=7, seconds=30
    )
    assert renew_time(issued, issued) == issued


@given(
    offset=st.integers(min_value=-(10**8), max_value=10**8),
    grace=st.integers(min_value=0, max_value=3600),
)
def test_a_lapse_is_effective_exactly_when_the_seat_rule_frees_the_seat(
    offset: int, grace: int
) -> None:
    """The usage reports count a lapse from seat_freed_time: the floating seat is held
    before that instant and free from it on, as holds_seat decides."""
    lapse_grace = timedelta(seconds=grace)
    now = EXPIRES + timedelta(microseconds=offset)
    freed = seat_freed_time(EXPIRES, lapse_grace)
    assert holds_seat(ACTIVATION, FLOATING, now, lapse_grace) == (now < freed)
    usage = usage_buckets(
        [SeatChange(ACTIVATION.create_time, "act_1", True), SeatChange(freed, "act_1", False)],
        [],
        start=datetime(2025, 6, 1, tzinfo=UTC),
        end=datetime(2025, 6, 2, tzinfo=UTC),
        granularity=Granularity.HOUR,
        now=datetime(2025, 6, 2, tzinfo=UTC),
    )
    held_in = {b.start_time for b in usage if b.peak_seats_in_use}
    assert held_in == {
        b.start_time
        for b in usage
        if b.start_time < freed and b.start_time + timedelta(hours=1) > ACTIVATION.create_time
    }
