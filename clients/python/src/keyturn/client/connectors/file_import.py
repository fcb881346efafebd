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
once; a CSV row with more or fewer fields than the header is malformed.
Rejected orders are listed with their 1-based line numbers in the file and go
to the rejects file (same format, plus a `reject_reason`), which can be fixed
and imported again; it is written on every run, so a clean run leaves it
without orders. The license keys of the entitlements a run created are listed
too, or written to a keys file (CSV, readable by its owner only).
"""

from __future__ import annotations

import csv
import json
import os
import re
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

    @property
    def lines(self) -> list[int]:
        """The 1-based line numbers of the file the order was read from."""
        return [int(r["_line"]) for r in self.records]


@dataclass(frozen=True)
class Rejection:
    """A refused order: where it is in the file, the reason code and what is wrong."""

    lines: list[int]
    order_id: str
    code: str  # MALFORMED, or the server's ErrorInfo reason
    detail: str

    @property
    def reason(self) -> str:
        return f"{self.code}: {self.detail}"

    def describe(self) -> str:
        where = ("line " if len(self.lines) == 1 else "lines ") + ", ".join(map(str, self.lines))
        order = f" (order {self.order_id})" if self.order_id else ""
        return f"{where}{order}: {self.reason}"


@dataclass(frozen=True)
class CreatedKey:
    """The license key of an entitlement the import created (also emailed to the customer)."""

    order_id: str
    entitlement_id: str
    customer_id: str
    license_key: str


KEY_COLUMNS = ("order_id", "entitlement_id", "customer_id", "license_key")


@dataclass
class Summary:
    fulfilled: int = 0
    replayed: int = 0
    rejected: int = 0
    duplicate_rows: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    rejections: list[Rejection] = field(default_factory=list)
    created: list[CreatedKey] = field(default_factory=list)
    keys_file: Path | None = None  # where the created keys were written, if not listed

    def reject(self, rejection: Rejection) -> None:
        self.rejected += 1
        self.reasons[rejection.code] = self.reasons.get(rejection.code, 0) + 1
        self.rejections.append(rejection)

    def describe(self) -> str:
        lines = [
            f"fulfilled {self.fulfilled}, replayed {self.replayed}, rejected {self.rejected}"
            + (f", duplicate rows skipped {self.duplicate_rows}" if self.duplicate_rows else "")
        ]
        lines += [f"  rejected {r.describe()}" for r in self.rejections]
        lines += [f"  rejected {n} x {reason}" for reason, n in sorted(self.reasons.items())]
        if self.keys_file is not None:
            lines.append(f"license keys created: {len(self.created)}, written to {self.keys_file}")
        elif self.created:
            lines.append(f"license keys created (order, entitlement, key): {len(self.created)}")
            lines += [f"  {k.order_id} {k.entitlement_id} {k.license_key}" for k in self.created]
        return "\n".join(lines)


def _csv_records(path: Path) -> Iterator[dict[str, Any]]:
    """Each row as a record of its columns, with the 1-based line it starts on (a quoted
    field may span lines) and, when its field count is not the header's, `_problem`."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = [name.strip() for name in next(reader, [])]
        previous = reader.line_num
        for fields in reader:
            start, previous = previous + 1, reader.line_num
            if not fields:  # a blank line
                continue
            record: dict[str, Any] = {
                name: value.strip() for name, value in zip(header, fields, strict=False) if name
            }
            record["_line"] = start
            if len(fields) != len(header):
                record["_problem"] = f"{len(fields)} fields, the header has {len(header)}"
            yield record


def _at(record: dict[str, Any], records: list[dict[str, Any]]) -> str:
    """Which row of a several-row order a problem is on; nothing for a one-row order."""
    return f"line {record['_line']}: " if len(records) > 1 else ""


def _csv_batches(path: Path, source: str, summary: Summary) -> Iterator[Batch]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for record in _csv_records(path):
        groups.setdefault(record.get("order_id", ""), []).append(record)
    for order_id, records in groups.items():
        yield _csv_batch(order_id, records, source, summary)


def _csv_batch(
    order_id: str, records: list[dict[str, Any]], source: str, summary: Summary
) -> Batch:
    for record in records:
        if "_problem" in record:
            return Batch(order_id, records, None, _at(record, records) + record["_problem"])
    if not order_id:
        return Batch(order_id, records, None, "order_id is empty")
    first = records[0]
    for record in records[1:]:
        for name in ORDER_FIELDS:
            if record.get(name, "") != first.get(name, ""):
                problem = f"{name} differs between line {first['_line']} and {record['_line']}"
                return Batch(order_id, records, None, problem)
    unique = _unique_records(records)
    summary.duplicate_rows += len(records) - len(unique)
    lines: list[ful.OrderLine] = []
    for record in unique:
        quantity_text = record.get("quantity") or "1"
        # ASCII digits only: str.isdigit() also accepts '²', which int() refuses.
        if not (quantity_text.isascii() and quantity_text.isdigit()):
            problem = f"{_at(record, records)}quantity {quantity_text!r} is not a whole number"
            return Batch(order_id, records, None, problem)
        if int(quantity_text) > MAX_QUANTITY_FIELD:  # an OrderLine could not even hold it
            problem = f"{_at(record, records)}quantity {quantity_text!r} is out of range"
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
                yield Batch("", [record], None, str(exc))
                continue
            yield Batch(request.order_id, [record], request)


