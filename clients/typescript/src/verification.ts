/**
 * Offline lease verification with `jose`: EdDSA signature against the JWKS of
 * GetSigningKeys, issuer, audience (the product id) and times, as the Python
 * client checks them. The header's algorithm is checked before any key is
 * looked at, so a token that says `none`, `HS256` or `RS256` never reaches a
 * key (which defeats the algorithm-confusion attacks). No I/O here: the client
 * fetches the key set and hands it over.
 */
import {
  createLocalJWKSet,
  decodeProtectedHeader,
  errors,
  jwtVerify,
  type JSONWebKeySet,
  type JWK,
  type JWTPayload,
} from "jose";
import { LeaseVerificationError } from "./errors.js";

export const ALGORITHM = "EdDSA";
export const REQUIRED_CLAIMS = ["iss", "aud", "sub", "iat", "nbf", "exp", "jti"];
export const MAX_TOKEN_LENGTH = 8192;
export const DEFAULT_ISSUER = "keyturn";
/** Clock skew allowed on exp, nbf and iat. */
export const DEFAULT_LEEWAY_SECONDS = 60;

/** The claims of a verified lease (see the Lease message in licensing.proto). */
export interface LeaseClaims extends JWTPayload {
  iss: string;
  aud: string;
  sub: string;
  iat: number;
  nbf: number;
  exp: number;
  jti: string;
  entitlement_id?: string;
  edition?: string;
  features?: Record<string, number | null>;
  entitlement_end?: number | null;
  license_model?: string;
  fingerprint?: string;
  token_use?: string;
  seats?: number;
  seat_limit?: number;
  in_overage?: boolean;
  user_id?: string;
  email?: string;
}

/** The Ed25519 keys of a JWKS (a document or its JSON text); keys of any other type are left out. */
export function parseJwks(jwks: string | JSONWebKeySet): JSONWebKeySet {
  const document: unknown = typeof jwks === "string" ? JSON.parse(jwks) : jwks;
  const entries = (document as { keys?: unknown } | null)?.keys;
  const keys = (Array.isArray(entries) ? entries : []).filter(
    (entry): entry is JWK =>
      typeof entry === "object" &&
      entry !== null &&
      typeof entry.kid === "string" &&
      entry.kid !== "" &&
      entry.kty === "OKP" &&
      entry.crv === "Ed25519" &&
      (entry.alg ?? ALGORITHM) === ALGORITHM,
  );
  return { keys };
}

/** The `kid` of a token whose header names EdDSA; refuses anything else first. */
export function headerKid(token: string): string {
  if (typeof token !== "string" || token === "" || token.length > MAX_TOKEN_LENGTH) {
    throw new LeaseVerificationError("the lease is not a token", "format");
  }
  let header;
  try {
    header = decodeProtectedHeader(token);
  } catch (cause) {
    throw new LeaseVerificationError("the lease is not a JWT", "format", cause);
  }
  if (header.alg !== ALGORITHM) {
    throw new LeaseVerificationError(`the lease is not signed with ${ALGORITHM}: refused`, "algorithm");
  }
  if (typeof header.kid !== "string" || header.kid === "") {
    throw new LeaseVerificationError("the lease names no signing key", "kid");
  }
  return header.kid;
}

/** Verifies leases against a cached key set, and tells the client when to (re)fetch it. */
export class LeaseVerifier {
  private keys: JSONWebKeySet | undefined;
  private keySet: ReturnType<typeof createLocalJWKSet> | undefined;

  constructor(
    readonly productId: string,
    readonly issuer: string = DEFAULT_ISSUER,
    readonly leewaySeconds: number = DEFAULT_LEEWAY_SECONDS,
  ) {}

  get loaded(): boolean {
    return this.keys !== undefined;
  }

  load(jwks: string | JSONWebKeySet): void {
    const keys = parseJwks(jwks);
    this.keys = keys;
    this.keySet = createLocalJWKSet(keys);
  }

  /** True when the key set is missing or lacks `kid`: fetch it (once) before verify(). */
  needsKeys(kid: string): boolean {
    return this.keys === undefined || !this.keys.keys.some((key) => key.kid === kid);
  }

  /** The claims of a lease signed by a known key, for this product and issuer, valid at `now`. */
  async verify(token: string, now: Date = new Date()): Promise<LeaseClaims> {
    const kid = headerKid(token);
    if (this.keySet === undefined || this.needsKeys(kid)) {
      throw new LeaseVerificationError("the lease is signed by an unknown key", "kid");
    }
    let payload: JWTPayload;
    try {
      ({ payload } = await jwtVerify(token, this.keySet, {
        algorithms: [ALGORITHM],
        issuer: this.issuer,
        audience: this.productId,
        requiredClaims: REQUIRED_CLAIMS,
        clockTolerance: this.leewaySeconds,
        currentDate: now,
      }));
    } catch (cause) {
      throw verificationFailure(cause);
    }
    if (typeof payload.iat !== "number" || now.getTime() / 1000 < payload.iat - this.leewaySeconds) {
      throw new LeaseVerificationError("the lease was issued in the future", "iat");
    }
    return payload as LeaseClaims;
  }
}

/** jose's failure as a LeaseVerificationError naming the claim (or `signature`, `kid`, `format`). */
function verificationFailure(cause: unknown): LeaseVerificationError {
  if (cause instanceof errors.JWTExpired) {
    return new LeaseVerificationError("the lease has expired", "exp", cause);
  }
  if (cause instanceof errors.JWTClaimValidationFailed) {
    const claim = cause.claim;
    const says: Record<string, string> = {
      aud: "the lease is for another product",
      iss: "the lease has another issuer",
      nbf: "the lease is not valid yet",
    };
    const message = says[claim] ?? (cause.reason === "missing" ? `the lease lacks the '${claim}' claim` : `the lease claim '${claim}' is not valid`);
    return new LeaseVerificationError(message, claim, cause);
  }
  if (cause instanceof errors.JWSSignatureVerificationFailed) {
    return new LeaseVerificationError("the lease signature does not verify", "signature", cause);
  }
  if (cause instanceof errors.JWKSNoMatchingKey || cause instanceof errors.JWKSMultipleMatchingKeys) {
    return new LeaseVerificationError("the lease is signed by an unknown key", "kid", cause);
  }
  if (cause instanceof errors.JOSEAlgNotAllowed) {
    return new LeaseVerificationError(`the lease is not signed with ${ALGORITHM}: refused`, "algorithm", cause);
  }
  const text = cause instanceof Error ? cause.message : String(cause);
  return new LeaseVerificationError(`the lease is not valid: ${text}`, "format", cause);
}
