"""`keyturn reconcile`: a Stripe API stand-in (real HTTP on loopback) and a CSV against a
real server's entitlements, built so that every kind of mismatch is there; each is found,
the corrective file applied with `keyturn orders import`, and a second run is clean.

The commands run as child processes; the CSV half calls the same functions in-process,
in a worker thread, as the server under test runs on the event loop.
"""

from __future__ import annotations

import asyncio
import csv
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from connector_harness import PRO, STANDARD, run_keyturn_async
from reconcile_harness import API_KEY, PAGE_CAP, stripe_api, stripe_subscription

from keyturn.client import FulfillmentClient
from keyturn.client.connectors.file_import import import_orders
from keyturn.client.connectors.reconcile import (
    COLUMNS,
    SOURCE,
    corrections_jsonl,
    iso,
    reconcile,
    report_csv,
)
from keyturn.client.connectors.reconcile_keyturn import held_entitlements
from keyturn.client.connectors.reconcile_sources import csv_subscriptions
from keyturn.fulfillment.v1 import fulfillment_pb2 as ful
from keyturn.server.api.server import KeyturnServer

from support.repository import ROOT

pytest_plugins = ["connector_fixtures"]

run = asyncio.to_thread
CUSTOMER = ful.Customer(customer_id="cus_Initech", name="Initech", email="it@initech.example")


async def create(
    fulfil: FulfillmentClient, reference: str, sku: str, quantity: int
) -> ful.Entitlement:
    """An entitlement as a connector creates it: the SKU, attaching the reference."""
    system, _, name = reference.partition(":")
    request = ful.FulfillOrderRequest(
        source=system,
        order_id=f"in_{name}",
        customer=CUSTOMER,
        lines=[ful.OrderLine(sku_id=sku, quantity=quantity, external_reference=reference)],
    )
    response = await run(fulfil.fulfill_order, request)
    return response.entitlements[0]


async def cancel(fulfil: FulfillmentClient, reference: str, sku: str) -> None:
    line = ful.OrderLine(sku_id=f"{sku}:cancel", quantity=1, external_reference=reference)
    request = ful.FulfillOrderRequest(
        source="stripe", order_id=f"evt_{reference}", customer=CUSTOMER, lines=[line]
    )
    await run(fulfil.fulfill_order, request)


async def entitlement(read: FulfillmentClient, reference: str) -> ful.Entitlement:
    [found] = await run(lambda: list(read.list_entitlements(external_reference=reference)))
    return found


def end_of(ent: ful.Entitlement) -> datetime:
    return ent.end_time.ToDatetime(UTC)


def a_year_after(moment: datetime) -> datetime:
    """The same day and time a calendar year on, as a P1Y renewal lands."""
    return moment.replace(year=moment.year + 1)


async def apply(corrections: Path, server: KeyturnServer, fulfil_token: str) -> str:
    """`keyturn orders import` of the corrective file, as documented: its first line."""
    args = ["orders", "import", str(corrections), "--no-progress", "--target", server.address]
    token = {"KEYTURN_FULFILL_TOKEN": fulfil_token}
    result = await run_keyturn_async(args, corrections.parent, token)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()[0]


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def row(
    kind: str,
    ent: ful.Entitlement | None,
    reference: str,
    sku: str,
    billing: str,
    keyturn: str,
    correction: str,
) -> dict[str, str]:
    values = (kind, reference, ent.entitlement_id if ent else "", sku, billing, keyturn)
    return dict(zip(COLUMNS, (*values, correction), strict=True))


