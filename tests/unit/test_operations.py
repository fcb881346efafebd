"""The SKU operations on an existing entitlement: each rule of catalog.proto, checked against
an independent model over random sequences of operations and a clock that moves forward."""

from __future__ import annotations

import calendar
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from keyturn.server.domain.catalog import (
    MAX_SEATS,
    MAX_SEATS_PER_UNIT,
    AddFeatures,
    AddSeats,
    Cancel,
    ChangeEdition,
    ConvertTrial,
    Create,
    Edition,
    Feature,
    Operation,
    Product,
    Reinstate,
    RemoveFeatures,
    RemoveSeats,
    Renew,
    RenewalAnchor,
    Suspend,
)
from keyturn.server.domain.entitlement import Customer, Entitlement, Status, create_entitlement
from keyturn.server.domain.errors import DomainError, Reason
from keyturn.server.domain.operations import LineContext, apply_operation

US = timedelta(microseconds=1)
NOW = datetime(2025, 1, 31, 9, 30, tzinfo=UTC)
CUSTOMER = Customer("cus_1", "Ada Lovelace", "ada@example.com")

PRODUCT = Product(
    "acme-cad",
    editions=(
        Edition("std", features=(Feature("export"), Feature("projects", 10), Feature("cloud", 5))),
        Edition("pro", features=(Feature("export"), Feature("projects", 100), Feature("api"))),
        Edition("lite"),
        Edition("ent", features=(Feature("sso"), Feature("audit", 365), Feature("api", 5))),
    ),
)
EDITIONS = [e.edition_id for e in PRODUCT.editions]
FEATURE_NAMES = ["export", "projects", "cloud", "api", "sso", "audit", "plugins"]


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


# --- an independent model of terms, features and status ---------------------------------


@dataclass(frozen=True)
class Term:
    """A term of the pool, with its parts spelled out so the test adds it by itself."""

    text: str
    years: int = 0
    months: int = 0
    weeks: int = 0
    days: int = 0
    hours: int = 0


TERMS = [
    Term("P1Y", years=1),
    Term("P1M", months=1),
    Term("P3M", months=3),
    Term("P1Y2M", years=1, months=2),
    Term("P30D", days=30),
    Term("P2W", weeks=2),
    Term("P1D", days=1),
    Term("PT12H", hours=12),
    Term("P1M1D", months=1, days=1),
]


def add_term(start: datetime, term: Term, quantity: int) -> datetime:
    """`term` repeated `quantity` times after `start`: calendar months first, clamped to the
    month's last day once, then the fixed-length parts."""
    months = start.month - 1 + quantity * (12 * term.years + term.months)
    year, month = start.year + months // 12, months % 12 + 1
    day = min(start.day, calendar.monthrange(year, month)[1])
    moved = start.replace(year=year, month=month, day=day)
    fixed = timedelta(weeks=term.weeks, days=term.days, hours=term.hours) * quantity
    return moved + fixed


def edition_features(edition_id: str) -> dict[str, int | None]:
    edition = PRODUCT.edition(edition_id)
    assert edition is not None
    return {f.name: f.limit for f in edition.features}


@dataclass
class Model:
    """What the entitlement should be, kept by the rules of catalog.proto alone."""

    edition_id: str
    addons: dict[str, int | None]
    removed: set[str]
    seats: int
    start: datetime
    end: datetime | None
    trial: bool
    grace: timedelta
    cancel_time: datetime | None = None
    suspend_time: datetime | None = None
    update_time: datetime | None = None
    history: list[str] = field(default_factory=list)

    def features(self) -> tuple[Feature, ...]:
        """The current edition's features, plus add-ons (their limit wins), minus removals."""
        merged = edition_features(self.edition_id) | self.addons
        return tuple(
            Feature(name, limit)
            for name, limit in sorted(merged.items())
            if name not in self.removed
        )

    def expired(self, now: datetime) -> bool:
        return self.end is not None and now >= self.end + self.grace

    def status(self, now: datetime) -> Status:
        if self.cancel_time is not None:
            return Status.CANCELLED
        if self.suspend_time is not None:
            return Status.SUSPENDED
        if self.expired(now):
            return Status.EXPIRED
        return Status.TRIAL if self.trial else Status.ACTIVE

    def copy(self) -> Model:
        return replace(self, addons=dict(self.addons), removed=set(self.removed))


