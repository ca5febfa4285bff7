/**
 * Handler lists: registered with `on`, called with `emit` in order, each
 * call after the code that emitted (a microtask), its failure logged and
 * never thrown into the client.
 *
 * @module
 */

/** A plain or async handler. */
export type Handler<Args extends unknown[]> = (...args: Args) => void | Promise<void>;

/** Where handler failures are reported. */
export interface Logger {
  warn(message: string, ...details: unknown[]): void;
  error(message: string, ...details: unknown[]): void;
}

/** Calls a handler, reporting a failure (thrown or rejected) to `logger`. */
export function callHandler<Args extends unknown[]>(logger: Logger, handler: Handler<Args>, args: Args): void {
  try {
    const result = handler(...args);
    if (result instanceof Promise) {
      result.catch((error: unknown) => logger.error("parley: a handler failed", error));
    }
  } catch (error) {
    logger.error("parley: a handler failed", error);
  }
}

/** Named handler lists; `Events` maps each name to its handlers' arguments. */
export class Listeners<Events extends { [name: string]: unknown[] }> {
  readonly #handlers: { [Name in keyof Events]?: Handler<Events[Name]>[] } = {};
  readonly #logger: Logger;

  /** Handler failures are reported to `logger`. */
  constructor(logger: Logger) {
    this.#logger = logger;
  }

  /** Registers `handler` for `name`; returns a function that removes it. */
  on<Name extends keyof Events>(name: Name, handler: Handler<Events[Name]>): () => void {
    const list = this.#handlers[name] ?? [];
    this.#handlers[name] = list;
    list.push(handler);
    return () => {
      const index = list.indexOf(handler);
      if (index >= 0) {
        list.splice(index, 1);
      }
    };
  }

  /** Calls every handler of `name` registered now, soon after the current code (in order). */
  emit<Name extends keyof Events>(name: Name, ...args: Events[Name]): void {
    const handlers = [...(this.#handlers[name] ?? [])];
    if (handlers.length === 0) {
      return;
    }
    queueMicrotask(() => {
      for (const handler of handlers) {
        callHandler(this.#logger, handler, args);
      }
    });
  }
}
