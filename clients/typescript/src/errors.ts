/**
 * Typed errors for every error a Parley server returns, with the class names
 * of the Python client (`parley/errors.py`).
 *
 * The server attaches a `google.rpc.ErrorInfo` (domain `parley.dev`) with a
 * stable `reason` to every failed call, in the `grpc-status-details-bin`
 * trailer; commands on the realtime stream carry the same in their Reply's
 * status. The reason picks the class, or, failing that, the status code.
 *
 * @module
 */

import { fromBinary } from "@bufbuild/protobuf";
import { anyIs, anyUnpack } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { fromBase64 } from "./encoding.js";
import { ErrorReason } from "./gen/parley/api/v1/errors_pb.js";
import type { Status as CommandStatus } from "./gen/parley/api/v1/status_pb.js";
import { ErrorInfoSchema } from "./gen/google/rpc/error_details_pb.js";
import { StatusSchema } from "./gen/google/rpc/status_pb.js";

export { Code };

/** The `ErrorInfo.domain` of Parley's errors. */
export const ERROR_DOMAIN = "parley.dev";

/** The trailer that carries a serialized `google.rpc.Status` with the error's details. */
export const STATUS_DETAILS_TRAILER = "grpc-status-details-bin";

/** `ErrorReason.ROOM_FULL` (a number) -> `"ROOM_FULL"`, the reason's wire name. */
export function reasonName(reason: ErrorReason): string {
  return ErrorReason[reason];
}

