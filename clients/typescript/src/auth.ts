/**
 * A device's session: its keys, registration, login by signed challenge,
 * access tokens refreshed before they expire, and unary calls that carry
 * them. The same steps as the Python client's `parley/auth.py`.
 *
 * @module
 */

import { create } from "@bufbuild/protobuf";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { createClient, type CallOptions, type Client, type Transport } from "@connectrpc/connect";
import {
  AlreadyExistsError,
  Code,
  NotFoundError,
  ParleyError,
  UnauthenticatedError,
  ValidationError,
  errorFromRpc,
} from "./errors.js";
import { DeviceKeysSchema, IdentityService, type Session } from "./gen/parley/identity/v1/identity_pb.js";
import { DeviceIdentity } from "./identity.js";
import type { KeyStore } from "./keystore.js";

/** Refresh the access token when it has less than this long left. */
export const REFRESH_MARGIN_MS = 30_000;
/** How long a unary call may take by default. */
export const DEFAULT_TIMEOUT_MS = 10_000;

// Failures that say nothing about whether the server acted (when they carry no reason).
const OUTCOME_UNKNOWN: ReadonlySet<Code> = new Set([
  Code.Unavailable,
  Code.DeadlineExceeded,
  Code.Canceled,
  Code.Unknown,
  Code.Internal,
]);
// Words of a call that never left this machine.
const NEVER_CONNECTED = ["ECONNREFUSED", "ENOTFOUND", "EAI_AGAIN"];

/** Whether the server may have acted on a call that failed (the connection broke after it went out). */
export function outcomeUnknown(error: ParleyError): boolean {
  if (!OUTCOME_UNKNOWN.has(error.code) || error.reason) {
    return false;
  }
  return !NEVER_CONNECTED.some((words) => error.message.includes(words));
}

/** What {@link Auth} needs. */
export interface AuthOptions {
  /** The account to register or log in as; needed when there is no key file yet. */
  username?: string | undefined;
  /** Keys to use instead of a key store. */
  identity?: DeviceIdentity | undefined;
  /** Where the device's key file lives; without one, keys live in memory only. */
  keyStore?: KeyStore | undefined;
  /** A label for a newly created device. */
  deviceName?: string | undefined;
  /** How long each unary call may take, in milliseconds. */
  timeoutMs?: number | undefined;
  /** The clock, in milliseconds since the epoch (tests). */
  now?: (() => number) | undefined;
}

/** Runs one piece of work at a time, in order of arrival. */
class Serial {
  #tail: Promise<unknown> = Promise.resolve();

  run<T>(work: () => Promise<T>): Promise<T> {
    const result = this.#tail.then(work, work);
    this.#tail = result.catch(() => undefined);
    return result;
  }
}

/** Owns the device identity and the session (access and refresh tokens). */
export class Auth {
  /** The generated IdentityService client on this client's transport. */
  readonly identityClient: Client<typeof IdentityService>;
  /** How long each unary call may take, in milliseconds. */
  readonly timeoutMs: number;
  readonly #username: string | undefined;
  readonly #keyStore: KeyStore | undefined;
  readonly #deviceName: string;
  readonly #now: () => number;
  readonly #tokens = new Serial();
  readonly #transport: Transport;
  #identity: DeviceIdentity | undefined;
  #session: Session | null = null;
  // The RefreshToken exchange under way: a refresh token is spent once, so a second caller waits for it.
  #refreshing: Promise<Session> | null = null;

  /** Nothing is sent until a call needs the server. */
  constructor(transport: Transport, options: AuthOptions = {}) {
    this.#transport = transport;
    this.identityClient = createClient(IdentityService, transport);
    this.timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.#username = options.username;
    this.#identity = options.identity;
    this.#keyStore = options.keyStore;
    this.#deviceName = options.deviceName ?? "";
    this.#now = options.now ?? Date.now;
  }

  /** The transport unary calls and streams go through. */
  get transport(): Transport {
    return this.#transport;
  }

  /** This device's keys, once loaded or created (see {@link Auth.identity}). */
  get currentIdentity(): DeviceIdentity | undefined {
    return this.#identity;
  }

  /** The current session, if logged in. */
  get session(): Session | null {
    return this.#session;
  }

