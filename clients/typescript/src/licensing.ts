/**
 * LicensingClient: what a shipped app (Electron's main process, a Node
 * service) uses to take, keep and give back a seat, over Keyturn's HTTP port
 * (the Connect protocol on HTTP/1.1, proto codec by default).
 */
import { create } from "@bufbuild/protobuf";
import { type Client, createClient, type Interceptor, type Transport } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import type { JSONWebKeySet } from "jose";
import { type KeyturnError, keyturnError } from "./errors.js";
import { defaultFingerprint } from "./fingerprint.js";
import {
  ActivateSeatRequestSchema,
  CheckLicenseRequestSchema,
  type EntitlementSummary,
  LicensingService,
  ReleaseSeatRequestSchema,
  RedeemInvitationRequestSchema,
  RenewLeaseRequestSchema,
} from "./gen/keyturn/licensing/v1/licensing_pb.js";
import { type Clock, Heartbeat } from "./heartbeat.js";
import { Lease, leaseGrant } from "./lease.js";
import { NO_RETRY, type RetryPolicy, retryPolicy, withRetry } from "./retry.js";
import {
  DEFAULT_ISSUER,
  DEFAULT_LEEWAY_SECONDS,
  headerKid,
  type LeaseClaims,
  LeaseVerifier,
} from "./verification.js";

export interface LicensingClientOptions {
  /** The server's HTTP port, e.g. `http://127.0.0.1:50052` (KEYTURN_HTTP_LISTEN). */
  baseUrl: string;
  /** The product this app is (the leases' audience). */
  productId: string;
  /** Retries on UNAVAILABLE and TRANSACTION_CONFLICT (default: 5 tries, 100 ms doubling to 2 s, full jitter). */
  retry?: Partial<RetryPolicy>;
  /** Each call's deadline, in milliseconds (default 10 000). */
  timeoutMs?: number;
  /** The `iss` the leases must carry (the server's KEYTURN_ISSUER; default `keyturn`). */
  issuer?: string;
  /** Clock skew allowed on exp, nbf and iat, in seconds (default 60). */
  leewaySeconds?: number;
  /** A key set to start with (saved from signingKeys()), for starts without the server. */
  jwks?: string | JSONWebKeySet;
  /** The time leases are verified and renewed against (default: the system clock). */
  clock?: Clock;
  /** JSON instead of the binary proto codec (both are served). */
  json?: boolean;
  /** Connect interceptors (headers, logging...), run on every attempt. */
  interceptors?: Interceptor[];
  /** A transport of your own instead of the one built from baseUrl (baseUrl is then ignored). */
  transport?: Transport;
}

export type Credential = { licenseKey: string; identityToken?: never } | { identityToken: string; licenseKey?: never };

export type ActivateOptions = Credential & {
  /** A stable, non-personal device id, 8 to 256 printable characters (default: defaultFingerprint()). */
  fingerprint?: string;
  /** A name for the device shown to administrators. */
  label?: string;
  /** Keep the lease renewed (default true). */
  heartbeat?: boolean;
  /** Renew every so many milliseconds instead of at the lease's renew time. */
  heartbeatIntervalMs?: number;
  /** Called once when the heartbeat cannot keep the seat (refused, superseded, expired unrenewed). */
  onLost?: (lease: Lease, error: KeyturnError) => void;
  /** Called after every renewal by the heartbeat. */
  onRenewed?: (lease: Lease) => void;
};

function credential(options: Credential): { case: "licenseKey" | "identityToken"; value: string } {
  if (typeof options.licenseKey === "string") {
    return { case: "licenseKey", value: options.licenseKey };
  }
  if (typeof options.identityToken === "string") {
    return { case: "identityToken", value: options.identityToken };
  }
  throw new TypeError("give a licenseKey or an identityToken");
}

