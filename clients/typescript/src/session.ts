/**
 * The session channel: how commands reach the gateway and frames come back.
 *
 * Two kinds implement it against the generated GatewayService descriptors:
 * {@link connectStreamSession}, the bidirectional `Connect` stream (Node:
 * gRPC over HTTP/2), and {@link subscribeSession}, the browser path
 * (`Subscribe`, a server stream of frames, plus one `SendCommand` call per
 * command; gRPC-Web can send nothing on a stream). Both answer every command
 * with the same `Reply`, matched by its request id. They differ in how a
 * heartbeat ping is confirmed (see {@link SessionChannel.ping}).
 *
 * @module
 */

import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { createClient, type Client, type Transport } from "@connectrpc/connect";
import { Code, ParleyError, UnavailableError, errorFromRpc, errorFromStatus } from "./errors.js";
import {
  ConnectRequestSchema,
  GatewayService,
  type ConnectRequest,
  type ConnectResponse,
  type Reply,
  type Welcome,
} from "./gen/parley/gateway/v1/gateway_pb.js";

/** How long a command (and the Welcome) may take before it counts as unanswered. */
export const COMMAND_TIMEOUT_MS = 10_000;

/** One command of the realtime protocol: a ConnectRequest's `command` oneof, e.g. `{ case: "join", value: {...} }`. */
export type Command = NonNullable<MessageInitShape<typeof ConnectRequestSchema>["command"]>;

/** What a session tells its owner. */
export interface SessionHandlers {
  /** Every frame that is not a reply, in order. */
  onFrame(frame: ConnectResponse): void;
  /** Once, when the session has ended: with the error it ended with, or null for a quiet end. */
  onEnd(ending: ParleyError | null): void;
}

/** What a {@link SessionFactory} gets to open a session. */
export interface SessionContext {
  transport: Transport;
  /** The access token the session opens with. */
  token: string;
  /** A valid access token now (for calls made later in the session's life). */
  freshToken(): Promise<string>;
  handlers: SessionHandlers;
  /** How long a command may go unanswered; {@link COMMAND_TIMEOUT_MS} when absent. */
  commandTimeoutMs?: number | undefined;
}

/** One realtime session with a gateway. */
export interface SessionChannel {
  /** Opens the session; resolves with its Welcome (the first frame). */
  open(): Promise<Welcome>;
  /** Sends one command; resolves with its Reply (failed or not), rejects only when no reply came. */
  send(command: Command): Promise<Reply>;
  /** Sends one command and resolves with its Reply; a failed Reply rejects with the typed error. */
  command(command: Command): Promise<Reply>;
  /**
   * Sends a heartbeat ping. Resolves once its Reply came on the session's
   * stream of frames, the proof that frames still arrive: on the `Connect`
   * stream every Reply does; on the browser path the gateway writes a ping's
   * Reply on the `Subscribe` stream too, and only that copy counts (the
   * `SendCommand` answer proves only that calls get through, not that a
   * stalled or half-open stream still carries events). Rejects like
   * {@link SessionChannel.send} when no reply came.
   */
  ping(): Promise<void>;
  /** Ends the session from this side with `reason` as its ending (e.g. the link is dead). */
  abort(reason: ParleyError): void;
  /** Ends the session quietly. */
  close(): void;
  /** The Welcome, once open. */
  readonly welcome: Welcome | null;
  /** Frames received so far (replies included): the heartbeat's sign of life. */
  readonly framesReceived: number;
  /** Whether the session has ended. */
  readonly ended: boolean;
}

/** Opens a session of one kind. */
export type SessionFactory = (context: SessionContext) => SessionChannel;

interface Pending {
  resolve(reply: Reply): void;
  reject(error: ParleyError): void;
  timer: ReturnType<typeof setTimeout>;
}

