"""`keyturn orders import`: fulfil the orders of a CSV or JSONL export, safely twice.

CSV: one row per order line; rows with the same `order_id` form one order.
Columns (header names, any order; unknown columns are ignored):

| column | meaning |
|---|---|
| `order_id` | required; the order's id in the exporting system (idempotency key) |
| `customer_id` | required |
| `customer_name`, `customer_email`, `ship_to_email` | optional |
| `sku_id` | required |
| `quantity` | default 1 |
| `entitlement_id`, `external_reference` | the target of a change, or the reference a create attaches |
| `named_user_emails` | optional, separated by `;` |

JSONL: one order per line, in the JSON form of FulfillOrderRequest
(`{"order_id": ..., "customer": {...}, "lines": [{"sku_id": ..., "quantity": 1}]}`);
`source` defaults to the one given on the command line; a `reject_reason` key
(of a rejects file imported again) is ignored.

Every order is sent with its source and id, so a second run replays what the
first fulfilled and changes nothing. Exact duplicate rows of one order count
once. Rejected orders go to the rejects file (same format, plus a
`reject_reason`), which can be fixed and imported again; it is written on
every run, so a clean run leaves it without orders.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from keyturn.fulfillment.v1 import fulfillment_pb2 as ful

from ..errors import KeyturnError

Fulfil = Callable[[ful.FulfillOrderRequest], ful.FulfillOrderResponse]
ORDER_FIELDS = ("customer_id", "customer_name", "customer_email", "ship_to_email")
MAX_QUANTITY_FIELD = 2**31 - 1  # OrderLine.quantity is an int32


@dataclass
class Batch:
    """One order read from the file, with the raw records it came from."""

    order_id: str
    records: list[dict[str, Any]]
    request: ful.FulfillOrderRequest | None
    problem: str = ""  # why it cannot be sent (malformed), when it cannot


@dataclass
class Summary:
    fulfilled: int = 0
    replayed: int = 0
    rejected: int = 0
    duplicate_rows: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def reject(self, reason: str) -> None:
        self.rejected += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1

    def describe(self) -> str:
        lines = [
            f"fulfilled {self.fulfilled}, replayed {self.replayed}, rejected {self.rejected}"
            + (f", duplicate rows skipped {self.duplicate_rows}" if self.duplicate_rows else "")
        ]
        lines += [f"  rejected {n} x {reason}" for reason, n in sorted(self.reasons.items())]
        return "\n".join(lines)


def _csv_batches(path: Path, source: str, summary: Summary) -> Iterator[Batch]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.DictReader(handle))
    groups: dict[str, list[dict[str, Any]]] = {}
    for number, row in enumerate(rows, start=2):  # line 1 is the header
        record = {k.strip(): (v or "").strip() for k, v in row.items() if k}
        record["_line"] = number
        groups.setdefault(record.get("order_id", ""), []).append(record)
    for order_id, records in groups.items():
        yield _csv_batch(order_id, records, source, summary)


def _csv_batch(
    order_id: str, records: list[dict[str, Any]], source: str, summary: Summary
) -> Batch:
    lines_at = ", ".join(str(r["_line"]) for r in records)
    if not order_id:
        return Batch(order_id, records, None, f"rows {lines_at}: order_id is empty")
    first = records[0]
    for record in records[1:]:
        for name in ORDER_FIELDS:
            if record.get(name, "") != first.get(name, ""):
                return Batch(order_id, records, None, f"rows {lines_at}: {name} differs")
    seen: set[tuple[tuple[str, Any], ...]] = set()
    lines: list[ful.OrderLine] = []
    for record in records:
        key = tuple(sorted((k, v) for k, v in record.items() if k != "_line"))
        if key in seen:
            summary.duplicate_rows += 1
            continue
        seen.add(key)
        quantity_text = record.get("quantity") or "1"
        # ASCII digits only: str.isdigit() also accepts '²', which int() refuses.
        if not (quantity_text.isascii() and quantity_text.isdigit()):
            problem = f"row {record['_line']}: quantity {quantity_text!r} is not a whole number"
            return Batch(order_id, records, None, problem)
        if int(quantity_text) > MAX_QUANTITY_FIELD:  # an OrderLine could not even hold it
            problem = f"row {record['_line']}: quantity {quantity_text!r} is out of range"
            return Batch(order_id, records, None, problem)
        emails = [e.strip() for e in record.get("named_user_emails", "").split(";") if e.strip()]
        lines.append(
            ful.OrderLine(
                sku_id=record.get("sku_id", ""),
                quantity=int(quantity_text),
                entitlement_id=record.get("entitlement_id", ""),
                external_reference=record.get("external_reference", ""),
                named_user_emails=emails,
            )
        )
    request = ful.FulfillOrderRequest(
        source=source,
        order_id=order_id,
        customer=ful.Customer(
            customer_id=first.get("customer_id", ""),
            name=first.get("customer_name", ""),
            email=first.get("customer_email", ""),
        ),
        ship_to_email=first.get("ship_to_email", ""),
        lines=lines,
    )
    return Batch(order_id, records, request)


def _jsonl_batches(path: Path, source: str) -> Iterator[Batch]:
    with path.open(encoding="utf-8") as handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            record: dict[str, Any] = {"_line": number, "_text": text.rstrip("\n")}
            try:
                data = json.loads(text)
                if not isinstance(data, dict):
                    raise ValueError("not a JSON object")
                if data.get("source") in (None, ""):  # absent, null or empty: the default
                    data["source"] = source
                data.pop("reject_reason", None)  # a line of a rejects file, fixed and re-imported
                request = json_format.ParseDict(data, ful.FulfillOrderRequest())
            except (ValueError, json_format.ParseError) as exc:
                yield Batch("", [record], None, f"line {number}: {exc}")
                continue
            yield Batch(request.order_id, [record], request)


def _write_rejects(path: Path, file_format: str, rejected: list[tuple[Batch, str]]) -> None:
    if file_format == "jsonl":
        with path.open("w", encoding="utf-8") as out:
            for batch, reason in rejected:
                for record in batch.records:
                    try:
                        data = json.loads(record["_text"])
                    except ValueError:
                        data = {"raw": record["_text"]}
                    if not isinstance(data, dict):
                        data = {"raw": data}
                    out.write(json.dumps({**data, "reject_reason": reason}) + "\n")
        return
    columns: list[str] = []
    for batch, _ in rejected:
        for record in batch.records:
            columns += [k for k in record if k != "_line" and k not in columns]
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, [*columns, "reject_reason"], extrasaction="ignore")
        writer.writeheader()
        for batch, reason in rejected:
            for record in batch.records:
                writer.writerow({**record, "reject_reason": reason})


def import_orders(
    path: Path,
    fulfil: Fulfil,
    *,
    source: str = "import",
    file_format: str | None = None,
    rejects: Path | None = None,
    progress: bool = True,
) -> Summary:
    """Fulfil every order of the file; what went where is in the summary."""
    kind = file_format or ("jsonl" if path.suffix.lower() in (".jsonl", ".ndjson") else "csv")
    summary = Summary()
    batches = list(
        _jsonl_batches(path, source) if kind == "jsonl" else _csv_batches(path, source, summary)
    )
    rejected: list[tuple[Batch, str]] = []
    for batch in _with_progress(batches, progress):
        reason = batch.problem
        if batch.request is not None:
            try:
                response = fulfil(batch.request)
            except KeyturnError as exc:
                reason = f"{exc.reason or exc.code.name}: {exc.message}"
            else:
                if response.replayed:
                    summary.replayed += 1
                else:
                    summary.fulfilled += 1
                continue
        rejected.append((batch, reason))
        summary.reject(reason.split(":")[0] if batch.request is not None else "MALFORMED")
    if rejects is not None:  # also when empty: a rejects file of an earlier run is stale
        _write_rejects(rejects, kind, rejected)
    return summary


def _with_progress(batches: list[Batch], progress: bool) -> Iterator[Batch]:
    if not progress:
        yield from batches
        return
    from rich.console import Console
    from rich.progress import Progress

    # On stderr: stdout carries only the summary, for scripts to read.
    with Progress(transient=True, console=Console(stderr=True)) as bar:
        task = bar.add_task("importing orders", total=len(batches))
        for batch in batches:
            yield batch
            bar.advance(task)
