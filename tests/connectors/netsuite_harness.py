"""Helpers of the NetSuite connector tests: a NetSuite account (its Sales Orders, API
secret and script parameters) kept in a JSON file, the shipped SuiteScripts run in it
under real Node against the stand-in N/* modules (netsuite_standin/netsuite.js), whose
N/https posts for real to the connector, and posts signed as the scripts sign.

What the connector receives is what examples/netsuite/keyturn_post.js sent: the
stand-in keeps every request it made, for the tests to read."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from connector_harness import Answer, post

from keyturn.client.connectors.netsuite_webhook import signature

from support.repository import ROOT

Json = dict[str, Any]
NETSUITE_SECRET = "ns-api-secret-7f3e9a1c5b2d4e6f8a0b"  # the value of custsecret_keyturn_netsuite
SCRIPTS = ROOT / "examples" / "netsuite"
USER_EVENT = SCRIPTS / "keyturn_sales_order_ue.js"
RETRY = SCRIPTS / "keyturn_retry_ss.js"
STANDIN = Path(__file__).parent / "netsuite_standin" / "netsuite.js"
PRODUCT_MAP = ROOT / "examples" / "product-map.yaml"
STANDARD_ITEM = "1041"  # CAD-STD-1Y in examples/product-map.yaml
PRO_ITEM = "1042"  # CAD-PRO-1Y
NODE_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Line:
    item: str
    quantity: int
    action: str = ""
    subscription: str = ""
    item_type: str = "NonInvtPart"


def sales_order(
    lines: Sequence[Line],
    *,
    tranid: str,
    status: str = "B",
    customer: tuple[str, str] = ("88", "Initech"),
    email: str = "billing@initech.example",
    **custom: str,
) -> Json:
    """A Sales Order record as NetSuite holds it: body fields (`custom` names custbody_
    fields without the prefix: keyturn_action="renew"), the entity's text, item lines."""
    fields: Json = {
        "tranid": tranid,
        "orderstatus": status,
        "entity": customer[0],
        "email": email,
        **{f"custbody_{name}": value for name, value in custom.items()},
    }
    items = [
        {
            "line": str(index),
            "item": line.item,
            "itemtype": line.item_type,
            "quantity": line.quantity,
            "custcol_keyturn_action": line.action,
            "custcol_keyturn_subscription": line.subscription,
        }
        for index, line in enumerate(lines, start=1)
    ]
    return {"fields": fields, "texts": {"entity": customer[1]}, "sublists": {"item": items}}


@dataclass
class Run:
    """One script execution: its exit code and output."""

    returncode: int
    output: str


@dataclass
class NetSuiteAccount:
    """The account's state in `file`; each script run reads and rewrites it."""

    file: Path
    url: str
    secret: str = NETSUITE_SECRET
    parameters: Json = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.write(
            {
                "records": {"salesorder": {}, "invoice": {}},
                "secrets": {"custsecret_keyturn_netsuite": self.secret},
                "parameters": {"custscript_keyturn_url": self.url, **self.parameters},
                "requests": [],
                "logs": [],
            }
        )

    def read(self) -> Json:
        state: Json = json.loads(self.file.read_text())
        return state

    def write(self, state: Json) -> None:
        self.file.write_text(json.dumps(state, indent=2))

    def put(self, record_type: str, record_id: str, record: Json) -> None:
        state = self.read()
        state["records"][record_type][record_id] = record
        self.write(state)

    def set_fields(self, record_id: str, **fields: Any) -> None:
        state = self.read()
        state["records"]["salesorder"][record_id]["fields"].update(fields)
        self.write(state)

    def set_parameter(self, name: str, value: str) -> None:
        state = self.read()
        state["parameters"][name] = value
        self.write(state)

    def fields(self, record_id: str) -> Json:
        found: Json = self.read()["records"]["salesorder"][record_id]["fields"]
        return found

    @property
    def requests(self) -> list[Json]:
        found: list[Json] = self.read()["requests"]
        return found

    @property
    def logs(self) -> list[Json]:
        found: list[Json] = self.read()["logs"]
        return found

    async def run(self, script: Path, entry: str, context: Json | None = None) -> Run:
        node = shutil.which("node")
        assert node, "node is a test dependency (Node 20 or later, see scripts/setup.sh)"
        argv = [node, str(STANDIN), str(self.file), str(script), entry]
        if context is not None:
            argv.append(json.dumps(context))

        def execute() -> Run:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=NODE_TIMEOUT_S, check=False
            )
            return Run(done.returncode, f"{done.stdout}\n{done.stderr}")

        ran = await asyncio.to_thread(execute)
        assert ran.returncode == 0, ran.output
        return ran

    async def save(self, record_id: str, event: str, record_type: str = "salesorder") -> Run:
        """The user event of a save (`create`, `edit`, `approve`, `xedit`) of a record."""
        context = {"type": event, "recordType": record_type, "id": record_id}
        return await self.run(USER_EVENT, "afterSubmit", context)

    async def retry(self) -> Run:
        """One run of the scheduled retry script."""
        return await self.run(RETRY, "execute")


def signed_headers(body: bytes, secret: str = NETSUITE_SECRET, at: int | None = None) -> Json:
    """The headers keyturn_post.js sends for `body` (its signature, computed here)."""
    timestamp = str(int(time.time()) if at is None else at)
    return {
        "X-Keyturn-Timestamp": timestamp,
        "X-Keyturn-Signature": f"v1={signature(secret, timestamp, body)}",
    }


async def post_signed(url: str, body: bytes, headers: Json | None = None) -> Answer:
    """A direct post, freshly signed unless `headers` are given."""
    sent = signed_headers(body) if headers is None else headers
    return await asyncio.to_thread(post, url, body, sent)