/** Request ids, replies matched to commands, frames handed on, and the ending: what both kinds share. */
abstract class SessionBase implements SessionChannel {
  welcome: Welcome | null = null;
  framesReceived = 0;
  ended = false;
  protected readonly gateway: Client<typeof GatewayService>;
  protected readonly context: SessionContext;
  protected readonly controller = new AbortController();
  protected abortReason: ParleyError | null = null;
  readonly #pending = new Map<string, Pending>();
  #nextId = 1;

  constructor(context: SessionContext) {
    this.context = context;
    this.gateway = createClient(GatewayService, context.transport);
  }

  abstract open(): Promise<Welcome>;

  /** Puts a request (with its request id) on the wire. */
  protected abstract transmit(request: ConnectRequest): void;

  send(command: Command): Promise<Reply> {
    if (this.ended || this.welcome === null) {
      return Promise.reject(new UnavailableError(Code.Unavailable, "", "the stream is closed"));
    }
    const requestId = `c${this.#nextId++}`;
    const timeoutMs = this.context.commandTimeoutMs ?? COMMAND_TIMEOUT_MS;
    const answer = new Promise<Reply>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(requestId);
        reject(
          new UnavailableError(
            Code.DeadlineExceeded,
            "",
            `no reply within ${timeoutMs / 1000}s; the command may or may not have taken effect`,
          ),
        );
      }, timeoutMs);
      this.#pending.set(requestId, { resolve, reject, timer });
    });
    this.transmit(create(ConnectRequestSchema, { requestId, command }));
    return answer;
  }

  async ping(): Promise<void> {
    await this.send({ case: "ping", value: {} });
  }

  async command(command: Command): Promise<Reply> {
    const reply = await this.send(command);
    if (reply.status !== undefined && reply.status.code !== 0) {
      throw errorFromStatus(reply.status);
    }
    return reply;
  }

  abort(reason: ParleyError): void {
    this.abortReason = this.abortReason ?? reason;
    this.controller.abort();
  }

  close(): void {
    this.controller.abort();
  }

  /** The first frame must be a Welcome. */
  protected welcomed(frame: ConnectResponse | undefined): Welcome {
    if (frame?.frame.case !== "welcome") {
      throw new ParleyError(Code.Internal, "", "the server did not start the stream with a Welcome");
    }
    this.welcome = frame.frame.value;
    this.framesReceived += 1;
    return this.welcome;
  }

  /** A received frame: replies settle their commands, anything else goes to the owner. */
  protected deliver(frame: ConnectResponse): void {
    this.framesReceived += 1;
    const kind = frame.frame;
    if (kind.case === "reply") {
      this.deliverReply(kind.value);
      return;
    }
    if (kind.case === "replies") {
      kind.value.replies.forEach((reply) => this.deliverReply(reply));
      return;
    }
    if (kind.case === "goAway" && kind.value.status !== undefined) {
      // The status the stream ends with follows; this says why.
      this.abortReason = this.abortReason ?? errorFromStatus(kind.value.status);
    }
    try {
      this.context.handlers.onFrame(frame);
    } catch (error) {
      console.error("parley: a frame handler failed", error);
    }
  }

  protected deliverReply(reply: Reply): void {
    const pending = this.#pending.get(reply.requestId);
    if (pending !== undefined) {
      this.#pending.delete(reply.requestId);
      clearTimeout(pending.timer);
      pending.resolve(reply);
    }
  }

  /** A command that will get no reply (its call failed). */
  /** Whether a command still waits for its reply (not answered, failed or timed out). */
  protected isPending(requestId: string): boolean {
    return this.#pending.has(requestId);
  }

  protected failCommand(requestId: string, error: ParleyError): void {
    const pending = this.#pending.get(requestId);
    if (pending !== undefined) {
      this.#pending.delete(requestId);
      clearTimeout(pending.timer);
      pending.reject(error);
    }
  }

  /** The session is over: unanswered commands fail, the owner is told once. */
  protected finish(ending: ParleyError | null): void {
    if (this.ended) {
      return;
    }
    this.ended = true;
    this.controller.abort();
    const failure = ending ?? new UnavailableError(Code.Unavailable, "", "the stream ended");
    for (const [requestId] of this.#pending) {
      this.failCommand(requestId, failure);
    }
    this.context.handlers.onEnd(ending);
  }

  /** The typed ending of a failed read: a local cancel is no error of the server's. */
  protected endingOf(error: unknown): ParleyError | null {
    const failure = errorFromRpc(error);
    if (failure.code === Code.Canceled && this.controller.signal.aborted) {
      return this.abortReason;
    }
    // A GoAway said why the stream ends; its status names the reason when the trailers do not.
    return failure.reason === "" && this.abortReason !== null ? this.abortReason : failure;
  }

  protected authorization(token: string): Record<string, string> {
    return { authorization: `Bearer ${token}` };
  }

  /** The first frame of `frames`, or a DEADLINE_EXCEEDED error when none comes in time. */
  protected async firstOf<T>(frames: AsyncIterator<T>): Promise<T | undefined> {
    const timeoutMs = this.context.commandTimeoutMs ?? COMMAND_TIMEOUT_MS;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new UnavailableError(Code.DeadlineExceeded, "", `no Welcome within ${timeoutMs / 1000}s`)),
        timeoutMs,
      );
    });
    try {
      const first = await Promise.race([frames.next(), timeout]);
      return first.done ? undefined : first.value;
    } catch (error) {
      this.controller.abort();
      throw errorFromRpc(error);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Reads `frames` to their end, then finishes. */
  protected async readAll<T>(
    frames: AsyncIterator<T>,
    frameOf: (item: T) => ConnectResponse | undefined,
  ): Promise<void> {
    let ending: ParleyError | null = null;
    try {
      for (;;) {
        const next = await frames.next();
        if (next.done) {
          break;
        }
        const frame = frameOf(next.value);
        if (frame !== undefined) {
          this.deliver(frame);
        }
      }
    } catch (error) {
      ending = this.endingOf(error);
    }
    this.finish(ending ?? this.abortReason);
  }
}