def model_of(op: Create, quantity: int, now: datetime, grace: timedelta) -> Model:
    term = next((t for t in TERMS if t.text == op.term), None)
    return Model(
        edition_id=op.edition_id,
        addons={f.name: f.limit for f in op.features},
        removed=set(),
        seats=op.seats_per_unit * quantity,
        start=now,
        end=None if term is None else add_term(now, term, 1),
        trial=op.trial,
        grace=grace,
        update_time=now,
    )


def term_of(text: str) -> Term:
    return next(t for t in TERMS if t.text == text)


def expect(model: Model, op: Operation, quantity: int, now: datetime) -> Model | Reason:
    """The model after `op`, or the reason it must be refused."""
    if model.cancel_time is not None:
        return Reason.ENTITLEMENT_CANCELLED
    if isinstance(op, Suspend | Reinstate):
        if (model.suspend_time is not None) is isinstance(op, Suspend):
            return model  # already as asked: nothing changes, not even the update time
        after = model.copy()
        after.update_time = now
        after.suspend_time = now if isinstance(op, Suspend) else None
        return after
    after = model.copy()
    after.update_time = now
    if isinstance(op, Renew):
        if model.end is None:
            return Reason.ENTITLEMENT_PERPETUAL
        expired = model.expired(now)
        term = term_of(op.term)
        if op.anchor is RenewalAnchor.FROM_EXPIRY:
            after.end = add_term(model.end, term, quantity)
        elif op.anchor is RenewalAnchor.FROM_NOW:
            after.end = max(model.end, add_term(now, term, quantity))
            after.start = now if expired else model.start
        else:  # FROM_NOW_IF_EXPIRED: the end date while live (grace included), now once expired
            after.end = add_term(now if expired else model.end, term, quantity)
            after.start = now if expired else model.start
    elif isinstance(op, AddSeats):
        after.seats = model.seats + op.seats_per_unit * quantity
        if after.seats > MAX_SEATS:
            return Reason.INVALID_REQUEST
    elif isinstance(op, RemoveSeats):
        after.seats = model.seats - op.seats_per_unit * quantity
        if after.seats < 1:
            return Reason.SEAT_MINIMUM
    elif isinstance(op, ChangeEdition):
        after.edition_id = op.edition_id
    elif isinstance(op, AddFeatures):
        after.addons.update({f.name: f.limit for f in op.features})
        after.removed -= {f.name for f in op.features}
    elif isinstance(op, RemoveFeatures):
        for name in op.feature_names:
            after.addons.pop(name, None)
        after.removed |= set(op.feature_names)
    elif isinstance(op, ConvertTrial):
        if not model.trial:
            return Reason.NOT_A_TRIAL
        after.trial = False
        after.start = now
        after.end = None if op.term is None else add_term(now, term_of(op.term), quantity)
    elif isinstance(op, Cancel):
        after.cancel_time = now
    else:  # pragma: no cover - the strategies make no other kind
        raise AssertionError(op)
    return after


def assert_matches(ent: Entitlement, model: Model, now: datetime) -> None:
    assert ent.edition_id == model.edition_id
    assert ent.seats == model.seats
    assert ent.features == model.features()
    assert ent.start_time == model.start
    assert ent.end_time == model.end
    assert ent.perpetual is (model.end is None)
    assert ent.trial is model.trial
    assert ent.cancel_time == model.cancel_time
    assert ent.suspend_time == model.suspend_time
    assert ent.update_time == model.update_time
    assert ent.status(now) is model.status(now)
    assert 1 <= ent.seats <= MAX_SEATS


# --- strategies -------------------------------------------------------------------------

starts = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 12, 31), timezones=st.just(UTC)
)
graces = st.integers(0, 90 * 86_400).map(lambda s: timedelta(seconds=s))
term_texts = st.sampled_from([t.text for t in TERMS])
features = st.lists(
    st.builds(Feature, st.sampled_from(FEATURE_NAMES), st.none() | st.integers(0, 10_000)),
    min_size=1,
    max_size=4,
    unique_by=lambda f: f.name,
).map(tuple)
seat_counts = st.integers(1, 5) | st.integers(1, MAX_SEATS_PER_UNIT) | st.just(MAX_SEATS_PER_UNIT)


@st.composite
def creates(draw: st.DrawFn, kind: str | None = None) -> tuple[Create, int]:
    """A `create` of a subscription, a trial or a perpetual entitlement, and a quantity."""
    kind = kind or draw(st.sampled_from(["subscription", "trial", "perpetual"]))
    seats_per_unit = draw(st.integers(1, 10))
    op = Create(
        edition_id=draw(st.sampled_from(EDITIONS)),
        seats_per_unit=seats_per_unit,
        term=None if kind == "perpetual" else draw(term_texts),
        trial=kind == "trial",
        features=draw(st.just(()) | features),
        grace=draw(graces),
    )
    return op, draw(st.integers(1, 5))


