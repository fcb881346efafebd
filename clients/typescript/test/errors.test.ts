/** Typed errors by ErrorInfo reason, and retries on UNAVAILABLE only. */
import assert from "node:assert/strict";
import { test } from "node:test";
import type { Interceptor } from "@connectrpc/connect";
import { Code, KeyturnError, LicensingClient } from "@keyturn/client";
import { closedUrl, licenseKey, oneSeatKey, productId, url } from "./env.js";

/** An interceptor that counts the attempts that reach the transport. */
function counting(): { attempts: () => number; interceptor: Interceptor } {
  let attempts = 0;
  return {
    attempts: () => attempts,
    interceptor: (next) => (request) => {
      attempts += 1;
      return next(request);
    },
  };
}

test("a wrong license key is INVALID_LICENSE_KEY / unauthenticated", async () => {
  const client = new LicensingClient({ baseUrl: url, productId });
  const wrong = `${licenseKey.slice(0, -4)}${licenseKey.endsWith("AAAA") ? "BBBB" : "AAAA"}`;
  await assert.rejects(client.activate({ licenseKey: wrong, fingerprint: "node-test-wrong-key" }), (error: unknown) => {
    assert.ok(error instanceof KeyturnError);
    assert.equal(error.reason, "INVALID_LICENSE_KEY");
    assert.equal(error.code, Code.Unauthenticated);
    assert.equal(error.codeName, "Unauthenticated");
    return true;
  });
  await assert.rejects(client.check({ licenseKey: wrong }), (error: KeyturnError) => error.reason === "INVALID_LICENSE_KEY");
});

test("no free seat is SEATS_EXHAUSTED / resource exhausted with its metadata", async () => {
  const client = new LicensingClient({ baseUrl: url, productId });
  try {
    const first = await client.activate({ licenseKey: oneSeatKey, fingerprint: "node-test-seat-a", heartbeat: false });
    await assert.rejects(client.activate({ licenseKey: oneSeatKey, fingerprint: "node-test-seat-b" }), (error: KeyturnError) => {
      assert.equal(error.reason, "SEATS_EXHAUSTED");
      assert.equal(error.code, Code.ResourceExhausted);
      assert.deepEqual({ ...error.metadata }, { seats: "1", seat_limit: "1" });
      return true;
    });
    await first.release();
  } finally {
    await client.close();
  }
});

test("a bad request carries its field violations", async () => {
  const client = new LicensingClient({ baseUrl: url, productId });
  await assert.rejects(client.activate({ licenseKey, fingerprint: "short" }), (error: KeyturnError) => {
    assert.equal(error.reason, "INVALID_REQUEST");
    assert.equal(error.code, Code.InvalidArgument);
    assert.equal(error.metadata["field"], "fingerprint");
    assert.equal(error.fieldViolations[0]?.field, "fingerprint");
    return true;
  });
});

test("an unreachable server is retried as the policy says, then UNAVAILABLE", async () => {
  const counter = counting();
  const client = new LicensingClient({
    baseUrl: await closedUrl(),
    productId,
    interceptors: [counter.interceptor],
    retry: { attempts: 3, initialDelayMs: 1, maxDelayMs: 5 },
  });
  await assert.rejects(client.check({ licenseKey }), (error: KeyturnError) => {
    assert.ok(error instanceof KeyturnError);
    assert.equal(error.code, Code.Unavailable);
    assert.equal(error.reason, "");
    return true;
  });
  assert.equal(counter.attempts(), 3);
});

test("a refusal is not retried", async () => {
  const counter = counting();
  const client = new LicensingClient({ baseUrl: url, productId, interceptors: [counter.interceptor], retry: { attempts: 5, initialDelayMs: 1, maxDelayMs: 5 } });
  await assert.rejects(client.check({ licenseKey: "KT-NOT-A-KEY" }), (error: KeyturnError) => error.reason === "INVALID_LICENSE_KEY");
  assert.equal(counter.attempts(), 1);
  assert.equal((await client.check({ licenseKey })).productId, productId);
  assert.equal(counter.attempts(), 2);
});
