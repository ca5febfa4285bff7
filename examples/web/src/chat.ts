/** The chat once logged in: the connection's state, the room list, and the room joined. */

import type { Client, ConnectionState, RoomInfo } from "@parley/client/web";
import { describe, el } from "./dom.js";
import { UserNames } from "./names.js";
import { RoomView } from "./room-view.js";

export class ChatApp {
  readonly element: HTMLElement;
  readonly #client: Client;
  readonly #names: UserNames;
  readonly #state = el("span", { id: "state", className: "state" });
  readonly #roomList = el("ul", { id: "rooms", className: "rooms" });
  readonly #main = el("main", {}, el("p", { className: "placeholder" }, "Pick a room"));
  #view: RoomView | null = null;
  #switching: Promise<void> = Promise.resolve();
  #lostConnection = false;

  constructor(client: Client, username: string) {
    this.#client = client;
    this.#names = new UserNames(client);
    const logOut = el("button", { type: "button", className: "log-out" }, "Log out");
    logOut.addEventListener("click", () => void this.#logOut());
    this.element = el(
      "div",
      { className: "app" },
      el("header", { className: "bar" }, el("h1", {}, "Parley"), this.#state, el("span", { id: "me" }, username), logOut),
      el("div", { className: "body" }, el("nav", {}, this.#roomList), this.#main),
    );
    this.#showState(client.state);
    client.onState((state) => this.#stateChanged(state));
    client.onError((error) => this.#view?.notice(`Error: ${describe(error)}`));
  }

  /** Lists the rooms; joins one when clicked. */
  async start(): Promise<void> {
    const rooms = await this.#client.listRooms();
    this.#roomList.replaceChildren(...rooms.map((room) => this.#roomEntry(room)));
  }

  #roomEntry(room: RoomInfo): HTMLLIElement {
    const button = el(
      "button",
      { type: "button", className: "room-link", title: room.description },
      room.name || room.roomId,
      el("small", {}, `#${room.roomId}`),
    );
    button.dataset.room = room.roomId;
    button.addEventListener("click", () => {
      this.#switching = this.#switching.then(() => this.#open(room.roomId));
    });
    return el("li", {}, button);
  }

  /** Leaves the room shown (if any) and joins `roomId`. */
  async #open(roomId: string): Promise<void> {
    if (this.#view?.room.id === roomId) {
      return;
    }
    await this.#view?.room.leave().catch(() => undefined); // gone with the session when it fails
    this.#view = null;
    this.#markActive(roomId);
    try {
      const view = new RoomView(await this.#client.join(roomId), this.#names);
      this.#view = view;
      this.#main.replaceChildren(view.element);
      await view.load();
    } catch (error) {
      this.#main.replaceChildren(el("p", { className: "problem" }, `Cannot join ${roomId}: ${describe(error)}`));
    }
  }

  #markActive(roomId: string): void {
    for (const button of this.#roomList.querySelectorAll<HTMLButtonElement>("button.room-link")) {
      button.classList.toggle("active", button.dataset.room === roomId);
    }
  }

  #stateChanged(state: ConnectionState): void {
    this.#showState(state);
    if (state === "reconnecting" && !this.#lostConnection) {
      this.#lostConnection = true;
      this.#view?.notice("Connection lost: reconnecting…");
    } else if (state === "connected" && this.#lostConnection) {
      this.#lostConnection = false;
      void this.#reconnected();
    } else if (state === "failed") {
      this.#view?.notice("Disconnected for good: reload the page to log in again.");
    }
  }

  /** Rooms are joined again by now, resumed from the last event seen; presence changes meanwhile were missed. */
  async #reconnected(): Promise<void> {
    const view = this.#view;
    if (view === null) {
      return;
    }
    view.notice(view.room.recovered ? "Reconnected: nothing was missed" : "Reconnected: history reloaded");
    await view.load().catch((error: unknown) => view.notice(`Could not reload: ${describe(error)}`));
  }

  #showState(state: ConnectionState): void {
    this.#state.textContent = state;
    this.#state.className = `state ${state}`;
  }

  async #logOut(): Promise<void> {
    await this.#client.logout().catch(() => undefined); // the server's sessions end with it when it can be reached
    location.reload();
  }
}
