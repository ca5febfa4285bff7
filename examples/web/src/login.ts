/** The log-in form: a username; the first log-in registers it, with its key kept in localStorage. */

import { Client, localStorageKeyStore } from "@parley/client/web";
import { describe, el } from "./dom.js";

const LAST_USERNAME = "parley-web:username";

/** Where this browser keeps the device keys of `username` (one entry per name, so names can be switched). */
export function keyStoreName(username: string, baseUrl: string): string {
  // Keys per server too: a link naming another server (?server=) must not get this server's keys to sign its
  // login challenges with.
  return `parley-key:${new URL(baseUrl).origin}:${username}`;
}

/** The form; `loggedIn` gets a client that has registered (the first time) and logged in. */
export function loginForm(baseUrl: string, loggedIn: (client: Client, username: string) => void): HTMLFormElement {
  const input = el("input", {
    id: "username",
    required: true,
    minLength: 3,
    maxLength: 32,
    autocomplete: "username",
    placeholder: "alice",
    value: localStorage.getItem(LAST_USERNAME) ?? "",
  });
  const button = el("button", { type: "submit" }, "Log in");
  const problem = el("p", { className: "problem" });
  const form = el(
    "form",
    { id: "login", className: "login" },
    el("h1", {}, "Parley"),
    el("label", { htmlFor: "username" }, "Username"),
    input,
    button,
    problem,
    el("p", { className: "hint" }, "The first log-in registers the name; its key stays in this browser."),
    el("p", { className: "hint" }, `Server: ${baseUrl}`),
  );

  async function logIn(): Promise<void> {
    const username = input.value.trim().toLowerCase();
    button.disabled = true;
    problem.textContent = "";
    const client = new Client(baseUrl, { username, keyStore: localStorageKeyStore(keyStoreName(username, baseUrl)) });
    try {
      await client.connect();
      localStorage.setItem(LAST_USERNAME, username);
      loggedIn(client, username);
    } catch (error) {
      problem.textContent = describe(error);
      button.disabled = false;
    }
  }

  form.addEventListener("submit", (submitted) => {
    submitted.preventDefault();
    void logIn();
  });
  return form;
}
