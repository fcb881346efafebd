"""ListActivations and DeactivateSeat messages to and from the devices use cases."""

from __future__ import annotations

from collections.abc import Iterable

from keyturn.fulfillment.v1 import fulfillment_pb2 as pb
from keyturn.server.app.devices import ActivationView
from keyturn.server.domain.errors import FieldViolation, raise_if_invalid
from keyturn.server.domain.seats import ActivationState

from .timestamps import timestamp

STATE_IN = {
    pb.ACTIVATION_STATE_LIVE: ActivationState.LIVE,
    pb.ACTIVATION_STATE_LAPSED: ActivationState.LAPSED,
    pb.ACTIVATION_STATE_RELEASED: ActivationState.RELEASED,
    pb.ACTIVATION_STATE_DEACTIVATED: ActivationState.DEACTIVATED,
}
STATE_OUT = {state: code for code, state in STATE_IN.items()}


def states_in(codes: Iterable[int]) -> tuple[ActivationState, ...]:
    """The states asked for; an unknown or unset value is named by its index."""
    violations = [
        FieldViolation(f"states[{i}]", "unknown activation state")
        for i, code in enumerate(codes)
        if code not in STATE_IN
    ]
    raise_if_invalid(violations)
    return tuple(STATE_IN[code] for code in codes)  # type: ignore[index]


def activation_out(view: ActivationView) -> pb.Activation:
    a = view.activation
    message = pb.Activation(
        activation_id=a.activation_id,
        entitlement_id=a.entitlement_id,
        fingerprint=a.fingerprint,
        label=a.label,
        user_id=a.user_id or "",
        create_time=timestamp(a.create_time),
        update_time=timestamp(a.update_time or a.create_time),
        lease_expire_time=timestamp(a.lease_expire_time),
        released_by=a.released_by or "",
        release_reason=a.release_reason or "",
        state=STATE_OUT[view.state],
        node_locked=view.node_locked,
    )
    if a.released_time is not None:
        message.release_time.CopyFrom(timestamp(a.released_time))
    return message
