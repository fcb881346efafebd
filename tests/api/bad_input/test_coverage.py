"""The cases themselves: unique names, every RPC of the contract covered, and the
tables the generator reads in step with the descriptors."""

from __future__ import annotations

from keyturn.fulfillment.v1 import catalog_pb2 as cat
from keyturn.fulfillment.v1 import fulfillment_pb2 as ful
from keyturn.licensing.v1 import licensing_pb2 as lic

from . import (
    test_audit_trail,
    test_catalog,
    test_devices,
    test_entitlement_reads,
    test_licensing,
    test_named_user_admin,
    test_order_changes,
    test_orders,
    test_suspension,
    test_transport,
    test_usage_report,
    test_webhooks,
)
from .builders import SHAPE, WELL_FORMED, built
from .cases import RPCS, STREAMING, Case
from .generated import REQUIRED, field_cases, field_named

MODULES = (
    test_catalog,
    test_orders,
    test_order_changes,
    test_entitlement_reads,
    test_licensing,
    test_suspension,
    test_named_user_admin,
    test_transport,
    test_usage_report,
    test_audit_trail,
    test_devices,
    test_webhooks,
)
CASES: list[Case] = [case for module in MODULES for case in module.CASES]


def test_case_ids_are_unique() -> None:
    ids = [case.id for case in CASES]
    assert sorted({i for i in ids if ids.count(i) > 1}) == []
    assert {case.rpc for case in CASES} == set(RPCS)


def test_every_implemented_rpc_has_cases() -> None:
    """Each RPC of the three services is in RPCS (so has cases) and has a well-formed
    request to spoil."""
    declared: dict[str, tuple[str, bool]] = {}
    for module in (cat, ful, lic):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                declared[method.name] = (service.full_name, method.server_streaming)
    assert set(RPCS) == set(declared) == set(WELL_FORMED)
    assert {rpc: service for rpc, (service, _) in RPCS.items()} == {
        rpc: declared[rpc][0] for rpc in RPCS
    }
    assert {rpc for rpc, (_, streaming) in declared.items() if streaming} == STREAMING


def test_well_formed_requests_are_of_each_rpcs_request_type() -> None:
    for module in (cat, ful, lic):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                message = built(WELL_FORMED[method.name], SHAPE)
                assert message.DESCRIPTOR is method.input_type, method.name


def test_required_fields_are_fields_of_the_well_formed_requests() -> None:
    for rpc, required in REQUIRED.items():
        shape = built(WELL_FORMED[rpc], SHAPE)
        for path in required:
            assert field_named(shape, path).path == path


def test_every_string_of_a_request_with_strings_is_spoiled() -> None:
    """The walk reaches into sub-messages: PutProduct's editions, FulfillOrder's lines."""
    names = {case.name for case in field_cases("PutProduct") + field_cases("FulfillOrder")}
    assert {
        "product.editions[0].edition_id-10k-chars",
        "lines[0].external_reference-nul-char",
        "customer.email-10k-chars",
    } <= names
