/** Activation, check and release against the real server. */
import assert from "node:assert/strict";
import { test } from "node:test";
import { EntitlementStatus, LicensingClient } from "@keyturn/client";
import { licenseKey, productId, url } from "./env.js";

test("activate returns a verified lease on a seat, and check counts it", async () => {
  const client = new LicensingClient({ baseUrl: url, productId });
  try {
    const before = await client.check({ licenseKey });
    const lease = await client.activate({ licenseKey, fingerprint: "node-test-activate", label: "node test", heartbeat: false });
    assert.equal(lease.claims.aud, productId);
    assert.equal(lease.claims.sub, lease.activationId);
    assert.equal(lease.claims.iss, "keyturn");
    assert.equal(lease.claims.fingerprint, "node-test-activate");
    assert.ok(lease.expireTime > lease.renewTime && lease.renewTime > new Date(Date.now() - 60_000));
    assert.equal(lease.entitlement?.productId, productId);
    assert.equal(lease.entitlement?.seatsInUse, before.seatsInUse + 1);
    const after = await client.check({ licenseKey });
    assert.equal(after.seatsInUse, before.seatsInUse + 1);
    assert.equal(after.status, EntitlementStatus.ACTIVE);
    assert.equal(after.seats, 5);

    const again = await client.activate({ licenseKey, fingerprint: "node-test-activate", heartbeat: false });
    assert.equal(again.activationId, lease.activationId, "the same fingerprint gets its seat back");
    await again.release();
  } finally {
    await client.close();
  }
});

test("release gives the seat back, and releasing twice is fine", async () => {
  const client = new LicensingClient({ baseUrl: url, productId });
  try {
    const lease = await client.activate({ licenseKey, fingerprint: "node-test-release" });
    assert.ok(lease.heartbeat?.running);
    const held = (await client.check({ licenseKey })).seatsInUse;
    await lease.release();
    assert.equal(lease.released, true);
    assert.equal(lease.heartbeat?.running, false);
    assert.equal((await client.check({ licenseKey })).seatsInUse, held - 1);
    await lease.release();
    await client.release(lease.token); // the server's release is idempotent too
    assert.equal((await client.check({ licenseKey })).seatsInUse, held - 1);
  } finally {
    await client.close();
  }
});

test("the JSON codec works as the binary one", async () => {
  const client = new LicensingClient({ baseUrl: url, productId, json: true });
  try {
    const lease = await client.activate({ licenseKey, fingerprint: "node-test-json", heartbeat: false });
    await lease.renew();
    assert.equal((await client.check({ licenseKey })).productId, productId);
    await lease.release();
  } finally {
    await client.close();
  }
});
