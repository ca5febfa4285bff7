/**
 * A device's keys, the structures it signs, and the key file that keeps
 * them: the same bytes and the same JSON as the Python client
 * (`parley/device_identity.py`, `parley/crypto/identity.py`), so one key
 * file serves both clients.
 *
 * Ed25519 signing uses `@noble/ed25519` (with SHA-512 from `@noble/hashes`);
 * the device's X25519 key uses the platform's WebCrypto (Node 20, and
 * current browsers), and only to derive its public half when a device is
 * certified.
 *
 * @module
 */

import * as ed from "@noble/ed25519";
import { blake2b } from "@noble/hashes/blake2.js";
import { sha512 } from "@noble/hashes/sha2.js";
import { fromBase64, labelled, randomBytes, toBase64, toHex, utf8 } from "./encoding.js";

ed.hashes.sha512 = sha512;

/** The version of the key file format this client reads and writes. */
export const KEY_FILE_VERSION = 1;

/** Bytes of every Ed25519 and X25519 key Parley uses. */
export const KEY_BYTES = 32;

/** A key file's content, as the Python client writes it (base64 seeds, snake_case names). */
export interface KeyFileJson {
  version: number;
  username: string;
  user_id: string;
  registered: boolean;
  display_name: string;
  device_signing_seed: string;
  device_dh_private: string;
  user_signing_seed: string | null;
}

/** The public keys of a device and the user key's certificate over them (a `DeviceKeys` message's fields). */
export interface CertifiedDeviceKeys {
  signingKey: Uint8Array;
  dhKey: Uint8Array;
  certificate: Uint8Array;
  displayName: string;
}

/** `"d"` + 32 hex digits of BLAKE2b-128 of the device's Ed25519 public key. */
export function deviceIdFor(deviceSigningKey: Uint8Array): string {
  return "d" + toHex(blake2b(deviceSigningKey, { dkLen: 16 }));
}

/** What a user key signs to vouch for one device's keys. */
export function deviceCertificateBytes(
  userSigningKey: Uint8Array,
  deviceSigningKey: Uint8Array,
  deviceDhKey: Uint8Array,
): Uint8Array {
  return labelled("device-certificate", userSigningKey, deviceSigningKey, deviceDhKey);
}

/** What a device signs to log in. */
export function loginChallengeBytes(
  challengeId: string,
  nonce: Uint8Array,
  userId: string,
  deviceId: string,
): Uint8Array {
  return labelled("login-challenge", utf8(challengeId), nonce, utf8(userId), utf8(deviceId));
}

// An X25519 private key in PKCS #8 (RFC 8410) is this prefix and the 32 raw bytes.
const X25519_PKCS8_PREFIX = new Uint8Array([
  0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x04, 0x22, 0x04, 0x20,
]);

/** The X25519 public key of a raw 32-byte private key (clamped as X25519 does), through WebCrypto. */
export async function x25519PublicKey(privateKey: Uint8Array): Promise<Uint8Array> {
  checkKeyLength("X25519 private key", privateKey);
  const subtle = globalThis.crypto.subtle;
  const pkcs8 = new Uint8Array(X25519_PKCS8_PREFIX.length + KEY_BYTES);
  pkcs8.set(X25519_PKCS8_PREFIX);
  pkcs8.set(privateKey, X25519_PKCS8_PREFIX.length);
  const key = await subtle.importKey("pkcs8", pkcs8, { name: "X25519" }, true, ["deriveBits"]);
  const jwk = await subtle.exportKey("jwk", key);
  if (jwk.x === undefined) {
    throw new Error("this platform's WebCrypto did not export the X25519 public key");
  }
  return fromBase64(jwk.x);
}

function checkKeyLength(what: string, key: Uint8Array): void {
  if (key.length !== KEY_BYTES) {
    throw new RangeError(`${what}: ${KEY_BYTES} bytes expected, got ${key.length}`);
  }
}

/** What {@link DeviceIdentity.create} takes: the secrets, and who they belong to. */
export interface DeviceIdentityInit {
  username: string;
  /** The 32-byte Ed25519 seed of the device's signing key. */
  deviceSigningSeed: Uint8Array;
  /** The 32-byte X25519 private key of the device. */
  deviceDhPrivate: Uint8Array;
  /** The 32-byte Ed25519 seed of the user key; only the user's first device holds it. */
  userSigningSeed?: Uint8Array | null;
  userId?: string;
  displayName?: string;
  registered?: boolean;
}

/**
 * The secrets of one device, plus the user key when this device holds it.
 *
 * The user signing key certifies devices; the first device of a user holds
 * it. `userId` and `registered` change once the server has accepted the
 * registration.
 */
export class DeviceIdentity {
  /** The account's name. */
  readonly username: string;
  /** A label for this device ("laptop"). */
  readonly displayName: string;
  /** The server's id for the user; `""` until registered or logged in. */
  userId: string;
  /** Whether the server has accepted this device's registration. */
  registered: boolean;
  readonly #deviceSigningSeed: Uint8Array;
  readonly #deviceDhPrivate: Uint8Array;
  readonly #userSigningSeed: Uint8Array | null;

