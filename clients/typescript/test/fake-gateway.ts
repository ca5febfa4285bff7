// An in-process fake of Parley's IdentityService and GatewayService (Connect, Subscribe, SendCommand),
// served through Connect's router transport: the client's sessions run against it without a server.
// As the gateway does, it writes a ping's Reply on the Subscribe stream too, after SendCommand answers it.
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createRouterTransport, type HandlerContext, type Transport } from "@connectrpc/connect";
import { ErrorInfoSchema } from "../src/gen/google/rpc/error_details_pb.js";
import {
  ConnectResponseSchema,
  GatewayService,
  ReplySchema,
  type ConnectRequest,
  type ConnectResponse,
  type Reply,
} from "../src/gen/parley/gateway/v1/gateway_pb.js";
import { IdentityService, type RegisterUserRequest } from "../src/gen/parley/identity/v1/identity_pb.js";
import type { Sleep } from "../src/connection.js";
import { sleep as realSleep } from "../src/connection.js";

export type FrameInit = MessageInitShape<typeof ConnectResponseSchema>;
export type ReplyInit = MessageInitShape<typeof ReplySchema>;
/** Answers one command; null: the command gets no answer (it is lost). */
export type CommandHandler = (request: ConnectRequest, session: FakeSession) => ReplyInit | null;

/** Frames for one session's stream: pushed by the test, ended (with an error or quietly) by it. */
export class FakeSession {
  readonly id: string;
  /** Which RPC opened it. */
  readonly kind: "subscribe" | "connect";
  readonly authorization: string;
  readonly commands: ConnectRequest[] = [];
  ended = false;
  /** A stalled (or half-open) stream: it stays open but carries nothing pushed from now on. */
  stalled = false;
  readonly #frames: ConnectResponse[] = [];
  #error: Error | null = null;
  #wake: (() => void) | null = null;

  constructor(id: string, kind: "subscribe" | "connect", authorization: string) {
    this.id = id;
    this.kind = kind;
    this.authorization = authorization;
  }

  push(frame: FrameInit): void {
    if (this.stalled) {
      return;
    }
    this.#frames.push(create(ConnectResponseSchema, frame));
    this.#wakeUp();
  }

  /** Ends the stream: with `error` as the server's status, or quietly. */
  end(error: Error | null = null): void {
    this.ended = true;
    this.#error = error;
    this.#wakeUp();
  }

  async *stream(signal: AbortSignal): AsyncGenerator<ConnectResponse> {
    signal.addEventListener("abort", () => this.end());
    for (;;) {
      const frame = this.#frames.shift();
      if (frame !== undefined) {
        yield frame;
        continue;
      }
      if (this.ended) {
        if (this.#error !== null) {
          throw this.#error;
        }
        return;
      }
      await new Promise<void>((resolve) => {
        this.#wake = resolve;
      });
    }
  }

  #wakeUp(): void {
    const wake = this.#wake;
    this.#wake = null;
    wake?.();
  }
}

const OK = { code: 0 };

/** The answer a gateway gives when nothing else is asked for. */
export function defaultAnswer(request: ConnectRequest): ReplyInit {
  const command = request.command;
  switch (command.case) {
    case "join":
      return {
        status: OK,
        result: {
          case: "join",
          value: {
            room: { roomId: command.value.roomId, name: command.value.roomId },
            subscriptions: command.value.subscriptions.length > 0 ? command.value.subscriptions : ["*"],
            epoch: "e1",
            lastSeq: 0n,
            recovered: command.value.resume,
          },
        },
      };
    case "subscribe":
    case "unsubscribe":
      return { status: OK, result: { case: "subscription", value: { subscriptions: command.value.events } } };
    case "refresh":
      return { status: OK, result: { case: "refresh", value: { tokenExpireTimeMs: BigInt(Date.now() + 3_600_000) } } };
    default:
      return { status: OK };
  }
}

/** The fake server: every session opened, and every command with its session. */
export class FakeGateway {
  readonly sessions: FakeSession[] = [];
  readonly transport: Transport;
  logins = 0;
  refreshes = 0;
  /** How long the access tokens it issues last. */
  tokenTtlMs = 3_600_000;
  readonly registrations: RegisterUserRequest[] = [];
  /** When set, RegisterUser and Login fail with these. */
  refuseRegistration: Error | null = null;
  refuseLogin: Error | null = null;
  /** How long each SendCommand takes to answer (the browser path). */
  answerDelayMs = 0;
  /** Answers commands; the default answers as {@link defaultAnswer}. */
  answer: CommandHandler = (request) => defaultAnswer(request);
  /** When set, opening a session fails with this error (then it is cleared if `once`). */
  refuseOpen: { error: Error; times: number } | null = null;
  readonly #waiters: (() => void)[] = [];

