/**
 * The client's connection: one realtime session at a time, its states,
 * reconnection with backoff, the heartbeat and the token keeper (the Python
 * client's `parley/connection.py`).
 *
 * States: `disconnected` (no session; one opens on first use),
 * `connecting`, `connected`, `reconnecting` (the session ended; backing off
 * before the next attempt) and `failed` (gave up after the attempt limit, or
 * the server refused the credentials). Each new session is made whole
 * before the state says `connected`: the hooks given to `onOpen` (rooms
 * joined again and resumed, subjects subscribed again) run first.
 *
 * @module
 */

import type { Auth } from "./auth.js";
import { Backoff, type HeartbeatOptions } from "./backoff.js";
import { Code, ParleyError, UnavailableError, errorFromRpc, isFinal } from "./errors.js";
import type { ConnectResponse, GoAway, Welcome } from "./gen/parley/gateway/v1/gateway_pb.js";
import type { ClientEvents } from "./events.js";
import type { Listeners, Logger } from "./listeners.js";
import type { SessionChannel, SessionFactory } from "./session.js";

/** Where the client's realtime connection is. */
export type ConnectionState = "disconnected" | "connecting" | "connected" | "reconnecting" | "failed";

/** A session that stayed up this long resets the backoff. */
export const STABLE_SESSION_MS = 10_000;
/** The token keeper hands the session a fresh token this long before its own expires ... */
export const TOKEN_KEEPER_LEAD_MS = 25_000;
/** ... and tries again this often when that fails. */
export const TOKEN_KEEPER_RETRY_MS = 2_000;
// setTimeout's longest delay.
const MAX_DELAY_MS = 2 ** 31 - 1;

/** A wait that ends early (quietly) when `signal` aborts. */
export type Sleep = (ms: number, signal: AbortSignal) => Promise<void>;

/** setTimeout as a promise, cut short by `signal`. */
export const sleep: Sleep = (ms, signal) =>
  new Promise<void>((resolve) => {
    if (signal.aborted) {
      resolve();
      return;
    }
    const done = (): void => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, Math.min(Math.max(0, ms), MAX_DELAY_MS));
    signal.addEventListener("abort", done);
  });

/** How the connection behaves. */
export interface ConnectionOptions {
  session: SessionFactory;
  reconnect: boolean;
  backoff: Backoff;
  heartbeat: Required<HeartbeatOptions>;
  logger: Logger;
  commandTimeoutMs?: number | undefined;
  sleep?: Sleep | undefined;
  random?: (() => number) | undefined;
  now?: (() => number) | undefined;
}

type OpenHook = (session: SessionChannel) => Promise<void>;
type EndHook = (error: ParleyError | null, reconnecting: boolean) => void;

/** Opens the realtime session, keeps it alive, and reopens it with backoff when it ends. */
export class Connection {
  /** The current state. */
  state: ConnectionState = "disconnected";
  /** Why the connection failed (state `failed`), or why it last went down. */
  failure: ParleyError | null = null;
  /** Reconnection pacing. */
  readonly backoff: Backoff;
  readonly #auth: Auth;
  readonly #listeners: Listeners<ClientEvents>;
  readonly #onFrame: (frame: ConnectResponse) => void;
  readonly #options: ConnectionOptions;
  readonly #sleep: Sleep;
  readonly #now: () => number;
  #current: SessionChannel | null = null;
  #opening: Promise<SessionChannel> | null = null;
  #reconnector: Promise<void> | null = null;
  #closing = false;
  // Aborted by close(): ends every wait of the reconnector.
  #lifetime = new AbortController();
  #keepers: AbortController | null = null;
  // Failed attempts since the last session opened (the attempt limit counts these) ...
  #failedInRow = 0;
  // ... and how far the backoff has grown: only a session that held for a while resets it.
  #backoffStep = 0;
  // A draining gateway's hint: the next reconnection waits this long instead of backing off.
  #drainWaitMs: number | null = null;
  #openedAt = 0;
  #stateWaiters: (() => void)[] = [];
  readonly #openHooks: OpenHook[] = [];
  readonly #endHooks: EndHook[] = [];
  readonly #waitingChecks: (() => boolean)[] = [];

