"""`keyturn orders import`: CSV and JSONL exports fulfilled through a real server, their
malformed and refused orders in the rejects file, a second run that changes nothing,
and the command itself as a child process with its exit codes.

import_orders and the FulfillmentClient are blocking: they run in a worker thread, as
the server under test runs on the event loop.
"""

from __future__ import annotations

import asyncio
import csv
import json
import re
from pathlib import Path
from typing import Any

import pytest
from connector_harness import PRO, STANDARD, database_state, run_keyturn_async

from keyturn.client import FulfillmentClient, NotFoundError
from keyturn.client.connectors.file_import import Summary, import_orders
from keyturn.fulfillment.v1 import catalog_pb2 as cat
from keyturn.fulfillment.v1 import catalog_pb2_grpc
from keyturn.fulfillment.v1 import fulfillment_pb2 as ful
from keyturn.server.api.server import KeyturnServer
from keyturn.server.app.context import AppContext

from conftest import Tokens
from support.rpc import create_sku

pytest_plugins = ["connector_fixtures"]

run = asyncio.to_thread

COLUMNS = [
    "order_id",
    "customer_id",
    "customer_name",
    "customer_email",
    "ship_to_email",
    "sku_id",
    "quantity",
    "entitlement_id",
    "external_reference",
    "named_user_emails",
    "notes",  # not a documented column: ignored
]


def row(
    order_id: str,
    customer: tuple[str, str, str],
    sku_id: str,
    quantity: str,
    reference: str = "",
    **extra: str,
) -> dict[str, str]:
    customer_id, name, email = customer
    values = {
        "order_id": order_id,
        "customer_id": customer_id,
        "customer_name": name,
        "customer_email": email,
        "sku_id": sku_id,
        "quantity": quantity,
        "external_reference": reference,
        **extra,
    }
    return {column: values.get(column, "") for column in COLUMNS}


INITECH = ("C-1", "Initech", "it@initech.example")
GLOBEX = ("C-2", "Globex, Inc.", "ops@globex.example")  # a comma: quoted in the CSV
HOOLI = ("C-3", "Hooli", "it@hooli.example")
UMBRELLA = ("C-4", "Umbrella", "it@umbrella.example")
VANDELAY = ("C-5", "Vandelay", "it@vandelay.example")
SOYLENT = ("C-6", "Soylent", "it@soylent.example")

SO_1001 = row(
    "SO-1001",
    INITECH,
    STANDARD,
    "3",
    "crm:SO-1001",
    named_user_emails="ann@initech.example; Bob@Initech.example",
    notes="first order",
)
GOOD_ROWS = {
    2: SO_1001,
    3: row("SO-1002", GLOBEX, STANDARD, "2", "crm:SO-1002", ship_to_email="lic@globex.example"),
    4: row(
        "SO-1002",
        GLOBEX,
        f"{STANDARD}:add-seats",
        "3",
        "crm:SO-1002",
        ship_to_email="lic@globex.example",
    ),
    5: SO_1001,  # an exact duplicate row: counted once
    11: row("SO-1006", SOYLENT, PRO, "", "crm:SO-1006"),  # quantity defaults to 1
}
BAD_ROWS = {
    6: row("", HOOLI, STANDARD, "1", notes="no order id"),
    7: row("SO-1003", HOOLI, STANDARD, "abc"),
    8: row("SO-1004", UMBRELLA, STANDARD, "1"),
    9: row("SO-1004", (UMBRELLA[0], UMBRELLA[1], "billing@umbrella.example"), PRO, "1"),
    10: row("SO-1005", VANDELAY, "acme-cad-enterprise", "2", "crm:SO-1005"),
    12: row("SO-1007", HOOLI, STANDARD, "99999999999"),
    13: row("SO-1008", HOOLI, STANDARD, "²"),
}
REASONS = {
    6: "MALFORMED: order_id is empty",
    7: "MALFORMED: quantity 'abc' is not a whole number",
    8: "MALFORMED: customer_email differs between line 8 and 9",
    9: "MALFORMED: customer_email differs between line 8 and 9",
    10: "SKU_NOT_FOUND: no SKU 'acme-cad-enterprise'",
    12: "MALFORMED: quantity '99999999999' is out of range",
    13: "MALFORMED: quantity '²' is not a whole number",
}
# What the summary prints for each rejected order: its 1-based lines in the file.
REJECTED_LINES = [
    "  rejected line 6: MALFORMED: order_id is empty",
    "  rejected line 7 (order SO-1003): MALFORMED: quantity 'abc' is not a whole number",
    "  rejected lines 8, 9 (order SO-1004): MALFORMED: customer_email differs between line 8 and 9",
    "  rejected line 10 (order SO-1005): SKU_NOT_FOUND: no SKU 'acme-cad-enterprise'",
    "  rejected line 12 (order SO-1007): MALFORMED: quantity '99999999999' is out of range",
    "  rejected line 13 (order SO-1008): MALFORMED: quantity '²' is not a whole number",
]


