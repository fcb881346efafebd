"""The pure rules of the abuse limits, and the settings that configure them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from keyturn.licensing.v1 import licensing_pb2 as lic
from keyturn.server.api.abuse_limits import SWEEP_SECONDS, SweptMemoryStorage, rules_of
from keyturn.server.config import Settings
from keyturn.server.domain.abuse_limits import (
    CREDENTIAL_FIELDS,
    carries_credential,
    credential_of,
    forwarded_peer,
    peer_name,
    seconds_until,
    window_start,
)

LICENSING = "/keyturn.licensing.v1.LicensingService/"


@pytest.mark.parametrize(
    ("peer", "name"),
    [
        ("ipv4:10.0.0.7:5123", "10.0.0.7"),
        ("ipv6:[::1]:5123", "::1"),
        ("10.0.0.7:5123", "10.0.0.7"),  # HTTP's client address
        ("::1:5123", "::1"),
        ("2001:db8::5:443", "2001:db8::5"),
        ("x" * 100, "x" * 64),
    ],
)
def test_a_peer_is_its_host_without_the_port(peer: str, name: str) -> None:
    assert peer_name(peer) == name


def test_the_forwarded_peer_is_the_last_address_the_proxy_appended() -> None:
    assert forwarded_peer("198.51.100.1, 203.0.113.9") == "203.0.113.9"
    assert forwarded_peer("203.0.113.9") == "203.0.113.9"
    assert forwarded_peer("  ") == ""


def test_each_limited_method_names_fields_its_request_has() -> None:
    for method, names in CREDENTIAL_FIELDS.items():
        request_class = getattr(lic, method.rsplit("/", 1)[1] + "Request")
        assert set(names) <= set(request_class.DESCRIPTOR.fields_by_name), method


def test_the_credential_of_a_call() -> None:
    key = lic.ActivateSeatRequest(license_key="KT-1", fingerprint="f" * 8)
    identity = lic.CheckLicenseRequest(identity_token="idt-1")
    assert credential_of(LICENSING + "ActivateSeat", key) == "KT-1"
    assert credential_of(LICENSING + "CheckLicense", identity) == "idt-1"
    assert credential_of(LICENSING + "RenewLease", lic.RenewLeaseRequest(lease_token="t")) == "t"
    assert credential_of(LICENSING + "GetSigningKeys", lic.GetSigningKeysRequest()) == ""


def test_which_methods_carry_a_credential() -> None:
    assert carries_credential(LICENSING + "ReleaseSeat")
    assert carries_credential("/keyturn.fulfillment.v1.FulfillmentService/GetEntitlement")
    assert not carries_credential(LICENSING + "GetSigningKeys")


def test_fixed_windows_and_the_wait_until_their_end() -> None:
    window = timedelta(minutes=10)
    now = datetime(2026, 12, 1, 12, 34, 56, tzinfo=UTC)
    start = window_start(now, window)
    assert start == datetime(2026, 12, 1, 12, 30, tzinfo=UTC)
    assert window_start(start, window) == start
    assert seconds_until(now, start + window) == 304
    assert seconds_until(start + window, start + window) == 1, "never 0: retry later"


def test_rules_of_the_settings_notation() -> None:
    assert [str(r) for r in rules_of("100/second;3000/minute")] == [
        "100 per 1 second",
        "3000 per 1 minute",
    ]
    assert rules_of("off") == rules_of("") == ()


def test_the_defaults_parse_and_bad_limits_are_refused() -> None:
    defaults = Settings.model_construct()
    for value in (
        defaults.rate_limit_per_peer,
        defaults.rate_limit_per_credential,
        defaults.rate_limit_per_token,
        defaults.failed_credentials_limit,
    ):
        assert rules_of(value)
    assert Settings(rate_limit_per_peer="OFF").rate_limit_per_peer == "off"
    with pytest.raises(ValidationError, match="not a rate limit"):
        Settings(rate_limit_per_peer="fast")
    with pytest.raises(ValidationError, match="give one budget"):
        Settings(failed_credentials_limit="3/second;30/minute")
    with pytest.raises(ValidationError, match="not a header name"):
        Settings(rate_limit_peer_header="x forwarded")
    assert Settings(rate_limit_peer_header="X-Forwarded-For").rate_limit_peer_header == (
        "x-forwarded-for"
    )


def test_the_counters_are_swept_every_few_seconds_not_every_10_ms() -> None:
    """The override of the library's private scheduling method is in effect (were it
    renamed, the library's 10 ms sweep would be back: this fails), and an expired
    counter still reads as zero without a sweep."""
    storage = SweptMemoryStorage()
    storage.incr("key", expiry=0)
    assert storage.timer.interval == SWEEP_SECONDS
    assert storage.get("key") == 0, "expired on read"
    storage.incr("kept", expiry=60)
    assert storage.get("kept") == 1
    storage.timer.cancel()
