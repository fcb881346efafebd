"""Rotating the lease signing keys, recorded in the audit trail with the rotation.

The rotation itself is the keyring's (leases/keyring.py); it runs here in a transaction
of this use case so that the audit row commits with it (leases may not import app).
"""

from __future__ import annotations

from keyturn.server.leases.keyring import Rotation, rotate_in

from . import audit
from .context import AppContext


async def rotate_signing_keys(ctx: AppContext) -> Rotation:
    """Add a key that signs from now on; the others retire once their leases have expired.
    This process signs with the new key at once; others within their refresh."""
    now = ctx.clock.now()
    async with ctx.store.write() as tx:
        rotation = await rotate_in(tx, ctx.sealer, now)
        await audit.record(
            tx,
            now,
            "signing_key.rotate",
            f"signing-keys/{rotation.new_kid}",
            details={
                "retired": rotation.retired,
                "retire_time": rotation.retire_time.isoformat(),
            },
        )
    ctx.keys.forget_signing()
    return rotation