/**
 * Activates seats, verifies leases offline and keeps them renewed. Every call
 * is retried on UNAVAILABLE and TRANSACTION_CONFLICT only and rejects with a KeyturnError. `close()`
 * stops the heartbeats but gives no seat back: release leases for that.
 */
export class LicensingClient {
  readonly productId: string;
  readonly retry: RetryPolicy;
  readonly clock: Clock;
  private readonly service: Client<typeof LicensingService>;
  private readonly verifier: LeaseVerifier;
  private readonly timeoutMs: number;
  private readonly heartbeats = new Set<Heartbeat>();
  private readonly closing = new AbortController();

  constructor(options: LicensingClientOptions) {
    this.productId = options.productId;
    this.retry = retryPolicy(options.retry);
    this.clock = options.clock ?? (() => new Date());
    this.timeoutMs = options.timeoutMs ?? 10_000;
    const transport =
      options.transport ??
      createConnectTransport({
        baseUrl: options.baseUrl,
        httpVersion: "1.1",
        useBinaryFormat: !options.json,
        interceptors: options.interceptors ?? [],
      });
    this.service = createClient(LicensingService, transport);
    this.verifier = new LeaseVerifier(
      options.productId,
      options.issuer ?? DEFAULT_ISSUER,
      options.leewaySeconds ?? DEFAULT_LEEWAY_SECONDS,
    );
    if (options.jwks !== undefined) {
      this.verifier.load(options.jwks);
    }
  }

  // Seats

  /**
   * Take a seat (or get this device's seat back) and return its verified lease.
   * With `heartbeat` (the default) the lease is renewed at its renew time, and
   * `onLost` is called once if the seat is lost.
   */
  async activate(options: ActivateOptions): Promise<Lease> {
    const request = create(ActivateSeatRequestSchema, {
      credential: credential(options),
      productId: this.productId,
      fingerprint: options.fingerprint ?? defaultFingerprint(this.productId),
      label: options.label ?? "",
    });
    const response = await this.call(this.retry, (signal) =>
      this.service.activateSeat(request, { signal, timeoutMs: this.timeoutMs }),
    );
    const claims = await this.verifyLease(response.lease?.token ?? "");
    const lease = new Lease(leaseGrant(response.lease, claims, response.entitlement, response.activationId), this);
    lease.activation = request;
    if (options.heartbeat ?? true) {
      this.startHeartbeat(lease, options);
    }
    return lease;
  }

  /** Exchange the lease for a newer one; the same object is updated and returned. */
  renew(lease: Lease): Promise<Lease> {
    return this.renewWith(lease, this.retry);
  }

  /** Stop the lease's heartbeat and give its seat back (a Lease, or a stored token). Idempotent. */
  async release(lease: Lease | string): Promise<void> {
    if (typeof lease === "string") {
      await this.releaseToken(lease);
      return;
    }
    const beat = lease.heartbeat;
    if (beat !== undefined) {
      this.heartbeats.delete(beat);
      await beat.stop();
    }
    await lease.exclusive(async () => {
      if (!lease.released) {
        await this.releaseToken(lease.token);
        lease.released = true;
      }
    });
  }

  /** The entitlement behind a credential, without taking a seat (CheckLicense). */
  async check(options: Credential): Promise<EntitlementSummary> {
    const request = create(CheckLicenseRequestSchema, {
      credential: credential(options),
      productId: this.productId,
    });
    const response = await this.call(this.retry, (signal) =>
      this.service.checkLicense(request, { signal, timeoutMs: this.timeoutMs }),
    );
    if (response.entitlement === undefined) {
      throw keyturnError(new Error("CheckLicense answered without an entitlement"));
    }
    return response.entitlement;
  }

  /** Exchange an emailed invitation code for an identity token (for activate). */
  async redeemInvitation(invitationCode: string): Promise<string> {
    const request = create(RedeemInvitationRequestSchema, { invitationCode });
    const response = await this.call(this.retry, (signal) =>
      this.service.redeemInvitation(request, { signal, timeoutMs: this.timeoutMs }),
    );
    return response.identityToken;
  }