  /**
   * One unary call with this device's token (unless `authenticated` is
   * false), its failure thrown as the typed ParleyError.
   */
  async call<T>(method: (options: CallOptions) => Promise<T>, authenticated = true): Promise<T> {
    const options: CallOptions = { timeoutMs: this.timeoutMs };
    if (authenticated) {
      options.headers = { authorization: `Bearer ${await this.accessToken()}` };
    }
    try {
      return await method(options);
    } catch (error) {
      throw errorFromRpc(error);
    }
  }

  // Identity and registration

  /**
   * This device's keys: given, read from the key store, the pending keys of
   * an unfinished registration under the same name, or new ones.
   */
  async identity(): Promise<DeviceIdentity> {
    if (this.#identity !== undefined) {
      return this.#identity;
    }
    const stored = await this.#read("current");
    if (stored !== null && stored.registered) {
      if (this.#username && this.#username !== stored.username) {
        throw this.#belongsTo(stored.username, this.#username);
      }
      this.#identity = stored;
      return stored;
    }
    if (stored !== null) {
      // A key file of an unfinished registration: it becomes the pending one.
      await this.#keyStore?.write("pending", stored.toKeyFileText());
      await this.#keyStore?.remove("current");
    }
    if (!this.#username) {
      throw new ValidationError(Code.InvalidArgument, "", "no key file yet: give a username to register");
    }
    const pending = await this.#read("pending");
    this.#identity =
      pending !== null && pending.username === this.#username
        ? pending // a rerun after an unknown outcome: the same keys, so the server knows them
        : DeviceIdentity.generate(this.#username, this.#deviceName);
    return this.#identity;
  }

  /** Registers the user with this device as its first device, unless it is registered. */
  async ensureRegistered(): Promise<void> {
    const identity = await this.identity();
    if (identity.registered) {
      return;
    }
    await this.#settleOtherPending(identity);
    try {
      await this.register();
    } catch (error) {
      if (error instanceof AlreadyExistsError) {
        await this.#recoverRegistration(identity);
        return;
      }
      if (error instanceof ParleyError && !outcomeUnknown(error)) {
        await this.#forgetPending();
      }
      throw error;
    }
  }

  /** Registers the user and this device (its keys wait in the pending slot until the server answers). */
  async register(): Promise<void> {
    const identity = await this.identity();
    await this.#keyStore?.write("pending", identity.toKeyFileText());
    const device = create(DeviceKeysSchema, await identity.certify());
    const response = await this.call(
      (options) =>
        this.identityClient.registerUser(
          { username: identity.username, userSigningKey: identity.userPublicKey, device },
          options,
        ),
      false,
    );
    identity.userId = response.user?.userId ?? "";
    await this.#accepted(identity);
  }

  /** An unfinished registration under another name: adopted if the server has it, else forgotten. */
  async #settleOtherPending(identity: DeviceIdentity): Promise<void> {
    const pending = await this.#read("pending");
    if (pending === null || pending.username === identity.username) {
      return;
    }
    const probe = new Auth(this.#transport, { identity: pending, timeoutMs: this.timeoutMs });
    try {
      await probe.login();
    } catch (error) {
      if (error instanceof NotFoundError || error instanceof UnauthenticatedError) {
        await this.#keyStore?.remove("pending");
        return;
      }
      throw error;
    }
    this.#identity = pending;
    await this.#accepted(pending);
    throw this.#belongsTo(`${pending.username} (registered earlier)`, identity.username);
  }

  /** The name is taken, perhaps by an earlier attempt of ours whose reply was lost: if we can log in, it happened. */
  async #recoverRegistration(identity: DeviceIdentity): Promise<void> {
    try {
      await this.login();
    } catch (error) {
      if (error instanceof NotFoundError || error instanceof UnauthenticatedError) {
        await this.#forgetPending();
        throw new AlreadyExistsError(
          Code.AlreadyExists,
          "USERNAME_TAKEN",
          `username ${JSON.stringify(identity.username)} is taken`,
        );
      }
      throw error;
    }
    await this.#accepted(identity);
  }

