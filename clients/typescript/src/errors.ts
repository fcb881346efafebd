/**
 * Typed Keyturn errors, read from the google.rpc.ErrorInfo detail that every
 * refusal carries (Connect error details): callers branch on `.reason`, never
 * on the message text. A reason this SDK does not know still arrives, as a
 * string, so a newer server never breaks an older app.
 */
import { Code, ConnectError } from "@connectrpc/connect";
import { BinaryReader, WireType } from "@bufbuild/protobuf/wire";
import { ErrorReason } from "./gen/keyturn/errors/v1/error_reason_pb.js";

export { Code } from "@connectrpc/connect";
export { ErrorReason } from "./gen/keyturn/errors/v1/error_reason_pb.js";

/** The ErrorInfo domain of Keyturn's reasons. */
export const ERROR_DOMAIN = "keyturn.dev";
const ERROR_INFO = "google.rpc.ErrorInfo";
const BAD_REQUEST = "google.rpc.BadRequest";

/** One offending field of an INVALID_REQUEST (google.rpc.BadRequest). */
export interface FieldViolation {
  field: string;
  description: string;
}

/** A reason name of error_reason.proto (`SEATS_EXHAUSTED`...), or any other string a newer server sends. */
export type Reason = keyof typeof ErrorReason | (string & {});

/** A failed Keyturn call: Connect code, ErrorInfo reason and metadata, message. */
export class KeyturnError extends Error {
  override name = "KeyturnError";
  readonly code: Code;
  /** The ErrorInfo reason (empty when the failure carried none, e.g. no server reached). */
  readonly reason: Reason;
  /** The ErrorInfo metadata: the keys each reason documents in error_reason.proto. */
  readonly metadata: Readonly<Record<string, string>>;
  /** The BadRequest field violations of an INVALID_REQUEST. */
  readonly fieldViolations: readonly FieldViolation[];

  constructor(
    message: string,
    options: {
      code?: Code;
      reason?: Reason;
      metadata?: Record<string, string>;
      fieldViolations?: FieldViolation[];
      cause?: unknown;
    } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = options.code ?? Code.Unknown;
    this.reason = options.reason ?? "";
    this.metadata = Object.freeze({ ...options.metadata });
    this.fieldViolations = Object.freeze([...(options.fieldViolations ?? [])]);
  }

  /**
   * How long to wait before trying again, in seconds, when the server said so: a
   * RATE_LIMITED refusal's `retry_after_seconds` (the delay of its RetryInfo).
   * Undefined for every other failure.
   */
  get retryAfterSeconds(): number | undefined {
    const seconds = Number(this.metadata["retry_after_seconds"] ?? Number.NaN);
    return Number.isFinite(seconds) && seconds >= 0 ? seconds : undefined;
  }

  /** The code's name as Connect spells it (`Unavailable`, `ResourceExhausted`...). */
  get codeName(): string {
    return Code[this.code] ?? String(this.code);
  }

  override toString(): string {
    return `${this.name}: ${this.reason || this.codeName}: ${this.message}`;
  }
}

/** A lease that fails offline verification; `.claim` names what failed (`signature`, `exp`, `aud`, `kid`...). */
export class LeaseVerificationError extends KeyturnError {
  override name = "LeaseVerificationError";
  readonly claim: string;

  constructor(message: string, claim: string, cause?: unknown) {
    super(message, { code: Code.Unauthenticated, reason: "INVALID_LEASE", cause });
    this.claim = claim;
  }
}

/** Any failure of a call as a KeyturnError (a KeyturnError passes through unchanged). */
export function keyturnError(error: unknown): KeyturnError {
  if (error instanceof KeyturnError) {
    return error;
  }
  const connect = ConnectError.from(error);
  let reason = "";
  let metadata: Record<string, string> = {};
  const fieldViolations: FieldViolation[] = [];
  for (const detail of connect.details) {
    if (!("type" in detail)) {
      continue; // an outgoing detail: only servers send those
    }
    if (detail.type === ERROR_INFO) {
      const info = decodeErrorInfo(detail.value);
      if (info.domain === ERROR_DOMAIN || reason === "") {
        ({ reason, metadata } = info);
      }
    } else if (detail.type === BAD_REQUEST) {
      fieldViolations.push(...decodeBadRequest(detail.value));
    }
  }
  return new KeyturnError(connect.rawMessage, {
    code: connect.code,
    reason,
    metadata,
    fieldViolations,
    cause: error,
  });
}

/**
 * Each length-delimited field of a message, by number. ErrorInfo and BadRequest
 * are not in proto/ (googleapis): their few string fields are read off the wire
 * here rather than generating all of google/rpc for them.
 */
function* stringFields(bytes: Uint8Array): Generator<[number, Uint8Array]> {
  const reader = new BinaryReader(bytes);
  while (reader.pos < reader.len) {
    const [fieldNo, wireType] = reader.tag();
    if (wireType === WireType.LengthDelimited) {
      yield [fieldNo, reader.bytes()];
    } else {
      reader.skip(wireType, fieldNo);
    }
  }
}

const utf8 = new TextDecoder();

/** google.rpc.ErrorInfo: reason = 1, domain = 2, map<string, string> metadata = 3. */
export function decodeErrorInfo(bytes: Uint8Array): {
  reason: string;
  domain: string;
  metadata: Record<string, string>;
} {
  let reason = "";
  let domain = "";
  const metadata: Record<string, string> = {};
  for (const [fieldNo, value] of stringFields(bytes)) {
    if (fieldNo === 1) {
      reason = utf8.decode(value);
    } else if (fieldNo === 2) {
      domain = utf8.decode(value);
    } else if (fieldNo === 3) {
      const entry = pair(value);
      metadata[entry[0]] = entry[1];
    }
  }
  return { reason, domain, metadata };
}

/** google.rpc.BadRequest: repeated FieldViolation field_violations = 1 (field = 1, description = 2). */
function decodeBadRequest(bytes: Uint8Array): FieldViolation[] {
  const violations: FieldViolation[] = [];
  for (const [fieldNo, value] of stringFields(bytes)) {
    if (fieldNo === 1) {
      const [field, description] = pair(value);
      violations.push({ field, description });
    }
  }
  return violations;
}

/** Fields 1 and 2 of a message as strings (a map entry, a field violation). */
function pair(bytes: Uint8Array): [string, string] {
  let first = "";
  let second = "";
  for (const [fieldNo, value] of stringFields(bytes)) {
    if (fieldNo === 1) {
      first = utf8.decode(value);
    } else if (fieldNo === 2) {
      second = utf8.decode(value);
    }
  }
  return [first, second];
}