def write_csv(path: Path, rows: dict[int, dict[str, str]]) -> Path:
    """Rows by their line number in the file (the header is line 1)."""
    assert sorted(rows) == list(range(2, len(rows) + 2))
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, COLUMNS)
        writer.writeheader()
        for number in sorted(rows):
            writer.writerow(rows[number])
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def write_jsonl(path: Path, lines: list[Any]) -> Path:
    path.write_text(
        "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n",
        encoding="utf-8",
    )
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(text) for text in path.read_text(encoding="utf-8").splitlines()]


Counts = tuple[int, int, int, int, dict[str, int]]


def summary(
    fulfilled: int = 0,
    replayed: int = 0,
    duplicate_rows: int = 0,
    reasons: dict[str, int] | None = None,
) -> Counts:
    """The counts a Summary should hold: fulfilled, replayed, rejected, duplicates, reasons."""
    reasons = reasons or {}
    return (fulfilled, replayed, sum(reasons.values()), duplicate_rows, reasons)


def counts(result: Summary) -> Counts:
    return (
        result.fulfilled,
        result.replayed,
        result.rejected,
        result.duplicate_rows,
        result.reasons,
    )


def key_lines(result: Summary) -> list[str]:
    """The created keys as the summary lists them."""
    return [f"  {k.order_id} {k.entitlement_id} {k.license_key}" for k in result.created]


async def entitlement_named(read: FulfillmentClient, reference: str) -> ful.Entitlement:
    found = await run(lambda: list(read.list_entitlements(external_reference=reference)))
    assert len(found) == 1, found
    return found[0]


async def assert_no_order(read: FulfillmentClient, source: str, order_id: str) -> None:
    with pytest.raises(NotFoundError) as missing:
        await run(read.get_order, source, order_id)
    assert missing.value.reason == "ORDER_NOT_FOUND"


