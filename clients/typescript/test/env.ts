/** What the pytest side (tests/client/test_typescript_sdk.py) hands the node tests: a real server and its licenses. */
import { createServer } from "node:net";

function required(name: string): string {
  const value = process.env[name];
  if (!value) {
    throw new Error(`${name} is not set: run these tests through tests/client/test_typescript_sdk.py`);
  }
  return value;
}

export const url = required("SDK_TEST_URL");
export const productId = required("SDK_TEST_PRODUCT_ID");
/** An entitlement of several seats. */
export const licenseKey = required("SDK_TEST_LICENSE_KEY");
/** An entitlement of one seat. */
export const oneSeatKey = required("SDK_TEST_ONE_SEAT_KEY");

/** A loopback URL nothing listens on: a port taken from the OS, then closed. */
export async function closedUrl(): Promise<string> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  if (address === null || typeof address === "string") {
    throw new Error("no port");
  }
  return `http://127.0.0.1:${address.port}`;
}

/** A promise of the next call of a callback, and the callback; `next` rejects after `timeoutMs`. */
export function event<A extends unknown[]>(timeoutMs = 20_000): { callback: (...args: A) => void; next: () => Promise<A> } {
  const waiting: ((args: A) => void)[] = [];
  const seen: A[] = [];
  return {
    callback: (...args: A) => {
      const waiter = waiting.shift();
      if (waiter) {
        waiter(args);
      } else {
        seen.push(args);
      }
    },
    next: () => {
      const early = seen.shift();
      if (early) {
        return Promise.resolve(early);
      }
      return new Promise<A>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no event within ${timeoutMs} ms`)), timeoutMs);
        waiting.push((args) => {
          clearTimeout(timer);
          resolve(args);
        });
      });
    },
  };
}
