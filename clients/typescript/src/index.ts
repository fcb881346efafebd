/**
 * Keyturn's TypeScript SDK for shipped apps: activate a seat with a license
 * key, keep its lease renewed, verify it offline, give it back.
 */
export { Code, ERROR_DOMAIN, ErrorReason, type FieldViolation, KeyturnError, keyturnError, LeaseVerificationError, type Reason } from "./errors.js";
export { defaultFingerprint } from "./fingerprint.js";
export { type Clock, Heartbeat } from "./heartbeat.js";
export { Lease } from "./lease.js";
export { type ActivateOptions, type Credential, LicensingClient, type LicensingClientOptions } from "./licensing.js";
export { DEFAULT_RETRY, isRetryable, NO_RETRY, type RetryPolicy } from "./retry.js";
export { DEFAULT_ISSUER, DEFAULT_LEEWAY_SECONDS, type LeaseClaims, LeaseVerifier } from "./verification.js";
export { type EntitlementSummary, EntitlementStatus } from "./gen/keyturn/licensing/v1/licensing_pb.js";