async def test_csv_orders_rejects_and_a_second_run(
    fulfil_client: FulfillmentClient,
    read_client: FulfillmentClient,
    app: AppContext,
    stripe_catalog: object,
    catalog_stub: catalog_pb2_grpc.CatalogServiceStub,
    tokens: Tokens,
    tmp_path: Path,
) -> None:
    export = write_csv(tmp_path / "orders.csv", {**GOOD_ROWS, **BAD_ROWS})
    rejects = tmp_path / "rejects.csv"

    first = await run(
        import_orders, export, fulfil_client.fulfill_order, source="crm", rejects=rejects
    )

    expected = summary(3, 0, 1, {"MALFORMED": 5, "SKU_NOT_FOUND": 1})
    assert counts(first) == expected
    # The keys of the three new entitlements (SO-1002's second line changes the first).
    assert [k.order_id for k in first.created] == ["SO-1001", "SO-1002", "SO-1006"]
    assert first.describe().splitlines() == [
        "fulfilled 3, replayed 0, rejected 6, duplicate rows skipped 1",
        *REJECTED_LINES,
        "  rejected 5 x MALFORMED",
        "  rejected 1 x SKU_NOT_FOUND",
        "license keys created (order, entitlement, key): 3",
        *key_lines(first),
    ]
    # The rejects file: exactly the rejected rows, in file order, with their reason.
    assert read_csv(rejects) == [
        {**BAD_ROWS[n], "reject_reason": REASONS[n]} for n in sorted(BAD_ROWS)
    ]

    # A multi-line order with named users; the duplicate row did not double the seats.
    initech = await entitlement_named(read_client, "crm:SO-1001")
    assert first.created[0].entitlement_id == initech.entitlement_id
    assert all(k.license_key for k in first.created)
    assert (initech.seats, initech.edition_id, initech.customer.name) == (3, "standard", "Initech")
    assert sorted(u.email for u in initech.named_users) == [
        "ann@initech.example",
        "bob@initech.example",
    ]
    order = await run(read_client.get_order, "crm", "SO-1001")
    assert [(line.sku_id, line.quantity) for line in order.lines] == [(STANDARD, 3)]
    globex = await entitlement_named(read_client, "crm:SO-1002")
    assert (globex.seats, globex.ship_to_email) == (5, "lic@globex.example")
    assert globex.customer == ful.Customer(
        customer_id="C-2", name="Globex, Inc.", email="ops@globex.example"
    )
    order = await run(read_client.get_order, "crm", "SO-1002")
    assert [list(result.operations) for result in order.results] == [["create"], ["add_seats"]]
    soylent = await entitlement_named(read_client, "crm:SO-1006")
    assert (soylent.seats, soylent.edition_id) == (1, "pro")
    for order_id in ("SO-1003", "SO-1004", "SO-1005", "SO-1007", "SO-1008"):
        await assert_no_order(read_client, "crm", order_id)

    # The same file again: every order replays, nothing changes.
    state = await database_state(app.store)
    second = await run(
        import_orders, export, fulfil_client.fulfill_order, source="crm", rejects=rejects
    )
    assert counts(second) == summary(0, 3, 1, {"MALFORMED": 5, "SKU_NOT_FOUND": 1})
    assert second.created == []  # a replay creates nothing
    assert await database_state(app.store) == state

    # The rejects file imported again once the catalog has the SKU: that order goes through.
    await catalog_stub.PutSku(
        cat.PutSkuRequest(sku=create_sku("acme-cad-enterprise", seats=5)),
        metadata=tokens("catalog"),
    )
    still = tmp_path / "still-rejected.csv"
    third = await run(
        import_orders, rejects, fulfil_client.fulfill_order, source="crm", rejects=still
    )
    assert counts(third) == summary(1, 0, 0, {"MALFORMED": 5})
    assert (await entitlement_named(read_client, "crm:SO-1005")).seats == 10
    assert [r["order_id"] for r in read_csv(still)] == [
        r["order_id"] for n, r in sorted(BAD_ROWS.items()) if n != 10
    ]


async def test_jsonl_orders_with_malformed_lines(
    fulfil_client: FulfillmentClient,
    read_client: FulfillmentClient,
    app: AppContext,
    stripe_catalog: object,
    tmp_path: Path,
) -> None:
    customer = {"customer_id": "C-9", "name": "Initrode", "email": "it@initrode.example"}
    lines: list[Any] = [
        {
            "order_id": "J-1",
            "customer": customer,
            "lines": [{"sku_id": STANDARD, "quantity": 2, "external_reference": "erp:J-1"}],
        },
        "",  # a blank line: skipped
        '{"order_id": "J-2", "customer": ',
        ["not", "an", "order"],
        {"order_id": "J-3", "customer": customer, "lines": [{"sku_id": STANDARD, "qty": 1}]},
        {"order_id": "J-4", "lines": [{"sku_id": STANDARD, "quantity": 1}]},
        {
            "source": "shop",
            "order_id": "J-5",
            "customer": customer,
            "lines": [{"sku_id": PRO, "quantity": 1}],
        },
        {
            "source": None,
            "order_id": "J-6",
            "customer": customer,
            "lines": [
                {"sku_id": PRO, "quantity": "4", "namedUserEmails": ["zed@initrode.example"]}
            ],
        },
    ]
    export = write_jsonl(tmp_path / "orders.jsonl", lines)
    rejects = tmp_path / "rejects.jsonl"

    first = await run(
        import_orders,
        export,
        fulfil_client.fulfill_order,
        source="erp",
        rejects=rejects,
        progress=True,
    )

    assert counts(first) == summary(3, 0, 0, {"MALFORMED": 3, "INVALID_REQUEST": 1})
    assert [r.lines for r in first.rejections] == [[3], [4], [5], [6]]  # 1-based file lines
    assert (await entitlement_named(read_client, "erp:J-1")).seats == 2
    assert list((await run(read_client.get_order, "shop", "J-5")).lines) == [
        ful.OrderLine(sku_id=PRO, quantity=1)
    ]
    j6 = await run(read_client.get_order, "erp", "J-6")  # source null: the default
    assert [list(line.named_user_emails) for line in j6.lines] == [["zed@initrode.example"]]
    for order_id in ("J-2", "J-3", "J-4"):
        await assert_no_order(read_client, "erp", order_id)

    rejected = read_jsonl(rejects)
    assert [r.get("raw", r.get("order_id")) for r in rejected] == [
        lines[2],
        lines[3],
        "J-3",
        "J-4",
    ]
    assert [r["reject_reason"].split(":")[0] for r in rejected] == [
        "MALFORMED",
        "MALFORMED",
        "MALFORMED",
        "INVALID_REQUEST",
    ]
    assert "qty" in rejected[2]["reject_reason"]
    assert {k: v for k, v in rejected[3].items() if k != "reject_reason"} == lines[5]

    # Same file again: replayed, nothing changes.
    state = await database_state(app.store)
    second = await run(
        import_orders, export, fulfil_client.fulfill_order, source="erp", progress=False
    )
    assert counts(second) == summary(0, 3, 0, {"MALFORMED": 3, "INVALID_REQUEST": 1})
    assert await database_state(app.store) == state

    # J-4 fixed in the rejects file (its reject_reason left in place) and imported again.
    fixed = [{**r, "customer": customer} if r.get("order_id") == "J-4" else r for r in rejected]
    again = write_jsonl(tmp_path / "fixed.jsonl", fixed)
    third = await run(
        import_orders, again, fulfil_client.fulfill_order, source="erp", progress=False
    )
    assert counts(third) == summary(1, 0, 0, {"MALFORMED": 3})
    assert (await run(read_client.get_order, "erp", "J-4")).customer.customer_id == "C-9"