/** An async iterable fed by `push`, ending at `close`: the outgoing side of a bidirectional stream. */
class Outgoing<T> implements AsyncIterable<T> {
  readonly #items: T[] = [];
  #wake: (() => void) | null = null;
  #closed = false;

  push(item: T): void {
    if (!this.#closed) {
      this.#items.push(item);
      this.#wake?.();
    }
  }

  close(): void {
    this.#closed = true;
    this.#wake?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<T> {
    for (;;) {
      const item = this.#items.shift();
      if (item !== undefined) {
        yield item;
        continue;
      }
      if (this.#closed) {
        return;
      }
      await new Promise<void>((resolve) => {
        this.#wake = resolve;
      });
      this.#wake = null;
    }
  }
}

/** The bidirectional `Connect` stream: commands go out on it, frames and replies come back on it. */
class ConnectStreamSession extends SessionBase {
  readonly #outgoing = new Outgoing<ConnectRequest>();

  async open(): Promise<Welcome> {
    const responses = this.gateway.connect(this.#outgoing, {
      headers: this.authorization(this.context.token),
      signal: this.controller.signal,
    });
    const frames = responses[Symbol.asyncIterator]();
    let welcome: Welcome;
    try {
      welcome = this.welcomed(await this.firstOf(frames));
    } catch (error) {
      this.controller.abort();
      this.#outgoing.close();
      throw error;
    }
    void this.readAll(frames, (frame) => frame).finally(() => this.#outgoing.close());
    return welcome;
  }

  protected transmit(request: ConnectRequest): void {
    this.#outgoing.push(request);
  }
}

/**
 * The browser path: a `Subscribe` stream carries the frames; each command is a
 * `SendCommand` call, answered by that call, except a ping: the gateway
 * writes a ping's Reply on the stream too, and only that copy settles it (its
 * unary answer is dropped), so a heartbeat fails when the stream stalls even
 * while calls get through.
 */