async def test_reconcile_against_stripe_finds_every_mismatch_and_its_corrections_apply(
    server: KeyturnServer,
    connector_secrets: dict[str, str],
    fulfil_client: FulfillmentClient,
    read_client: FulfillmentClient,
    stripe_catalog: object,
    tmp_path: Path,
) -> None:
    agree = await create(fulfil_client, "stripe:sub_agree", STANDARD, 2)
    more = await create(fulfil_client, "stripe:sub_more", STANDARD, 2)
    fewer = await create(fulfil_client, "stripe:sub_fewer", PRO, 4)
    renewed = await create(fulfil_client, "stripe:sub_renewed", STANDARD, 1)
    both = await create(fulfil_client, "stripe:sub_both", PRO, 1)
    gone = await create(fulfil_client, "stripe:sub_gone", STANDARD, 1)
    await create(fulfil_client, "stripe:sub_ended", STANDARD, 1)
    await cancel(fulfil_client, "stripe:sub_ended", STANDARD)
    await create(fulfil_client, "crm:Q-77", STANDARD, 1)  # another system's: not compared
    new_end = datetime.now(UTC) + timedelta(days=365)
    renewed_end, both_end = a_year_after(end_of(renewed)), a_year_after(end_of(both))

    def seconds(moment: datetime) -> int:
        return int(moment.timestamp())

    subscriptions = [
        stripe_subscription("sub_agree", STANDARD, 2, seconds(end_of(agree))),
        stripe_subscription(
            "sub_more",
            STANDARD,
            5,
            seconds(end_of(more)),
            status="past_due",
            items_carry_period=False,
        ),
        stripe_subscription("sub_fewer", PRO, 1, seconds(end_of(fewer)), status="trialing"),
        stripe_subscription("sub_renewed", STANDARD, 1, seconds(renewed_end)),
        stripe_subscription("sub_both", PRO, 2, seconds(both_end), items_carry_period=False),
        stripe_subscription("sub_new", PRO, 3, seconds(new_end), customer="cus_Globex"),
        stripe_subscription("sub_ended", STANDARD, 1, seconds(new_end), status="canceled"),
    ]
    expected = [
        row("seats", both, "stripe:sub_both", PRO, "2 seats", "1 seat", f"{PRO}:add-seats x 1"),
        row(
            "end_date",
            both,
            "stripe:sub_both",
            PRO,
            iso(both_end),
            iso(end_of(both)),
            f"{PRO}:renew x 1",
        ),
        row(
            "seats", fewer, "stripe:sub_fewer", PRO, "1 seat", "4 seats", f"{PRO}:remove-seats x 3"
        ),
        row(
            "seats",
            more,
            "stripe:sub_more",
            STANDARD,
            "5 seats",
            "2 seats",
            f"{STANDARD}:add-seats x 3",
        ),
        row("missing", None, "stripe:sub_new", PRO, "quantity 3", "", f"{PRO} x 3"),
        row(
            "end_date",
            renewed,
            "stripe:sub_renewed",
            STANDARD,
            iso(renewed_end),
            iso(end_of(renewed)),
            f"{STANDARD}:renew x 1",
        ),
        row("extra", gone, "stripe:sub_gone", STANDARD, "", "active", f"{STANDARD}:cancel x 1"),
    ]
    report, corrections = tmp_path / "report.csv", tmp_path / "corrections.jsonl"
    target = ["--target", server.address]
    with stripe_api(subscriptions) as api:
        settings = {
            "KEYTURN_READ_TOKEN": connector_secrets["read"],
            "KEYTURN_STRIPE_API_KEY": API_KEY,
            "KEYTURN_STRIPE_API_BASE": api.url,
        }
        outputs = ["--output", str(report), "--corrections", str(corrections)]
        first = await run_keyturn_async(
            ["reconcile", "stripe", *outputs, *target], tmp_path, settings
        )
        # Every page was read: six listed subscriptions, PAGE_CAP a page.
        assert len(api.requests) == -(-6 // PAGE_CAP)
        assert first.returncode == 1, first.stderr
        assert read_csv(report) == expected
        table = first.stdout.splitlines()
        for wanted in expected:
            assert any(
                wanted["reference"] in line and wanted["correction"] in line for line in table
            ), wanted
        assert table[-1] == (
            "7 differences over 6 subscriptions (end_date 2, extra 1, missing 1, seats 3); "
            "corrective orders: 6"
        )

        orders = [json.loads(line) for line in corrections.read_text().splitlines()]
        assert [(o["source"], o["order_id"].partition("@")[0]) for o in orders] == [
            (SOURCE, f"stripe:sub_{name}")
            for name in ("both", "fewer", "more", "new", "renewed", "gone")
        ]
        assert [line["sku_id"] for line in orders[0]["lines"]] == [
            f"{PRO}:add-seats",
            f"{PRO}:renew",
        ]
        assert orders[3]["customer"] == {"customer_id": "cus_Globex"}

        fulfil = connector_secrets["fulfill"]
        assert await apply(corrections, server, fulfil) == "fulfilled 6, replayed 0, rejected 0"
        assert await apply(corrections, server, fulfil) == "fulfilled 0, replayed 6, rejected 0"

        second = await run_keyturn_async(
            ["reconcile", "stripe", "--corrections", str(corrections), *target],
            tmp_path,
            settings,
        )
        assert (second.returncode, second.stdout) == (
            0,
            "reconciled 6 subscriptions: no differences\n",
        ), second.stderr
        assert corrections.read_text() == ""

    assert (await entitlement(read_client, "stripe:sub_more")).seats == 5
    assert (await entitlement(read_client, "stripe:sub_fewer")).seats == 1
    assert end_of(await entitlement(read_client, "stripe:sub_renewed")) == renewed_end
    now_both = await entitlement(read_client, "stripe:sub_both")
    assert (now_both.seats, end_of(now_both)) == (2, both_end)
    now_new = await entitlement(read_client, "stripe:sub_new")
    assert (now_new.seats, now_new.edition_id, now_new.customer.customer_id) == (
        3,
        "pro",
        "cus_Globex",
    )
    gone_now = await entitlement(read_client, "stripe:sub_gone")
    assert gone_now.status == ful.ENTITLEMENT_STATUS_CANCELLED


async def test_reconcile_a_csv_and_apply_its_corrections(
    fulfil_client: FulfillmentClient,
    read_client: FulfillmentClient,
    stripe_catalog: object,
    tmp_path: Path,
) -> None:
    agree = await create(fulfil_client, "crm:Q-1", STANDARD, 1)
    seats = await create(fulfil_client, "crm:Q-2", PRO, 3)
    late = await create(fulfil_client, "crm:Q-3", STANDARD, 2)
    extra = await create(fulfil_client, "crm:Q-4", PRO, 1)
    await create(fulfil_client, "stripe:sub_x", STANDARD, 1)  # another system's
    late_end = a_year_after(a_year_after(end_of(late)))  # two renewals missed
    export = tmp_path / "subscriptions.csv"
    export.write_text(
        "subscription_id,sku,quantity,period_end,customer_id\n"
        # three hours off: within the tolerance of a day, the same end
        f"crm:Q-1,{STANDARD},1,{(end_of(agree) + timedelta(hours=3)).isoformat()},\n"
        f"crm:Q-2,{PRO},7,{end_of(seats).date().isoformat()}T00:00:00+00:00,\n"
        f"crm:Q-3,{STANDARD},2,{late_end.isoformat()},\n"
        f"crm:Q-5,{PRO},2,,acct-5\n",  # no period end: only the seats are compared
        encoding="utf-8",
    )

    def compare() -> str:
        subscriptions = list(csv_subscriptions(export))
        held = held_entitlements(read_client, {"crm"})
        result = reconcile(subscriptions, held, now=datetime.now(UTC))
        (tmp_path / "fix.jsonl").write_text(corrections_jsonl(result.orders), encoding="utf-8")
        return report_csv(result.mismatches)

    first = list(csv.DictReader((await run(compare)).splitlines()))
    # Q-2's end is midnight of its end day: within a day, not a mismatch.
    assert first == [
        row("seats", seats, "crm:Q-2", PRO, "7 seats", "3 seats", f"{PRO}:add-seats x 4"),
        row(
            "end_date",
            late,
            "crm:Q-3",
            STANDARD,
            iso(late_end),
            iso(end_of(late)),
            f"{STANDARD}:renew x 2",
        ),
        row("missing", None, "crm:Q-5", PRO, "quantity 2", "", f"{PRO} x 2"),
        row("extra", extra, "crm:Q-4", PRO, "", "active", f"{PRO}:cancel x 1"),
    ]
    summary = await run(
        import_orders, tmp_path / "fix.jsonl", fulfil_client.fulfill_order, progress=False
    )
    assert (summary.fulfilled, summary.rejected) == (4, 0), summary.describe()
    assert await run(compare) == ",".join(COLUMNS) + "\n"
    assert end_of(await entitlement(read_client, "crm:Q-3")) == late_end
    created = await entitlement(read_client, "crm:Q-5")
    assert (created.seats, created.customer.customer_id) == (2, "acct-5")


async def test_the_reconcile_command_refuses_what_it_cannot_read(tmp_path: Path) -> None:
    """Exit 2, with what to fix, for every mistake of settings or input; nothing written."""
    token = {"KEYTURN_READ_TOKEN": "kt_read_unused"}
    unnamed = tmp_path / "unnamed.csv"
    unnamed.write_text("subscription_id,sku,quantity\nx:1,A,1\n", encoding="utf-8")
    report = tmp_path / "report.csv"
    mapped = {**token, "KEYTURN_PRODUCT_MAP": str(ROOT / "examples" / "product-map.yaml")}
    cases: list[tuple[list[str], dict[str, str], str]] = [
        (["csv", str(unnamed)], {}, "KEYTURN_READ_TOKEN"),
        (["stripe"], token, "KEYTURN_STRIPE_API_KEY is not set"),
        (["csv", str(unnamed), "--end-tolerance", "-1"], token, "must be 0 to 8784 hours"),
        (["csv"], token, "name the csv export FILE"),
        (["csv", str(unnamed)], token, "no column period_end"),
        (["chargify", str(tmp_path / "absent.csv")], token, "KEYTURN_PRODUCT_MAP is not set"),
        (["chargify", str(tmp_path / "absent.csv")], mapped, "No such file"),
        (["chargify", str(unnamed)], {**token, "KEYTURN_PRODUCT_MAP": "absent.yaml"}, "absent"),
    ]
    with stripe_api([]) as api:
        wrong_key = {**token, "KEYTURN_STRIPE_API_KEY": "sk_test_wrong"}
        wrong_key["KEYTURN_STRIPE_API_BASE"] = api.url
        cases.append((["stripe"], wrong_key, "Stripe refused the API key"))
        for args, settings, problem in cases:
            result = await run_keyturn_async(
                ["reconcile", *args, "--output", str(report)], tmp_path, settings
            )
            assert (result.returncode, result.stdout) == (2, ""), (args, result.stderr)
            assert problem in result.stderr, (args, result.stderr)
        assert len(api.requests) == 1  # the wrong key's, refused
    assert not report.exists()


async def test_reconcile_a_chargify_export_through_the_product_map(
    server: KeyturnServer,
    connector_secrets: dict[str, str],
    fulfil_client: FulfillmentClient,
    read_client: FulfillmentClient,
    stripe_catalog: object,
    tmp_path: Path,
) -> None:
    seats = await create(fulfil_client, "chargify:7001", STANDARD, 1)
    extra = await create(fulfil_client, "chargify:7002", PRO, 1)
    end = end_of(seats).strftime("%Y-%m-%d %H:%M:%S +0000")  # as Chargify writes times
    export = tmp_path / "subscriptions_export.csv"
    export.write_text(
        "id,state,product_handle,product_name,current_period_ends_at,customer_id,"
        "customer_email,customer_organization,quantity\n"
        f"7001,active,acme-cad-standard,Acme CAD,{end},31,it@initech.example,Initech,4\n"
        f"7003,trialing,acme-cad-pro,Acme CAD Pro,{end},32,it@globex.example,Globex,\n"
        f"7004,active,acme-cad-gold,Acme CAD Gold,{end},33,it@hooli.example,Hooli,\n"
        f"7002,canceled,acme-cad-pro,Acme CAD Pro,{end},31,it@initech.example,Initech,\n",
        encoding="utf-8",
    )
    settings = {
        "KEYTURN_READ_TOKEN": connector_secrets["read"],
        "KEYTURN_PRODUCT_MAP": str(ROOT / "examples" / "product-map.yaml"),
    }
    report, corrections = tmp_path / "report.csv", tmp_path / "corrections.jsonl"
    args = ["reconcile", "chargify", str(export), "--target", server.address]
    outputs = ["--output", str(report), "--corrections", str(corrections)]

    first = await run_keyturn_async([*args, *outputs], tmp_path, settings)
    assert first.returncode == 1, first.stderr
    no_map = "none: product handle 'acme-cad-gold' is not in the product map"
    assert read_csv(report) == [
        row(
            "seats",
            seats,
            "chargify:7001",
            STANDARD,
            "4 seats",
            "1 seat",
            f"{STANDARD}:add-seats x 3",
        ),
        row("missing", None, "chargify:7003", PRO, "quantity 1", "", f"{PRO} x 1"),
        row("unmapped", None, "chargify:7004", "", "", "", no_map),
        row("extra", extra, "chargify:7002", PRO, "", "active", f"{PRO}:cancel x 1"),
    ]
    applied = await apply(corrections, server, connector_secrets["fulfill"])
    assert applied == "fulfilled 3, replayed 0, rejected 0"

    second = await run_keyturn_async([*args, *outputs], tmp_path, settings)
    # Only the product the map lacks is left, and it orders nothing.
    assert second.returncode == 1
    assert [r["kind"] for r in read_csv(report)] == ["unmapped"]
    assert corrections.read_text() == ""
    created = await entitlement(read_client, "chargify:7003")
    assert (created.customer.customer_id, created.customer.email) == ("32", "it@globex.example")
