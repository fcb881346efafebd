/**
 * Keeps one lease renewed, on timers that never hold the process open (as the
 * Python client's daemon thread): an Electron main process or a server keeps
 * running anyway, and a script that ends is not kept alive by its seat.
 *
 * Renew at the server's renew time (or every `intervalMs` when given); when the
 * server cannot be reached or fails without a typed answer, keep retrying with
 * backoff while the lease is still good; on a typed answer about the seat
 * (superseded, refused, expired, cancelled), or once the lease expired
 * unrenewed, stop and report the loss once. `wake()` renews now, e.g. after
 * the machine resumes from sleep (Electron's powerMonitor "resume").
 *
 * A renewal that failed without an answer may still have renewed (committed,
 * then the answer was cut off): its new token never arrived, and the next
 * renewal with the old one is LEASE_SUPERSEDED. The renew callback is told when
 * an earlier attempt went unanswered (`retrying`), and the client then takes the
 * device's own seat again rather than give the lease up.
 */
import { Code } from "@connectrpc/connect";
import { type KeyturnError, keyturnError } from "./errors.js";
import { backoffMs, isRetryable, type RetryPolicy } from "./retry.js";

/** The longest wait between looks at the clock, so a wall-clock jump (a resume from suspend) is noticed soon. */
export const MAX_NAP_MS = 15_000;
/** How long a heartbeat's backoff may grow during an outage. */
export const HEARTBEAT_MAX_BACKOFF_MS = 30_000;

export type Clock = () => Date;

/** What the heartbeat needs to know of its lease. */
export interface LeaseTimes {
  readonly activationId: string;
  readonly expireTime: Date;
  readonly renewTime: Date;
  readonly claims: { iat?: number };
}

/** Whether a failed renewal is worth another try while the lease runs: UNAVAILABLE, or any failure without a Keyturn reason. */
export function heartbeatRetries(error: KeyturnError): boolean {
  return isRetryable(error) || (error.reason === "" && error.code !== Code.Canceled);
}

function issuedAt(lease: LeaseTimes): number {
  const iat = lease.claims.iat;
  if (typeof iat === "number") {
    return iat * 1000;
  }
  // Without one, the renew time is half way (as the server sets it).
  return lease.renewTime.getTime() - (lease.expireTime.getTime() - lease.renewTime.getTime());
}

export interface HeartbeatOptions {
  policy: RetryPolicy;
  clock: Clock;
  /** Renew every so many milliseconds instead of at the lease's renew time. */
  intervalMs?: number | undefined;
  onRenewed?: (() => void) | undefined;
  onLost?: ((error: KeyturnError) => void) | undefined;
}

/** Renews one lease until stopped or the seat is lost. */
export class Heartbeat {
  private failures = 0;
  private due = 0;
  private expireAt = 0;
  private stopped = false;
  private wakeUp: (() => void) | undefined;
  private woken = false;
  private loop: Promise<void> | undefined;

  constructor(
    private readonly lease: LeaseTimes,
    private readonly renew: (retrying: boolean) => Promise<unknown>,
    private readonly options: HeartbeatOptions,
  ) {
    this.onNewLease();
  }

  start(): void {
    this.loop ??= this.run();
  }

  get running(): boolean {
    return this.loop !== undefined && !this.stopped;
  }

  /** Renew now instead of at the next scheduled time. */
  wake(): void {
    this.woken = true;
    this.wakeUp?.();
  }

  /** Stop, and wait for an in-flight renewal to finish. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.wake();
    await this.loop;
  }

  /** Lay the next renewal and the expiry on the client's clock, from the lease's own timeline (so a client clock that is off does not matter). */
  private onNewLease(): void {
    const now = this.options.clock().getTime();
    const issued = issuedAt(this.lease);
    this.failures = 0;
    this.expireAt = now + (this.lease.expireTime.getTime() - issued);
    const wait = this.options.intervalMs ?? this.lease.renewTime.getTime() - issued;
    this.due = now + Math.max(0, wait);
  }

  /** Schedule a retry and return true, or return false when the lease is lost. */
  private afterFailure(error: KeyturnError): boolean {
    if (!heartbeatRetries(error)) {
      return false;
    }
    this.failures += 1;
    const now = this.options.clock().getTime();
    const left = this.expireAt - now;
    if (left <= 0) {
      return false;
    }
    const patient = {
      ...this.options.policy,
      maxDelayMs: Math.max(this.options.policy.maxDelayMs, HEARTBEAT_MAX_BACKOFF_MS),
    };
    this.due = now + Math.min(backoffMs(patient, this.failures - 1), left);
    return true;
  }

  /** Sleep until due or woken; true when stopped. */
  private async napUntilDue(): Promise<boolean> {
    while (!this.stopped) {
      if (this.woken) {
        this.woken = false;
        return this.stopped;
      }
      const left = this.due - this.options.clock().getTime();
      if (left <= 0) {
        return false;
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, Math.min(left, MAX_NAP_MS));
        timer.unref();
        this.wakeUp = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.wakeUp = undefined;
    }
    return true;
  }

  private async run(): Promise<void> {
    while (!(await this.napUntilDue())) {
      try {
        await this.renew(this.failures > 0);
      } catch (raw) {
        const error = keyturnError(raw);
        if (this.stopped) {
          return;
        }
        if (!this.afterFailure(error)) {
          this.stopped = true;
          this.lose(error);
          return;
        }
        continue;
      }
      this.onNewLease();
      if (!this.stopped) {
        callSafely(this.options.onRenewed);
      }
    }
  }

  private lose(error: KeyturnError): void {
    callSafely(this.options.onLost, error);
  }
}

/** A callback's own failure must not end the heartbeat: reported, then ignored. */
function callSafely<A extends unknown[]>(callback: ((...args: A) => void) | undefined, ...args: A): void {
  if (callback === undefined) {
    return;
  }
  try {
    callback(...args);
  } catch (error) {
    console.error("keyturn: a heartbeat callback failed:", error);
  }
}
