/**
 * How long the client waits before each reconnection attempt, and how often
 * it checks that the link is alive: the Python client's `Backoff` and
 * `Heartbeat`, in milliseconds.
 *
 * @module
 */

/** Reconnection pacing: exponential backoff with full jitter. */
export interface BackoffOptions {
  /** The first ceiling, in milliseconds (default 100). */
  initialMs?: number;
  /** The largest ceiling, in milliseconds (default 10,000). */
  capMs?: number;
  /** Failed attempts in a row after which the client gives up (`failed`); unset: never. */
  maxAttempts?: number | undefined;
}

/**
 * Attempt n (from 0) waits a random time in [0, min(cap, initial × 2ⁿ)].
 *
 * Full jitter spreads a crowd of clients that lost the same server over the
 * whole window, so a restarted gateway is not hit by all of them at once.
 */
export class Backoff {
  /** The first ceiling, in milliseconds. */
  readonly initialMs: number;
  /** The largest ceiling, in milliseconds. */
  readonly capMs: number;
  /** Failed attempts in a row after which the client gives up; undefined: never. */
  readonly maxAttempts: number | undefined;

  /** Throws a RangeError unless 0 < initial <= cap and maxAttempts >= 1. */
  constructor(options: BackoffOptions = {}) {
    this.initialMs = options.initialMs ?? 100;
    this.capMs = options.capMs ?? 10_000;
    this.maxAttempts = options.maxAttempts;
    if (!(this.initialMs > 0) || this.capMs < this.initialMs) {
      throw new RangeError(`backoff: need 0 < initialMs <= capMs, got ${this.initialMs} and ${this.capMs}`);
    }
    if (this.maxAttempts !== undefined && this.maxAttempts < 1) {
      throw new RangeError(`backoff: maxAttempts must be at least 1, got ${this.maxAttempts}`);
    }
  }

  /** The longest wait before attempt `attempt` (from 0). */
  ceilingMs(attempt: number): number {
    return Math.min(this.capMs, this.initialMs * 2 ** Math.min(attempt, 60));
  }

  /** A random wait before attempt `attempt`. */
  delayMs(attempt: number, random: () => number = Math.random): number {
    return random() * this.ceilingMs(attempt);
  }

  /** Whether `failures` failed attempts in a row mean giving up. */
  givesUpAfter(failures: number): boolean {
    return this.maxAttempts !== undefined && failures >= this.maxAttempts;
  }
}

/** Liveness checks: a ping every `intervalMs`; none answered within `timeoutMs` means the link is dead. */
export interface HeartbeatOptions {
  /** Default 10,000. */
  intervalMs?: number;
  /** Default 10,000. */
  timeoutMs?: number;
}
