"""An order connector: reads orders as JSON lines, fulfils each one, prints the result.

    python examples/fulfill_order.py --target 127.0.0.1:50051 examples/orders.jsonl

The token (`--token`, else KEYTURN_FULFILL_TOKEN: the variable Keyturn's own
connectors read) needs the `fulfill` scope.

Each input line is a FulfillOrderRequest in protobuf JSON form, one order per
line (an order wrapped over several lines is refused, with its line number);
examples/orders.jsonl holds two orders for the SKUs of the repository's
examples/catalog.yaml.

Running the same file again is safe: an order already fulfilled is replayed,
not applied twice (`source` + `order_id` is the idempotency key). Prints one
JSON line per order; exits 1 if any order failed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable
from typing import Any

from google.protobuf import json_format

from keyturn.client import FulfillmentClient, KeyturnError, OrderConflictError
from keyturn.fulfillment.v1 import fulfillment_pb2


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="127.0.0.1:50051", help="server host:port")
    parser.add_argument(
        "--token",
        default=os.environ.get("KEYTURN_FULFILL_TOKEN", ""),
        help="bearer token, fulfill scope (default: KEYTURN_FULFILL_TOKEN)",
    )
    parser.add_argument("--source", default="", help="source for orders that name none")
    parser.add_argument("orders", nargs="?", default="-", help="JSON lines file, - for stdin")
    return parser.parse_args(argv)


def read_orders(
    lines: Iterable[str], source: str
) -> Iterable[tuple[int, fulfillment_pb2.FulfillOrderRequest | json_format.ParseError]]:
    """Each order with its 1-based line number; a line that is no order, as its error."""
    for number, line in enumerate(lines, start=1):
        if line.strip():
            try:
                request = json_format.Parse(line, fulfillment_pb2.FulfillOrderRequest())
            except json_format.ParseError as error:
                yield number, error
                continue
            request.source = request.source or source
            yield number, request


def summary(response: fulfillment_pb2.FulfillOrderResponse) -> dict[str, Any]:
    return {
        "order_id": response.order.order_id,
        "replayed": response.replayed,
        "entitlements": [
            {
                "entitlement_id": e.entitlement_id,
                "edition": e.edition_id,
                "seats": e.seats,
                # Only for entitlements this order created; it is also emailed.
                "license_key": e.license_key or None,
            }
            for e in response.entitlements
        ],
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    failed = 0
    source = sys.stdin if args.orders == "-" else open(args.orders, encoding="utf-8")  # noqa: SIM115
    with source, FulfillmentClient(args.target, args.token) as client:
        for number, request in read_orders(source, args.source):
            if isinstance(request, json_format.ParseError):
                failed += 1
                print(
                    json.dumps({"line": number, "error": "MALFORMED", "message": str(request)}),
                    flush=True,
                )
                continue
            try:
                result = summary(client.fulfill_order(request))
            except OrderConflictError:
                failed += 1
                result = {
                    "order_id": request.order_id,
                    "error": "ORDER_CONFLICT",
                    "message": "fulfilled before with different content",
                }
            except KeyturnError as error:
                failed += 1
                result = {
                    "order_id": request.order_id,
                    "error": error.reason or error.code.name,
                    "message": error.message,
                    "fields": error.field_violations,
                }
            print(json.dumps(result), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
