/**
 * `@parley/client/node`: the client for Node, over gRPC (HTTP/2) straight to
 * Parley, with key files on disk in the Python client's format.
 *
 * ```ts
 * import { Client } from "@parley/client/node";
 * const client = new Client("localhost:50051", { username: "alice", keyFile: "alice.json" });
 * await client.connect();
 * ```
 *
 * Re-exports everything of `@parley/client`.
 *
 * @module
 */

import { randomBytes } from "node:crypto";
import { constants, promises as fs } from "node:fs";
import * as path from "node:path";
import type { Transport } from "@connectrpc/connect";
import { createGrpcTransport, type GrpcTransportOptions } from "@connectrpc/connect-node";
import { ParleyClient, type ClientOptions } from "./client.js";
import { DeviceIdentity } from "./identity.js";
import type { KeySlot, KeyStore } from "./keystore.js";

export * from "./index.js";

/** Where the client connects when given no address. */
export const DEFAULT_ADDRESS = "localhost:50051";

/** A base URL for `address`: "host:port" becomes "http://host:port"; a URL stays as it is. */
export function baseUrlOf(address: string): string {
  return /^https?:\/\//.test(address) ? address : `http://${address}`;
}

/** A gRPC (HTTP/2) transport to Parley at `address` ("host:port" or a URL). */
export function grpcTransport(address: string, options: Partial<GrpcTransportOptions> = {}): Transport {
  return createGrpcTransport({ ...options, baseUrl: baseUrlOf(address) });
}

/** What a Node {@link Client} takes: the client's options, with a key file instead of a transport. */
export interface NodeClientOptions extends Omit<ClientOptions, "transport"> {
  /** Where this device's keys live (JSON, mode 0600, the Python client's format); written once registered. */
  keyFile?: string | undefined;
  /** A transport of your own instead of the default gRPC one. */
  transport?: Transport | undefined;
  /** Options for the default gRPC transport (e.g. `nodeOptions` for TLS). */
  transportOptions?: Partial<GrpcTransportOptions> | undefined;
}

/**
 * A connection to Parley as one device of one user, over gRPC (HTTP/2) and
 * the bidirectional `Connect` stream.
 */
export class Client extends ParleyClient {
  /** The server's address, as given. */
  readonly address: string;

  /** Nothing is sent until {@link ParleyClient.connect} (or the first call that needs the server). */
  constructor(address: string = DEFAULT_ADDRESS, options: NodeClientOptions = {}) {
    const { keyFile, transport, transportOptions, ...rest } = options;
    super({
      ...rest,
      transport: transport ?? grpcTransport(address, transportOptions),
      keyStore: rest.keyStore ?? (keyFile !== undefined ? keyFileStore(keyFile) : undefined),
    });
    this.address = address;
  }
}

/** The file of a key slot: the key file, or `<key file>.pending` for a registration in progress. */
export function slotPath(keyFile: string, slot: KeySlot): string {
  return slot === "current" ? keyFile : `${keyFile}.pending`;
}

/** A key store on disk: the key file (mode 0600) and its `.pending` companion, as the Python client keeps them. */
export function keyFileStore(keyFile: string): KeyStore {
  return {
    location: keyFile,
    read: async (slot) => {
      try {
        return await readPrivate(slotPath(keyFile, slot));
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code === "ENOENT") {
          return null;
        }
        throw error;
      }
    },
    write: (slot, text) => writePrivate(slotPath(keyFile, slot), text),
    remove: (slot) => fs.rm(slotPath(keyFile, slot), { force: true }),
  };
}

/** Reads a key file (refusing one that others can read, as ssh does). */
export async function loadKeyFile(keyFile: string): Promise<DeviceIdentity> {
  return DeviceIdentity.fromKeyFileText(await readPrivate(keyFile));
}

/** Writes a key file atomically and durably, readable by its owner only (0600). */
export async function saveKeyFile(keyFile: string, identity: DeviceIdentity): Promise<void> {
  await writePrivate(keyFile, identity.toKeyFileText());
}

/** A private file's text; refuses one that others can read. */
export async function readPrivate(file: string): Promise<string> {
  const handle = await fs.open(file, "r");
  try {
    const mode = (await handle.stat()).mode;
    if (mode & 0o077) {
      const shown = (mode & 0o777).toString(8);
      throw new Error(`${file} is readable by others (mode ${shown}); run: chmod 600 ${file}`);
    }
    return await handle.readFile("utf8");
  } finally {
    await handle.close();
  }
}

/** Replaces `file` with `text` in one step (a crash leaves the old file or the new, never a mix), mode 0600. */
export async function writePrivate(file: string, text: string): Promise<void> {
  const directory = path.dirname(file);
  await fs.mkdir(directory, { recursive: true, mode: 0o700 });
  const temporary = path.join(directory, `.${path.basename(file)}.${randomBytes(6).toString("hex")}`);
  const handle = await fs.open(temporary, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600);
  try {
    await handle.writeFile(text);
    await handle.sync();
  } catch (error) {
    await handle.close();
    await fs.rm(temporary, { force: true });
    throw error;
  }
  await handle.close();
  await fs.rename(temporary, file);
  const folder = await fs.open(directory, "r");
  try {
    await folder.sync();
  } finally {
    await folder.close();
  }
}