  constructor() {
    const open = (context: HandlerContext): FakeSession => this.#open(context, "subscribe");
    this.transport = createRouterTransport(({ service }) => {
      service(IdentityService, {
        registerUser: (request) => {
          this.registrations.push(request);
          if (this.refuseRegistration !== null) {
            throw this.refuseRegistration;
          }
          return { user: { userId: "u1", username: request.username }, device: { deviceId: "d1" } };
        },
        createLoginChallenge: () => ({ challengeId: "ch", nonce: new Uint8Array(32), userId: "u1" }),
        login: () => {
          if (this.refuseLogin !== null) {
            throw this.refuseLogin;
          }
          this.logins += 1;
          return { userId: "u1", deviceId: "d1", session: this.#newSession(`token${this.logins}`) };
        },
        refreshToken: () => {
          this.refreshes += 1;
          return { session: this.#newSession(`token-refreshed${this.refreshes}`) };
        },
        logout: () => ({ revokedSessions: 1 }),
      });
      service(GatewayService, {
        subscribe: async function* (this: void, _request, context) {
          for await (const frame of open(context).stream(context.signal)) {
            yield { frame };
          }
        },
        sendCommand: async (request, context) => {
          const session = this.sessions.find((s) => s.id === request.sessionId);
          if (session === undefined || session.ended || request.command === undefined) {
            throw sessionNotFound(request.sessionId);
          }
          const reply = this.#answer(session, request.command, context);
          if (this.answerDelayMs > 0) {
            await new Promise((resolve) => setTimeout(resolve, this.answerDelayMs));
          }
          if (reply === null) {
            return new Promise(() => undefined); // never answered
          }
          if (request.command.command.case === "ping") {
            queueMicrotask(() => session.push({ frame: { case: "reply", value: reply } }));
          }
          return { reply };
        },
        connect: (requests, context) => {
          const session = this.#open(context, "connect");
          void (async () => {
            for await (const request of requests) {
              const reply = this.#answer(session, request, context);
              if (reply !== null) {
                session.push({ frame: { case: "reply", value: reply } });
              }
            }
          })().catch(() => undefined);
          return session.stream(context.signal);
        },
      });
    });
  }

  /** The session opened `count`-th (from 1), once it is. */
  async session(count: number): Promise<FakeSession> {
    while (this.sessions.length < count) {
      await new Promise<void>((resolve) => this.#waiters.push(resolve));
    }
    return this.sessions[count - 1]!;
  }

  /** Every command of every session, in order. */
  get commands(): ConnectRequest[] {
    return this.sessions.flatMap((session) => session.commands);
  }

  #open(context: HandlerContext, kind: "subscribe" | "connect"): FakeSession {
    if (this.refuseOpen !== null && this.refuseOpen.times > 0) {
      this.refuseOpen.times -= 1;
      throw this.refuseOpen.error;
    }
    const authorization = context.requestHeader.get("authorization") ?? "";
    const session = new FakeSession(`s${this.sessions.length + 1}`, kind, authorization);
    this.sessions.push(session);
    session.push({
      frame: {
        case: "welcome",
        value: {
          sessionId: session.id,
          userId: "u1",
          deviceId: "d1",
          serverTimeMs: BigInt(Date.now()),
          tokenExpireTimeMs: BigInt(Date.now() + this.tokenTtlMs),
        },
      },
    });
    this.#waiters.splice(0).forEach((wake) => wake());
    return session;
  }

  #newSession(accessToken: string) {
    return {
      accessToken,
      refreshToken: `refresh-${accessToken}`,
      accessTokenExpireTime: timestampFromMs(Date.now() + this.tokenTtlMs),
    };
  }

  #answer(session: FakeSession, request: ConnectRequest, context: HandlerContext): Reply | null {
    session.commands.push(request);
    const authorization = context.requestHeader.get("authorization");
    if (!authorization?.startsWith("Bearer token")) {
      throw new ConnectError("no token", Code.Unauthenticated);
    }
    const answer = this.answer(request, session);
    return answer === null ? null : create(ReplySchema, { ...answer, requestId: request.requestId });
  }
}

function sessionNotFound(sessionId: string): ConnectError {
  return new ConnectError(`no session ${sessionId}`, Code.NotFound, undefined, [
    { desc: ErrorInfoSchema, value: { reason: "SESSION_NOT_FOUND", domain: "parley.dev", metadata: {} } },
  ]);
}

/** An event frame of one room. */
export function eventsFrame(roomId: string, seqs: number[], epoch = "e1"): FrameInit {
  return {
    frame: {
      case: "events",
      value: {
        events: seqs.map((seq) => ({
          roomId,
          event: "message",
          seq: BigInt(seq),
          epoch,
          sender: "u2",
          handle: `h${seq}`,
          payload: { kind: { case: "numberValue", value: seq } },
        })),
      },
    },
  };
}

/** Waits that record their length and do not wait (long ones, like the heartbeat's, do). */
export function recordingSleep(delays: number[]): Sleep {
  return (ms, signal) => {
    if (ms >= 60_000) {
      return realSleep(ms, signal);
    }
    delays.push(ms);
    return realSleep(0, signal);
  };
}

/** Resolves once `predicate()` holds (checked every few milliseconds), or fails after `withinMs`. */
export async function until(predicate: () => boolean, withinMs = 5_000): Promise<void> {
  const deadline = Date.now() + withinMs;
  while (!predicate()) {
    if (Date.now() > deadline) {
      throw new Error("condition not met in time");
    }
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}
