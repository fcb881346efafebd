"""Guessing license keys against the real `keyturn serve --workers 2` on PostgreSQL, with
the default limits: 200 wrong keys a second from one peer are refused RATE_LIMITED with
a retry delay once the peer's budget of wrong credentials is spent, on both workers
(the budget is counted in the database), while another peer's valid activations all
succeed. Peers are named by `x-forwarded-for`, as behind a proxy.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import grpc

from keyturn.fulfillment.v1 import catalog_pb2_grpc, fulfillment_pb2_grpc
from keyturn.licensing.v1 import licensing_pb2 as lic
from keyturn.licensing.v1 import licensing_pb2_grpc

from conftest import TEST_SECRET
from support.catalog import new_license
from support.rpc import PRODUCT_ID, failure_of
from support.subprocess_server import create_token, start_server
from support.workers import NEW_CONNECTION, listening_workers, trailer_worker

BUDGET = 30  # the default KEYTURN_FAILED_CREDENTIALS_LIMIT: 30/10 minutes
RATE = 200  # wrong keys a second
SECONDS = 2.0
GUESSER, CUSTOMER = "203.0.113.50", "198.51.100.60"
CUSTOMER_RATE = 20  # valid activations a second, well within every limit
CHANNELS = 8  # new connections, so that both workers get guesses
CALL_TIMEOUT_S = 30.0


def limited_settings(database_url: str) -> dict[str, str]:
    """The defaults (child_env's unreached limits replaced by them), peers by header."""
    return {
        "KEYTURN_DATABASE_URL": database_url,
        "KEYTURN_SECRET_KEY": TEST_SECRET,
        "KEYTURN_RATE_LIMIT_PER_PEER": "100/second;3000/minute",
        "KEYTURN_RATE_LIMIT_PER_CREDENTIAL": "50/second;1500/minute",
        "KEYTURN_RATE_LIMIT_PER_TOKEN": "300/second",
        "KEYTURN_FAILED_CREDENTIALS_LIMIT": f"{BUDGET}/10 minutes",
        "KEYTURN_RATE_LIMIT_PEER_HEADER": "x-forwarded-for",
    }


def activation(key: str, fingerprint: str) -> lic.ActivateSeatRequest:
    return lic.ActivateSeatRequest(license_key=key, product_id=PRODUCT_ID, fingerprint=fingerprint)


async def test_200_wrong_keys_a_second_are_refused_while_another_peer_activates(
    tmp_path: Path, postgres_url: str
) -> None:
    settings = limited_settings(postgres_url)
    secret = await create_token(tmp_path, settings)
    auth = (("authorization", f"Bearer {secret}"),)
    with start_server(tmp_path, settings, workers=2) as server:
        pids = set((await listening_workers(server)).values())
        channels = [
            grpc.aio.insecure_channel(server.address, options=NEW_CONNECTION)
            for _ in range(CHANNELS)
        ]
        try:
            entitlement = await new_license(
                catalog_pb2_grpc.CatalogServiceStub(channels[0]),
                fulfillment_pb2_grpc.FulfillmentServiceStub(channels[0]),
                auth, auth, seats=100,
            )  # fmt: skip
            stubs = [licensing_pb2_grpc.LicensingServiceStub(c) for c in channels]
            outcomes: Counter[str] = Counter()
            delays: list[float] = []
            refusing_workers: set[int] = set()

            async def guess(number: int) -> None:
                try:
                    await stubs[number % CHANNELS].ActivateSeat(
                        activation(f"KT-GUESS-{number:06d}", f"guess-device-{number}"),
                        metadata=(("x-forwarded-for", GUESSER),),
                        timeout=CALL_TIMEOUT_S,
                    )
                    outcomes["activated"] += 1
                except grpc.aio.AioRpcError as error:
                    failure = failure_of(error)
                    outcomes[failure.reason] += 1
                    if failure.reason == "RATE_LIMITED":
                        assert failure.retry_delay_seconds is not None
                        delays.append(failure.retry_delay_seconds)
                        refusing_workers.add(trailer_worker(error.trailing_metadata()))

            async def customer() -> int:
                """Valid activations from another peer, CUSTOMER_RATE new devices a second."""
                done, device, start = 0, 0, time.monotonic()
                while not guessing.done():
                    await asyncio.sleep(max(0.0, start + device / CUSTOMER_RATE - time.monotonic()))
                    response = await stubs[device % CHANNELS].ActivateSeat(
                        activation(entitlement.license_key, f"customer-device-{device:03d}"),
                        metadata=(("x-forwarded-for", CUSTOMER),),
                        timeout=CALL_TIMEOUT_S,
                    )
                    assert response.lease.token
                    done, device = done + 1, device + 1
                return done

            async def paced_guesses() -> int:
                """RATE guesses a second for SECONDS, each started on its own schedule."""
                calls, start, total = [], time.monotonic(), int(RATE * SECONDS)
                for number in range(total):
                    await asyncio.sleep(max(0.0, start + number / RATE - time.monotonic()))
                    calls.append(asyncio.create_task(guess(number)))
                await asyncio.gather(*calls)
                return total

            guessing = asyncio.create_task(paced_guesses())
            activated = await customer()
            tried = await guessing
        finally:
            for channel in channels:
                await channel.close()
    print(f"\nguesses: {tried} in {SECONDS} s, outcomes {dict(outcomes)}; customer: {activated}")
    assert outcomes["activated"] == 0
    assert sum(outcomes.values()) == tried
    wrong = outcomes["INVALID_LICENSE_KEY"]
    # Exactly the budget learnt that they missed, whichever worker answered them.
    assert wrong == BUDGET, outcomes
    assert outcomes["RATE_LIMITED"] == tried - wrong, outcomes
    assert outcomes["RATE_LIMITED"] > tried * 0.8, "most guesses are refused"
    assert min(delays) >= 1
    assert refusing_workers == pids, "both workers refuse the peer"
    assert activated >= SECONDS * CUSTOMER_RATE / 2, "the customer kept activating"
