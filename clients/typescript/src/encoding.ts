/**
 * Unambiguous byte encodings for everything Parley signs, as the Python
 * client builds them (parley/crypto/encoding.py): a purpose label, then every
 * field length-prefixed (`u32be(len) || bytes`).
 *
 * @module
 */

import { base64Decode, base64Encode } from "@bufbuild/protobuf/wire";

/** The prefix of every purpose label: `parley/v1/<purpose>`. */
export const LABEL_PREFIX = "parley/v1/";

const textEncoder = new TextEncoder();

/** The UTF-8 bytes of `text`. */
export function utf8(text: string): Uint8Array {
  return textEncoder.encode(text);
}

/** `u32be(len(field)) || field`. */
export function lengthPrefixed(field: Uint8Array): Uint8Array {
  const out = new Uint8Array(4 + field.length);
  new DataView(out.buffer).setUint32(0, field.length, false);
  out.set(field, 4);
  return out;
}

/** `lp("parley/v1/<purpose>") || lp(field) || ...`. */
export function labelled(purpose: string, ...fields: Uint8Array[]): Uint8Array {
  return concatBytes([lengthPrefixed(utf8(LABEL_PREFIX + purpose)), ...fields.map(lengthPrefixed)]);
}

/** The parts, one after another. */
export function concatBytes(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((size, part) => size + part.length, 0));
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

/** Standard base64 with padding, as key files keep bytes. */
export function toBase64(bytes: Uint8Array): string {
  return base64Encode(bytes, "std");
}

/** The bytes of standard (or URL-safe) base64 text. */
export function fromBase64(text: string): Uint8Array {
  return base64Decode(text);
}

/** Lowercase hex digits of `bytes`. */
export function toHex(bytes: Uint8Array): string {
  return Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join("");
}

/** `count` bytes from the platform's cryptographic random source. */
export function randomBytes(count: number): Uint8Array {
  return globalThis.crypto.getRandomValues(new Uint8Array(count));
}
