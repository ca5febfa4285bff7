/**
 * Usernames for user ids (events and presence carry ids): one IdentityService
 * GetUser call per user, kept for the life of the page.
 */

import { NotFoundError, type ParleyClient } from "@parley/client/web";
import { el } from "./dom.js";

export class UserNames {
  readonly #client: ParleyClient;
  readonly #known = new Map<string, Promise<string>>();

  constructor(client: ParleyClient) {
    this.#client = client;
  }

  /** The username of `userId`; the id itself for a sender that is no user (a backend), or while unreachable. */
  of(userId: string): Promise<string> {
    let name = this.#known.get(userId);
    if (name === undefined) {
      name = this.#lookUp(userId);
      this.#known.set(userId, name);
    }
    return name;
  }

  /** A `<span>` showing the user's name once it is known. */
  label(userId: string): HTMLSpanElement {
    const span = el("span", { className: "name" }, userId);
    void this.of(userId).then((name) => {
      span.textContent = name;
    });
    return span;
  }

  async #lookUp(userId: string): Promise<string> {
    try {
      const found = await this.#client.getUser({ userId });
      return found.username || userId;
    } catch (error) {
      if (!(error instanceof NotFoundError)) {
        this.#known.delete(userId); // not reachable now: asked again for the next event
      }
      return userId;
    }
  }
}