async def test_csv_rows_of_the_wrong_width_and_refused_lines_name_their_file_lines(
    fulfil_client: FulfillmentClient,
    read_client: FulfillmentClient,
    stripe_catalog: object,
    tmp_path: Path,
) -> None:
    export = tmp_path / "orders.csv"
    with export.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(COLUMNS)  # line 1
        writer.writerow(row("M-1", INITECH, STANDARD, "2").values())  # line 2
        writer.writerow(row("M-1", INITECH, "acme-cad-enterprise", "1").values())  # line 3
        out.write("M-2,C-2,Globex\r\n")  # line 4: too few fields
        notes = "two\nlines"  # a quoted field over lines 5 and 6
        writer.writerow(row("M-3", HOOLI, STANDARD, "x", notes=notes).values())
        writer.writerow(row("M-4", SOYLENT, PRO, "1", "crm:M-4").values())  # line 7
        writer.writerow([*row("M-5", HOOLI, PRO, "1").values(), "extra"])  # line 8: too many

    result = await run(import_orders, export, fulfil_client.fulfill_order, source="crm")

    assert counts(result) == summary(1, 0, 0, {"MALFORMED": 3, "SKU_NOT_FOUND": 1})
    assert [(r.lines, r.order_id, r.code) for r in result.rejections] == [
        ([2, 3], "M-1", "SKU_NOT_FOUND"),
        ([4], "M-2", "MALFORMED"),
        ([5], "M-3", "MALFORMED"),
        ([8], "M-5", "MALFORMED"),
    ]
    assert [r.detail for r in result.rejections] == [
        "line 3: no SKU 'acme-cad-enterprise'",  # the server's order line 0-based index 1
        f"3 fields, the header has {len(COLUMNS)}",
        "quantity 'x' is not a whole number",
        f"{len(COLUMNS) + 1} fields, the header has {len(COLUMNS)}",
    ]
    [created] = result.created
    assert (
        created.entitlement_id == (await entitlement_named(read_client, "crm:M-4")).entitlement_id
    )
    for order_id in ("M-1", "M-2", "M-3", "M-5"):
        await assert_no_order(read_client, "crm", order_id)


CLEAN = {
    2: row("Q-1", INITECH, STANDARD, "2", "crm:Q-1"),
    3: row("Q-2", GLOBEX, PRO, "1", "crm:Q-2"),
}


