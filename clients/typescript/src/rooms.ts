/**
 * Room handles: events in, events out, subscriptions, presence (the Python
 * client's `parley/rooms.py`). Get one with `await client.join(roomId)`.
 *
 * @module
 */

import { create, type JsonObject, type JsonValue } from "@bufbuild/protobuf";
import { randomBytes, toHex } from "./encoding.js";
import { UnavailableError } from "./errors.js";
import {
  EventChanged_Kind,
  OutgoingEventSchema,
  type Ephemeral,
  type Event,
  type EventChanged,
  type Reply,
} from "./gen/parley/gateway/v1/gateway_pb.js";
import type { LoggedEvent } from "./gen/parley/history/v1/history_pb.js";
import { RoomSchema, type Room as RoomInfo } from "./gen/parley/room/v1/room_pb.js";
import { callHandler, type Handler, type Logger } from "./listeners.js";
import type { Command } from "./session.js";
import { fromValue, toValue } from "./values.js";

/** Events kept for the first iterator, from the join until it starts. */
export const BACKLOG_LIMIT = 1000;

/** An event as delivered: the envelope and the JSON payload. */
export interface RoomEvent {
  roomId: string;
  /** The event's name, e.g. `"message"`. */
  event: string;
  /** The payload (any JSON value; null when absent). */
  data: JsonValue;
  /** User id of the sender, `"system"`, or a backend's named sender. */
  sender: string;
  /** Server time of publication, milliseconds since the epoch. */
  timeMs: number;
  /** Position in the room's log. */
  seq: number;
  /** Stable id of the event (for edits and deletes). */
  handle: string;
  meta: JsonObject;
  /** The room log's epoch. */
  epoch: string;
  /** From the history log only: when the payload was last edited (ms); 0 if never. */
  editTimeMs: number;
  /** From the history log only: the event was deleted (data is null, meta empty). */
  deleted: boolean;
}

/** Where a published event landed. */
export interface Published {
  seq: number;
  handle: string;
}

/** A kept event its sender edited (`data` is the new payload) or deleted (`data` is null). */
export interface EventChange {
  roomId: string;
  handle: string;
  seq: number;
  event: string;
  sender: string;
  deleted: boolean;
  data: JsonValue;
  timeMs: number;
  /** The change's own place in the room's log (after `seq`). */
  changeSeq: number;
}

/** An ephemeral signal from another member (typing, a cursor), or its end (`expired`). */
export interface Signal {
  roomId: string;
  subject: string;
  sender: string;
  data: JsonValue;
  expired: boolean;
  /** Until it expires unless renewed (0 when expired). */
  ttlMs: number;
  /** The sender's connection (one user may signal from several). */
  sessionId: string;
}

/** Someone joined (their first connection in the room) or left (their last). */
export interface PresenceChange {
  userId: string;
  joined: boolean;
}

/** Options of {@link Room.trigger}. */
export interface TriggerOptions {
  meta?: JsonObject;
  /** Deliver the event to this connection too (default true). */
  echo?: boolean;
  /** An idempotency key; generated when absent. A retry with the same key is stored once. */
  key?: string;
}

/** One event of {@link Room.triggerBatch}. */
export interface OutgoingRoomEvent {
  event: string;
  data: JsonValue;
  meta?: JsonObject;
  key?: string;
}

/** Options of {@link Room.history}. */
export interface HistoryOptions {
  /** At most this many events (default 50). */
  limit?: number;
  /** Only events with a sequence below this (default 0: from the newest). */
  before?: number;
  /** Only events with this name. */
  event?: string;
}

/** What a room needs from its client. */
export interface RoomContext {
  /** A command that is not retried: with `wait`, on a session opened or awaited; without, on the live one. */
  command(command: Command, wait: boolean): Promise<Reply>;
  /** A command that changes what the server keeps: retried on the next session when its answer was lost. */
  publish(command: Command): Promise<Reply>;
  participants(roomId: string): Promise<Record<string, string[]>>;
  history(roomId: string, options: HistoryOptions): Promise<RoomEvent[]>;
  /** The room was left on purpose: a later join starts afresh. */
  forget(roomId: string): void;
  logger: Logger;
}

/** A fresh idempotency key. */
export function newKey(): string {
  return toHex(randomBytes(16));
}

/** A live event as delivered. */
export function roomEvent(event: Event): RoomEvent {
  return {
    roomId: event.roomId,
    event: event.event,
    data: fromValue(event.payload),
    sender: event.sender,
    timeMs: Number(event.timeMs),
    seq: Number(event.seq),
    handle: event.handle,
    meta: event.meta ?? {},
    epoch: event.epoch,
    editTimeMs: 0,
    deleted: false,
  };
}

