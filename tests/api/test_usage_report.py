"""GetUsageReport through a real server on each database: a scripted day of devices coming
and going under a movable clock gives exactly the peaks, averages and limits the script
implies, and agrees with the seat rule at every step."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from keyturn.fulfillment.v1 import catalog_pb2 as cat
from keyturn.fulfillment.v1 import catalog_pb2_grpc, fulfillment_pb2_grpc
from keyturn.fulfillment.v1 import fulfillment_pb2 as ful
from keyturn.licensing.v1 import licensing_pb2 as lic
from keyturn.licensing.v1 import licensing_pb2_grpc
from keyturn.server.app.context import AppContext
from keyturn.server.app.lapses import sweep_lapses
from keyturn.server.bootstrap import build_context

from conftest import Tokens, settings_for
from support.catalog import put_catalog
from support.rpc import PRODUCT_ID, order

Licensing = licensing_pb2_grpc.LicensingServiceStub
Fulfillment = fulfillment_pb2_grpc.FulfillmentServiceStub

T0 = datetime(2026, 1, 5, tzinfo=UTC)  # the scripted day's midnight
LEASE = timedelta(seconds=900)  # of the test SKUs (support.rpc.create_sku)
HEARTBEAT = timedelta(minutes=10)
SEATS = 3
HOURS = 7


class ScriptClock:
    """A clock the script moves; PostgreSQL seat decisions take its instant too."""

    def __init__(self, at: datetime) -> None:
        self.at = at

    def now(self) -> datetime:
        return self.at


@pytest.fixture
def clock() -> ScriptClock:
    return ScriptClock(T0 - timedelta(minutes=30))


@pytest.fixture
async def app(database_url: str, clock: ScriptClock) -> AsyncIterator[AppContext]:
    # The script makes hundreds of heartbeats in a few real seconds: no rate limit.
    settings = settings_for(
        database_url, rate_limit_per_peer="off", rate_limit_per_credential="off"
    )
    ctx = await build_context(settings, clock=clock)
    yield ctx
    await ctx.store.close()


def minutes(value: float) -> timedelta:
    return timedelta(minutes=value)


# (minutes after T0, action, device). Every alive device renews its lease each 10 minutes
# (before the actions of that instant); "stop" ends its heartbeats, so its lease lapses.
SCRIPT: list[tuple[float, str, str]] = [
    (-20, "activate", "A"),  # held from before the report's start
    (0, "activate", "B"),  # on a bucket's edge
    (35, "activate", "C"),
    (50, "refused", "D"),  # all three seats are held
    (60, "release", "B"),  # on an edge
    (61, "activate", "D"),
    (90, "stop", "A"),  # its last renewal is at 90: freed at 105 min 30 s
    (105.25, "check", ""),  # within the lapse grace: still held
    (105.75, "check", ""),  # past it: free, though no lapse is recorded yet
    (130, "activate", "E"),  # records A's lapse, late
    (150, "stop", "C"),
    (200, "sweep", ""),  # records C's lapse
    (210, "regain", "A"),  # its lapsed lease renewed while a seat is free
    (235, "release", "D"),
    (240, "activate", "B"),  # a released device again
    (265, "seats", "+1"),  # an order adds a seat: the limit is 4 from here
    (270, "activate", "F"),
    (300, "stop", "E"),
    (330, "activate", "C"),  # a lapsed device activating again (takes its seat back)
    (360, "stop", "B"),  # never recorded on PostgreSQL by a claim: only renewals follow
    (400, "seats", "-1"),  # an order removes one: 3 again, as many as are in use
    (HOURS * 60, "end", ""),
]


@dataclass
class Device:
    token: str = ""
    alive: bool = False
    renewed: datetime | None = None
    held: list[list[datetime | None]] = field(default_factory=list)  # [start, end)


@dataclass
class Run:
    app: AppContext
    clock: ScriptClock
    licensing: Licensing
    fulfillment: Fulfillment
    tokens: Tokens
    entitlement_id: str
    key: str
    devices: dict[str, Device] = field(default_factory=dict)
    limits: list[tuple[datetime, int]] = field(default_factory=list)  # from then on
    orders: int = 0

    def device(self, name: str) -> Device:
        return self.devices.setdefault(name, Device())

    def take(
        self, device: Device, response: lic.ActivateSeatResponse | lic.RenewLeaseResponse
    ) -> None:
        device.token = response.lease.token
        device.alive, device.renewed = True, self.clock.at
        device.held.append([self.clock.at, None])

    def level(self, at: datetime) -> int:
        """Seats held at `at` by the script's intervals."""
        return sum(
            1
            for d in self.devices.values()
            for start, end in d.held
            if start is not None and start <= at and (end is None or at < end)
        )

    async def heartbeats(self) -> None:
        for device in self.devices.values():
            if device.alive:
                renewed = await self.licensing.RenewLease(
                    lic.RenewLeaseRequest(lease_token=device.token)
                )
                device.token, device.renewed = renewed.lease.token, self.clock.at

    async def act(self, action: str, name: str) -> None:
        device = self.device(name)
        activation = lic.ActivateSeatRequest(
            license_key=self.key, product_id=PRODUCT_ID, fingerprint=f"device-{name}-0000"
        )
        match action:
            case "activate":
                self.take(device, await self.licensing.ActivateSeat(activation))
            case "refused":
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await self.licensing.ActivateSeat(activation)
                assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            case "release":
                await self.licensing.ReleaseSeat(lic.ReleaseSeatRequest(lease_token=device.token))
                device.alive = False
                device.held[-1][1] = self.clock.at
            case "stop":
                # The seat rule, written out: a lease not renewed holds its seat until
                # its expiry plus the lapse grace.
                assert device.renewed is not None
                device.alive = False
                device.held[-1][1] = device.renewed + LEASE + self.app.lapse_grace
            case "regain":
                renewed = await self.licensing.RenewLease(
                    lic.RenewLeaseRequest(lease_token=device.token)
                )
                self.take(device, renewed)
            case "seats":
                self.orders += 1
                sku = "MORE-SEAT" if name == "+1" else "LESS-SEAT"
                change = order(f"seats-{self.orders}", sku)
                change.lines[0].entitlement_id = self.entitlement_id
                await self.fulfillment.FulfillOrder(change, metadata=self.tokens("fulfill"))
                self.limits.append((self.clock.at, self.limits[-1][1] + int(name)))
            case "sweep":
                # C's lapse, unless a renewal recorded it (SQLite's renewals take the lock).
                await sweep_lapses(self.app)
                assert await sweep_lapses(self.app) == 0
            case "check" | "end":
                pass
            case _:
                raise AssertionError(action)

    async def seats_in_use(self) -> int:
        check = lic.CheckLicenseRequest(license_key=self.key, product_id=PRODUCT_ID)
        return (await self.licensing.CheckLicense(check)).entitlement.seats_in_use