# The child only talks gRPC: one backend suffices (the in-process tests cover both).
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_the_orders_import_command(
    server: KeyturnServer,
    connector_secrets: dict[str, str],
    read_client: FulfillmentClient,
    app: AppContext,
    stripe_catalog: object,
    tmp_path: Path,
) -> None:
    token = {"KEYTURN_FULFILL_TOKEN": connector_secrets["fulfill"]}
    target = ["--target", server.address]
    clean = write_csv(tmp_path / "clean.csv", CLEAN)
    rejects = tmp_path / "rejects.csv"
    rejects.write_text("order_id,reject_reason\nOLD-1,from an earlier run\n", encoding="utf-8")
    args = ["orders", "import", str(clean), "--source", "crm", "--rejects", str(rejects), *target]

    # No --target: KEYTURN_LISTEN names the server, as for `keyturn serve`.
    keys = tmp_path / "keys.csv"
    listen = {**token, "KEYTURN_LISTEN": server.address}
    first = ["orders", "import", str(clean), "--source", "crm", "--rejects", str(rejects)]
    result = await run_keyturn_async(
        [*first, "--keys-out", str(keys), "--no-progress"], tmp_path, listen
    )
    assert (result.returncode, result.stdout) == (
        0,
        f"fulfilled 2, replayed 0, rejected 0\nlicense keys created: 2, written to {keys}\n",
    ), result
    assert read_csv(rejects) == []  # no stale rejects left behind
    q1 = await entitlement_named(read_client, "crm:Q-1")
    q2 = await entitlement_named(read_client, "crm:Q-2")
    assert (q1.seats, q2.edition_id) == (2, "pro")
    written = read_csv(keys)
    assert [(k["order_id"], k["entitlement_id"], k["customer_id"]) for k in written] == [
        ("Q-1", q1.entitlement_id, "C-1"),
        ("Q-2", q2.entitlement_id, "C-2"),
    ]
    assert all(k["license_key"] for k in written)
    assert keys.stat().st_mode & 0o777 == 0o600  # license keys are credentials

    state = await database_state(app.store)
    result = await run_keyturn_async(args, tmp_path, token)  # with the progress bar
    assert (result.returncode, result.stdout) == (0, "fulfilled 0, replayed 2, rejected 0\n")
    assert await database_state(app.store) == state

    mixed = write_jsonl(
        tmp_path / "mixed.txt",
        [
            {
                "order_id": "Q-3",
                "customer": {"customer_id": "C-3"},
                "lines": [{"sku_id": PRO, "quantity": 1}],
            },
            {
                "order_id": "Q-4",
                "customer": {"customer_id": "C-3"},
                "lines": [{"sku_id": "nope", "quantity": 1}],
            },
        ],
    )
    jsonl_rejects = tmp_path / "rejects.jsonl"
    options = ["--format", "jsonl", "--source", "shop", "--rejects", str(jsonl_rejects)]
    result = await run_keyturn_async(
        ["orders", "import", str(mixed), *options, "--no-progress", *target], tmp_path, token
    )
    q3 = (await run(read_client.get_order, "shop", "Q-3")).results[0].entitlement_id
    key = re.fullmatch(rf"  Q-3 {q3} (\S+)", result.stdout.splitlines()[-1])
    assert key is not None, result
    assert (result.returncode, result.stdout) == (
        1,
        "fulfilled 1, replayed 0, rejected 1\n"
        "  rejected line 2 (order Q-4): SKU_NOT_FOUND: order line 1: no SKU 'nope'\n"
        "  rejected 1 x SKU_NOT_FOUND\n"
        "license keys created (order, entitlement, key): 1\n"
        f"  Q-3 {q3} {key[1]}\n",
    ), result
    assert [r["order_id"] for r in read_jsonl(jsonl_rejects)] == ["Q-4"]

    after = await database_state(app.store)
    assert after != state
    latin = tmp_path / "latin1.csv"
    latin.write_bytes("order_id,customer_id,sku_id\nQ-9,Müller,x\n".encode("latin-1"))
    result = await run_keyturn_async(["orders", "import", str(latin), *target], tmp_path, token)
    assert result.returncode == 2, result
    assert "is not UTF-8 text" in result.stderr
    assert "Traceback" not in result.stderr

    result = await run_keyturn_async([*args, "--no-progress"], tmp_path, {})
    assert result.returncode == 2, result
    assert "KEYTURN_FULFILL_TOKEN" in result.stderr
    assert result.stdout == ""
    assert await database_state(app.store) == after