/** An event of the history log as delivered. */
export function loggedEvent(roomId: string, epoch: string, event: LoggedEvent): RoomEvent {
  return {
    roomId,
    event: event.event,
    data: fromValue(event.payload),
    sender: event.sender,
    timeMs: Number(event.timeMs),
    seq: Number(event.seq),
    handle: event.handle,
    meta: event.meta ?? {},
    epoch,
    editTimeMs: Number(event.editTimeMs),
    deleted: event.deleted,
  };
}

/** An edit or delete as delivered. */
export function eventChange(change: EventChanged): EventChange {
  return {
    roomId: change.roomId,
    handle: change.handle,
    seq: Number(change.seq),
    event: change.event,
    sender: change.sender,
    deleted: change.kind === EventChanged_Kind.DELETED,
    data: change.payload === undefined ? null : fromValue(change.payload),
    timeMs: Number(change.changeTimeMs),
    changeSeq: Number(change.changeSeq),
  };
}

/** One `for await` over a room's events. */
class EventQueue {
  readonly items: RoomEvent[] = [];
  ended = false;
  wake: (() => void) | null = null;

  push(event: RoomEvent): void {
    this.items.push(event);
    this.#wakeUp();
  }

  end(): void {
    this.ended = true;
    this.#wakeUp();
  }

  #wakeUp(): void {
    const wake = this.wake;
    this.wake = null;
    wake?.();
  }
}

/** Handlers a room keeps across reconnections (and hands on to a resumed handle). */
interface RoomHandlers {
  byEvent: Map<string, Handler<[RoomEvent]>[]>;
  any: Handler<[RoomEvent]>[];
  presence: Handler<[PresenceChange]>[];
  edited: Handler<[EventChange]>[];
  deleted: Handler<[EventChange]>[];
  signals: Handler<[Signal]>[];
}

function remover<T>(list: T[], item: T): () => void {
  list.push(item);
  return () => {
    const index = list.indexOf(item);
    if (index >= 0) {
      list.splice(index, 1);
    }
  };
}

/**
 * A room this client has joined. Get one with `await client.join(roomId)`.
 *
 * `for await (const event of room)` iterates its events until the room is
 * left; handlers (`on`, `onAny`, `onPresence`, ...) are called for each.
 * Iterators and handlers carry on across the client's reconnections.
 */