anchors = st.sampled_from(list(RenewalAnchor))
renews = st.builds(Renew, term_texts, anchors)
changes: st.SearchStrategy[Operation] = st.one_of(
    renews,
    renews,
    st.builds(AddSeats, seat_counts),
    st.builds(RemoveSeats, st.integers(1, 5)),
    st.builds(RemoveSeats, seat_counts),
    st.builds(ChangeEdition, st.sampled_from(EDITIONS)),
    st.builds(AddFeatures, features),
    st.builds(
        RemoveFeatures,
        st.lists(st.sampled_from(FEATURE_NAMES), min_size=1, max_size=3, unique=True).map(tuple),
    ),
    st.builds(ConvertTrial, st.none() | term_texts),
    st.just(Suspend()),
    st.just(Reinstate()),
)
# Cancelling ends a sequence's interest, so it comes about once in twenty operations.
operations: st.SearchStrategy[Operation] = st.integers(0, 19).flatmap(
    lambda i: st.just(Cancel()) if i == 0 else changes
)
quantities = st.integers(1, 4) | st.integers(1, 20)
steps = st.just(timedelta(0)) | st.timedeltas(timedelta(0), timedelta(days=800))


def make(op: Create, quantity: int, now: datetime) -> Entitlement:
    return create_entitlement(
        op, PRODUCT, quantity, CUSTOMER, "it@example.com", now, "ent_1", "crm:42"
    )


def line(now: datetime, quantity: int = 1, index: int = 0) -> LineContext:
    return LineContext(index, quantity, PRODUCT, now)


def unchanging(ent: Entitlement) -> tuple[object, ...]:
    """What no operation changes."""
    return (
        ent.entitlement_id,
        ent.product_id,
        ent.customer,
        ent.ship_to_email,
        ent.create_time,
        ent.grace,
        ent.license_model,
        ent.lease_duration,
        ent.dispatch,
        ent.external_references,
    )


def refused(ent: Entitlement, op: Operation, context: LineContext) -> DomainError:
    with pytest.raises(DomainError) as caught:
        apply_operation(ent, op, context)
    return caught.value


# --- the model over random sequences ----------------------------------------------------


@settings(max_examples=300)
@given(
    start=starts,
    created=creates(),
    script=st.lists(st.tuples(operations, quantities, steps), min_size=1, max_size=30),
)
def test_random_sequences_follow_the_rules(
    start: datetime,
    created: tuple[Create, int],
    script: list[tuple[Operation, int, timedelta]],
) -> None:
    create_op, create_quantity = created
    ent = make(create_op, create_quantity, start)
    model = model_of(create_op, create_quantity, start, create_op.grace)
    assert_matches(ent, model, start)
    fixed = unchanging(ent)
    now = start
    for index, (op, quantity, step) in enumerate(script):
        now += step
        context = line(now, quantity, index)
        expected = expect(model, op, quantity, now)
        event(f"{op.name}: {expected if isinstance(expected, Reason) else 'applied'}")
        if isinstance(expected, Reason):
            error = refused(ent, op, context)
            assert error.reason is expected, (op, error)
            if expected is Reason.INVALID_REQUEST:
                assert error.metadata == {"field": f"lines[{index}].quantity"}
            else:
                assert error.metadata["entitlement_id"] == ent.entitlement_id
                assert error.metadata["line"] == str(index)
            # The entitlement is what it was: the operation changed nothing.
            assert_matches(ent, model, now)
            continue
        before = ent
        ent = apply_operation(ent, op, context)
        model = expected
        assert_matches(ent, model, now)
        assert unchanging(ent) == fixed
        if isinstance(op, Renew):
            assert before.end_time is not None
            assert ent.end_time is not None
            assert ent.end_time >= before.end_time
            term = term_of(op.term)
            expired = now >= before.end_time + before.grace
            if op.anchor is RenewalAnchor.FROM_EXPIRY:
                assert ent.end_time == add_term(before.end_time, term, quantity)
            elif op.anchor is RenewalAnchor.FROM_NOW or expired:
                assert ent.end_time >= add_term(now, term, quantity)
            else:  # live, maybe in the grace after the end date: extended from the end date
                assert ent.end_time == add_term(before.end_time, term, quantity)
            assert ent.trial is before.trial  # renewing a trial extends the trial


# --- seats ------------------------------------------------------------------------------


