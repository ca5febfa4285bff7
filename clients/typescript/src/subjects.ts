/**
 * Pub/sub subjects: plaintext messages to whoever is subscribed, never
 * stored (the subject half of the Python client's `client.message`).
 *
 * @module
 */

import type { JsonValue } from "@bufbuild/protobuf";
import { UnavailableError } from "./errors.js";
import type { Reply, SubjectEvent } from "./gen/parley/gateway/v1/gateway_pb.js";
import { callHandler, type Handler, type Logger } from "./listeners.js";
import type { Command, SessionChannel } from "./session.js";
import { fromValue, toValue } from "./values.js";

/** A message on a subject. */
export interface SubjectMessage {
  subject: string;
  /** User id of the sender, or a backend's named sender. */
  sender: string;
  data: JsonValue;
}

/** Whether `subject` is `pattern`, or starts with it when the pattern ends in `*`. */
export function matches(pattern: string, subject: string): boolean {
  return pattern.endsWith("*") ? subject.startsWith(pattern.slice(0, -1)) : subject === pattern;
}

/** What the subjects need from the client. */
export interface SubjectContext {
  command(command: Command, wait: boolean): Promise<Reply>;
  publish(command: Command): Promise<Reply>;
  logger: Logger;
}

/** Subject subscriptions (kept across reconnections: a new session gets them again) and publishing. */
export class Subjects {
  readonly #context: SubjectContext;
  readonly #handlers = new Map<string, Handler<[SubjectMessage]>[]>();

  /** Subscriptions are made and published through `context`. */
  constructor(context: SubjectContext) {
    this.#context = context;
  }

  /** Calls `handler(message)` for each message on `subject` (a prefix when it ends in `*`). */
  async subscribe(subject: string, handler: Handler<[SubjectMessage]>): Promise<void> {
    if (!this.#handlers.has(subject)) {
      await this.#context.command({ case: "subjectSubscribe", value: { subject } }, true);
      this.#handlers.set(subject, this.#handlers.get(subject) ?? []);
    }
    this.#handlers.get(subject)?.push(handler);
  }

  /** Stops every handler of `subject`. */
  async unsubscribe(subject: string): Promise<void> {
    this.#handlers.delete(subject);
    try {
      await this.#context.command({ case: "subjectUnsubscribe", value: { subject } }, false);
    } catch (error) {
      if (!(error instanceof UnavailableError)) {
        throw error; // not connected: the next session is not subscribed to it
      }
    }
  }

  /**
   * Sends `data` to everyone subscribed to `subject`; waits while the client
   * reconnects. Subject messages are not stored: one whose answer was lost
   * in a reconnection is sent again and may arrive twice.
   */
  async publish(subject: string, data: JsonValue): Promise<void> {
    await this.#context.publish({ case: "subjectPublish", value: { subject, data: toValue(data) } });
  }

  /** Subscriptions live on a session: a new one gets them again. */
  async resubscribe(session: SessionChannel): Promise<void> {
    for (const subject of this.#handlers.keys()) {
      await session.command({ case: "subjectSubscribe", value: { subject } });
    }
  }

  /** A subject message arrived. */
  dispatch(event: SubjectEvent): void {
    const message: SubjectMessage = { subject: event.subject, sender: event.sender, data: fromValue(event.data) };
    for (const [pattern, handlers] of this.#handlers) {
      if (matches(pattern, event.subject)) {
        handlers.forEach((handler) => callHandler(this.#context.logger, handler, [message]));
      }
    }
  }
}
