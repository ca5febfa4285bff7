/**
 * Where a device's key file lives. The keys of a registration in progress
 * wait in the `pending` slot until the server has accepted it, so a
 * registration whose reply was lost is completed with the same keys, and one
 * the server refused leaves no key file behind (as the Python client's
 * `<key file>.pending`).
 *
 * @module
 */

/** The key file of the device (`current`), or of a registration not yet accepted (`pending`). */
export type KeySlot = "current" | "pending";

/** Storage for a device's key file text (the JSON of {@link DeviceIdentity.toKeyFileText}). */
export interface KeyStore {
  /** The text in `slot`, or null when there is none. */
  read(slot: KeySlot): Promise<string | null>;
  /** Replaces the text in `slot` (atomically where the storage allows). */
  write(slot: KeySlot, text: string): Promise<void>;
  /** Empties `slot` (no error when it is empty). */
  remove(slot: KeySlot): Promise<void>;
  /** Where the keys live, for messages (a path, a storage key). */
  readonly location: string;
}

/** A key store that keeps the key file text in memory only (tests; an app that keeps keys itself). */
export function memoryKeyStore(location = "memory"): KeyStore {
  const slots = new Map<KeySlot, string>();
  return {
    location,
    read: async (slot) => slots.get(slot) ?? null,
    write: async (slot, text) => {
      slots.set(slot, text);
    },
    remove: async (slot) => {
      slots.delete(slot);
    },
  };
}