def expected_limit(run: Run, start: datetime, end: datetime) -> int:
    """The highest limit in force at any instant of [start, end) (0 before any)."""
    in_force = [limit for at, limit in run.limits if at <= start][-1:] or [0]
    return max(in_force + [limit for at, limit in run.limits if start < at < end])


def expected_bucket(run: Run, start: datetime, end: datetime) -> tuple[int, float]:
    """Peak and average of [start, end) from the script's intervals, piece by piece."""
    edges = {start, end}
    for device in run.devices.values():
        for interval in device.held:
            edges |= {t for t in interval if t is not None and start < t < end}
    cuts = sorted(edges)
    pieces = [(a, b, run.level(a)) for a, b in itertools.pairwise(cuts)]
    peak = max(level for _, _, level in pieces)
    area = sum(((b - a) * level for a, b, level in pieces), timedelta(0))
    return peak, area / (end - start)


async def report(
    stub: Fulfillment, tokens: Tokens, entitlement_id: str, start: datetime, end: datetime, by: int
) -> list[ful.UsageBucket]:
    request = ful.GetUsageReportRequest(entitlement_id=entitlement_id, granularity=by)  # type: ignore[arg-type]
    request.start_time.FromDatetime(start)
    request.end_time.FromDatetime(end)
    answer = await stub.GetUsageReport(request, metadata=tokens("read"))
    return list(answer.buckets)


