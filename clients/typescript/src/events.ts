/**
 * The client-wide callbacks and their arguments.
 *
 * @module
 */

import type { JsonValue } from "@bufbuild/protobuf";
import type { ConnectionState } from "./connection.js";
import type { ParleyError } from "./errors.js";
import type { Welcome } from "./gen/parley/gateway/v1/gateway_pb.js";
import type { Room as RoomInfo } from "./gen/parley/room/v1/room_pb.js";
import type { RoomEvent } from "./rooms.js";

/** Each client-wide callback's name and the arguments its handlers get. */
export interface ClientEvents {
  [name: string]: unknown[];
  /** Every change of `client.state`, with the error that caused it (if any). */
  state: [ConnectionState, ParleyError | null];
  /** A realtime session is connected (rooms joined again by then). */
  connect: [Welcome];
  /** The realtime session ended (null: closed by this client). */
  disconnect: [ParleyError | null];
  /** The server ended the session with an error, a room could not be joined again, or the client gave up. */
  error: [ParleyError];
  /** A history batch (a replay after a resume, or a sync on join): room id, events, recovered. */
  history: [string, RoomEvent[], boolean];
  roomCreated: [RoomInfo];
  roomDeleted: [RoomInfo];
  /** This user was removed from a private room (its handle ends). */
  removedFromRoom: [string];
  /** A message a backend sent to this connection alone: sender, data. */
  directMessage: [string, JsonValue];
  /** A user who shares a room with this one went offline there. */
  peerDisconnected: [string];
}
