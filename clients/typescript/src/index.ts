/**
 * `@parley/client`: the typed TypeScript client for Parley, transport-free.
 *
 * Most applications import `@parley/client/node` (gRPC over HTTP/2) or
 * `@parley/client/web` (gRPC-Web), which re-export everything here and add
 * a `Client` that makes its own transport.
 *
 * @module
 */

export { Auth, DEFAULT_TIMEOUT_MS, REFRESH_MARGIN_MS, outcomeUnknown, type AuthOptions } from "./auth.js";
export { Backoff, type BackoffOptions, type HeartbeatOptions } from "./backoff.js";
export {
  ParleyClient,
  DEFAULT_MAX_SEND_ATTEMPTS,
  type ClientOptions,
  type CreateRoomOptions,
  type Me,
  type OffsetHistoryOptions,
  type Peer,
  type Question,
  type QuestionHandler,
  type UserInfo,
} from "./client.js";
export { Connection, sleep, type ConnectionOptions, type ConnectionState, type Sleep } from "./connection.js";
export { labelled, lengthPrefixed, fromBase64, toBase64 } from "./encoding.js";
export {
  AlreadyExistsError,
  Code,
  ERROR_DOMAIN,
  FileLostError,
  NotFoundError,
  ParleyError,
  PayloadTooLargeError,
  PermissionDeniedError,
  QuotaExceededError,
  RateLimitedError,
  RoomFullError,
  STATUS_DETAILS_TRAILER,
  SlowConsumerError,
  TOKEN_EXPIRED,
  UnauthenticatedError,
  UnavailableError,
  ValidationError,
  codeName,
  errorFor,
  errorFromRpc,
  errorFromStatus,
  errorInfoOf,
  isFinal,
  reasonName,
  worthRetrying,
} from "./errors.js";
export type { ClientEvents } from "./events.js";
export {
  DeviceIdentity,
  KEY_FILE_VERSION,
  deviceCertificateBytes,
  deviceIdFor,
  loginChallengeBytes,
  x25519PublicKey,
  type CertifiedDeviceKeys,
  type DeviceIdentityInit,
  type KeyFileJson,
} from "./identity.js";
export { memoryKeyStore, type KeySlot, type KeyStore } from "./keystore.js";
export type { Handler, Logger } from "./listeners.js";
export {
  BACKLOG_LIMIT,
  Room,
  type EventChange,
  type HistoryOptions,
  type OutgoingRoomEvent,
  type PresenceChange,
  type Published,
  type RoomEvent,
  type Signal,
  type TriggerOptions,
} from "./rooms.js";
export {
  COMMAND_TIMEOUT_MS,
  connectStreamSession,
  subscribeSession,
  type Command,
  type SessionChannel,
  type SessionContext,
  type SessionFactory,
  type SessionHandlers,
} from "./session.js";
export { matches, type SubjectMessage } from "./subjects.js";
export { fromStruct, fromValue, toStruct, toValue, type JsonObject, type JsonValue } from "./values.js";
export { ErrorReason } from "./gen/parley/api/v1/errors_pb.js";
export type { Room as RoomInfo, RoomMember } from "./gen/parley/room/v1/room_pb.js";
export type { Welcome } from "./gen/parley/gateway/v1/gateway_pb.js";