@given(seats=st.integers(1, MAX_SEATS), per_unit=seat_counts, quantity=st.integers(1, 50))
def test_removing_seats_never_leaves_fewer_than_one(
    seats: int, per_unit: int, quantity: int
) -> None:
    ent = replace(make(Create("std", 1, "P1Y"), 1, NOW), seats=seats)
    op = RemoveSeats(per_unit)
    if seats - per_unit * quantity >= 1:
        assert apply_operation(ent, op, line(NOW, quantity)).seats == seats - per_unit * quantity
        return
    error = refused(ent, op, line(NOW, quantity, index=3))
    assert error.reason is Reason.SEAT_MINIMUM
    assert error.metadata == {"entitlement_id": "ent_1", "line": "3", "seats": str(seats)}
    assert ent.seats == seats


@given(seats=st.integers(1, MAX_SEATS), per_unit=seat_counts, quantity=st.integers(1, 50))
def test_adding_seats_never_passes_the_maximum(seats: int, per_unit: int, quantity: int) -> None:
    ent = replace(make(Create("std", 1, "P1Y"), 1, NOW), seats=seats)
    op = AddSeats(per_unit)
    if seats + per_unit * quantity <= MAX_SEATS:
        assert apply_operation(ent, op, line(NOW, quantity)).seats == seats + per_unit * quantity
        return
    error = refused(ent, op, line(NOW, quantity, index=2))
    assert error.reason is Reason.INVALID_REQUEST
    assert [v.field for v in error.violations] == ["lines[2].quantity"]


def test_removing_every_seat_is_refused_and_one_is_kept() -> None:
    ent = make(Create("std", 3, "P1Y"), 1, NOW)
    assert apply_operation(ent, RemoveSeats(2), line(NOW)).seats == 1
    error = refused(ent, RemoveSeats(1), line(NOW, quantity=3))
    assert error.reason is Reason.SEAT_MINIMUM
    assert error.metadata["seats"] == "3"


def test_seats_up_to_the_maximum_are_allowed() -> None:
    ent = replace(make(Create("std", 1, "P1Y"), 1, NOW), seats=MAX_SEATS - 10)
    assert apply_operation(ent, AddSeats(5), line(NOW, quantity=2)).seats == MAX_SEATS
    assert refused(ent, AddSeats(11), line(NOW)).reason is Reason.INVALID_REQUEST


# --- renew ------------------------------------------------------------------------------


@st.composite
def renewable(draw: st.DrawFn) -> tuple[Entitlement, datetime]:
    """A subscription or trial and a later instant: before its end, in its grace, or after."""
    created, quantity = draw(creates(kind=draw(st.sampled_from(["subscription", "trial"]))))
    start = draw(starts)
    ent = make(created, quantity, start)
    end = ent.end_time
    assert end is not None
    until = end + ent.grace
    offset = draw(
        st.one_of(
            st.timedeltas(timedelta(0), end - start),  # before the end date
            st.timedeltas(timedelta(0), ent.grace).map(lambda d: end - start + d),  # in grace
            st.timedeltas(timedelta(0), timedelta(days=3000)).map(lambda d: until - start + d),
        )
    )
    return ent, start + offset


@given(target=renewable(), term=term_texts, anchor=anchors, quantity=st.integers(1, 24))
def test_renew_never_moves_the_end_back_and_reaches_anchor_plus_term(
    target: tuple[Entitlement, datetime], term: str, anchor: RenewalAnchor, quantity: int
) -> None:
    ent, now = target
    assert ent.end_time is not None
    renewed = apply_operation(ent, Renew(term, anchor), line(now, quantity))
    assert renewed.end_time is not None
    assert renewed.end_time >= ent.end_time
    assert renewed.end_time > ent.end_time or anchor is RenewalAnchor.FROM_NOW
    expired = now >= ent.end_time + ent.grace
    from_now = anchor is RenewalAnchor.FROM_NOW or (
        anchor is RenewalAnchor.FROM_NOW_IF_EXPIRED and expired
    )
    anchor_time = now if from_now else ent.end_time
    assert renewed.end_time >= add_term(anchor_time, term_of(term), quantity)
    assert renewed.trial is ent.trial
    assert renewed.seats == ent.seats
    assert renewed.features == ent.features


@given(target=renewable(), term=term_texts, quantity=st.integers(1, 24))
def test_renew_from_expiry_lands_exactly_on_the_term_after_the_old_end(
    target: tuple[Entitlement, datetime], term: str, quantity: int
) -> None:
    ent, now = target
    assert ent.end_time is not None
    renewed = apply_operation(ent, Renew(term, RenewalAnchor.FROM_EXPIRY), line(now, quantity))
    assert renewed.end_time == add_term(ent.end_time, term_of(term), quantity)
    assert renewed.start_time == ent.start_time  # back-dated: the lapsed time is paid for


