/**
 * The rooms this client is in: joining, resuming after a reconnection, and
 * leaving them behind (the Python client's `parley/room_registry.py`).
 *
 * A room handle outlives sessions: when a session ends the client joins the
 * room again on the next one, resuming from the last event it saw (the
 * room's epoch and last sequence, with its subscriptions), with the same
 * handlers and open iterators.
 *
 * @module
 */

import type { MessageInitShape } from "@bufbuild/protobuf";
import type { Connection } from "./connection.js";
import { errorFromRpc, worthRetrying } from "./errors.js";
import type { JoinCommandSchema, JoinResult } from "./gen/parley/gateway/v1/gateway_pb.js";
import type { ClientEvents } from "./events.js";
import type { Listeners } from "./listeners.js";
import { Room, type RoomContext } from "./rooms.js";
import type { SessionChannel } from "./session.js";

/** Rooms joined, rooms to join again, and rooms left behind (to resume from). */
export class RoomRegistry {
  readonly #connection: Connection;
  readonly #context: RoomContext;
  readonly #listeners: Listeners<ClientEvents>;
  readonly #rooms = new Map<string, Room>();
  // Rooms this client was in when its session ended: a join resumes from their place and keeps their handlers.
  readonly #leftBehind = new Map<string, Room>();
  // Rooms to join again on the next session.
  readonly #toRejoin = new Map<string, Room>();

  /** Hooks itself to the connection: rooms are joined again on every new session. */
  constructor(connection: Connection, context: Omit<RoomContext, "forget">, listeners: Listeners<ClientEvents>) {
    this.#connection = connection;
    this.#context = { ...context, forget: (roomId) => this.forget(roomId) };
    this.#listeners = listeners;
    connection.onOpen((session) => this.#rejoinAll(session));
    connection.onEnd((_error, reconnecting) => this.#sessionEnded(reconnecting));
    connection.onWaiting(() => this.#toRejoin.size > 0);
  }

  /** The joined room with this id. */
  get(roomId: string): Room | undefined {
    return this.#rooms.get(roomId);
  }

  /** The room was deleted (or this user removed from it): its handle ends. */
  deleted(roomId: string): void {
    const gone = this.#rooms.get(roomId);
    this.#rooms.delete(roomId);
    gone?.close();
  }

  /** The room was left on purpose: a later join starts afresh. */
  forget(roomId: string): void {
    this.#rooms.delete(roomId);
    this.#leftBehind.delete(roomId);
    this.#toRejoin.delete(roomId);
  }

  /** Joins a room (resuming from where this client was, unless `resume` is false). */
  async join(roomId: string, resume = true): Promise<Room> {
    const session = await this.#connection.session();
    const waiting = this.#toRejoin.get(roomId);
    if (waiting !== undefined) {
      this.#toRejoin.delete(roomId); // joined again by the application first
      return this.#rejoin(session, waiting, true);
    }
    let room = this.#rooms.get(roomId);
    const before = resume ? this.#leftBehind.get(roomId) : undefined;
    if (room === undefined || !room.joined) {
      // Registered before the command: events can arrive ahead of the reply.
      room = new Room(roomId, this.#context);
      this.#rooms.set(roomId, room);
      if (before !== undefined) {
        room.continueFrom(before);
      }
    }
    return this.#sendJoin(session, room, before);
  }

  /** On a new session, before it counts as connected: every room joined again, resumed. */
  async #rejoinAll(session: SessionChannel): Promise<void> {
    for (const [roomId, room] of [...this.#toRejoin]) {
      if (this.#toRejoin.get(roomId) !== room) {
        continue;
      }
      this.#toRejoin.delete(roomId);
      try {
        await this.#rejoin(session, room, false);
      } catch (error) {
        if (!room.closed) {
          throw error; // the session is no good: the connection tries another
        }
        this.#listeners.emit("error", errorFromRpc(error)); // the room refused: nobody else is told
      }
    }
  }

  /**
   * The same room handle, joined again on a new session from where it was.
   * If that fails for the connection's sake the room waits for the next
   * session; if the room itself refuses (deleted, full, denied) it ends.
   */
  async #rejoin(session: SessionChannel, room: Room, byApp: boolean): Promise<Room> {
    room.joined = true;
    this.#rooms.set(room.id, room);
    try {
      return await this.#sendJoin(session, room, room);
    } catch (error) {
      const failure = errorFromRpc(error);
      if (this.#rooms.get(room.id) === room) {
        this.#rooms.delete(room.id);
      }
      if (room.closed || this.#connection.closing) {
        throw failure;
      }
      if (worthRetrying(failure) && !(byApp && this.#connection.liveSession === session)) {
        room.suspend();
        this.#toRejoin.set(room.id, room);
      } else {
        this.#leaveBehind([room]);
      }
      throw failure;
    }
  }

  async #sendJoin(session: SessionChannel, room: Room, before: Room | undefined): Promise<Room> {
    const command: MessageInitShape<typeof JoinCommandSchema> = { roomId: room.id };
    if (before !== undefined) {
      command.epoch = before.epoch;
      command.sinceSeq = BigInt(before.lastSeq);
      command.resume = true;
      command.subscriptions = [...before.subscriptions];
    }
    let joined: JoinResult;
    try {
      const reply = await session.command({ case: "join", value: command });
      if (reply.result.case !== "join") {
        throw new TypeError("the server's answer to a join holds no JoinResult");
      }
      joined = reply.result.value;
    } catch (error) {
      if (this.#rooms.get(room.id) === room && !room.info.name) {
        this.#rooms.delete(room.id);
      }
      throw error;
    }
    if (joined.room !== undefined) {
      room.info = joined.room;
    }
    room.subscriptions = [...joined.subscriptions];
    room.recovered = joined.recovered;
    room.unrecoveredReason = joined.unrecoveredReason;
    const lastSeq = Number(joined.lastSeq);
    if (lastSeq > room.lastSeq && !(before !== undefined && joined.recovered)) {
      // A fresh start: resume later from the log's position at this join.
      room.epoch = joined.epoch;
      room.lastSeq = lastSeq;
    }
    room.epoch = room.epoch || joined.epoch;
    // After the caller's code up to its next await: handlers it registers there get what came with the join.
    setTimeout(() => room.releaseHeld(), 0);
    return room;
  }

  #sessionEnded(reconnecting: boolean): void {
    const rooms = [...this.#rooms.values()];
    this.#rooms.clear();
    if (reconnecting) {
      // The same room handles carry on once joined again: iterators stay open.
      for (const room of rooms) {
        room.suspend();
        this.#toRejoin.set(room.id, room);
      }
    } else {
      this.#leaveBehind([...rooms, ...this.#toRejoin.values()]);
    }
  }

  /** The rooms end (iterators stop); joining one again later resumes from where it was. */
  #leaveBehind(rooms: Room[]): void {
    for (const room of rooms) {
      this.#toRejoin.delete(room.id);
      this.#leftBehind.set(room.id, room);
      room.close();
    }
  }
}
