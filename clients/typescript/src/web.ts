/**
 * `@parley/client/web`: the client for browsers, over gRPC-Web (through a
 * gRPC-Web proxy in front of Parley). Browsers cannot send on a stream, so
 * the realtime session is the gateway's browser path: a `Subscribe` stream
 * of frames plus one `SendCommand` call per command.
 *
 * ```ts
 * import { Client, localStorageKeyStore } from "@parley/client/web";
 * const client = new Client("https://chat.example.com", {
 *   username: "alice",
 *   keyStore: localStorageKeyStore("parley-keys"),
 * });
 * await client.connect();
 * ```
 *
 * Re-exports everything of `@parley/client`.
 *
 * @module
 */

import type { Transport } from "@connectrpc/connect";
import { createGrpcWebTransport, type GrpcWebTransportOptions } from "@connectrpc/connect-web";
import { ParleyClient, type ClientOptions } from "./client.js";
import type { KeySlot, KeyStore } from "./keystore.js";
import { subscribeSession } from "./session.js";

export * from "./index.js";

/** A gRPC-Web transport to the proxy at `baseUrl`. */
export function grpcWebTransport(baseUrl: string, options: Partial<GrpcWebTransportOptions> = {}): Transport {
  return createGrpcWebTransport({ ...options, baseUrl });
}

/** What a web {@link Client} takes: the client's options, without a transport. */
export interface WebClientOptions extends Omit<ClientOptions, "transport"> {
  /** A transport of your own instead of the default gRPC-Web one. */
  transport?: Transport | undefined;
  /** Options for the default gRPC-Web transport. */
  transportOptions?: Partial<GrpcWebTransportOptions> | undefined;
}

/** A connection to Parley from a browser: gRPC-Web, and the Subscribe + SendCommand session. */
export class Client extends ParleyClient {
  /** The gRPC-Web proxy's URL, as given. */
  readonly baseUrl: string;

  /** Nothing is sent until {@link ParleyClient.connect} (or the first call that needs the server). */
  constructor(baseUrl: string, options: WebClientOptions = {}) {
    const { transport, transportOptions, ...rest } = options;
    super({
      ...rest,
      session: rest.session ?? subscribeSession,
      transport: transport ?? grpcWebTransport(baseUrl, transportOptions),
    });
    this.baseUrl = baseUrl;
  }
}

/** Minimal Web Storage: what {@link localStorageKeyStore} uses. */
export interface KeyTextStorage {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

/**
 * A key store in the browser's `localStorage` (or another Storage), under
 * `name` (and `name.pending` for a registration in progress). Anyone who
 * can run script on the page can read it: the key file is the device.
 */
export function localStorageKeyStore(name: string, storage?: KeyTextStorage): KeyStore {
  const store = (): KeyTextStorage => storage ?? (globalThis as { localStorage?: KeyTextStorage }).localStorage!;
  const keyOf = (slot: KeySlot): string => (slot === "current" ? name : `${name}.pending`);
  return {
    location: `localStorage:${name}`,
    read: async (slot) => store().getItem(keyOf(slot)),
    write: async (slot, text) => store().setItem(keyOf(slot), text),
    remove: async (slot) => store().removeItem(keyOf(slot)),
  };
}
