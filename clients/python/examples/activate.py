"""An app that holds a Keyturn seat while it runs.

    python examples/activate.py --target 127.0.0.1:50051 --product acme-cad --key XXXX-XXXX-...

Activates this machine, prints the edition, features and expiry, keeps the
lease renewed in the background and gives the seat back on Ctrl-C (or
SIGTERM). If the seat is lost (the license expired, was cancelled, or another
device took the seat while this one was offline) it says so and exits.
"""

from __future__ import annotations

import argparse
import platform
import signal
import sys
import threading
from types import FrameType

from keyturn.client import (
    EntitlementExpiredError,
    InvalidLicenseKeyError,
    KeyturnError,
    Lease,
    LicensingClient,
    SeatsExhaustedError,
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="127.0.0.1:50051", help="server host:port")
    parser.add_argument("--product", required=True, help="product id of this app")
    parser.add_argument("--key", required=True, help="license key as emailed")
    parser.add_argument("--label", default=platform.node(), help="device name shown to admins")
    return parser.parse_args(argv)


def describe(lease: Lease) -> str:
    features = ", ".join(
        name if limit is None else f"{name}={limit}"
        for name, limit in sorted(lease.features.items())
    )
    seats = lease.entitlement
    return (
        f"licensed: {lease.product_id} {lease.edition} edition ({seats.status}), "
        f"features [{features}], seat {seats.seats_in_use}/{seats.seats}, "
        f"lease until {lease.expire_time:%Y-%m-%d %H:%M:%S}Z"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    done = threading.Event()
    lost: list[KeyturnError] = []

    def on_lost(lease: Lease, error: KeyturnError) -> None:
        lost.append(error)
        done.set()

    def on_renewed(lease: Lease) -> None:
        print(f"renewed: lease until {lease.expire_time:%H:%M:%S}Z", flush=True)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    with LicensingClient(args.target, args.product) as client:
        try:
            lease = client.activate(
                args.key, label=args.label, on_lost=on_lost, on_renewed=on_renewed
            )
        except InvalidLicenseKeyError:
            print("that license key is not valid: check it for typos", file=sys.stderr)
            return 2
        except SeatsExhaustedError as error:
            print(f"all {error.metadata.get('seats', '?')} seats are in use", file=sys.stderr)
            return 3
        except EntitlementExpiredError:
            print("this license has expired", file=sys.stderr)
            return 4
        except KeyturnError as error:  # every other refusal, and the server unreachable
            print(f"cannot activate: {error}", file=sys.stderr)
            return 1
        with lease:  # gives the seat back when the block ends
            print(describe(lease), flush=True)
            print("running; Ctrl-C to stop", flush=True)
            done.wait()
            if lost:
                print(f"license lost: {lost[0]}", file=sys.stderr)
                return 5
        print("seat released", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