def _write_rejects(path: Path, file_format: str, rejected: list[tuple[Batch, Rejection]]) -> None:
    if file_format == "jsonl":
        with path.open("w", encoding="utf-8") as out:
            for batch, rejection in rejected:
                for record in batch.records:
                    try:
                        data = json.loads(record["_text"])
                    except ValueError:
                        data = {"raw": record["_text"]}
                    if not isinstance(data, dict):
                        data = {"raw": data}
                    out.write(json.dumps({**data, "reject_reason": rejection.reason}) + "\n")
        return
    columns: list[str] = []
    for batch, _ in rejected:
        for record in batch.records:
            columns += [k for k in record if not k.startswith("_") and k not in columns]
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, [*columns, "reject_reason"], extrasaction="ignore")
        writer.writeheader()
        for batch, rejection in rejected:
            for record in batch.records:
                writer.writerow({**record, "reject_reason": rejection.reason})


def _write_keys(path: Path, created: list[CreatedKey]) -> None:
    """The created keys as CSV, readable by the owner only: they are credentials."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(descriptor, "w", newline="", encoding="utf-8") as out:
        os.chmod(path, 0o600)  # also when the file was there before
        writer = csv.writer(out)
        writer.writerow(KEY_COLUMNS)
        writer.writerows(
            (k.order_id, k.entitlement_id, k.customer_id, k.license_key) for k in created
        )


SERVER_LINE = re.compile(r"^line \d+: ")  # how the server names an order line (0-based index)


def _refusal(batch: Batch, error: KeyturnError, kind: str) -> Rejection:
    """The server's refusal, with its order-line index turned into the file's 1-based line
    (CSV: the row of that order line; JSONL: the position in the order's `lines`)."""
    detail = error.message
    index = error.metadata.get("line", "")
    if index.isdigit():
        detail = SERVER_LINE.sub("", detail)
        unique = _unique_records(batch.records)
        if kind == "csv" and int(index) < len(unique):
            if len(batch.records) > 1:
                detail = f"line {unique[int(index)]['_line']}: {detail}"
        else:
            detail = f"order line {int(index) + 1}: {detail}"
    return Rejection(batch.lines, batch.order_id, error.reason or error.code.name, detail)


def _unique_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records that became order lines: exact duplicates count once."""
    seen: set[tuple[tuple[str, Any], ...]] = set()
    unique = []
    for record in records:
        key = tuple(sorted((k, v) for k, v in record.items() if not k.startswith("_")))
        if key not in seen:
            seen.add(key)
            unique.append(record)
    return unique


def import_orders(
    path: Path,
    fulfil: Fulfil,
    *,
    source: str = "import",
    file_format: str | None = None,
    rejects: Path | None = None,
    keys_out: Path | None = None,
    progress: bool = True,
) -> Summary:
    """Fulfil every order of the file; what went where is in the summary."""
    kind = file_format or ("jsonl" if path.suffix.lower() in (".jsonl", ".ndjson") else "csv")
    summary = Summary(keys_file=keys_out)
    batches = list(
        _jsonl_batches(path, source) if kind == "jsonl" else _csv_batches(path, source, summary)
    )
    rejected: list[tuple[Batch, Rejection]] = []
    for batch in _with_progress(batches, progress):
        if batch.request is None:
            rejection = Rejection(batch.lines, batch.order_id, "MALFORMED", batch.problem)
        else:
            try:
                response = fulfil(batch.request)
            except KeyturnError as exc:
                rejection = _refusal(batch, exc, kind)
            else:
                if response.replayed:
                    summary.replayed += 1
                else:
                    summary.fulfilled += 1
                    summary.created += [
                        CreatedKey(
                            batch.order_id, e.entitlement_id, e.customer.customer_id, e.license_key
                        )
                        for e in response.entitlements
                        if e.license_key
                    ]
                continue
        rejected.append((batch, rejection))
        summary.reject(rejection)
    if rejects is not None:  # also when empty: a rejects file of an earlier run is stale
        _write_rejects(rejects, kind, rejected)
    if keys_out is not None:
        _write_keys(keys_out, summary.created)
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