/** The gRPC name of a status code, e.g. `NOT_FOUND` for `Code.NotFound` (5). */
export function codeName(code: Code): string {
  if (code === Code.Canceled) {
    return "CANCELLED"; // gRPC's spelling
  }
  const name = Code[code];
  return name === undefined ? "UNKNOWN" : name.replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

/**
 * Base of every Parley error.
 *
 * `code` is the gRPC status code, `reason` the ErrorInfo reason (e.g.
 * `"ROOM_FULL"`, or `""` when the server gave none), `metadata` the extra
 * ErrorInfo fields, and `retryable` says whether the same call may succeed
 * later.
 */
export class ParleyError extends Error {
  /** The gRPC status code (numbers as in gRPC: `Code.NotFound` is 5). */
  readonly code: Code;
  /** The ErrorInfo reason, e.g. `"ROOM_NOT_FOUND"`; `""` when the server gave none. */
  readonly reason: string;
  /** Extra ErrorInfo fields, e.g. `field` or `retry_after_seconds`. */
  readonly metadata: Readonly<Record<string, string>>;

  /** Builds an error; see {@link errorFor} for the typed one of a reason. */
  constructor(code: Code, reason: string, message: string, metadata: Record<string, string> = {}) {
    super(message);
    this.name = new.target.name;
    this.code = code;
    this.reason = reason;
    this.metadata = { ...metadata };
  }

  /** Whether the same call may succeed later. */
  get retryable(): boolean {
    return false;
  }

  /** The code's gRPC name, e.g. `"NOT_FOUND"`. */
  get codeName(): string {
    return codeName(this.code);
  }

  /** `REASON: message`, or the message alone when there is no reason. */
  override toString(): string {
    return `${this.name}: ${this.reason ? `${this.reason}: ` : ""}${this.message}`;
  }
}

/** A request field is missing or malformed; `field` names it. */
export class ValidationError extends ParleyError {
  /** The request field the server refused (ErrorInfo metadata `field`). */
  get field(): string {
    return this.metadata["field"] ?? "";
  }
}

/** The user, device, room or channel does not exist. */
export class NotFoundError extends ParleyError {}

/** The username (or device, or room) is taken. */
export class AlreadyExistsError extends ParleyError {}

/** The caller is known but not allowed to do this. */
export class PermissionDeniedError extends ParleyError {}

/** Missing, expired, forged or revoked credentials; log in again. */
export class UnauthenticatedError extends ParleyError {}

/** Too many requests; `retryAfter` says how long to wait, in seconds. */
export class RateLimitedError extends ParleyError {
  /** True: the same call may succeed later. */
  override get retryable(): boolean {
    return true;
  }

  /** Seconds to wait before trying again (ErrorInfo metadata `retry_after_seconds`). */
  get retryAfter(): number {
    return Number(this.metadata["retry_after_seconds"] ?? "1");
  }
}

/** The server or a service behind it cannot be reached right now; retry. */
export class UnavailableError extends ParleyError {
  /** True: the same call may succeed later. */
  override get retryable(): boolean {
    return true;
  }
}

/** The room is at its `max_size`. */
export class RoomFullError extends ParleyError {}

/**
 * The server ended the stream because this client fell too far behind
 * reading it. Nothing is lost: the client reconnects and resumes each room
 * from the last event it received.
 */
export class SlowConsumerError extends ParleyError {
  /** True: the same call may succeed later. */
  override get retryable(): boolean {
    return true;
  }
}

/** A message, event or file over its size limit (`limit` in the metadata, in bytes). */
export class PayloadTooLargeError extends ParleyError {}

/** The request would take the user past a quota. */
export class QuotaExceededError extends ParleyError {}

/** Fewer of the file's shares are intact than it takes to rebuild it (DATA_LOSS). */
export class FileLostError extends ParleyError {}

type ErrorClass = new (code: Code, reason: string, message: string, metadata?: Record<string, string>) => ParleyError;

const BY_REASON: Readonly<Record<string, ErrorClass>> = {
  VALIDATION_FAILED: ValidationError,
  MALFORMED_REQUEST: ValidationError,
  BAD_CERTIFICATE: ValidationError,
  ROOM_FULL: RoomFullError,
  RATE_LIMITED: RateLimitedError,
  SLOW_CONSUMER: SlowConsumerError,
  SERVICE_UNAVAILABLE: UnavailableError,
  PAYLOAD_TOO_LARGE: PayloadTooLargeError,
  QUOTA_EXCEEDED: QuotaExceededError,
  FILE_LOST: FileLostError,
};

// RESOURCE_EXHAUSTED is a RateLimitedError only with reason RATE_LIMITED;
// otherwise (e.g. a message over the size limit) retrying will not help.
const BY_CODE: ReadonlyMap<Code, ErrorClass> = new Map<Code, ErrorClass>([
  [Code.InvalidArgument, ValidationError],
  [Code.NotFound, NotFoundError],
  [Code.AlreadyExists, AlreadyExistsError],
  [Code.PermissionDenied, PermissionDeniedError],
  [Code.Unauthenticated, UnauthenticatedError],
  [Code.Unavailable, UnavailableError],
  [Code.DeadlineExceeded, UnavailableError],
]);

/** The typed error for a status code, reason, message and metadata. */
export function errorFor(
  code: Code,
  reason: string,
  message: string,
  metadata: Record<string, string> = {},
): ParleyError {
  const kind = BY_REASON[reason] ?? BY_CODE.get(code) ?? ParleyError;
  return new kind(code, reason, message || codeName(code), metadata);
}

/** The typed error for a failed command on the realtime stream (a Reply's or a GoAway's status). */
export function errorFromStatus(status: CommandStatus): ParleyError {
  const code = status.code in Code ? (status.code as Code) : Code.Unknown;
  return errorFor(code, status.reason, status.message, status.metadata);
}

/**
 * The Parley ErrorInfo (reason and metadata) in a serialized
 * `google.rpc.Status` (the bytes of `grpc-status-details-bin`); empty when
 * it holds none of Parley's.
 */
export function errorInfoOf(statusBytes: Uint8Array): { reason: string; metadata: Record<string, string> } {
  const status = fromBinary(StatusSchema, statusBytes);
  for (const detail of status.details) {
    if (anyIs(detail, ErrorInfoSchema)) {
      const info = anyUnpack(detail, ErrorInfoSchema);
      if (info !== undefined && info.domain === ERROR_DOMAIN) {
        return { reason: info.reason, metadata: { ...info.metadata } };
      }
    }
  }
  return { reason: "", metadata: {} };
}

/**
 * The typed error for a failed call: a ConnectError is read for its
 * `grpc-status-details-bin` trailer (or the details Connect decoded from
 * it); a ParleyError is returned as it is; anything else becomes an
 * UNKNOWN ParleyError (an AbortError: CANCELLED).
 */
export function errorFromRpc(error: unknown): ParleyError {
  if (error instanceof ParleyError) {
    return error;
  }
  const failure = ConnectError.from(error);
  const details = failure.metadata.get(STATUS_DETAILS_TRAILER);
  let info = { reason: "", metadata: {} as Record<string, string> };
  if (details !== null) {
    info = errorInfoOf(fromBase64(details.split(",")[0]!.trim()));
  } else {
    const unpacked = failure.findDetails(ErrorInfoSchema).find((found) => found.domain === ERROR_DOMAIN);
    if (unpacked !== undefined) {
      info = { reason: unpacked.reason, metadata: { ...unpacked.metadata } };
    }
  }
  return errorFor(failure.code, info.reason, failure.rawMessage, info.metadata);
}

const FINAL_ENDINGS: ReadonlySet<Code> = new Set([Code.Unauthenticated, Code.PermissionDenied, Code.InvalidArgument]);
const TRANSIENT: ReadonlySet<Code> = new Set([Code.Unavailable, Code.DeadlineExceeded, Code.Canceled]);

/** The reason of a stream whose token expired: a new stream with a fresh token carries on. */
export const TOKEN_EXPIRED = reasonName(ErrorReason.TOKEN_EXPIRED);

/** A stream ending the client does not recover from by opening another one. */
export function isFinal(error: ParleyError | null): boolean {
  return error !== null && FINAL_ENDINGS.has(error.code) && error.reason !== TOKEN_EXPIRED;
}

/** A failure that may not happen again on a new stream. */
export function worthRetrying(error: ParleyError): boolean {
  return TRANSIENT.has(error.code) || error.retryable;
}
