/**
 * The Parley client, for any transport: Node's gRPC over HTTP/2 or the
 * browser's gRPC-Web (see `@parley/client/node` and `@parley/client/web`,
 * which make one for you).
 *
 * It puts together parts with one job each, as the Python client does:
 * `Auth` (keys, session, unary calls), `Connection` (the realtime session,
 * its states, reconnection, heartbeat and token keeper), `RoomRegistry`
 * (joined rooms and their resumption), `Subjects` (pub/sub), and the frame
 * dispatch below.
 *
 * @module
 */

import type { JsonValue } from "@bufbuild/protobuf";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { createClient, type Client, type Transport } from "@connectrpc/connect";
import { Auth } from "./auth.js";
import { Backoff, type BackoffOptions, type HeartbeatOptions } from "./backoff.js";
import { Connection, type ConnectionState, type Sleep } from "./connection.js";
import { Code, UnavailableError, ValidationError, errorFromRpc, errorFromStatus } from "./errors.js";
import type { ClientEvents } from "./events.js";
import { ErrorReason } from "./gen/parley/api/v1/errors_pb.js";
import {
  GatewayService,
  type ConnectResponse,
  type Reply,
  type ServerQuestion,
} from "./gen/parley/gateway/v1/gateway_pb.js";
import { HistoryService } from "./gen/parley/history/v1/history_pb.js";
import type { Session } from "./gen/parley/identity/v1/identity_pb.js";
import {
  MemberRole,
  RoomChange_Kind,
  RoomService,
  RoomVisibility,
  type Room as RoomInfo,
  type RoomChange,
  type RoomMember,
} from "./gen/parley/room/v1/room_pb.js";
import type { DeviceIdentity } from "./identity.js";
import type { KeyStore } from "./keystore.js";
import { Listeners, type Handler, type Logger } from "./listeners.js";
import { RoomRegistry } from "./room-registry.js";
import { loggedEvent, roomEvent, type HistoryOptions, type Room, type RoomEvent } from "./rooms.js";
import { connectStreamSession, type Command, type SessionChannel, type SessionFactory } from "./session.js";
import { Subjects, type SubjectMessage } from "./subjects.js";
import { fromValue, toValue } from "./values.js";

/** How often a send whose answer was lost (the session ended first) is sent again, by default. */
export const DEFAULT_MAX_SEND_ATTEMPTS = 5;

/** What a {@link ParleyClient} is made with. */
export interface ClientOptions {
  /** How calls reach the server (see `@parley/client/node` and `@parley/client/web`). */
  transport: Transport;
  /** The realtime session kind: {@link connectStreamSession} (default) or `subscribeSession` (browsers). */
  session?: SessionFactory | undefined;
  /** The account to register or log in as; needed when there is no key file yet. */
  username?: string | undefined;
  /** Keys to use instead of a key store. */
  identity?: DeviceIdentity | undefined;
  /** Where this device's key file lives; without one, keys live in memory only. */
  keyStore?: KeyStore | undefined;
  /** A label for a newly created device. */
  deviceName?: string | undefined;
  /** How long each unary call may take, in milliseconds (default 10,000). */
  timeoutMs?: number | undefined;
  /** How long a realtime command may go unanswered, in milliseconds (default 10,000). */
  commandTimeoutMs?: number | undefined;
  /**
   * When the realtime session ends (network, server restart, a slow-consumer
   * cut), open a new one with backoff and join the rooms again, resuming each
   * from its last event (default true).
   */
  reconnect?: boolean | undefined;
  /** Reconnection pacing (full jitter) and the attempt limit. */
  backoff?: Backoff | BackoffOptions | undefined;
  /** How often to ping, and how long a ping may go unanswered before the link counts as dead. */
  heartbeat?: HeartbeatOptions | undefined;
  /** How often a publish whose answer was lost is sent again (with the same idempotency key). */
  maxSendAttempts?: number | undefined;
  /** Where handler failures and warnings go (default: the console). */
  logger?: Logger | undefined;
  /** Waits (tests: a fake clock). */
  sleep?: Sleep | undefined;
  /** Random numbers in [0, 1) for the backoff's jitter (tests). */
  random?: (() => number) | undefined;
}