@given(target=renewable(), term=term_texts, quantity=st.integers(1, 24))
def test_renew_from_now_if_expired_extends_while_live_and_restarts_once_expired(
    target: tuple[Entitlement, datetime], term: str, quantity: int
) -> None:
    ent, now = target
    assert ent.end_time is not None
    op = Renew(term, RenewalAnchor.FROM_NOW_IF_EXPIRED)
    renewed = apply_operation(ent, op, line(now, quantity))
    if now < ent.end_time + ent.grace:  # live, within the grace too
        assert renewed.end_time == add_term(ent.end_time, term_of(term), quantity)
        assert renewed.start_time == ent.start_time
    else:
        assert renewed.end_time == add_term(now, term_of(term), quantity)
        assert renewed.start_time == now
        assert renewed.status(now) in (Status.ACTIVE, Status.TRIAL)


@given(target=renewable(), term=term_texts, quantity=st.integers(1, 24))
def test_renew_from_now_starts_the_term_now_but_keeps_a_later_end(
    target: tuple[Entitlement, datetime], term: str, quantity: int
) -> None:
    ent, now = target
    assert ent.end_time is not None
    renewed = apply_operation(ent, Renew(term, RenewalAnchor.FROM_NOW), line(now, quantity))
    assert renewed.end_time == max(ent.end_time, add_term(now, term_of(term), quantity))


def test_the_default_anchor_is_from_now_if_expired() -> None:
    assert Renew("P1Y").anchor is RenewalAnchor.FROM_NOW_IF_EXPIRED


def test_renew_in_the_grace_extends_the_end_date() -> None:
    ent = make(Create("std", 1, "P1M", grace=timedelta(days=7)), 1, utc(2025, 1, 1))
    assert ent.end_time == utc(2025, 2, 1)
    in_grace = utc(2025, 2, 7, 23, 59)
    assert ent.status(in_grace) is Status.ACTIVE
    renewed = apply_operation(ent, Renew("P1M"), line(in_grace))
    assert renewed.end_time == utc(2025, 3, 1)
    assert renewed.start_time == utc(2025, 1, 1)
    expired_at = utc(2025, 2, 8)
    assert ent.status(expired_at) is Status.EXPIRED
    restarted = apply_operation(ent, Renew("P1M"), line(expired_at))
    assert restarted.end_time == utc(2025, 3, 8)
    assert restarted.start_time == expired_at
    assert restarted.status(expired_at) is Status.ACTIVE


def test_renew_from_now_leaves_a_later_end_date_where_it_is() -> None:
    ent = make(Create("std", 1, "P1Y"), 1, utc(2025, 1, 1))
    renewed = apply_operation(ent, Renew("P1M", RenewalAnchor.FROM_NOW), line(utc(2025, 3, 1)))
    assert renewed.end_time == utc(2026, 1, 1)
    assert renewed.start_time == utc(2025, 1, 1)
    assert renewed.update_time == utc(2025, 3, 1)


def test_renew_from_expiry_back_dates_a_lapsed_entitlement() -> None:
    ent = make(Create("std", 1, "P1M"), 1, utc(2025, 1, 1))
    later = utc(2025, 6, 15)
    renewed = apply_operation(ent, Renew("P1M", RenewalAnchor.FROM_EXPIRY), line(later))
    assert renewed.end_time == utc(2025, 3, 1)
    assert renewed.status(later) is Status.EXPIRED  # the lapsed months were not enough


@pytest.mark.parametrize("anchor", list(RenewalAnchor))
def test_renewing_a_perpetual_entitlement_is_refused(anchor: RenewalAnchor) -> None:
    ent = make(Create("std", 1, None), 1, NOW)
    error = refused(ent, Renew("P1Y", anchor), line(NOW, index=4))
    assert error.reason is Reason.ENTITLEMENT_PERPETUAL
    assert error.metadata == {"entitlement_id": "ent_1", "line": "4"}


@given(created=creates(kind="perpetual"), term=term_texts, anchor=anchors, q=st.integers(1, 9))
def test_a_perpetual_entitlement_is_never_renewed(
    created: tuple[Create, int], term: str, anchor: RenewalAnchor, q: int
) -> None:
    ent = make(*created, NOW)
    assert refused(ent, Renew(term, anchor), line(NOW, q)).reason is Reason.ENTITLEMENT_PERPETUAL


