/** Offline verification against the JWKS, and forged leases refused. */
import assert from "node:assert/strict";
import { test } from "node:test";
import { generateKeyPair, SignJWT, decodeProtectedHeader } from "jose";
import { LeaseVerificationError, LicensingClient } from "@keyturn/client";
import { closedUrl, licenseKey, productId, url } from "./env.js";

/** A lease from the server, the key set, and a client that can only verify offline (no server behind its URL). */
async function setUp(): Promise<{ token: string; jwks: Awaited<ReturnType<LicensingClient["signingKeys"]>>; offline: (options?: { productId?: string; clock?: () => Date }) => LicensingClient; release: () => Promise<void> }> {
  const online = new LicensingClient({ baseUrl: url, productId });
  const lease = await online.activate({ licenseKey, fingerprint: "node-test-offline", heartbeat: false });
  const jwks = await online.signingKeys();
  const nowhere = await closedUrl();
  return {
    token: lease.token,
    jwks,
    offline: (options = {}) =>
      new LicensingClient({ baseUrl: nowhere, productId: options.productId ?? productId, jwks, clock: options.clock, retry: { attempts: 1 } }),
    release: async () => {
      await lease.release();
      await online.close();
    },
  };
}

function refused(claim: string): (error: unknown) => boolean {
  return (error: unknown) => {
    assert.ok(error instanceof LeaseVerificationError, `${String(error)} is not a LeaseVerificationError`);
    assert.equal(error.claim, claim);
    assert.equal(error.reason, "INVALID_LEASE");
    return true;
  };
}

test("a lease verifies offline against the saved JWKS; expiry, audience and issuer are checked", async () => {
  const { token, jwks, offline, release } = await setUp();
  try {
    assert.equal(jwks.keys[0]?.alg, "EdDSA");
    const claims = await offline().verifyLease(token);
    assert.equal(claims.aud, productId);
    assert.equal(claims.token_use, "lease");
    const late = new Date((claims.exp + 3600) * 1000);
    await assert.rejects(offline({ clock: () => late }).verifyLease(token), refused("exp"));
    const early = new Date((claims.nbf - 3600) * 1000);
    await assert.rejects(offline({ clock: () => early }).verifyLease(token), refused("nbf"));
    await assert.rejects(offline({ productId: "another-product" }).verifyLease(token), refused("aud"));
    const strict = new LicensingClient({ baseUrl: url, productId, jwks, issuer: "someone-else" });
    await assert.rejects(strict.verifyLease(token), refused("iss"));
  } finally {
    await release();
  }
});

test("forged leases are refused: tampered, signed by another key, another algorithm", async () => {
  const { token, offline, release } = await setUp();
  try {
    const [header, payload, signature] = token.split(".") as [string, string, string];
    const flipped = `${signature.slice(0, 10)}${signature[10] === "A" ? "B" : "A"}${signature.slice(11)}`;
    await assert.rejects(offline().verifyLease(`${header}.${payload}.${flipped}`), refused("signature"));

    const claims = JSON.parse(Buffer.from(payload, "base64url").toString()) as Record<string, unknown>;
    const more = Buffer.from(JSON.stringify({ ...claims, seats: 1000 })).toString("base64url");
    await assert.rejects(offline().verifyLease(`${header}.${more}.${signature}`), refused("signature"));

    const { kid } = decodeProtectedHeader(token);
    const { privateKey } = await generateKeyPair("EdDSA");
    const impostor = await new SignJWT(claims).setProtectedHeader({ alg: "EdDSA", kid: kid ?? "" }).sign(privateKey);
    await assert.rejects(offline().verifyLease(impostor), refused("signature"));

    // Another kid: the client fetches the server's keys again, and still lacks it.
    const unknown = await new SignJWT(claims).setProtectedHeader({ alg: "EdDSA", kid: "not-a-keyturn-key" }).sign(privateKey);
    const online = new LicensingClient({ baseUrl: url, productId });
    await assert.rejects(online.verifyLease(unknown), refused("kid"));

    const hmac = await new SignJWT(claims).setProtectedHeader({ alg: "HS256", kid: kid ?? "" }).sign(new Uint8Array(32));
    await assert.rejects(offline().verifyLease(hmac), refused("algorithm"));
    const none = `${Buffer.from(JSON.stringify({ alg: "none", kid })).toString("base64url")}.${payload}.`;
    await assert.rejects(offline().verifyLease(none), refused("algorithm"));
    await assert.rejects(offline().verifyLease("not a token"), refused("format"));
  } finally {
    await release();
  }
});
