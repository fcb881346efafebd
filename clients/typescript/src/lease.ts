/**
 * A held seat: the current verified lease, replaced in place at every renewal,
 * so the app keeps one object while the heartbeat swaps tokens under it.
 */
import { timestampDate } from "@bufbuild/protobuf/wkt";
import type { KeyturnError } from "./errors.js";
import type { Heartbeat } from "./heartbeat.js";
import type {
  ActivateSeatRequest,
  EntitlementSummary,
  Lease as LeaseMessage,
} from "./gen/keyturn/licensing/v1/licensing_pb.js";
import type { LeaseClaims } from "./verification.js";

/** One verified lease as the server issued it (by ActivateSeat or RenewLease). */
export interface LeaseGrant {
  token: string;
  claims: LeaseClaims;
  activationId: string;
  expireTime: Date;
  renewTime: Date;
  entitlement: EntitlementSummary | undefined;
}

/** A grant from the server's Lease message and the claims verified off its token. */
export function leaseGrant(
  lease: LeaseMessage | undefined,
  claims: LeaseClaims,
  entitlement: EntitlementSummary | undefined,
  activationId: string = claims.sub,
): LeaseGrant {
  const seconds = (at: number): Date => new Date(at * 1000);
  return {
    token: lease?.token ?? "",
    claims,
    activationId,
    expireTime: lease?.expireTime ? timestampDate(lease.expireTime) : seconds(claims.exp),
    renewTime: lease?.renewTime
      ? timestampDate(lease.renewTime)
      : seconds(claims.iat + (claims.exp - claims.iat) / 2),
    entitlement,
  };
}

/** What the lease needs of its client (LicensingClient), without importing it. */
export interface LeaseOwner {
  renew(lease: Lease): Promise<Lease>;
  release(lease: Lease): Promise<void>;
}

/** A seat held by this device: token, verified claims, times, entitlement. */
export class Lease {
  /** Set once the heartbeat gave the seat up (the error onLost was called with). */
  lost: KeyturnError | undefined;
  released = false;
  /** @internal The heartbeat that renews this lease, if any. */
  heartbeat: Heartbeat | undefined;
  /** @internal The request that took the seat: sent again when a renewal answered unseen had renewed. */
  activation: ActivateSeatRequest | undefined;
  private grant: LeaseGrant;
  private queue: Promise<unknown> = Promise.resolve();

  constructor(
    grant: LeaseGrant,
    private readonly owner: LeaseOwner,
  ) {
    this.grant = grant;
  }

  /** The current lease JWT: store it to verify offline at the next start. */
  get token(): string {
    return this.grant.token;
  }

  /** The verified claims (iss, aud, sub, exp, edition, features...), as signed. */
  get claims(): LeaseClaims {
    return this.grant.claims;
  }

  get activationId(): string {
    return this.grant.activationId;
  }

  get expireTime(): Date {
    return this.grant.expireTime;
  }

  get renewTime(): Date {
    return this.grant.renewTime;
  }

  /** The entitlement as the last ActivateSeat or RenewLease described it. */
  get entitlement(): EntitlementSummary | undefined {
    return this.grant.entitlement;
  }

  get edition(): string {
    return this.claims.edition ?? this.entitlement?.editionId ?? "";
  }

  /** Feature name -> numeric limit, or null for a feature without a limit. */
  get features(): Record<string, number | null> {
    return { ...this.claims.features };
  }

  /** Exchange this lease for a newer one now (the heartbeat does it on its own). */
  renew(): Promise<Lease> {
    return this.owner.renew(this);
  }

  /** Stop the heartbeat and give the seat back. */
  release(): Promise<void> {
    return this.owner.release(this);
  }

  /** Have the heartbeat renew now (after a resume from sleep, say). */
  wake(): void {
    this.heartbeat?.wake();
  }

  /** @internal Replace the grant (after a renewal). */
  apply(grant: LeaseGrant): void {
    this.grant = grant;
  }

  /** @internal Run `work` after every earlier one on this lease (renewals and the release never cross). */
  exclusive<T>(work: () => Promise<T>): Promise<T> {
    const run = this.queue.then(work, work);
    this.queue = run.catch(() => undefined);
    return run;
  }
}