async def test_the_usage_report_of_a_scripted_day_gives_the_exact_peaks(
    app: AppContext,
    clock: ScriptClock,
    license_of,  # type: ignore[no-untyped-def]
    licensing_stub: Licensing,
    fulfillment_stub: Fulfillment,
    catalog_stub: catalog_pb2_grpc.CatalogServiceStub,
    tokens: Tokens,
) -> None:
    await put_catalog(
        catalog_stub,
        tokens("catalog"),
        cat.Sku(
            sku_id="MORE-SEAT",
            product_id=PRODUCT_ID,
            operations=[cat.Operation(add_seats=cat.AddSeatsOperation(seats_per_unit=1))],
        ),
        cat.Sku(
            sku_id="LESS-SEAT",
            product_id=PRODUCT_ID,
            operations=[cat.Operation(remove_seats=cat.RemoveSeatsOperation(seats_per_unit=1))],
        ),
    )
    entitlement = await license_of(SEATS)
    assert entitlement.lease_duration.ToTimedelta() == LEASE
    run = Run(
        app,
        clock,
        licensing_stub,
        fulfillment_stub,
        tokens,
        entitlement.entitlement_id,
        entitlement.license_key,
        limits=[(clock.at, SEATS)],
    )
    beats = {T0 + minutes(-30) + HEARTBEAT * i for i in range(HOURS * 6 + 4)}
    moments = sorted(beats | {T0 + minutes(m) for m, _, _ in SCRIPT})
    for at in moments:
        if at > T0 + minutes(HOURS * 60):
            break
        clock.at = at
        if at in beats:
            await run.heartbeats()
        for when, action, name in SCRIPT:
            if T0 + minutes(when) == at:
                await run.act(action, name)
        # The seat rule (CheckLicense's count) and the script agree at every step.
        assert await run.seats_in_use() == run.level(at), at

    hourly = await report(
        fulfillment_stub,
        tokens,
        entitlement.entitlement_id,
        T0,
        T0 + timedelta(hours=HOURS),
        ful.USAGE_GRANULARITY_HOUR,
    )
    assert [b.start_time.ToDatetime(UTC) for b in hourly] == [
        T0 + timedelta(hours=h) for h in range(HOURS)
    ]
    for hour, bucket in enumerate(hourly):
        start = T0 + timedelta(hours=hour)
        peak, average = expected_bucket(run, start, start + timedelta(hours=1))
        limit = expected_limit(run, start, start + timedelta(hours=1))
        assert (bucket.peak_seats_in_use, bucket.seat_limit) == (peak, limit), hour
        assert bucket.average_seats_in_use == pytest.approx(average, abs=1e-9), hour
    assert max(b.peak_seats_in_use for b in hourly) == SEATS + 1
    assert {b.seat_limit for b in hourly} == {SEATS, SEATS + 1}
    assert len({b.average_seats_in_use for b in hourly}) > 3  # the script is not flat

    # By the day: one bucket, under way, averaged over its elapsed part (until now).
    (daily,) = await report(
        fulfillment_stub,
        tokens,
        entitlement.entitlement_id,
        T0,
        T0 + timedelta(days=2),
        ful.USAGE_GRANULARITY_DAY,
    )
    peak, average = expected_bucket(run, T0, clock.at)
    assert (daily.peak_seats_in_use, daily.seat_limit) == (peak, SEATS + 1)
    assert daily.average_seats_in_use == pytest.approx(average, abs=1e-9)

    # Before the entitlement existed: nothing in use, no limit.
    (before,) = await report(
        fulfillment_stub,
        tokens,
        entitlement.entitlement_id,
        T0 - timedelta(days=1),
        T0,
        ful.USAGE_GRANULARITY_DAY,
    )
    day_before = expected_bucket(run, T0 - timedelta(days=1), T0)
    assert before.peak_seats_in_use == day_before[0] == 1  # A, from 20 minutes to midnight
    assert before.average_seats_in_use == pytest.approx(day_before[1], abs=1e-9)
    assert before.seat_limit == SEATS  # created within that day, at -30 min
