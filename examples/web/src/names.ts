/**
 * Usernames for user ids (events and presence carry ids): one IdentityService
 * GetUser call per user, kept for the life of the page.
 */

import { createClient, type Client as RpcClient } from "@connectrpc/connect";
import { NotFoundError, errorFromRpc, grpcWebTransport, type ParleyClient } from "@parley/client/web";
import { el } from "./dom.js";
// The client has no GetUser of its own yet: its generated service descriptor, from the built package.
import { IdentityService } from "../../../clients/typescript/dist/gen/parley/identity/v1/identity_pb.js";

export class UserNames {
  readonly #client: ParleyClient;
  readonly #identity: RpcClient<typeof IdentityService>;
  readonly #known = new Map<string, Promise<string>>();

  constructor(client: ParleyClient, baseUrl: string) {
    this.#client = client;
    this.#identity = createClient(IdentityService, grpcWebTransport(baseUrl));
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
      const headers = { authorization: `Bearer ${await this.#client.accessToken()}` };
      const found = await this.#identity.getUser({ lookup: { case: "userId", value: userId } }, { headers });
      return found.user?.username || userId;
    } catch (error) {
      if (!(errorFromRpc(error) instanceof NotFoundError)) {
        this.#known.delete(userId); // not reachable now: asked again for the next event
      }
      return userId;
    }
  }
}