def test_renewing_a_trial_extends_the_trial() -> None:
    trial = make(Create("std", 1, "P14D", trial=True), 1, NOW)
    renewed = apply_operation(trial, Renew("P14D"), line(NOW + timedelta(days=1)))
    assert renewed.trial
    assert renewed.end_time == NOW + timedelta(days=28)
    assert renewed.status(NOW + timedelta(days=20)) is Status.TRIAL


# --- terms: month ends and quantities ---------------------------------------------------


def test_a_month_from_31_january_ends_on_the_last_day_of_february() -> None:
    assert make(Create("std", 1, "P1M"), 1, utc(2025, 1, 31)).end_time == utc(2025, 2, 28)
    assert make(Create("std", 1, "P1M"), 1, utc(2024, 1, 31)).end_time == utc(2024, 2, 29)


def test_renewing_a_month_from_an_end_on_31_january_clamps_to_february() -> None:
    ent = replace(make(Create("std", 1, "P1M"), 1, utc(2024, 12, 31)), end_time=utc(2025, 1, 31))
    op = Renew("P1M", RenewalAnchor.FROM_EXPIRY)
    once = apply_operation(ent, op, line(utc(2025, 1, 10)))
    assert once.end_time == utc(2025, 2, 28)
    # A second renewal counts from 28 February: the day lost to clamping is not given back.
    assert apply_operation(once, op, line(utc(2025, 1, 10))).end_time == utc(2025, 3, 28)
    # Quantity scales the term itself, clamped once: P1M x 2 is P2M.
    assert apply_operation(ent, op, line(utc(2025, 1, 10), 2)).end_time == utc(2025, 3, 31)
    assert apply_operation(ent, op, line(utc(2025, 1, 10), 3)).end_time == utc(2025, 4, 30)


def test_converting_a_trial_on_31_january_for_a_month_clamps_to_february() -> None:
    trial = make(Create("std", 1, "P14D", trial=True), 1, utc(2025, 1, 20))
    converted = apply_operation(trial, ConvertTrial("P1M"), line(utc(2025, 1, 31, 12)))
    assert converted.end_time == utc(2025, 2, 28, 12)


def test_a_year_from_29_february_ends_on_28_february_and_four_years_on_29() -> None:
    ent = replace(make(Create("std", 1, "P1Y"), 1, utc(2023, 2, 28)), end_time=utc(2024, 2, 29))
    op = Renew("P1Y", RenewalAnchor.FROM_EXPIRY)
    assert apply_operation(ent, op, line(utc(2024, 1, 1))).end_time == utc(2025, 2, 28)
    assert apply_operation(ent, op, line(utc(2024, 1, 1), 4)).end_time == utc(2028, 2, 29)


@pytest.mark.parametrize(
    ("term", "quantity", "end"),
    [
        ("P1Y", 3, utc(2029, 3, 15, 8)),
        ("P1M", 12, utc(2027, 3, 15, 8)),
        ("P30D", 3, utc(2026, 3, 15, 8) + timedelta(days=90)),
        ("P2W", 2, utc(2026, 3, 15, 8) + timedelta(weeks=4)),
        ("PT12H", 4, utc(2026, 3, 17, 8)),
        ("P1Y2M", 2, utc(2028, 7, 15, 8)),
        ("P1M1D", 2, utc(2026, 5, 17, 8)),
    ],
)
def test_quantity_multiplies_the_renewal_term(term: str, quantity: int, end: datetime) -> None:
    ent = make(Create("std", 1, "P1Y"), 1, utc(2025, 3, 15, 8))
    op = Renew(term, RenewalAnchor.FROM_EXPIRY)
    assert apply_operation(ent, op, line(utc(2025, 4, 1), quantity)).end_time == end


def test_quantity_multiplies_the_conversion_term() -> None:
    trial = make(Create("std", 1, "P14D", trial=True), 1, NOW)
    at = NOW + timedelta(days=3)
    converted = apply_operation(trial, ConvertTrial("P1M"), line(at, 12))
    assert converted.end_time == at.replace(year=2026)


@pytest.mark.parametrize("op", [AddFeatures((Feature("api"),)), ChangeEdition("pro"), Cancel()])
def test_quantity_does_not_repeat_other_operations(op: Operation) -> None:
    ent = make(Create("std", 2, "P1Y"), 1, NOW)
    assert apply_operation(ent, op, line(NOW, 7)) == apply_operation(ent, op, line(NOW, 1))


