/**
 * The example web chat: log in, pick a room, talk. The gRPC-Web proxy's URL
 * comes from `?server=` (default http://127.0.0.1:8080, `parley serve --web-port 8080`).
 */

import "./style.css";
import { ChatApp } from "./chat.js";
import { describe, el } from "./dom.js";
import { loginForm } from "./login.js";

const DEFAULT_SERVER = "http://127.0.0.1:8080";

const app = document.querySelector<HTMLDivElement>("#app")!;
const baseUrl = new URLSearchParams(location.search).get("server") ?? DEFAULT_SERVER;

app.replaceChildren(
  loginForm(baseUrl, (client, username) => {
    const chat = new ChatApp(client, username);
    app.replaceChildren(chat.element);
    chat.start().catch((error: unknown) => {
      chat.element.append(el("p", { className: "problem" }, `Cannot list the rooms: ${describe(error)}`));
    });
  }),
);