  /** `onFrame` gets every frame that is not a reply. */
  constructor(
    auth: Auth,
    listeners: Listeners<ClientEvents>,
    onFrame: (frame: ConnectResponse) => void,
    options: ConnectionOptions,
  ) {
    this.#auth = auth;
    this.#listeners = listeners;
    this.#onFrame = onFrame;
    this.#options = options;
    this.backoff = options.backoff;
    this.#sleep = options.sleep ?? sleep;
    this.#now = options.now ?? Date.now;
  }

  // Hooks for the parts that live on a session

  /** `await hook(session)` on every new session before the state is `connected`, in registration order. */
  onOpen(hook: OpenHook): void {
    this.#openHooks.push(hook);
  }

  /** `hook(error, reconnecting)` when a session ends, or when no session is coming any more. */
  onEnd(hook: EndHook): void {
    this.#endHooks.push(hook);
  }

  /**
   * `check()` says whether something waits for a session (rooms to join
   * again): then failed attempts go on in the background.
   */
  onWaiting(check: () => boolean): void {
    this.#waitingChecks.push(check);
  }

  /** The session, when the state is `connected`. */
  get liveSession(): SessionChannel | null {
    return this.state === "connected" ? this.#current : null;
  }

  /** Whether `close()` is under way. */
  get closing(): boolean {
    return this.#closing;
  }

  // Opening

  /** The connected session: opened now when there is none, awaited while reconnecting. */
  async session(): Promise<SessionChannel> {
    for (;;) {
      if (this.state === "connected" && this.#current !== null) {
        return this.#current;
      }
      if (this.state === "reconnecting" || this.#opening !== null) {
        await this.#waitForConnection();
        continue;
      }
      this.#closing = false;
      try {
        return await this.#open("connecting");
      } catch (error) {
        const failure = errorFromRpc(error);
        this.#afterFailedOpen(failure);
        throw failure;
      }
    }
  }

  /** Opens a session in the background if there is none and none is on the way. */
  openSoon(): void {
    if (this.state === "disconnected" && !this.#closing) {
      this.#startReconnector(false);
    }
  }

  /** The server ends the session; a draining gateway says within how long to come back (spread at random). */
  goingAway(goAway: GoAway): void {
    if (goAway.reconnectWithinMs && this.#options.reconnect) {
      this.#drainWaitMs = (this.#options.random ?? Math.random)() * goAway.reconnectWithinMs;
    }
  }

  /** Ends the session without reopening it; a later `session()` opens a new one. */
  async close(): Promise<void> {
    this.#closing = true;
    this.#lifetime.abort();
    await this.#reconnector?.catch(() => undefined);
    await this.#opening?.catch(() => undefined);
    this.#stopKeepers();
    const session = this.#current;
    this.#current = null;
    if (session !== null) {
      session.close();
      this.#listeners.emit("disconnect", null);
    }
    this.#tellEnded(null, false);
    this.#drainWaitMs = null;
    this.#setState("disconnected");
    this.#closing = false;
    this.#lifetime = new AbortController();
  }