def test_a_term_past_the_year_9000_is_refused_as_too_large() -> None:
    ent = make(Create("std", 1, "P1Y"), 1, NOW)
    error = refused(ent, Renew("P100Y", RenewalAnchor.FROM_EXPIRY), line(NOW, 80, index=1))
    assert error.reason is Reason.INVALID_REQUEST
    assert [v.field for v in error.violations] == ["lines[1].quantity"]


def applied_or_refused_as_too_large(
    ent: Entitlement, op: Operation, context: LineContext
) -> Entitlement | None:
    """The entitlement after `op`, or None when `op` was refused as INVALID_REQUEST."""
    try:
        return apply_operation(ent, op, context)
    except DomainError as error:
        if error.reason is not Reason.INVALID_REQUEST:
            raise
        return None


def test_a_renewal_ending_near_the_calendar_end_is_refused_not_a_crash() -> None:
    """The end date plus the grace must stay representable.

    A renewal counted in days (`P36524D`, a legal term of just under 100 years) is not held to
    the year-9000 limit that months and years are: here two renewals move the end date to
    9999-12-01, and with a 90-day grace `usable_until()` (so `status()`, which every later
    operation and every event snapshot calls) raises OverflowError, where the renewal should
    have been refused as INVALID_REQUEST like any other term that ends too late.
    """
    created_at = utc(2025, 1, 1)
    target = utc(9999, 12, 1)
    base = target - 79 * timedelta(days=36_524)  # the end date the big renewal starts from
    ent = make(Create("std", 1, "P1Y", grace=timedelta(days=90)), 1, created_at)
    assert ent.end_time == utc(2026, 1, 1)
    days = (base - ent.end_time).days
    assert 0 < days <= 36_524
    assert base == ent.end_time + timedelta(days=days)
    ent = apply_operation(ent, Renew(f"P{days}D", RenewalAnchor.FROM_EXPIRY), line(created_at))
    assert ent.end_time == base
    op = Renew("P36524D", RenewalAnchor.FROM_EXPIRY)
    renewed = applied_or_refused_as_too_large(ent, op, line(created_at, 79))
    if renewed is None:
        return  # refused as INVALID_REQUEST: the right answer
    assert renewed.end_time == target
    try:
        renewed.status(created_at)
    except OverflowError:
        pytest.fail(
            f"renewal accepted an end date of {renewed.end_time} whose end plus grace "
            "overflows: status() now raises OverflowError"
        )


def test_a_renewal_counted_in_days_is_held_to_the_year_9000_limit() -> None:
    """`_end_after` refuses terms that end beyond the year 9000, but only when the months and
    years carry it there: 79 x P36524D from 2026 ends in the year 9925 and is accepted."""
    ent = make(Create("std", 1, "P1Y"), 1, utc(2025, 1, 1))
    op = Renew("P36524D", RenewalAnchor.FROM_EXPIRY)
    renewed = applied_or_refused_as_too_large(ent, op, line(utc(2025, 1, 1), 79))
    if renewed is None:
        return  # refused as INVALID_REQUEST: the right answer
    assert renewed.end_time is not None
    assert renewed.end_time.year <= 9000, f"accepted an end date of {renewed.end_time}"


# --- convert_trial ----------------------------------------------------------------------


@given(
    created=creates(kind="trial"),
    start=starts,
    later=st.timedeltas(timedelta(0), timedelta(days=2000)),
    term=st.none() | term_texts,
    quantity=st.integers(1, 12),
)
def test_converting_a_trial_counts_the_paid_term_from_now(
    created: tuple[Create, int],
    start: datetime,
    later: timedelta,
    term: str | None,
    quantity: int,
) -> None:
    trial = make(*created, start)
    now = start + later  # also long after the trial ran out
    converted = apply_operation(trial, ConvertTrial(term), line(now, quantity))
    assert not converted.trial
    assert converted.start_time == now
    if term is None:
        assert converted.end_time is None
        assert converted.perpetual
    else:
        assert converted.end_time == add_term(now, term_of(term), quantity)
    assert converted.status(now) is Status.ACTIVE
    assert converted.seats == trial.seats
    assert converted.features == trial.features


@given(created=creates(kind=None), term=st.none() | term_texts)
def test_converting_a_non_trial_is_refused(created: tuple[Create, int], term: str | None) -> None:
    op, quantity = created
    ent = make(replace(op, trial=False), quantity, NOW)
    error = refused(ent, ConvertTrial(term), line(NOW, index=5))
    assert error.reason is Reason.NOT_A_TRIAL
    assert error.metadata == {"entitlement_id": "ent_1", "line": "5"}


