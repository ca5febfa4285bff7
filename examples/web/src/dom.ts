/** Building the page: elements whose text is always set as text, never parsed as HTML. */

type Props<K extends keyof HTMLElementTagNameMap> = Partial<Omit<HTMLElementTagNameMap[K], "children" | "style">>;

/** `<tag>` with these properties (`className`, `type`, ...) and children (strings become text). */
export function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  props: Props<K> = {},
  ...children: (Node | string)[]
): HTMLElementTagNameMap[K] {
  const element = Object.assign(document.createElement(tag), props);
  element.append(...children);
  return element;
}

/** The time of day of a moment in milliseconds since the epoch, as "14:05". */
export function clock(timeMs: number): string {
  return new Date(timeMs).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

/** What a failure says, for a line on the page. */
export function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