export class Room implements AsyncIterable<RoomEvent> {
  /** The room as the server described it at the latest join. */
  info: RoomInfo;
  /** Events this connection is subscribed to (`"*"` for all). */
  subscriptions: string[] = [];
  /** Joined on the current session (false while the client joins it again, and once left). */
  joined = true;
  /** Left for good (or the session ended and the client does not reconnect): iterators have ended. */
  closed = false;
  /** The room log's epoch at this client's place in it. */
  epoch = "";
  /** The sequence of the last event (or change) this client saw: a later join resumes from here. */
  lastSeq = 0;
  /** After a resume: true when every missed kept event was replayed. */
  recovered = false;
  /** Why a resume did not recover (e.g. `EPOCH_CHANGED`, `PRUNED`, `OVER_CAP`). */
  unrecoveredReason = "";
  readonly #context: RoomContext;
  #handlers: RoomHandlers = {
    byEvent: new Map(),
    any: [],
    presence: [],
    edited: [],
    deleted: [],
    signals: [],
  };
  readonly #queues = new Set<EventQueue>();
  // Events that arrive before the first iterator starts (e.g. the echo of a trigger), up to a bound.
  #backlog: RoomEvent[] | null = [];
  // Until the join has returned to its caller, handler calls wait here.
  #held: (() => void)[] | null = [];

  /** Made by the client's join. */
  constructor(roomId: string, context: RoomContext) {
    this.info = create(RoomSchema, { roomId });
    this.#context = context;
  }

  /** The room's id. */
  get id(): string {
    return this.info.roomId;
  }

  /** Calls `handler(event)` for each event of this name; returns a function that removes it. */
  on(event: string, handler: Handler<[RoomEvent]>): () => void {
    const list = this.#handlers.byEvent.get(event) ?? [];
    this.#handlers.byEvent.set(event, list);
    return remover(list, handler);
  }

  /** Calls `handler(event)` for every event of the room. */
  onAny(handler: Handler<[RoomEvent]>): () => void {
    return remover(this.#handlers.any, handler);
  }

  /** Calls `handler({userId, joined})` when someone joins or leaves. */
  onPresence(handler: Handler<[PresenceChange]>): () => void {
    return remover(this.#handlers.presence, handler);
  }

  /** Calls `handler(change)` when a kept event you are subscribed to is edited. */
  onEdited(handler: Handler<[EventChange]>): () => void {
    return remover(this.#handlers.edited, handler);
  }

  /** Calls `handler(change)` when a kept event you are subscribed to is deleted. */
  onDeleted(handler: Handler<[EventChange]>): () => void {
    return remover(this.#handlers.deleted, handler);
  }

  /** Calls `handler(signal)` for each ephemeral signal of another member, and when one expires. */
  onEphemeral(handler: Handler<[Signal]>): () => void {
    return remover(this.#handlers.signals, handler);
  }

  /**
   * Events until the room is left. The first iterator also gets the events
   * that arrived since the join (up to 1,000); later ones start from now.
   */
  async *events(): AsyncGenerator<RoomEvent, void, undefined> {
    if (this.closed) {
      return;
    }
    const queue = new EventQueue();
    if (this.#backlog !== null) {
      this.#backlog.forEach((early) => queue.push(early));
      this.#backlog = null;
    }
    this.#queues.add(queue);
    try {
      for (;;) {
        const next = queue.items.shift();
        if (next !== undefined) {
          yield next;
        } else if (queue.ended) {
          return;
        } else {
          await new Promise<void>((resolve) => {
            queue.wake = resolve;
          });
        }
      }
    } finally {
      this.#queues.delete(queue);
    }
  }

  /** `for await (const event of room)`: the same as {@link Room.events}. */
  [Symbol.asyncIterator](): AsyncIterator<RoomEvent> {
    return this.events();
  }

  /**
   * Publishes one event and waits until the server has it; returns its
   * sequence number and handle. While the client reconnects the event waits
   * and goes out once the room has been joined again; its idempotency key
   * makes sure it is stored once however often it is sent. Throws the
   * server's typed error if it refused the event.
   */
  async trigger(event: string, data: JsonValue, options: TriggerOptions = {}): Promise<Published> {
    const outgoing: OutgoingRoomEvent = { event, data };
    if (options.meta !== undefined) {
      outgoing.meta = options.meta;
    }
    if (options.key !== undefined) {
      outgoing.key = options.key;
    }
    const [published] = await this.triggerBatch([outgoing], { echo: options.echo ?? true });
    return published!;
  }

  /** Publishes several events in one command, in order, all or none. */
  async triggerBatch(events: OutgoingRoomEvent[], options: { echo?: boolean } = {}): Promise<Published[]> {
    const outgoing = events.map((event) =>
      create(OutgoingEventSchema, {
        event: event.event,
        payload: toValue(event.data),
        meta: event.meta ?? {},
        idempotencyKey: event.key ?? newKey(),
      }),
    );
    const reply = await this.#context.publish({
      case: "publish",
      value: { roomId: this.id, events: outgoing, noEcho: !(options.echo ?? true) },
    });
    const result = reply.result.case === "publish" ? reply.result.value : undefined;
    return (result?.seqs ?? []).map((seq, index) => ({ seq: Number(seq), handle: result?.handles[index] ?? "" }));
  }

  /** Replaces the payload of a kept event you sent (it must pass the event's schema). */
  async edit(handle: string, data: JsonValue): Promise<EventChange> {
    const reply = await this.#context.publish({
      case: "edit",
      value: { roomId: this.id, handle, payload: toValue(data) },
    });
    return this.#changed(reply);
  }

  /** Deletes a kept event you sent; the log keeps a tombstone in its place. */
  async delete(handle: string): Promise<EventChange> {
    const reply = await this.#context.publish({ case: "delete", value: { roomId: this.id, handle } });
    return this.#changed(reply);
  }

  /**
   * Signals the other members (e.g. subject `"typing"`): never stored, never
   * queued (fails at once while the client is not connected). It expires
   * after the server's ephemeral TTL unless sent again.
   */
  async sendEphemeral(subject: string, data: JsonValue = null): Promise<void> {
    await this.#context.command({ case: "ephemeral", value: { roomId: this.id, subject, data: toValue(data) } }, false);
  }

  /** Receives these events too; returns the subscriptions now in force. */
  async subscribe(events: string[]): Promise<string[]> {
    return this.#subscription(
      await this.#context.command({ case: "subscribe", value: { roomId: this.id, events } }, false),
    );
  }

  /** Receives every event of the room. */
  async subscribeAll(): Promise<string[]> {
    return this.#subscription(
      await this.#context.command({ case: "subscribe", value: { roomId: this.id, all: true } }, false),
    );
  }

  /** Stops receiving these events (all of them when none are named); the connection stays in the room. */
  async unsubscribe(events: string[] = []): Promise<string[]> {
    const value = { roomId: this.id, events, all: events.length === 0 };
    return this.#subscription(await this.#context.command({ case: "unsubscribe", value }, false));
  }

  /** Who is in the room: user id -> their connections (session ids). */
  participants(): Promise<Record<string, string[]>> {
    return this.#context.participants(this.id);
  }

  /** Kept events newest first: up to `limit`, below sequence `before` (0: from the newest). */
  history(options: HistoryOptions = {}): Promise<RoomEvent[]> {
    return this.#context.history(this.id, options);
  }

  /** Leaves the room; iterators end (also while reconnecting: it is not joined again). */
  async leave(): Promise<void> {
    if (this.joined) {
      try {
        await this.#context.command({ case: "leave", value: { roomId: this.id } }, false);
      } catch (error) {
        if (!(error instanceof UnavailableError)) {
          throw error; // not connected: the membership ended with the session
        }
      }
    }
    this.#context.forget(this.id);
    this.close();
  }

  // For the client

  /** A resumed room: the same place in the log and the same handlers as before the session ended. */
  continueFrom(before: Room): void {
    this.epoch = before.epoch;
    this.lastSeq = before.lastSeq;
    this.#handlers = before.#handlers;
  }

  /** The session ended and the client is joining again: `joined` is false until it has. */
  suspend(): void {
    this.joined = false;
  }

  /** The room ended for this client: iterators end. */
  close(): void {
    this.joined = false;
    this.closed = true;
    this.#queues.forEach((queue) => queue.end());
  }

  /** An event of the room arrived (live or replayed). */
  dispatch(event: Event): void {
    const delivered = roomEvent(event);
    if (delivered.seq > this.lastSeq) {
      this.lastSeq = delivered.seq;
      this.epoch = delivered.epoch || this.epoch;
    }
    if (this.#backlog !== null && this.#backlog.length < BACKLOG_LIMIT) {
      this.#backlog.push(delivered);
    }
    this.#queues.forEach((queue) => queue.push(delivered));
    this.#notify(() => [...(this.#handlers.byEvent.get(delivered.event) ?? []), ...this.#handlers.any], delivered);
  }

  /** A kept event was edited or deleted. */
  dispatchChange(change: EventChanged): void {
    const changeSeq = Number(change.changeSeq);
    if (changeSeq > this.lastSeq) {
      this.lastSeq = changeSeq;
    }
    const changed = eventChange(change);
    this.#notify(() => (changed.deleted ? this.#handlers.deleted : this.#handlers.edited), changed);
  }

  /** An ephemeral signal (or its end) arrived. */
  dispatchSignal(signal: Ephemeral): void {
    const received: Signal = {
      roomId: signal.roomId,
      subject: signal.subject,
      sender: signal.sender,
      data: signal.data === undefined ? null : fromValue(signal.data),
      expired: signal.expired,
      ttlMs: Number(signal.ttlMs),
      sessionId: signal.sessionId,
    };
    this.#notify(() => this.#handlers.signals, received);
  }

  /** Someone joined or left. */
  dispatchPresence(change: PresenceChange): void {
    this.#notify(() => this.#handlers.presence, change);
  }

  /** Handlers registered by the code that joined get what arrived with the join. */
  releaseHeld(): void {
    const held = this.#held ?? [];
    this.#held = null;
    held.forEach((call) => call());
  }

  #notify<T>(handlers: () => Handler<[T]>[], value: T): void {
    const call = (): void => {
      for (const handler of handlers()) {
        callHandler(this.#context.logger, handler, [value]);
      }
    };
    if (this.#held !== null) {
      this.#held.push(call);
    } else {
      call();
    }
  }

  #subscription(reply: Reply): string[] {
    if (reply.result.case === "subscription") {
      this.subscriptions = [...reply.result.value.subscriptions];
    }
    return this.subscriptions;
  }

  #changed(reply: Reply): EventChange {
    if (reply.result.case !== "changed") {
      throw new TypeError("the server's answer holds no change");
    }
    return eventChange(reply.result.value);
  }
}
