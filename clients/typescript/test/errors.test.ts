/** Typed errors by ErrorInfo reason, and retries on UNAVAILABLE and TRANSACTION_CONFLICT only. */
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

test("a transaction conflict is retried, and the call then succeeds", async () => {
  let attempts = 0;
  const conflictOnce: Interceptor = (next) => (request) => {
    attempts += 1;
    if (attempts === 1) {
      throw new KeyturnError("conflict", { code: Code.Aborted, reason: "TRANSACTION_CONFLICT", metadata: { attempts: "4" } });
    }
    return next(request);
  };
  const client = new LicensingClient({ baseUrl: url, productId, interceptors: [conflictOnce], retry: { attempts: 3, initialDelayMs: 1, maxDelayMs: 5 } });
  assert.equal((await client.check({ licenseKey })).productId, productId);
  assert.equal(attempts, 2);
});

test("an ABORTED answer with another reason is not retried", async () => {
  let attempts = 0;
  const abortedOther: Interceptor = () => () => {
    attempts += 1;
    throw new KeyturnError("etag", { code: Code.Aborted, reason: "ETAG_MISMATCH" });
  };
  const client = new LicensingClient({ baseUrl: url, productId, interceptors: [abortedOther], retry: { attempts: 3, initialDelayMs: 1, maxDelayMs: 5 } });
  await assert.rejects(client.check({ licenseKey }), (error: KeyturnError) => error.reason === "ETAG_MISMATCH");
  assert.equal(attempts, 1);
});

test("retryAfterSeconds reads a RATE_LIMITED refusal's delay, and is undefined elsewhere", () => {
  const limited = new KeyturnError("slow down", { code: Code.ResourceExhausted, reason: "RATE_LIMITED", metadata: { limit: "peer", retry_after_seconds: "7" } });
  assert.equal(limited.retryAfterSeconds, 7);
  assert.equal(new KeyturnError("full", { code: Code.ResourceExhausted, reason: "SEATS_EXHAUSTED", metadata: { seats: "1" } }).retryAfterSeconds, undefined);
  assert.equal(new KeyturnError("odd", { reason: "RATE_LIMITED", metadata: { retry_after_seconds: "soon" } }).retryAfterSeconds, undefined);
});