  // Keys and offline verification

  /** The JWKS from the server (GetSigningKeys' jwks_json); also refreshes the cache verifyLease uses. */
  async signingKeys(): Promise<JSONWebKeySet> {
    const response = await this.call(this.retry, (signal) =>
      this.service.getSigningKeys({}, { signal, timeoutMs: this.timeoutMs }),
    );
    const jwks = JSON.parse(response.jwksJson) as JSONWebKeySet;
    this.verifier.load(jwks);
    return jwks;
  }

  /**
   * The claims of a lease, checked offline; rejects with LeaseVerificationError.
   * Fetches the keys when none are cached, and once more when the token names a
   * key the cache lacks (the server may have rotated keys).
   */
  async verifyLease(token: string): Promise<LeaseClaims> {
    const kid = headerKid(token);
    if (this.verifier.needsKeys(kid)) {
      await this.signingKeys();
    }
    return this.verifier.verify(token, this.clock());
  }

  // Lifecycle

  /** Stop every heartbeat and abandon calls in flight; seats are kept (release them first to give them back). */
  async close(): Promise<void> {
    this.closing.abort();
    const beats = [...this.heartbeats];
    this.heartbeats.clear();
    await Promise.all(beats.map((beat) => beat.stop()));
  }

  // Internals

  private call<T>(policy: RetryPolicy, call: (signal: AbortSignal) => Promise<T>): Promise<T> {
    const signal = this.closing.signal;
    return withRetry(policy, () => call(signal), signal);
  }

  private renewWith(lease: Lease, policy: RetryPolicy): Promise<Lease> {
    return lease.exclusive(async () => {
      const request = create(RenewLeaseRequestSchema, { leaseToken: lease.token });
      const response = await this.call(policy, (signal) =>
        this.service.renewLease(request, { signal, timeoutMs: this.timeoutMs }),
      );
      const claims = await this.verifyLease(response.lease?.token ?? "");
      lease.apply(leaseGrant(response.lease, claims, response.entitlement));
      return lease;
    });
  }

  /** One heartbeat renewal. `retrying`: an earlier attempt went unanswered and may have renewed unseen; a LEASE_SUPERSEDED then takes the device's seat again. */
  private async beat(lease: Lease, retrying: boolean): Promise<Lease> {
    try {
      return await this.renewWith(lease, NO_RETRY);
    } catch (raw) {
      const error = keyturnError(raw);
      const activation = lease.activation;
      if (!retrying || error.reason !== "LEASE_SUPERSEDED" || activation === undefined) {
        throw error;
      }
      return lease.exclusive(async () => {
        const response = await this.call(NO_RETRY, (signal) =>
          this.service.activateSeat(activation, { signal, timeoutMs: this.timeoutMs }),
        );
        const claims = await this.verifyLease(response.lease?.token ?? "");
        lease.apply(leaseGrant(response.lease, claims, response.entitlement, response.activationId));
        return lease;
      });
    }
  }

  private async releaseToken(token: string): Promise<void> {
    const request = create(ReleaseSeatRequestSchema, { leaseToken: token });
    await this.call(this.retry, (signal) => this.service.releaseSeat(request, { signal, timeoutMs: this.timeoutMs }));
  }

  private startHeartbeat(lease: Lease, options: ActivateOptions): void {
    const { onLost, onRenewed } = options;
    const beat: Heartbeat = new Heartbeat(lease, (retrying) => this.beat(lease, retrying), {
      policy: this.retry,
      clock: this.clock,
      intervalMs: options.heartbeatIntervalMs,
      onRenewed: onRenewed && (() => onRenewed(lease)),
      onLost: (error) => {
        this.heartbeats.delete(beat);
        lease.lost = error;
        onLost?.(lease, error);
      },
    });
    lease.heartbeat = beat;
    this.heartbeats.add(beat);
    beat.start();
  }
}