/** Who the server thinks this client is. */
export interface Me {
  userId: string;
  username: string;
  deviceId: string;
  issuer: string;
  /** When the access token expires, in milliseconds since the epoch (0: never). */
  expireTimeMs: number;
}

/** A user as the identity service knows them (`getUser`): no keys, which the browser path does not use. */
export interface UserInfo {
  userId: string;
  username: string;
}

/** A question the app's backend asks this client (GatewayService.AskClient). */
export interface Question {
  id: string;
  topic: string;
  data: JsonValue;
  /** When the asker stops waiting, in milliseconds since the epoch (server clock). */
  deadlineMs: number;
}

/** Answers a {@link Question}: any JSON value (or a promise of one). */
export type QuestionHandler = (question: Question) => JsonValue | Promise<JsonValue>;

/** An online user who shares rooms with this one. */
export interface Peer {
  userId: string;
  roomIds: string[];
}

/** Options of {@link ParleyClient.createRoom}. */
export interface CreateRoomOptions {
  name?: string;
  description?: string;
  /** 0: unbounded. */
  maxSize?: number;
  /** Event names the room accepts; absent: any event. */
  events?: string[];
  readOnly?: boolean;
  /** Reachable by id, not listed. */
  unlisted?: boolean;
  /** Only members join it and read its history; you are its first admin. */
  private?: boolean;
  /** Tell members of joins and leaves (default true). */
  presence?: boolean;
}

/** Options of {@link ParleyClient.getHistory}: offsets from the newest (0), `end` exclusive. */
export interface OffsetHistoryOptions {
  event?: string;
  start?: number;
  end?: number;
}

const NO_ANSWER = ErrorReason[ErrorReason.NO_ANSWER];
const DRAINING = ErrorReason[ErrorReason.DRAINING];
// How many ended connections are remembered, to tell each once (as the Python client does): a drop of
// this many connections that share several rooms with us comes as each room's frames in turn.
const REMEMBERED_ENDINGS = 100_000;

/**
 * A connection to Parley as one device of one user.
 *
 * `await client.connect()` registers the device if it is new and logs in;
 * the realtime session opens on first use (a join or a subject
 * subscription). See `docs/typescript.md` for every call.
 */
export class ParleyClient {
  /** The generated RoomService client on this client's transport (calls need `authorization` headers). */
  readonly roomClient: Client<typeof RoomService>;
  /** The generated HistoryService client on this client's transport. */
  readonly historyClient: Client<typeof HistoryService>;
  /** The generated GatewayService client on this client's transport. */
  readonly gatewayClient: Client<typeof GatewayService>;
  readonly #auth: Auth;
  readonly #listeners: Listeners<ClientEvents>;
  readonly #connection: Connection;
  readonly #rooms: RoomRegistry;
  readonly #subjects: Subjects;
  readonly #logger: Logger;
  readonly #reconnect: boolean;
  readonly #maxSendAttempts: number;
  #questionHandler: QuestionHandler | null = null;
  // Ended connections already reported (one in several of our rooms is reported by each), oldest first.
  readonly #endedSessions = new Set<string>();