def test_a_converted_trial_cannot_be_converted_again() -> None:
    trial = make(Create("std", 1, "P14D", trial=True), 1, NOW)
    converted = apply_operation(trial, ConvertTrial("P1Y"), line(NOW))
    assert refused(converted, ConvertTrial("P1Y"), line(NOW)).reason is Reason.NOT_A_TRIAL


# --- cancel -----------------------------------------------------------------------------


@given(
    created=creates(),
    op=operations,
    quantity=quantities,
    later=st.timedeltas(timedelta(0), timedelta(days=5000)),
)
def test_no_operation_applies_to_a_cancelled_entitlement(
    created: tuple[Create, int], op: Operation, quantity: int, later: timedelta
) -> None:
    ent = apply_operation(make(*created, NOW), Cancel(), line(NOW))
    assert ent.cancel_time == NOW
    assert ent.status(NOW + later) is Status.CANCELLED
    error = refused(ent, op, line(NOW + later, quantity, index=1))
    assert error.reason is Reason.ENTITLEMENT_CANCELLED  # before any other rule
    assert error.metadata == {"entitlement_id": "ent_1", "line": "1"}


def test_cancel_keeps_everything_but_the_cancel_time() -> None:
    ent = make(Create("pro", 2, "P1Y"), 3, NOW)
    at = NOW + timedelta(days=40)
    cancelled = apply_operation(ent, Cancel(), line(at))
    assert cancelled == replace(ent, cancel_time=at, update_time=at)


# --- features ---------------------------------------------------------------------------


def test_features_are_the_edition_plus_addons_minus_removals_across_edition_changes() -> None:
    ent = make(Create("std", 1, "P1Y", features=(Feature("projects", 50),)), 1, NOW)
    assert ent.features == (Feature("cloud", 5), Feature("export"), Feature("projects", 50))
    ent = apply_operation(ent, AddFeatures((Feature("plugins", 3),)), line(NOW))
    ent = apply_operation(ent, RemoveFeatures(("export",)), line(NOW))
    ent = apply_operation(ent, ChangeEdition("pro"), line(NOW))
    # pro has export, projects 100 and api; export stays removed, the add-ons stay on top.
    assert ent.features == (Feature("api"), Feature("plugins", 3), Feature("projects", 50))
    ent = apply_operation(ent, RemoveFeatures(("projects",)), line(NOW))
    ent = apply_operation(ent, ChangeEdition("std"), line(NOW))
    assert ent.features == (Feature("cloud", 5), Feature("plugins", 3))
    ent = apply_operation(ent, AddFeatures((Feature("export", 2),)), line(NOW))
    ent = apply_operation(ent, ChangeEdition("lite"), line(NOW))
    assert ent.features == (Feature("export", 2), Feature("plugins", 3))


def test_changing_edition_to_one_the_product_lacks_is_an_invalid_state() -> None:
    ent = make(Create("std", 1, "P1Y"), 1, NOW)
    error = refused(ent, ChangeEdition("gold"), line(NOW))
    assert error.reason is Reason.INVALID_STATE
    assert error.metadata == {
        "product_id": "acme-cad",
        "edition_id": "gold",
        "operation": "change_edition",
    }


# --- status -----------------------------------------------------------------------------


@given(
    created=creates(),
    start=starts,
    offset=st.timedeltas(-timedelta(days=3000), timedelta(days=3000)),
    cancelled=st.booleans(),
)
def test_status_is_computed_from_the_dates(
    created: tuple[Create, int], start: datetime, offset: timedelta, cancelled: bool
) -> None:
    op, quantity = created
    ent = make(op, quantity, start)
    if cancelled:
        ent = apply_operation(ent, Cancel(), line(start))
    probe = start + offset if ent.end_time is None else ent.end_time + ent.grace + offset
    if ent.cancel_time is not None:
        expected = Status.CANCELLED
    elif ent.end_time is not None and probe >= ent.end_time + ent.grace:
        expected = Status.EXPIRED
    else:
        expected = Status.TRIAL if ent.trial else Status.ACTIVE
    assert ent.status(probe) is expected


@settings(max_examples=50)
@given(created=creates(kind="subscription"))
def test_the_status_turns_exactly_at_end_plus_grace(created: tuple[Create, int]) -> None:
    ent = make(*created, NOW)
    assert ent.end_time is not None
    assert ent.status(ent.end_time + ent.grace - US) is Status.ACTIVE
    assert ent.status(ent.end_time + ent.grace) is Status.EXPIRED
