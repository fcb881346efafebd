/**
 * When a call is tried again and how long to wait first.
 *
 * Only UNAVAILABLE (no server reached, or its database down) and ABORTED /
 * TRANSACTION_CONFLICT (the server's own retries of a database conflict ran out)
 * are retried: every other code is an answer (a seat refused, a wrong key) that
 * asking again cannot change. Every Licensing call is safe to repeat: ActivateSeat with the
 * same fingerprint gets the same seat back. The heartbeat has its own, more
 * patient loop (heartbeat.ts).
 */
import { Code } from "@connectrpc/connect";
import { type KeyturnError, keyturnError } from "./errors.js";

/** Exponential backoff with full jitter: the wait before retry n (from 0) is uniform in [0, min(maxDelayMs, initialDelayMs * multiplier^n)]. */
export interface RetryPolicy {
  /** Tries in all, the first included (1: no retry). */
  attempts: number;
  initialDelayMs: number;
  maxDelayMs: number;
  multiplier: number;
}

export const DEFAULT_RETRY: Readonly<RetryPolicy> = Object.freeze({
  attempts: 5,
  initialDelayMs: 100,
  maxDelayMs: 2000,
  multiplier: 2,
});

export const NO_RETRY: Readonly<RetryPolicy> = Object.freeze({
  attempts: 1,
  initialDelayMs: 0,
  maxDelayMs: 0,
  multiplier: 1,
});

/** A policy with the defaults filled in; RangeError on nonsense. */
export function retryPolicy(partial: Partial<RetryPolicy> = {}): RetryPolicy {
  const policy = { ...DEFAULT_RETRY, ...partial };
  if (!Number.isInteger(policy.attempts) || policy.attempts < 1) {
    throw new RangeError("retry.attempts must be an integer of at least 1");
  }
  if (policy.initialDelayMs < 0 || policy.maxDelayMs < policy.initialDelayMs) {
    throw new RangeError("retry needs 0 <= initialDelayMs <= maxDelayMs");
  }
  if (policy.multiplier < 1) {
    throw new RangeError("retry.multiplier must be at least 1");
  }
  return policy;
}

/** The longest wait before retry `retry` (from 0). */
export function ceilingMs(policy: RetryPolicy, retry: number): number {
  let grown = policy.initialDelayMs;
  for (let n = 0; n < retry && grown < policy.maxDelayMs; n++) {
    grown *= policy.multiplier;
  }
  return Math.min(grown, policy.maxDelayMs);
}

/** The jittered wait before retry `retry` (from 0). */
export function backoffMs(policy: RetryPolicy, retry: number, random: () => number = Math.random): number {
  return random() * ceilingMs(policy, retry);
}

/** UNAVAILABLE, or a transaction conflict: the server (or its database) could not answer this time; asking again may succeed. */
export function isRetryable(error: KeyturnError): boolean {
  return error.code === Code.Unavailable || (error.code === Code.Aborted && error.reason === "TRANSACTION_CONFLICT");
}

export function delay(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", abort);
      resolve();
    }, ms);
    const abort = (): void => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    signal?.addEventListener("abort", abort, { once: true });
  });
}

/** `call()` tried up to `policy.attempts` times while it fails retryably (isRetryable); failures as KeyturnError. */
export async function withRetry<T>(policy: RetryPolicy, call: () => Promise<T>, signal?: AbortSignal): Promise<T> {
  for (let failures = 1; ; failures++) {
    try {
      return await call();
    } catch (raw) {
      const error = keyturnError(raw);
      if (!isRetryable(error) || failures >= policy.attempts || signal?.aborted) {
        throw error;
      }
      // Closed while waiting: the last failure stands.
      await delay(backoffMs(policy, failures - 1), signal).catch(() => Promise.reject(error));
    }
  }
}