  private constructor(init: DeviceIdentityInit) {
    checkKeyLength("device signing seed", init.deviceSigningSeed);
    checkKeyLength("device DH private key", init.deviceDhPrivate);
    if (init.userSigningSeed) {
      checkKeyLength("user signing seed", init.userSigningSeed);
    }
    this.username = init.username;
    this.displayName = init.displayName ?? "";
    this.userId = init.userId ?? "";
    this.registered = init.registered ?? false;
    this.#deviceSigningSeed = Uint8Array.from(init.deviceSigningSeed);
    this.#deviceDhPrivate = Uint8Array.from(init.deviceDhPrivate);
    this.#userSigningSeed = init.userSigningSeed ? Uint8Array.from(init.userSigningSeed) : null;
  }

  /** An identity from given secrets (tests, or keys kept elsewhere). */
  static create(init: DeviceIdentityInit): DeviceIdentity {
    return new DeviceIdentity(init);
  }

  /** Fresh user and device keys for a new account. */
  static generate(username: string, displayName = ""): DeviceIdentity {
    return new DeviceIdentity({
      username,
      displayName,
      deviceSigningSeed: ed.utils.randomSecretKey(),
      deviceDhPrivate: randomBytes(KEY_BYTES),
      userSigningSeed: ed.utils.randomSecretKey(),
    });
  }

  /** The device's id: derived from its signing key. */
  get deviceId(): string {
    return deviceIdFor(this.deviceSigningKey);
  }

  /** The device's Ed25519 public key. */
  get deviceSigningKey(): Uint8Array {
    return ed.getPublicKey(this.#deviceSigningSeed);
  }

  /** Whether this device holds the user signing key (and can certify devices). */
  get holdsUserKey(): boolean {
    return this.#userSigningSeed !== null;
  }

  /** The user's Ed25519 public key; throws when this device does not hold the user key. */
  get userPublicKey(): Uint8Array {
    return ed.getPublicKey(this.#requireUserSeed());
  }

  /** The device's X25519 public key. */
  deviceDhKey(): Promise<Uint8Array> {
    return x25519PublicKey(this.#deviceDhPrivate);
  }

  /** The public keys of `device` (this one by default), certified with this device's user key. */
  async certify(device: DeviceIdentity = this): Promise<CertifiedDeviceKeys> {
    const userSeed = this.#requireUserSeed();
    const signingKey = device.deviceSigningKey;
    const dhKey = await device.deviceDhKey();
    const message = deviceCertificateBytes(this.userPublicKey, signingKey, dhKey);
    return { signingKey, dhKey, certificate: ed.sign(message, userSeed), displayName: device.displayName };
  }

  /** The device's signature over a login challenge. */
  signChallenge(challengeId: string, nonce: Uint8Array, userId: string): Uint8Array {
    return ed.sign(loginChallengeBytes(challengeId, nonce, userId, this.deviceId), this.#deviceSigningSeed);
  }

  /** The key file's content, exactly as the Python client writes it. */
  toJson(): KeyFileJson {
    return {
      version: KEY_FILE_VERSION,
      username: this.username,
      user_id: this.userId,
      registered: this.registered,
      display_name: this.displayName,
      device_signing_seed: toBase64(this.#deviceSigningSeed),
      device_dh_private: toBase64(this.#deviceDhPrivate),
      user_signing_seed: this.#userSigningSeed ? toBase64(this.#userSigningSeed) : null,
    };
  }

  /** The key file's text: its JSON, indented as the Python client writes it. */
  toKeyFileText(): string {
    return JSON.stringify(this.toJson(), null, 2);
  }

  /** An identity from a key file's content; throws on another version or a malformed file. */
  static fromJson(data: unknown): DeviceIdentity {
    if (typeof data !== "object" || data === null) {
      throw new TypeError("a key file holds a JSON object");
    }
    const fields = data as Partial<Record<keyof KeyFileJson, unknown>>;
    if (fields.version !== KEY_FILE_VERSION) {
      throw new Error(`unsupported key file version ${JSON.stringify(fields.version ?? null)}`);
    }
    return new DeviceIdentity({
      username: requireString(fields, "username"),
      deviceSigningSeed: fromBase64(requireString(fields, "device_signing_seed")),
      deviceDhPrivate: fromBase64(requireString(fields, "device_dh_private")),
      userSigningSeed: typeof fields.user_signing_seed === "string" ? fromBase64(fields.user_signing_seed) : null,
      userId: typeof fields.user_id === "string" ? fields.user_id : "",
      displayName: typeof fields.display_name === "string" ? fields.display_name : "",
      registered: Boolean(fields.registered),
    });
  }

  /** An identity from a key file's text. */
  static fromKeyFileText(text: string): DeviceIdentity {
    return DeviceIdentity.fromJson(JSON.parse(text));
  }

  #requireUserSeed(): Uint8Array {
    if (this.#userSigningSeed === null) {
      throw new Error("this device does not hold the user signing key");
    }
    return this.#userSigningSeed;
  }
}

function requireString(fields: Partial<Record<keyof KeyFileJson, unknown>>, name: keyof KeyFileJson): string {
  const value = fields[name];
  if (typeof value !== "string") {
    throw new TypeError(`key file: ${name} must be a string`);
  }
  return value;
}
