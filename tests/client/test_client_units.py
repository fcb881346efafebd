"""The pure parts of keyturn.client: backoff schedule, heartbeat timing, error and
entitlement conversion, the device fingerprint. No server needed."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import (
    any_pb2,
    descriptor_pb2,
    descriptor_pool,
    message_factory,
    timestamp_pb2,
)
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from keyturn.client import (
    DeactivationLimitReachedError,
    InvalidRequestError,
    KeyturnError,
    LeaseBase,
    LeaseSupersededError,
    RetryPolicy,
    SeatDeactivatedError,
    SeatsExhaustedError,
    UnavailableError,
    default_fingerprint,
    from_rpc_error,
)
from keyturn.client.conversion import LeaseGrant, entitlement_info
from keyturn.client.heartbeat import HeartbeatSchedule
from keyturn.client.retry import heartbeat_retry_delay, is_retryable, renew_delay
from keyturn.licensing.v1 import licensing_pb2 as lic

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def test_backoff_grows_exponentially_up_to_the_maximum() -> None:
    policy = RetryPolicy()  # 5 attempts, 0.1 s doubling, at most 2 s
    assert policy.schedule(rand=lambda: 1.0) == pytest.approx([0.1, 0.2, 0.4, 0.8])
    assert [policy.ceiling(n) for n in (4, 5, 50, 10_000)] == [1.6, 2.0, 2.0, 2.0]
    assert policy.schedule(rand=lambda: 0.5) == pytest.approx([0.05, 0.1, 0.2, 0.4])
    assert RetryPolicy(attempts=1).schedule() == []
    jittered = RetryPolicy(attempts=50).schedule()
    assert all(0 <= d <= 2.0 for d in jittered)
    assert len(set(jittered)) > 1  # jitter spreads the retries


@pytest.mark.parametrize(
    "options",
    [{"attempts": 0}, {"initial": -1}, {"initial": 3, "maximum": 2}, {"multiplier": 0.5}],
)
def test_retry_policy_refuses_nonsense(options: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"must be|need"):
        RetryPolicy(**options)  # type: ignore[arg-type]


def test_only_unavailable_is_retried() -> None:
    policy = RetryPolicy(attempts=3)
    unavailable = UnavailableError("down", code=grpc.StatusCode.UNAVAILABLE)
    assert [policy.retries(unavailable, n) for n in (1, 2, 3)] == [True, True, False]
    for code in grpc.StatusCode:
        error = KeyturnError("x", code=code)
        assert is_retryable(error) is (code is grpc.StatusCode.UNAVAILABLE)


def test_heartbeat_timing() -> None:
    assert renew_delay(NOW + timedelta(seconds=30), NOW, None) == 30
    assert renew_delay(NOW - timedelta(seconds=30), NOW, None) == 0
    assert renew_delay(NOW + timedelta(seconds=30), NOW, 0.25) == 0.25
    policy = RetryPolicy(initial=1, maximum=2)
    expiry = NOW + timedelta(minutes=10)
    ceilings = [
        heartbeat_retry_delay(policy, n, expiry, NOW, rand=lambda: 1.0) for n in (1, 2, 3, 6, 100)
    ]
    assert ceilings == [1, 2, 4, 30, 30]  # grows past the call maximum, up to 30 s
    soon = NOW + timedelta(seconds=5)
    assert heartbeat_retry_delay(policy, 100, soon, NOW, rand=lambda: 1.0) == 5  # not past expiry
    assert heartbeat_retry_delay(policy, 1, soon, soon) is None  # expired: give up


def lease_issued_at(issued: datetime) -> LeaseBase:
    """A 15-minute lease as the server issues it: renew half way."""
    expires = issued + timedelta(minutes=15)
    claims = {"iat": int(issued.timestamp()), "exp": int(expires.timestamp()), "sub": "act_1"}
    info = entitlement_info(lic.EntitlementSummary(seats=1))
    return LeaseBase(
        LeaseGrant("token", claims, "act_1", expires, issued + timedelta(minutes=7.5), info)
    )


def test_heartbeat_schedule_follows_the_lease_not_the_client_clock() -> None:
    lease = lease_issued_at(NOW)
    policy = RetryPolicy(initial=1, maximum=1)
    for skew in (timedelta(0), timedelta(minutes=8), timedelta(minutes=-30)):
        client_now = NOW + skew
        schedule = HeartbeatSchedule(lease, policy, lambda t=client_now: t, None)
        assert schedule.seconds_left() == 450  # half of the lease, whatever the skew
        assert schedule.expire_at == client_now + timedelta(minutes=15)
    clock = [NOW]
    schedule = HeartbeatSchedule(lease, policy, lambda: clock[0], 0.5)
    assert schedule.seconds_left() == 0.5
    unavailable = UnavailableError("down", code=grpc.StatusCode.UNAVAILABLE)
    assert schedule.after_failure(unavailable)
    assert 0 <= schedule.seconds_left() <= 1
    # A deadline or a server fault during a database stall is retried while the lease runs.
    for code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL):
        assert schedule.after_failure(KeyturnError("stalled", code=code, reason=""))
        assert schedule.seconds_left() >= 0  # backing off, within the lease
    assert schedule.after_failure(
        KeyturnError("fault", code=grpc.StatusCode.INTERNAL, reason="INTERNAL_ERROR")
    )
    assert not schedule.after_failure(SeatsExhaustedError("full"))  # refused: lost at once
    assert not schedule.after_failure(LeaseSupersededError("renewed elsewhere"))
    assert not schedule.after_failure(SeatDeactivatedError("taken back"))
    clock[0] = NOW + timedelta(minutes=15)
    assert not schedule.after_failure(unavailable)  # expired unrenewed: lost
    assert not schedule.after_failure(
        KeyturnError("stalled", code=grpc.StatusCode.DEADLINE_EXCEEDED)
    )


class FakeCall(grpc.RpcError):
    """What grpc raises for a failed call: a status code, details and trailers."""

    def __init__(self, code: grpc.StatusCode, message: str, trailers: tuple = ()) -> None:  # type: ignore[type-arg]
        self._code, self._message, self._trailers = code, message, trailers

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._message

    def trailing_metadata(self) -> tuple:  # type: ignore[type-arg]
        return self._trailers


def status_trailer(*details: object) -> tuple[tuple[str, bytes], ...]:
    status = status_pb2.Status()
    for detail in details:
        packed = any_pb2.Any()
        packed.Pack(detail)  # type: ignore[arg-type]
        status.details.append(packed)
    return (("grpc-status-details-bin", status.SerializeToString()),)


def test_a_deactivation_and_its_limit_are_typed() -> None:
    taken = error_details_pb2.ErrorInfo(
        reason="SEAT_DEACTIVATED", domain="keyturn.dev", metadata={"activation_id": "act_1"}
    )
    deactivated = from_rpc_error(
        FakeCall(grpc.StatusCode.FAILED_PRECONDITION, "taken", status_trailer(taken))
    )
    assert isinstance(deactivated, SeatDeactivatedError)
    assert not isinstance(deactivated, LeaseSupersededError)  # never re-taken by a heartbeat
    limit = error_details_pb2.ErrorInfo(
        reason="DEACTIVATION_LIMIT_REACHED",
        domain="keyturn.dev",
        metadata={"limit": "3", "period": "P30D", "retry_time": "2026-04-13T15:09:26+00:00"},
    )
    reached = from_rpc_error(
        FakeCall(grpc.StatusCode.RESOURCE_EXHAUSTED, "limit", status_trailer(limit))
    )
    assert isinstance(reached, DeactivationLimitReachedError)
    assert reached.retry_time == datetime(2026, 4, 13, 15, 9, 26, tzinfo=UTC)


def test_errors_are_typed_by_reason_and_tolerate_the_unknown() -> None:
    info = error_details_pb2.ErrorInfo(
        reason="SEATS_EXHAUSTED", domain="keyturn.dev", metadata={"seats": "3"}
    )
    seats = from_rpc_error(
        FakeCall(grpc.StatusCode.RESOURCE_EXHAUSTED, "full", status_trailer(info))
    )
    assert isinstance(seats, SeatsExhaustedError)
    assert (seats.reason, seats.metadata, seats.message) == (
        "SEATS_EXHAUSTED",
        {"seats": "3"},
        "full",
    )
    bad = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field="label", description="too long")
        ]
    )
    invalid = from_rpc_error(
        FakeCall(
            grpc.StatusCode.INVALID_ARGUMENT,
            "bad",
            status_trailer(error_details_pb2.ErrorInfo(reason="INVALID_REQUEST"), bad),
        )
    )
    assert isinstance(invalid, InvalidRequestError)
    assert invalid.field_violations == [("label", "too long")]
    # A reason newer than this client: the base class, reason kept.
    future = from_rpc_error(
        FakeCall(
            grpc.StatusCode.FAILED_PRECONDITION,
            "used",
            status_trailer(error_details_pb2.ErrorInfo(reason="SOME_FUTURE_REASON")),
        )
    )
    assert type(future) is KeyturnError
    assert future.reason == "SOME_FUTURE_REASON"
    # UNAVAILABLE whatever the reason (or none: a proxy or the transport said it).
    assert type(from_rpc_error(FakeCall(grpc.StatusCode.UNAVAILABLE, "gone"))) is UnavailableError
    garbled = from_rpc_error(
        FakeCall(grpc.StatusCode.INTERNAL, "x", (("grpc-status-details-bin", b"\xff\xff"),))
    )
    assert (type(garbled), garbled.code, garbled.reason) == (
        KeyturnError,
        grpc.StatusCode.INTERNAL,
        "",
    )
    bare = from_rpc_error(grpc.RpcError())
    assert (bare.code, bare.reason, bare.message) == (grpc.StatusCode.UNKNOWN, "", "")


def test_entitlement_info_is_tolerant_of_older_and_newer_servers() -> None:
    summary = lic.EntitlementSummary(
        entitlement_id="ent_1",
        product_id="cad",
        edition_id="pro",
        status=lic.ENTITLEMENT_STATUS_TRIAL,
        features=[lic.Feature(name="export"), lic.Feature(name="projects", limit=5)],
        seats=3,
        seats_in_use=1,
    )
    info = entitlement_info(summary)
    assert (info.status, info.features, info.end_time, info.perpetual) == (
        "trial",
        {"export": None, "projects": 5},
        None,
        True,
    )
    assert (info.seat_limit, info.in_overage, info.extra) == (3, False, {})  # older server
    summary.end_time.CopyFrom(timestamp_pb2.Timestamp(seconds=int(NOW.timestamp())))
    summary.status = 99  # type: ignore[assignment]  # a status newer than this client
    summary.seat_limit, summary.in_overage = 4, True
    later = entitlement_info(summary)
    assert (later.end_time, later.status, later.seat_limit, later.in_overage) == (
        NOW,
        "unknown",
        4,
        True,
    )
    # Fields added after this client was built arrive in `extra`.
    newer = newer_summary_type()(
        entitlement_id="ent_1", seats=3, named_users=7, billing_plan="gold", tags=["a"]
    )
    info = entitlement_info(newer)
    assert (info.entitlement_id, info.seats) == ("ent_1", 3)
    assert info.extra == {"named_users": 7, "billing_plan": "gold"}  # scalars only


def newer_summary_type() -> type[Message]:
    """EntitlementSummary as a later version of licensing.proto might define it."""
    pool = descriptor_pool.DescriptorPool()
    for module in (timestamp_pb2, lic):
        proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        if module is lic:
            message = next(m for m in proto.message_type if m.name == "EntitlementSummary")
            field = descriptor_pb2.FieldDescriptorProto
            message.field.add(name="named_users", number=90, type=field.TYPE_INT32)
            message.field.add(name="billing_plan", number=91, type=field.TYPE_STRING)
            message.field.add(
                name="tags", number=92, type=field.TYPE_STRING, label=field.LABEL_REPEATED
            )
        pool.Add(proto)
    descriptor = pool.FindMessageTypeByName("keyturn.licensing.v1.EntitlementSummary")
    return message_factory.GetMessageClass(descriptor)


def test_default_fingerprint_is_stable_printable_and_hashed() -> None:
    fingerprint = default_fingerprint("acme-cad")
    assert fingerprint == default_fingerprint("acme-cad")
    assert fingerprint != default_fingerprint("other-app")  # vendors cannot match machines
    assert re.fullmatch(r"[0-9a-f]{64}", fingerprint)
    assert re.fullmatch(r"[\x21-\x7e]{8,256}", fingerprint)  # what the server accepts