  /** Nothing is sent until {@link ParleyClient.connect} (or the first call that needs the server). */
  constructor(options: ClientOptions) {
    this.#logger = options.logger ?? console;
    this.#reconnect = options.reconnect ?? true;
    this.#maxSendAttempts = options.maxSendAttempts ?? DEFAULT_MAX_SEND_ATTEMPTS;
    if (this.#maxSendAttempts < 1) {
      throw new RangeError(`maxSendAttempts must be at least 1, got ${this.#maxSendAttempts}`);
    }
    this.#auth = new Auth(options.transport, {
      username: options.username,
      identity: options.identity,
      keyStore: options.keyStore,
      deviceName: options.deviceName,
      timeoutMs: options.timeoutMs,
    });
    this.roomClient = createClient(RoomService, options.transport);
    this.historyClient = createClient(HistoryService, options.transport);
    this.gatewayClient = createClient(GatewayService, options.transport);
    this.#listeners = new Listeners<ClientEvents>(this.#logger);
    this.#connection = new Connection(this.#auth, this.#listeners, (frame) => this.#receive(frame), {
      session: options.session ?? connectStreamSession,
      reconnect: this.#reconnect,
      backoff: options.backoff instanceof Backoff ? options.backoff : new Backoff(options.backoff),
      heartbeat: { intervalMs: 10_000, timeoutMs: 10_000, ...options.heartbeat },
      logger: this.#logger,
      commandTimeoutMs: options.commandTimeoutMs,
      sleep: options.sleep,
      random: options.random,
    });
    const commands = {
      command: (command: Command, wait: boolean) => this.#command(command, wait),
      publish: (command: Command) => this.#publish(command),
      logger: this.#logger,
    };
    this.#subjects = new Subjects(commands);
    this.#connection.onOpen((session) => this.#subjects.resubscribe(session));
    this.#rooms = new RoomRegistry(
      this.#connection,
      {
        ...commands,
        participants: (roomId) => this.participants(roomId),
        history: (roomId, historyOptions) => this.history(roomId, historyOptions),
      },
      this.#listeners,
    );
  }

  // Connection and session

  /** Creates and registers the device if new, and logs in (the realtime session opens on first use). */
  async connect(): Promise<void> {
    try {
      await this.#auth.ensureRegistered();
      await this.#auth.login();
    } catch (error) {
      await this.close();
      throw errorFromRpc(error);
    }
  }

  /** Closes the realtime session; the key file and the server-side session remain. */
  async close(): Promise<void> {
    await this.#connection.close();
  }

  /** `disconnected`, `connecting`, `connected`, `reconnecting` or `failed` (see {@link onState}). */
  get state(): ConnectionState {
    return this.#connection.state;
  }

  /** This device's keys (created on first use). */
  identity(): Promise<DeviceIdentity> {
    return this.#auth.identity();
  }

  /** The server's id of this user; `""` before the first login or registration. */
  get userId(): string {
    return this.#auth.currentIdentity?.userId ?? "";
  }

  /** This device's id; `""` before the keys are loaded or created. */
  get deviceId(): string {
    return this.#auth.currentIdentity?.deviceId ?? "";
  }

  /** Registers the user with this device as its first device (done by `connect` when needed). */
  register(): Promise<void> {
    return this.#auth.ensureRegistered();
  }

  /** Logs in by signing a fresh challenge with the device key. */
  login(): Promise<Session> {
    return this.#auth.login();
  }

  /** A valid access token, refreshed (or logged in again) when close to expiry. */
  accessToken(): Promise<string> {
    return this.#auth.accessToken();
  }

  /**
   * Ends the realtime session and revokes this device's sessions on the
   * server; returns how many. A later call that needs a token logs in anew.
   */
  async logout(): Promise<number> {
    await this.#connection.close();
    return this.#auth.logout();
  }

  /** Who the server thinks this client is. */
  async whoami(): Promise<Me> {
    const me = await this.#auth.call((options) => this.#auth.identityClient.whoAmI({}, options));
    return {
      userId: me.userId,
      username: me.username,
      deviceId: me.deviceId,
      issuer: me.issuer,
      expireTimeMs: me.expireTime === undefined ? 0 : timestampMs(me.expireTime),
    };
  }

  /** Looks a user up by id or by username; `NotFoundError` (USER_NOT_FOUND) when there is none. */
  async getUser(lookup: { userId: string } | { username: string }): Promise<UserInfo> {
    const request =
      "userId" in lookup
        ? { lookup: { case: "userId" as const, value: lookup.userId } }
        : { lookup: { case: "username" as const, value: lookup.username } };
    const found = await this.#auth.call((options) => this.#auth.identityClient.getUser(request, options));
    return { userId: found.user?.userId ?? "", username: found.user?.username ?? "" };
  }

  /** The realtime session: opened on first use, awaited while reconnecting. */
  session(): Promise<SessionChannel> {
    return this.#connection.session();
  }

  // Rooms

  /**
   * Joins a room over the realtime session; returns its handle.
   *
   * If this client was in the room before (e.g. before its session ended),
   * it resumes from the last event it saw: every kept event it missed comes
   * first (`room.recovered` says whether that was possible), then live
   * events. The room's handlers carry over to the returned handle.
   */
  join(roomId: string, options: { resume?: boolean } = {}): Promise<Room> {
    return this.#rooms.join(roomId, options.resume ?? true);
  }

  /** The room was left on purpose: a later join starts afresh. */
  forgetRoom(roomId: string): void {
    this.#rooms.forget(roomId);
  }

  /** Every public room (all pages). */
  async listRooms(): Promise<RoomInfo[]> {
    const rooms: RoomInfo[] = [];
    let pageToken = "";
    do {
      const page = await this.#auth.call((options) =>
        this.roomClient.listRooms({ pageSize: 100, pageToken }, options),
      );
      rooms.push(...page.rooms);
      pageToken = page.nextPageToken;
    } while (pageToken);
    return rooms;
  }

  /** One room (NotFoundError, reason ROOM_NOT_FOUND, if unknown). */
  async getRoom(roomId: string): Promise<RoomInfo> {
    const response = await this.#auth.call((options) => this.roomClient.getRoom({ roomId }, options));
    return this.#roomOf(response.room);
  }

  /** Creates a room at run time (you become its creator). */
  async createRoom(roomId: string, options: CreateRoomOptions = {}): Promise<RoomInfo> {
    if (options.private && options.unlisted) {
      throw new ValidationError(Code.InvalidArgument, "", "a room is private or unlisted, not both");
    }
    const visibility = options.unlisted
      ? RoomVisibility.UNLISTED
      : options.private
        ? RoomVisibility.PRIVATE
        : RoomVisibility.PUBLIC;
    const request = {
      roomId,
      name: options.name ?? "",
      description: options.description ?? "",
      maxSize: options.maxSize ?? 0,
      events: (options.events ?? []).map((name) => ({ name })),
      readOnly: options.readOnly ?? false,
      visibility,
      noPresence: !(options.presence ?? true),
    };
    const response = await this.#auth.call((callOptions) => this.roomClient.createRoom(request, callOptions));
    return this.#roomOf(response.room);
  }

  /** Deletes a room you created (NOT_CREATOR otherwise). */
  async deleteRoom(roomId: string): Promise<void> {
    await this.#auth.call((options) => this.roomClient.deleteRoom({ roomId }, options));
  }

  /** Who is in a room: user id -> their connections (session ids). */
  async participants(roomId: string): Promise<Record<string, string[]>> {
    const response = await this.#auth.call((options) => this.roomClient.listParticipants({ roomId }, options));
    return Object.fromEntries(response.participants.map((p) => [p.userId, [...p.sessionIds]]));
  }

  /** Adds users to a private room (you must be its admin); `admin` lets them change members too. */
  async addRoomMembers(roomId: string, userIds: string[], options: { admin?: boolean } = {}): Promise<RoomMember[]> {
    const role = options.admin ? MemberRole.ADMIN : MemberRole.MEMBER;
    const response = await this.#auth.call((call) => this.roomClient.addRoomMembers({ roomId, userIds, role }, call));
    return response.members;
  }

  /** Removes users from a private room; returns those who were members. */
  async removeRoomMembers(roomId: string, userIds: string[]): Promise<string[]> {
    const response = await this.#auth.call((call) => this.roomClient.removeRoomMembers({ roomId, userIds }, call));
    return response.removedUserIds;
  }

  /** A private room's members and their roles (members only). */
  async roomMembers(roomId: string): Promise<RoomMember[]> {
    const response = await this.#auth.call((options) => this.roomClient.listRoomMembers({ roomId }, options));
    return response.members;
  }

  /**
   * A room's kept events, newest first, without joining it: up to `limit`
   * (default 50) with a sequence below `before` (0: from the newest), only
   * `event` if given. Page further back with `before: events.at(-1).seq`.
   */
  async history(roomId: string, options: HistoryOptions = {}): Promise<RoomEvent[]> {
    const limit = options.limit ?? 50;
    const before = options.before ?? 0;
    for (const [field, value] of [
      ["limit", limit],
      ["before", before],
    ] as const) {
      if (value < 0 || !Number.isInteger(value)) {
        const message = `${field}: must be a whole number, not negative`;
        throw new ValidationError(Code.InvalidArgument, "VALIDATION_FAILED", message, { field });
      }
    }
    const events: RoomEvent[] = [];
    let pageToken = "";
    while (events.length < limit) {
      const request = {
        roomId,
        beforeSeq: BigInt(before),
        event: options.event ?? "",
        pageSize: limit - events.length,
        pageToken,
      };
      const page = await this.#auth.call((call) => this.historyClient.listEvents(request, call));
      events.push(...page.events.map((event) => loggedEvent(roomId, page.epoch, event)));
      if (!page.nextPageToken) {
        break;
      }
      pageToken = page.nextPageToken;
    }
    return events;
  }

  /** Kept events by offset, newest first: offsets `start` (default 0, the newest) to `end` (default 50, exclusive). */
  async getHistory(roomId: string, options: OffsetHistoryOptions = {}): Promise<RoomEvent[]> {
    const request = {
      roomId,
      event: options.event ?? "",
      range: { start: options.start ?? 0, end: options.end ?? 50 },
    };
    const page = await this.#auth.call((call) => this.historyClient.listEvents(request, call));
    return page.events.map((event) => loggedEvent(roomId, page.epoch, event));
  }

  // Subjects

  /** Calls `handler(message)` for each message on `subject` (a prefix when it ends in `*`). */
  subscribe(subject: string, handler: Handler<[SubjectMessage]>): Promise<void> {
    return this.#subjects.subscribe(subject, handler);
  }

  /** Stops receiving `subject`. */
  unsubscribe(subject: string): Promise<void> {
    return this.#subjects.unsubscribe(subject);
  }

  /** Sends `data` (any JSON value) to everyone subscribed to `subject` (never stored). */
  publish(subject: string, data: JsonValue): Promise<void> {
    return this.#subjects.publish(subject, data);
  }

  // Peers and questions

  /** The online users who share a room with you, with those rooms. */
  async peers(): Promise<Peer[]> {
    const response = await this.#auth.call((options) => this.gatewayClient.listPeers({}, options));
    return response.peers.map((peer) => ({ userId: peer.userId, roomIds: [...peer.roomIds] }));
  }

  /**
   * Answers the backend's questions (GatewayService.AskClient) with
   * `handler(question)`; one handler, a later one replaces it. Without one,
   * or when it throws, the backend gets NO_ANSWER.
   */
  onQuestion(handler: QuestionHandler): void {
    this.#questionHandler = handler;
  }

  // Callbacks

  /** Calls `handler(state, error)` on every change of `client.state`, in order. Returns a remover. */
  onState(handler: Handler<ClientEvents["state"]>): () => void {
    return this.#listeners.on("state", handler);
  }

  /** Calls `handler(welcome)` when a realtime session is connected (rooms joined again by then). */
  onConnect(handler: Handler<ClientEvents["connect"]>): () => void {
    return this.#listeners.on("connect", handler);
  }

  /** Calls `handler(errorOrNull)` when the realtime session ends. */
  onDisconnect(handler: Handler<ClientEvents["disconnect"]>): () => void {
    return this.#listeners.on("disconnect", handler);
  }

  /**
   * Calls `handler(error)` when the server ends the session with an error
   * (GoAway), a room cannot be joined again after a reconnection (the room
   * ends), or the client gives up reconnecting.
   */
  onError(handler: Handler<ClientEvents["error"]>): () => void {
    return this.#listeners.on("error", handler);
  }

  /**
   * Calls `handler(roomId, events, recovered)` for each history batch (a
   * replay after a resume, or a sync on join). The events also reach the
   * room's handlers and iterators, in order. Live events the server lost
   * come as a batch with no events and `recovered` false: reload the
   * room's history.
   */
  onHistory(handler: Handler<ClientEvents["history"]>): () => void {
    return this.#listeners.on("history", handler);
  }

  /** Calls `handler(room)` when a room is created. */
  onRoomCreated(handler: Handler<ClientEvents["roomCreated"]>): () => void {
    return this.#listeners.on("roomCreated", handler);
  }

  /** Calls `handler(room)` when a room is deleted (its handle ends). */
  onRoomDeleted(handler: Handler<ClientEvents["roomDeleted"]>): () => void {
    return this.#listeners.on("roomDeleted", handler);
  }

  /** Calls `handler(roomId)` when you are removed from a private room (its handle ends). */
  onRemovedFromRoom(handler: Handler<ClientEvents["removedFromRoom"]>): () => void {
    return this.#listeners.on("removedFromRoom", handler);
  }

  /** Calls `handler(sender, data)` for messages a backend sends to this connection. */
  onDirectMessage(handler: Handler<ClientEvents["directMessage"]>): () => void {
    return this.#listeners.on("directMessage", handler);
  }

  /** Calls `handler(userId)` when a user who shares a room with you goes offline there. */
  onPeerDisconnected(handler: Handler<ClientEvents["peerDisconnected"]>): () => void {
    return this.#listeners.on("peerDisconnected", handler);
  }

  // The command paths

  /** A command that is not retried: with `wait` on a session opened or awaited, without on the live one. */
  async #command(command: Command, wait: boolean): Promise<Reply> {
    const session = wait ? await this.#connection.session() : this.#connection.liveSession;
    if (session === null) {
      throw new UnavailableError(Code.Unavailable, "", `not connected (the client is ${this.state})`);
    }
    return session.command(command);
  }

  /**
   * A command that changes what the server keeps or relays: it waits while
   * the client reconnects, and is sent again on the next session when the
   * one it went out on ended before the answer (publishes carry an
   * idempotency key, so they are stored once).
   */
  async #publish(command: Command): Promise<Reply> {
    if (this.state === "failed" && this.#connection.failure !== null) {
      throw this.#connection.failure;
    }
    for (let attempt = 1; ; attempt += 1) {
      const session = await this.#connection.session();
      let reply: Reply;
      try {
        reply = await session.send(command);
      } catch (error) {
        const failure = errorFromRpc(error);
        if (session.ended && this.#reconnect && attempt < this.#maxSendAttempts) {
          continue; // the session ended before the server answered: again on the next one
        }
        throw failure;
      }
      if (reply.status !== undefined && reply.status.code !== 0) {
        throw errorFromStatus(reply.status);
      }
      return reply;
    }
  }

  // The receive path

  #receive(response: ConnectResponse): void {
    const frame = response.frame;
    switch (frame.case) {
      case "events":
        for (const event of frame.value.events) {
          this.#rooms.get(event.roomId)?.dispatch(event);
        }
        break;
      case "subjectEvents":
        frame.value.events.forEach((event) => this.#subjects.dispatch(event));
        break;
      case "presence": {
        const room = this.#rooms.get(frame.value.roomId);
        for (const { userId, joined, endedSessionId } of frame.value.changes) {
          // A connection that ended comes first: the user may have joined again since, in the same window.
          if (endedSessionId !== "") {
            this.#peerOffline(userId, endedSessionId);
          }
          room?.dispatchPresence({ userId, joined });
        }
        break;
      }
      case "roomChanged":
        this.#roomChanged(frame.value.change);
        break;
      case "directMessage":
        this.#listeners.emit("directMessage", frame.value.sender, fromValue(frame.value.data));
        break;
      case "history": {
        const batch = frame.value;
        const room = this.#rooms.get(batch.roomId);
        if (room !== undefined) {
          batch.events.forEach((event) => room.dispatch(event));
          batch.changes.forEach((change) => room.dispatchChange(change));
          room.recovered = batch.recovered;
          room.unrecoveredReason = batch.unrecoveredReason;
        }
        this.#listeners.emit("history", batch.roomId, batch.events.map(roomEvent), batch.recovered);
        break;
      }
      case "eventChanged":
        this.#rooms.get(frame.value.roomId)?.dispatchChange(frame.value);
        break;
      case "ephemeral":
        this.#rooms.get(frame.value.roomId)?.dispatchSignal(frame.value);
        break;
      case "goAway":
        this.#connection.goingAway(frame.value);
        if (frame.value.status !== undefined && frame.value.status.reason !== DRAINING) {
          this.#listeners.emit("error", errorFromStatus(frame.value.status)); // a planned drain is no error
        }
        break;
      case "question":
        void this.#answer(frame.value);
        break;
      case "peerOffline": // from a server older than PresenceChange.endedSessionId
        this.#peerOffline(frame.value.userId, frame.value.sessionId);
        break;
      default:
        break; // sealed direct messages and channel changes: end-to-end features of the Python client
    }
  }

  #peerOffline(userId: string, sessionId: string): void {
    if (this.#endedSessions.has(sessionId)) {
      return;
    }
    this.#endedSessions.add(sessionId);
    if (this.#endedSessions.size > REMEMBERED_ENDINGS) {
      const oldest = this.#endedSessions.values().next().value;
      if (oldest !== undefined) {
        this.#endedSessions.delete(oldest);
      }
    }
    this.#listeners.emit("peerDisconnected", userId);
  }

  #roomChanged(change: RoomChange | undefined): void {
    const room = change?.room;
    if (change === undefined || room === undefined) {
      return;
    }
    switch (change.kind) {
      case RoomChange_Kind.MEMBERS_REMOVED:
        this.#rooms.deleted(room.roomId);
        this.#rooms.forget(room.roomId);
        this.#listeners.emit("removedFromRoom", room.roomId);
        break;
      case RoomChange_Kind.DELETED:
        this.#rooms.deleted(room.roomId);
        this.#listeners.emit("roomDeleted", room);
        break;
      case RoomChange_Kind.CREATED:
        this.#listeners.emit("roomCreated", room);
        break;
      default:
        break;
    }
  }

  async #answer(asked: ServerQuestion): Promise<void> {
    const question: Question = {
      id: asked.questionId,
      topic: asked.topic,
      data: asked.data === undefined ? null : fromValue(asked.data),
      deadlineMs: Number(asked.deadlineMs),
    };
    const refusal = (message: string) => ({ code: Code.FailedPrecondition, reason: NO_ANSWER, message });
    let answer: Command;
    if (this.#questionHandler === null) {
      const error = refusal("this client does not answer questions (no onQuestion handler)");
      answer = { case: "answer", value: { questionId: question.id, error } };
    } else {
      try {
        const data = toValue(await this.#questionHandler(question));
        answer = { case: "answer", value: { questionId: question.id, data } };
      } catch (error) {
        this.#logger.error("parley: a question handler failed", error);
        const failure = refusal(`the client's question handler failed: ${String(error)}`);
        answer = { case: "answer", value: { questionId: question.id, error: failure } };
      }
    }
    try {
      await this.#command(answer, false);
    } catch (error) {
      this.#logger.warn("parley: an answer was not delivered", error);
    }
  }

  #roomOf(room: RoomInfo | undefined): RoomInfo {
    if (room === undefined) {
      throw new TypeError("the server's answer holds no room");
    }
    return room;
  }
}

