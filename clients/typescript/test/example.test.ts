/** examples/activate.ts (which the README quotes) runs as written against the real server. */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { test } from "node:test";
import { defaultFingerprint, LicensingClient } from "@keyturn/client";
import { licenseKey, productId, url } from "./env.js";

const example = fileURLToPath(new URL("../examples/activate.js", import.meta.url));

test("the README's activation example takes a seat and ends", async () => {
  const { stdout } = await promisify(execFile)(process.execPath, [example], {
    env: { ...process.env, LICENSE_SERVER_URL: url, LICENSE_KEY: licenseKey },
    timeout: 30_000,
  });
  const match = /^seat (\S+) \((\w+)\) held until (\S+)$/m.exec(stdout);
  assert.ok(match, stdout);
  assert.equal(productId, "acme-cad");
  // This machine's default fingerprint gets the example's seat back, to give it back.
  const client = new LicensingClient({ baseUrl: url, productId });
  const lease = await client.activate({ licenseKey, fingerprint: defaultFingerprint(productId), heartbeat: false });
  assert.equal(lease.activationId, match[1]);
  assert.equal(lease.edition, match[2]);
  await lease.release();
});