  async #accepted(identity: DeviceIdentity): Promise<void> {
    identity.registered = true;
    await this.#keyStore?.write("current", identity.toKeyFileText());
    await this.#keyStore?.remove("pending");
  }

  async #forgetPending(): Promise<void> {
    if (this.#keyStore !== undefined && (await this.#keyStore.read("current")) === null) {
      await this.#keyStore.remove("pending");
      this.#identity = undefined;
    }
  }

  async #read(slot: "current" | "pending"): Promise<DeviceIdentity | null> {
    const text = await this.#keyStore?.read(slot);
    return text ? DeviceIdentity.fromKeyFileText(text) : null;
  }

  #belongsTo(owner: string, wanted: string): ValidationError {
    const where = this.#keyStore?.location ?? "the key file";
    return new ValidationError(Code.InvalidArgument, "", `key file ${where} belongs to ${owner}, not ${wanted}`);
  }

  // Session

  /** Logs in by signing a fresh challenge with the device key. */
  async login(): Promise<Session> {
    const identity = await this.identity();
    const challenge = await this.call(
      (options) =>
        this.identityClient.createLoginChallenge(
          { username: identity.username, deviceId: identity.deviceId },
          options,
        ),
      false,
    );
    const signature = identity.signChallenge(challenge.challengeId, challenge.nonce, challenge.userId);
    const response = await this.call(
      (options) => this.identityClient.login({ challengeId: challenge.challengeId, signature }, options),
      false,
    );
    if (identity.userId !== response.userId) {
      identity.userId = response.userId;
      if (identity.registered) {
        await this.#keyStore?.write("current", identity.toKeyFileText());
      }
    }
    if (response.session === undefined) {
      throw new ParleyError(Code.Internal, "", "the server's login answer holds no session");
    }
    this.#session = response.session;
    return response.session;
  }

  /** A valid access token, refreshed (or logged in again) when close to expiry. */
  accessToken(): Promise<string> {
    return this.#tokens.run(async () => {
      if (this.#session !== null && expiresAt(this.#session) - this.#now() < REFRESH_MARGIN_MS) {
        try {
          await this.#refresh();
        } catch (error) {
          if (!(error instanceof UnauthenticatedError)) {
            throw error;
          }
          this.#session = null; // revoked or expired: prove the device key again
        }
      }
      const session = this.#session ?? (await this.login());
      return session.accessToken;
    });
  }

  /**
   * An access token that outlives `serverTimeMs` (the server's clock),
   * refreshed if the current one does not; null when there is no session
   * to refresh (this never logs in).
   */
  tokenExpiringAfter(serverTimeMs: number): Promise<string | null> {
    return this.#tokens.run(async () => {
      if (this.#session === null) {
        return null;
      }
      if (expiresAt(this.#session) <= serverTimeMs) {
        try {
          await this.#refresh();
        } catch (error) {
          if (error instanceof UnauthenticatedError) {
            return null;
          }
          throw error;
        }
      }
      return this.#session?.accessToken ?? null;
    });
  }

  /** Revokes this device's sessions on the server; returns how many. */
  async logout(): Promise<number> {
    const response = await this.call((options) => this.identityClient.logout({}, options));
    this.#session = null;
    return response.revokedSessions;
  }

  /** Exchanges the refresh token for a new session, one exchange at a time. */
  async #refresh(): Promise<void> {
    if (this.#refreshing === null) {
      const spent = this.#session;
      if (spent === null) {
        return;
      }
      this.#refreshing = this.#exchange(spent).finally(() => {
        this.#refreshing = null;
      });
    }
    await this.#refreshing;
  }

  async #exchange(spent: Session): Promise<Session> {
    const response = await this.call(
      (options) => this.identityClient.refreshToken({ refreshToken: spent.refreshToken }, options),
      false,
    );
    if (response.session === undefined) {
      throw new ParleyError(Code.Internal, "", "the server's refresh answer holds no session");
    }
    if (this.#session === spent) {
      this.#session = response.session; // not logged out (or in again) meanwhile
    }
    return response.session;
  }
}

function expiresAt(session: Session): number {
  const expiry = session.accessTokenExpireTime;
  return expiry === undefined ? Number.POSITIVE_INFINITY : timestampMs(expiry);
}
