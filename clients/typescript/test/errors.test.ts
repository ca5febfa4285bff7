import { create, toBinary } from "@bufbuild/protobuf";
import { anyPack } from "@bufbuild/protobuf/wkt";
import { ConnectError } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { toBase64 } from "../src/encoding.js";
import {
  Code,
  NotFoundError,
  ParleyError,
  PayloadTooLargeError,
  RateLimitedError,
  RoomFullError,
  UnauthenticatedError,
  ValidationError,
  codeName,
  errorFor,
  errorFromRpc,
  errorFromStatus,
  isFinal,
  worthRetrying,
} from "../src/errors.js";
import { ErrorInfoSchema } from "../src/gen/google/rpc/error_details_pb.js";
import { StatusSchema } from "../src/gen/google/rpc/status_pb.js";
import { ErrorReason } from "../src/gen/parley/api/v1/errors_pb.js";
import { StatusSchema as CommandStatusSchema } from "../src/gen/parley/api/v1/status_pb.js";
import { python } from "./python.js";

/** A failed call as the server sends it: grpc-status-details-bin holding a google.rpc.Status with an ErrorInfo. */
function failedCall(
  code: Code,
  message: string,
  reason: string,
  metadata: Record<string, string>,
  domain = "parley.dev",
): ConnectError {
  const info = create(ErrorInfoSchema, { reason, domain, metadata });
  const status = create(StatusSchema, { code, message, details: [anyPack(ErrorInfoSchema, info)] });
  const trailers = new Headers({ "grpc-status-details-bin": toBase64(toBinary(StatusSchema, status)) });
  return new ConnectError(message, code, trailers);
}

const REASONS = Object.keys(ErrorReason).filter((name) => Number.isNaN(Number(name)) && name !== "UNSPECIFIED");
const CODES = Object.values(Code).filter((value): value is Code => typeof value === "number");

describe("errors", () => {
  it("reads the reason, metadata and code from grpc-status-details-bin", () => {
    const error = errorFromRpc(failedCall(Code.FailedPrecondition, "room 'r' is full", "ROOM_FULL", { max_size: "2" }));
    expect(error).toBeInstanceOf(RoomFullError);
    expect(error).toBeInstanceOf(ParleyError);
    expect(error.name).toBe("RoomFullError");
    expect([error.code, error.codeName, error.reason, error.message]).toEqual([
      Code.FailedPrecondition,
      "FAILED_PRECONDITION",
      "ROOM_FULL",
      "room 'r' is full",
    ]);
    expect(error.metadata).toEqual({ max_size: "2" });
    expect(error.retryable).toBe(false);
  });

  it("gives the typed accessors of Python's classes", () => {
    const retryAfter = { retry_after_seconds: "2.5" };
    const limited = errorFromRpc(failedCall(Code.ResourceExhausted, "slow down", "RATE_LIMITED", retryAfter));
    expect(limited).toBeInstanceOf(RateLimitedError);
    expect((limited as RateLimitedError).retryAfter).toBe(2.5);
    expect(limited.retryable).toBe(true);
    const field = { field: "room_id" };
    const invalid = errorFromRpc(failedCall(Code.InvalidArgument, "room_id: bad", "VALIDATION_FAILED", field));
    expect((invalid as ValidationError).field).toBe("room_id");
    const big = errorFromRpc(failedCall(Code.ResourceExhausted, "too big", "PAYLOAD_TOO_LARGE", { limit: "16384" }));
    expect(big).toBeInstanceOf(PayloadTooLargeError);
    expect(big.metadata["limit"]).toBe("16384");
  });

  it("falls back to the status code when there is no Parley ErrorInfo", () => {
    const foreign = errorFromRpc(failedCall(Code.NotFound, "gone", "SOMETHING", {}, "example.com"));
    expect(foreign).toBeInstanceOf(NotFoundError);
    expect(foreign.reason).toBe("");
    const bare = errorFromRpc(new ConnectError("message larger than max", Code.ResourceExhausted));
    expect(bare.constructor).toBe(ParleyError); // not a RateLimitedError: retrying will not help
    expect(errorFromRpc(new Error("boom")).code).toBe(Code.Unknown);
  });

  it("uses the details Connect decoded when the trailer itself is gone", () => {
    const error = new ConnectError("denied", Code.PermissionDenied, undefined, [
      { desc: ErrorInfoSchema, value: { reason: "NOT_CREATOR", domain: "parley.dev", metadata: {} } },
    ]);
    const typed = errorFromRpc(error);
    expect([typed.name, typed.reason]).toEqual(["PermissionDeniedError", "NOT_CREATOR"]);
  });

  it("maps in-stream Reply statuses the same way", () => {
    const status = create(CommandStatusSchema, {
      code: Code.NotFound,
      message: "no room 'x'",
      reason: "ROOM_NOT_FOUND",
    });
    const error = errorFromStatus(status);
    expect([error.name, error.reason, error.message]).toEqual(["NotFoundError", "ROOM_NOT_FOUND", "no room 'x'"]);
    expect(errorFromStatus(create(CommandStatusSchema, { code: 99 })).code).toBe(Code.Unknown);
  });

  it("picks the class Python picks for every reason and code", () => {
    const pythonClasses = python<Record<string, string>>(`
import json
import grpc
from parley.api.v1 import errors_pb2, status_pb2
from parley.errors import error_from_status
from parley.reasons import reason_name
reasons = [reason_name(v) for v in errors_pb2.ErrorReason.values() if v] + [""]
codes = [c.value[0] for c in grpc.StatusCode if c.value[0]]
print(json.dumps({f"{code}/{reason}": type(error_from_status(status_pb2.Status(code=code, reason=reason))).__name__
                  for code in codes for reason in reasons}))
`);
    const mine: Record<string, string> = {};
    for (const code of CODES) {
      for (const reason of [...REASONS, ""]) {
        mine[`${code}/${reason}`] = errorFor(code, reason, "").name;
      }
    }
    expect(mine).toEqual(pythonClasses);
  });

  it("names codes as gRPC does", () => {
    const pythonNames = python<Record<string, string>>(
      "import json, grpc; print(json.dumps({str(c.value[0]): c.name for c in grpc.StatusCode if c.value[0]}))",
    );
    expect(Object.fromEntries(CODES.map((code) => [String(code), codeName(code)]))).toEqual(pythonNames);
  });

  it("tells final endings from those a new stream recovers from", () => {
    expect(isFinal(new UnauthenticatedError(Code.Unauthenticated, "TOKEN_INVALID", "bad"))).toBe(true);
    expect(isFinal(new UnauthenticatedError(Code.Unauthenticated, "TOKEN_EXPIRED", "old"))).toBe(false);
    expect(isFinal(null)).toBe(false);
    expect(worthRetrying(errorFor(Code.Unavailable, "", "down"))).toBe(true);
    expect(worthRetrying(errorFor(Code.NotFound, "ROOM_NOT_FOUND", "gone"))).toBe(false);
  });
});
