"""`proto_comments.json` is what protoc reads from proto/ now, keyed as documented.

scripts/test.sh also fails on a stale file after running scripts/generate.sh; this
catches it in a plain pytest run, and checks the keys a document generator looks up.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from google.protobuf import descriptor_pb2
from grpc_tools import protoc

from keyturn.server.api import proto_comments

ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = ROOT / "proto"


def _extracted(tmp_path: Path) -> dict[str, str]:
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    out = tmp_path / "keyturn.binpb"
    well_known = resources.files("grpc_tools") / "_proto"  # as `python -m grpc_tools.protoc`
    args = ["protoc", f"-I{PROTO_ROOT}", f"-I{well_known}", "--include_source_info"]
    args.append(f"--descriptor_set_out={out}")
    assert protoc.main([*args, *protos]) == 0
    return proto_comments.extract(descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()))


def test_the_committed_comments_are_those_of_proto(tmp_path: Path) -> None:
    fresh = _extracted(tmp_path)
    committed = (Path(proto_comments.__file__).parent / proto_comments.RESOURCE).read_text()
    assert committed == proto_comments.dumps(fresh), "run scripts/generate.sh and commit"
    assert proto_comments.load() == fresh


def test_every_kind_of_element_is_keyed_by_its_full_name() -> None:
    comments = proto_comments.load()
    assert comments["keyturn.licensing.v1.Lease"] == "A signed lease on one seat."
    assert comments["keyturn.licensing.v1.Lease.expire_time"] == (
        "When the lease expires (the `exp` claim)."
    )
    assert comments["keyturn.licensing.v1.ActivateSeatRequest.credential"] == (
        "What proves the right to a seat."
    )
    assert comments["keyturn.fulfillment.v1.EntitlementStatus.ENTITLEMENT_STATUS_CANCELLED"] == (
        "Cancelled by an order."
    )
    assert comments["keyturn.licensing.v1.EntitlementStatus.ENTITLEMENT_STATUS_CANCELLED"] == (
        "Cancelled."
    )
    assert comments["keyturn.licensing.v1.LicensingService.ReleaseSeat"] == (
        "Gives the seat back. Idempotent: releasing a released seat succeeds."
    )
    assert comments["keyturn.fulfillment.v1.CatalogService"].startswith("CatalogService keeps")
    # Lines are kept (less the space after `//`), paragraphs too.
    assert "\n\nEvery non-OK status" in comments["keyturn.errors.v1.ErrorReason"]
