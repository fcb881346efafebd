/** The heartbeat renews and rotates the token, and reports a lost seat once. */
import assert from "node:assert/strict";
import { test } from "node:test";
import { Code, type KeyturnError, type Lease, LicensingClient } from "@keyturn/client";
import { event, licenseKey, productId, url } from "./env.js";

test("a renewal by the heartbeat rotates the lease token; the old one is void", async () => {
  const client = new LicensingClient({ baseUrl: url, productId });
  try {
    const renewed = event<[Lease]>();
    const lease = await client.activate({ licenseKey, fingerprint: "node-test-heartbeat", onRenewed: renewed.callback });
    const first = lease.token;
    lease.wake();
    const [same] = await renewed.next();
    assert.equal(same, lease);
    assert.notEqual(lease.token, first);
    assert.equal(lease.claims.sub, lease.activationId);
    await assert.rejects(client.release(first), (error: KeyturnError) => {
      assert.equal(error.reason, "LEASE_SUPERSEDED");
      assert.equal(error.code, Code.FailedPrecondition);
      assert.equal(error.metadata["activation_id"], lease.activationId);
      return true;
    });
    await lease.release();
  } finally {
    await client.close();
  }
});

test("the heartbeat renews on its own at its interval, a new token each time", async () => {
  const client = new LicensingClient({ baseUrl: url, productId });
  try {
    const renewed = event<[Lease]>();
    const lease = await client.activate({
      licenseKey,
      fingerprint: "node-test-interval",
      heartbeatIntervalMs: 50,
      onRenewed: renewed.callback,
    });
    const tokens = new Set([lease.token]);
    for (let n = 0; n < 3; n++) {
      await renewed.next();
      tokens.add(lease.token);
    }
    assert.equal(tokens.size, 4);
    await lease.release();
  } finally {
    await client.close();
  }
});

test("onLost is called when the seat cannot be renewed, and the heartbeat stops", async () => {
  const client = new LicensingClient({ baseUrl: url, productId });
  try {
    const lost = event<[Lease, KeyturnError]>();
    const lease = await client.activate({ licenseKey, fingerprint: "node-test-lost", onLost: lost.callback });
    await client.release(lease.token); // the seat goes behind the heartbeat's back
    lease.wake();
    const [which, error] = await lost.next();
    assert.equal(which, lease);
    assert.equal(error.reason, "LEASE_SUPERSEDED");
    assert.equal(lease.lost, error);
    assert.equal(lease.heartbeat?.running, false);
    await assert.rejects(lease.renew(), (again: KeyturnError) => again.reason === "LEASE_SUPERSEDED");
  } finally {
    await client.close();
  }
});
