/**
 * One joined room on the page: its messages (history, then live, in
 * sequence order, each shown once), who is here, and the box to write in.
 */

import type { JsonValue, Room, RoomEvent } from "@parley/client/web";
import { clock, describe, el } from "./dom.js";
import type { UserNames } from "./names.js";

/** The event this page sends and shows as chat lines (examples/parley.toml's chat room has it). */
export const MESSAGE = "message";
const HISTORY_SHOWN = 50;

/** A message's text: `{"text": ...}` or a bare string; any other payload as JSON. */
export function messageText(data: JsonValue): string {
  if (typeof data === "string") {
    return data;
  }
  if (data !== null && typeof data === "object" && !Array.isArray(data) && typeof data.text === "string") {
    return data.text;
  }
  return JSON.stringify(data);
}

/** Whether members may send `message` here (a room that accepts it, or any event). */
function acceptsMessages(room: Room): boolean {
  return room.info.events.some((definition) => definition.name === MESSAGE || definition.name === "*");
}

export class RoomView {
  readonly element: HTMLElement;
  readonly room: Room;
  readonly #names: UserNames;
  readonly #lines = el("ol", { id: "messages", className: "messages" });
  readonly #people = el("ul", { id: "people", className: "people" });
  readonly #present = new Set<string>();
  readonly #shown = new Set<number>();
  #highestSeq = 0;
  readonly #input = el("input", { id: "message", placeholder: "Write a message", autocomplete: "off", maxLength: 2000 });
  readonly #problem = el("p", { className: "problem" });

  constructor(room: Room, names: UserNames) {
    this.room = room;
    this.#names = names;
    this.element = el(
      "section",
      { className: "room" },
      el(
        "header",
        { className: "room-title" },
        el("h2", {}, room.info.name || room.id),
        el("p", {}, room.info.description),
      ),
      this.#lines,
      this.#composer(),
      el("aside", { className: "presence" }, el("h3", {}, "Here now"), this.#people),
    );
    room.onAny((event) => this.show(event));
    room.onPresence(({ userId, joined }) => this.#presenceChanged(userId, joined));
  }

  /** Recent history and who is here (again after a reconnection, which may have missed both). */
  async load(): Promise<void> {
    const [history, participants] = await Promise.all([
      this.room.history({ limit: HISTORY_SHOWN, event: MESSAGE }),
      this.room.participants(),
    ]);
    history.forEach((event) => this.show(event));
    this.#present.clear();
    Object.keys(participants).forEach((userId) => this.#present.add(userId));
    this.#renderPeople();
  }

  /** A line about the connection or the room, after the messages seen so far. */
  notice(text: string): void {
    this.#append(el("li", { className: "notice" }, text), this.#lastSeq());
  }

  /** Shows a message once, in sequence order (history, replays and live events may overlap). */
  show(event: RoomEvent): void {
    if (event.event !== MESSAGE || event.deleted || this.#shown.has(event.seq)) {
      return;
    }
    this.#shown.add(event.seq);
    this.#highestSeq = Math.max(this.#highestSeq, event.seq);
    const line = el(
      "li",
      { className: "message" },
      el("time", {}, clock(event.timeMs)),
      this.#names.label(event.sender),
      el("span", { className: "text" }, messageText(event.data)),
    );
    this.#insert(line, event.seq);
  }

  #composer(): HTMLDivElement {
    const form = el("form", { id: "composer", className: "composer" }, this.#input, el("button", { type: "submit" }, "Send"));
    if (!acceptsMessages(this.room)) {
      this.#input.disabled = true;
      this.#input.placeholder = `This room takes no "${MESSAGE}" events`;
    }
    form.addEventListener("submit", (submitted) => {
      submitted.preventDefault();
      void this.#send();
    });
    return el("div", { className: "compose" }, form, this.#problem);
  }

  async #send(): Promise<void> {
    const text = this.#input.value.trim();
    if (!text) {
      return;
    }
    this.#input.value = "";
    this.#problem.textContent = "";
    try {
      await this.room.trigger(MESSAGE, { text }); // waits while the client reconnects; the echo shows it
    } catch (error) {
      this.#input.value = text;
      this.#problem.textContent = `Not sent: ${describe(error)}`;
    }
  }

  #presenceChanged(userId: string, joined: boolean): void {
    if (joined === this.#present.has(userId)) {
      return;
    }
    if (joined) {
      this.#present.add(userId);
    } else {
      this.#present.delete(userId);
    }
    this.#renderPeople();
    const line = el("li", { className: "notice" }, this.#names.label(userId), joined ? " joined" : " left");
    this.#append(line, this.#lastSeq());
  }

  #renderPeople(): void {
    const people = [...this.#present].map((userId) => el("li", {}, this.#names.label(userId)));
    this.#people.replaceChildren(...people);
  }

  #lastSeq(): number {
    return this.#highestSeq;
  }

  /** Before the first line of a later sequence: an older message from history goes above what is shown. */
  #insert(line: HTMLLIElement, seq: number): void {
    line.dataset.seq = String(seq);
    const later = [...this.#lines.children].find((shown) => Number((shown as HTMLElement).dataset.seq) > seq);
    if (later === undefined) {
      this.#append(line, seq);
    } else {
      this.#lines.insertBefore(line, later);
    }
  }

  #append(line: HTMLLIElement, seq: number): void {
    line.dataset.seq = String(seq);
    const atBottom = this.#lines.scrollHeight - this.#lines.scrollTop - this.#lines.clientHeight < 40;
    this.#lines.append(line);
    if (atBottom) {
      this.#lines.scrollTop = this.#lines.scrollHeight;
    }
  }
}