class SubscribeSession extends SessionBase {
  async open(): Promise<Welcome> {
    const responses = this.gateway.subscribe(
      {},
      { headers: this.authorization(this.context.token), signal: this.controller.signal },
    );
    const frames = responses[Symbol.asyncIterator]();
    let welcome: Welcome;
    try {
      welcome = this.welcomed((await this.firstOf(frames))?.frame);
    } catch (error) {
      this.controller.abort();
      throw error;
    }
    void this.readAll(frames, (response) => response.frame);
    return welcome;
  }

  /** Per lane (a room, subjects, …), the last command sent: the next waits for its answer (concurrent calls keep
   * no order). */
  readonly #lanes = new Map<string, Promise<void>>();

  protected transmit(request: ConnectRequest): void {
    const lane = laneOf(request);
    if (lane === undefined) {
      void this.#call(request);
      return;
    }
    const sent = (this.#lanes.get(lane) ?? Promise.resolve()).then(() => this.#call(request));
    this.#lanes.set(lane, sent);
    void sent.finally(() => {
      if (this.#lanes.get(lane) === sent) {
        this.#lanes.delete(lane);
      }
    });
  }

  async #call(request: ConnectRequest): Promise<void> {
    if (!this.isPending(request.requestId)) {
      return; // its caller was told it timed out while it waited its turn: sending it now would surprise them
    }
    const sessionId = this.welcome?.sessionId ?? "";
    try {
      const token = await this.context.freshToken();
      const response = await this.gateway.sendCommand(
        { sessionId, command: request },
        {
          headers: this.authorization(token),
          signal: this.controller.signal,
          timeoutMs: this.context.commandTimeoutMs ?? COMMAND_TIMEOUT_MS,
        },
      );
      if (response.reply === undefined) {
        throw new ParleyError(Code.Internal, "", "SendCommand answered without a reply");
      }
      if (!CONFIRMED_ON_STREAM.has(request.command.case ?? "")) {
        this.deliverReply(response.reply);
      }
    } catch (error) {
      const failure = errorFromRpc(error);
      if (failure.reason === "SESSION_NOT_FOUND") {
        // The gateway no longer has this session: it is over now (a publish is sent again on the next one).
        const lost = new UnavailableError(Code.Unavailable, failure.reason, failure.message, failure.metadata);
        this.abort(lost);
        this.finish(lost);
        return;
      }
      this.failCommand(request.requestId, failure);
    }
  }
}

/** The commands whose Reply the gateway also writes on the `Subscribe` stream: that copy settles them. */
const CONFIRMED_ON_STREAM = new Set(["ping"]);
const ROOM_COMMANDS = new Set(["join", "leave", "subscribe", "unsubscribe", "publish", "edit", "delete", "ephemeral"]);
const SUBJECT_COMMANDS = new Set(["subjectSubscribe", "subjectUnsubscribe", "subjectPublish"]);
const DIRECT_COMMANDS = new Set(["sendDirect", "ackDirect"]);

/** The lane a command waits its turn in, as the gateway orders a Connect stream's commands (undefined: none). */
function laneOf(request: ConnectRequest): string | undefined {
  const command = request.command;
  if (command.case === undefined) {
    return undefined;
  }
  if (ROOM_COMMANDS.has(command.case) && command.value !== undefined && "roomId" in command.value) {
    return `room:${command.value.roomId}`;
  }
  if (SUBJECT_COMMANDS.has(command.case)) {
    return "subjects";
  }
  if (command.case === "refresh") {
    return "token";
  }
  return DIRECT_COMMANDS.has(command.case) ? "direct" : undefined;
}

/** The bidirectional `Connect` stream (needs a transport that can stream both ways: gRPC over HTTP/2). */
export const connectStreamSession: SessionFactory = (context) => new ConnectStreamSession(context);

/** The browser path: `Subscribe` plus one `SendCommand` per command (works over gRPC-Web). */
export const subscribeSession: SessionFactory = (context) => new SubscribeSession(context);