  #setState(state: ConnectionState, error: ParleyError | null = null): void {
    if (state === this.state) {
      return;
    }
    this.state = state;
    if (error !== null && state !== "connected") {
      this.failure = error;
    }
    const waiters = this.#stateWaiters;
    this.#stateWaiters = [];
    waiters.forEach((wake) => wake());
    this.#listeners.emit("state", state, error);
  }

  async #waitForConnection(): Promise<void> {
    while (this.state !== "connected") {
      const settled = this.state === "failed" || (this.state === "disconnected" && this.#opening === null);
      if (settled || this.#closing) {
        throw this.failure ?? new UnavailableError(Code.Unavailable, "", "not connected");
      }
      await new Promise<void>((resolve) => this.#stateWaiters.push(resolve));
    }
  }

  #afterFailedOpen(error: ParleyError): void {
    if (this.state !== "connecting") {
      return; // the session ended while it was set up: that ending decided
    }
    const waiting = this.#waitingChecks.some((check) => check());
    if (this.#options.reconnect && !this.#closing && !isFinal(error) && waiting) {
      this.#setState("reconnecting", error);
      this.#startReconnector(true);
    } else {
      this.#setState("disconnected", error);
    }
  }

  async #open(opening: ConnectionState): Promise<SessionChannel> {
    const attempt = this.#openSession(opening);
    this.#opening = attempt;
    try {
      return await attempt;
    } finally {
      if (this.#opening === attempt) {
        this.#opening = null;
      }
    }
  }

  async #openSession(opening: ConnectionState): Promise<SessionChannel> {
    this.#setState(opening);
    const token = await this.#auth.accessToken();
    const session: SessionChannel = this.#options.session({
      transport: this.#auth.transport,
      token,
      freshToken: () => this.#auth.accessToken(),
      commandTimeoutMs: this.#options.commandTimeoutMs,
      handlers: {
        onFrame: (frame) => this.#onFrame(frame),
        onEnd: (ending) => this.#ended(session, ending),
      },
    });
    const welcome = await session.open();
    this.#current = session;
    this.#openedAt = this.#now();
    try {
      for (const hook of this.#openHooks) {
        await hook(session);
      }
      if (this.#current !== session) {
        throw new UnavailableError(Code.Unavailable, "", "the stream ended while it was set up");
      }
    } catch (error) {
      if (this.#current === session) {
        // Set up in part (some rooms joined again): undone as if it had ended.
        this.#current = null;
        session.close();
        this.#tellEnded(errorFromRpc(error), this.#options.reconnect && !this.#closing);
      }
      throw error;
    }
    this.failure = null;
    this.#failedInRow = 0;
    this.#drainWaitMs = null;
    this.#startKeepers(session, welcome);
    this.#setState("connected");
    this.#listeners.emit("connect", welcome);
    return session;
  }

  // Ending

  #ended(session: SessionChannel, error: ParleyError | null): void {
    if (this.#current !== session) {
      return;
    }
    this.#stopKeepers();
    if (this.#now() - this.#openedAt >= STABLE_SESSION_MS) {
      this.#backoffStep = 0; // it held: the next reconnection starts with a short wait again
    }
    this.#current = null;
    const reconnecting = this.#options.reconnect && !this.#closing && !isFinal(error);
    this.#tellEnded(error, reconnecting);
    if (reconnecting) {
      this.#setState("reconnecting", error);
      this.#startReconnector(true);
    } else if (isFinal(error)) {
      this.failure = error;
      this.#setState("failed", error);
    } else {
      this.#setState("disconnected", error);
    }
    this.#listeners.emit("disconnect", error);
  }

  #tellEnded(error: ParleyError | null, reconnecting: boolean): void {
    for (const hook of this.#endHooks) {
      hook(error, reconnecting);
    }
  }

  // Reconnecting

  #startReconnector(firstDelay: boolean): void {
    if (this.#closing || this.#reconnector !== null) {
      return;
    }
    this.#reconnector = this.#reconnectLoop(firstDelay)
      .catch((error: unknown) => this.#options.logger.error("parley: reconnecting stopped", error))
      .finally(() => {
        this.#reconnector = null;
      });
  }

  async #reconnectLoop(firstDelay: boolean): Promise<void> {
    let delay = firstDelay;
    const lifetime = this.#lifetime.signal;
    while (!this.#closing) {
      if (delay) {
        const wait = this.#drainWaitMs ?? this.backoff.delayMs(this.#backoffStep, this.#options.random);
        this.#drainWaitMs = null;
        await this.#sleep(wait, lifetime);
        if (this.#closing || lifetime.aborted) {
          return;
        }
      }
      delay = true;
      if (this.state === "connected") {
        return;
      }
      if (this.#opening !== null) {
        await this.#opening.catch(() => undefined); // the application is opening one: its outcome decides
        continue;
      }
      let error: ParleyError;
      try {
        await this.#open(this.state === "reconnecting" ? "reconnecting" : "connecting");
        return;
      } catch (failure) {
        error = errorFromRpc(failure);
      }
      this.#failedInRow += 1;
      this.#backoffStep += 1;
      if (!this.#options.reconnect || isFinal(error) || this.backoff.givesUpAfter(this.#failedInRow)) {
        this.#giveUp(error);
        return;
      }
      this.#setState("reconnecting", error);
    }
  }

  #giveUp(error: ParleyError): void {
    this.#tellEnded(error, false);
    if (this.#options.reconnect || isFinal(error)) {
      this.failure = error;
      this.#setState("failed", error);
      this.#listeners.emit("error", error);
    } else {
      this.#setState("disconnected", error);
    }
  }

  // While connected

  #startKeepers(session: SessionChannel, welcome: Welcome): void {
    this.#stopKeepers();
    const keepers = new AbortController();
    this.#keepers = keepers;
    void this.#keepAlive(session, keepers.signal);
    void this.#keepTokenFresh(session, welcome, keepers.signal);
  }

  #stopKeepers(): void {
    this.#keepers?.abort();
    this.#keepers = null;
  }

  /**
   * Pings every `heartbeat.intervalMs`; the link is dead, and the session
   * ended, when a ping goes unconfirmed for `heartbeat.timeoutMs` with no
   * frame at all received meanwhile. A ping is confirmed as its session's
   * kind says ({@link SessionChannel.ping}): by a reply on the stream of
   * frames, so a browser-path session whose `Subscribe` stream stalls is
   * noticed even while its `SendCommand` calls are answered.
   */
  async #keepAlive(session: SessionChannel, stop: AbortSignal): Promise<void> {
    const { intervalMs, timeoutMs } = this.#options.heartbeat;
    while (this.#current === session && !stop.aborted) {
      await this.#sleep(intervalMs, stop);
      if (stop.aborted || this.#current !== session) {
        return;
      }
      const frames = session.framesReceived;
      const timedOut = this.#sleep(timeoutMs, stop).then(() => false);
      // A ping that failed (say its call did) is no answer either: the timeout decides.
      const confirmed = session.ping().then(
        () => true,
        () => timedOut,
      );
      const answered = await Promise.race([confirmed, timedOut]);
      if (stop.aborted || this.#current !== session) {
        return;
      }
      if (!answered && session.framesReceived === frames) {
        const dead = `no heartbeat reply within ${timeoutMs / 1000}s; the link is dead`;
        session.abort(new UnavailableError(Code.Unavailable, "", dead));
        return;
      }
    }
  }

  /**
   * Sends the session a RefreshCommand shortly before its token expires. The
   * expiry is on the server's clock; the Welcome's server time tells how far
   * this machine's clock is from it.
   */
  async #keepTokenFresh(session: SessionChannel, welcome: Welcome, stop: AbortSignal): Promise<void> {
    const serverAhead = Number(welcome.serverTimeMs) - this.#now();
    let expiresAt = Number(welcome.tokenExpireTimeMs); // 0: never
    while (expiresAt && this.#current === session && !stop.aborted) {
      const left = expiresAt - (this.#now() + serverAhead);
      // Halfway through a short-lived token, rather than refreshing at once again and again.
      await this.#sleep(Math.max(0, left - TOKEN_KEEPER_LEAD_MS, left / 2), stop);
      if (stop.aborted || this.#current !== session) {
        return;
      }
      try {
        const token = await this.#auth.tokenExpiringAfter(expiresAt);
        if (token === null) {
          return; // logged out, or the session was revoked: not the keeper's to log in again
        }
        const reply = await session.command({ case: "refresh", value: { accessToken: token } });
        expiresAt = reply.result.case === "refresh" ? Number(reply.result.value.tokenExpireTimeMs) : 0;
      } catch (error) {
        if (this.#current !== session) {
          return;
        }
        this.#options.logger.warn("parley: could not hand the stream a fresh token", error);
        await this.#sleep(TOKEN_KEEPER_RETRY_MS, stop);
      }
    }
  }
}
