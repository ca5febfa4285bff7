import { afterEach, describe, expect, it } from "vitest";
import { ParleyClient } from "../src/client.js";
import { NotFoundError, PayloadTooLargeError } from "../src/errors.js";
import { DeviceIdentity } from "../src/identity.js";
import { Client as NodeClient } from "../src/node.js";
import { Client as WebClient, localStorageKeyStore } from "../src/web.js";
import type { RoomEvent } from "../src/rooms.js";
import { connectStreamSession, subscribeSession, type SessionFactory } from "../src/session.js";
import { FakeGateway, defaultAnswer, eventsFrame, recordingSleep, until, type FrameInit } from "./fake-gateway.js";

const clients: ParleyClient[] = [];

function clientOf(
  gateway: FakeGateway,
  session: SessionFactory,
  delays: number[] = [],
  commandTimeoutMs?: number,
): ParleyClient {
  const identity = DeviceIdentity.generate("tester");
  identity.registered = true;
  const client = new ParleyClient({
    transport: gateway.transport,
    session,
    identity,
    heartbeat: { intervalMs: 60_000, timeoutMs: 60_000 },
    sleep: recordingSleep(delays),
    random: () => 0.5,
    commandTimeoutMs,
  });
  clients.push(client);
  return client;
}

afterEach(async () => {
  await Promise.all(clients.splice(0).map((client) => client.close()));
});

describe.each([
  ["the browser path (Subscribe + SendCommand)", subscribeSession],
  ["the Connect stream", connectStreamSession],
])("%s", (_, session) => {
  it("joins, receives events by handler and iterator, and publishes", async () => {
    const gateway = new FakeGateway();
    gateway.answer = (request) =>
      request.command.case === "publish"
        ? { status: { code: 0 }, result: { case: "publish", value: { seqs: [7n], handles: ["h7"] } } }
        : defaultAnswer(request);
    const client = clientOf(gateway, session);
    await client.connect();
    const room = await client.join("lobby");
    const byHandler: RoomEvent[] = [];
    room.on("message", (event) => {
      byHandler.push(event);
    });
    const fake = await gateway.session(1);
    fake.push(eventsFrame("lobby", [1, 2]));
    const iterator = room[Symbol.asyncIterator]();
    expect((await iterator.next()).value?.seq).toBe(1);
    expect((await iterator.next()).value?.data).toBe(2);
    await until(() => byHandler.length === 2);
    expect(await room.trigger("message", { text: "hi" })).toEqual({ seq: 7, handle: "h7" });

    const [join, publish] = fake.commands;
    expect(join?.command.case).toBe("join");
    expect(publish?.command.case === "publish" && publish.command.value.events[0]?.event).toBe("message");
    const key = publish?.command.case === "publish" ? publish.command.value.events[0]?.idempotencyKey : "";
    expect(key).toMatch(/^[0-9a-f]{32}$/);
    expect(fake.authorization).toBe("Bearer token1");
    expect(client.state).toBe("connected");
  });

  it("hears a peer go offline from a Presence change, once per ended connection", async () => {
    const gateway = new FakeGateway();
    const client = clientOf(gateway, session);
    await client.connect();
    const lobby = await client.join("lobby");
    await client.join("den");
    const presence: [string, boolean][] = [];
    const told: string[] = [];
    lobby.onPresence(({ userId, joined }) => {
      presence.push([userId, joined]);
      told.push(`${joined ? "joined" : "left"} ${userId}`);
    });
    const offline: string[] = [];
    client.onPeerDisconnected((userId) => {
      offline.push(userId);
      told.push(`offline ${userId}`);
    });
    const fake = await gateway.session(1);
    const gone = (roomId: string): FrameInit => ({
      frame: {
        case: "presence",
        value: {
          roomId,
          changes: [
            { userId: "u2", joined: false, endedSessionId: "s-u2" },
            { userId: "u3", joined: false, endedSessionId: "" },
          ],
        },
      },
    });
    // One connection in two of our rooms: reported by each room, told once.
    fake.push(gone("lobby"));
    fake.push(gone("den"));
    await until(() => presence.length === 2);
    fake.push(eventsFrame("lobby", [1]));
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(presence).toEqual([
      ["u2", false],
      ["u3", false],
    ]);
    expect(offline).toEqual(["u2"]);
    // The ended connection first: a user may have joined again since, in the same window.
    expect(told.slice(0, 2)).toEqual(["offline u2", "left u2"]);
  });

  it("turns a failed Reply into the typed error, and the session carries on", async () => {
    const gateway = new FakeGateway();
    gateway.answer = (request) => {
      if (request.command.case === "join" && request.command.value.roomId === "missing") {
        return { status: { code: 5, reason: "ROOM_NOT_FOUND", message: "no room 'missing'" } };
      }
      if (request.command.case === "publish") {
        return { status: { code: 8, reason: "PAYLOAD_TOO_LARGE", message: "too big", metadata: { limit: "10" } } };
      }
      return defaultAnswer(request);
    };
    const client = clientOf(gateway, session);
    await client.connect();
    await expect(client.join("missing")).rejects.toSatisfy(
      (error) => error instanceof NotFoundError && error.reason === "ROOM_NOT_FOUND",
    );
    const room = await client.join("lobby");
    const refused = await room.trigger("message", "x").catch((error: unknown) => error);
    expect(refused).toBeInstanceOf(PayloadTooLargeError);
    expect((refused as PayloadTooLargeError).metadata).toEqual({ limit: "10" });
    expect(gateway.sessions).toHaveLength(1);
  });
});

describe("the browser path", () => {
  it("sends each command to the session its Subscribe opened, with a current token", async () => {
    const gateway = new FakeGateway();
    const client = clientOf(gateway, subscribeSession);
    await client.connect();
    await client.join("lobby");
    await client.subscribe("news:*", () => undefined);
    const fake = await gateway.session(1);
    expect(fake.commands.map((command) => command.command.case)).toEqual(["join", "subjectSubscribe"]);
    expect(new Set(fake.commands.map((command) => command.requestId)).size).toBe(2);
  });

  it("sends a room's commands one after another, each once the one before is answered", async () => {
    const gateway = new FakeGateway();
    const client = clientOf(gateway, subscribeSession);
    await client.connect();
    const lobby = await client.join("lobby");
    const other = await client.join("other");
    gateway.answer = (request) =>
      request.command.case === "publish" && request.command.value.roomId === "lobby" ? null : defaultAnswer(request);
    void lobby.trigger("message", { n: 1 }).catch(() => undefined); // never answered
    void lobby.trigger("message", { n: 2 }).catch(() => undefined);
    await other.trigger("message", { n: 3 });
    const published = (await gateway.session(1)).commands
      .filter((command) => command.command.case === "publish")
      .map((command) => (command.command.case === "publish" ? command.command.value.roomId : ""));
    expect(published).toEqual(["lobby", "other"]); // the second lobby publish waits for the first's answer
    await client.close();
  });

  it("keeps a session's subject commands in order too", async () => {
    const gateway = new FakeGateway();
    const client = clientOf(gateway, subscribeSession);
    await client.connect();
    gateway.answer = (request) => (request.command.case === "subjectPublish" ? null : defaultAnswer(request));
    void client.publish("news:today", { n: 1 }).catch(() => undefined); // never answered
    void client.publish("news:today", { n: 2 }).catch(() => undefined);
    await new Promise((resolve) => setTimeout(resolve, 100));
    const sent = (await gateway.session(1)).commands.map((command) => command.command.case);
    expect(sent).toEqual(["subjectPublish"]); // the second waits for the first's answer
    await client.close();
  });

  it("does not send a command its caller was told timed out while it waited its turn", async () => {
    const gateway = new FakeGateway();
    const client = clientOf(gateway, subscribeSession, [], 300);
    await client.connect();
    const lobby = await client.join("lobby");
    gateway.answerDelayMs = 200;
    const outcomes = await Promise.allSettled([1, 2, 3].map((n) => lobby.trigger("message", { n })));
    await new Promise((resolve) => setTimeout(resolve, 400)); // the second's answer came; the lane moved on
    expect(outcomes.map((outcome) => outcome.status)).toEqual(["fulfilled", "rejected", "rejected"]);
    const published = (await gateway.session(1)).commands.filter((command) => command.command.case === "publish");
    expect(published).toHaveLength(2); // the third was never sent
    await client.close();
  });

  it("sends a publish again on a new session when the gateway lost the old one", async () => {
    const gateway = new FakeGateway();
    const client = clientOf(gateway, subscribeSession);
    await client.connect();
    const lobby = await client.join("lobby");
    gateway.sessions[0]!.ended = true; // forgotten by the gateway
    await lobby.trigger("message", { text: "once" }); // resolves: not refused as SESSION_NOT_FOUND
    const second = await gateway.session(2);
    expect(second.commands.filter((command) => command.command.case === "publish")).toHaveLength(1);
  });

  it("opens a new session and joins again when the gateway no longer knows the session", async () => {
    const gateway = new FakeGateway();
    const delays: number[] = [];
    const client = clientOf(gateway, subscribeSession, delays);
    await client.connect();
    const room = await client.join("lobby");
    (await gateway.session(1)).push(eventsFrame("lobby", [1]));
    await until(() => room.lastSeq === 1);
    gateway.sessions[0]!.ended = true; // forgotten by the gateway, the stream still open
    const refused = await room.subscribe(["typing"]).catch((error: unknown) => error);
    expect((refused as NotFoundError).reason).toBe("SESSION_NOT_FOUND");
    const second = await gateway.session(2);
    await until(() => client.state === "connected" && room.joined);
    const rejoin = second.commands[0]?.command;
    expect(rejoin?.case === "join" && [rejoin.value.roomId, rejoin.value.sinceSeq, rejoin.value.resume]).toEqual([
      "lobby",
      1n,
      true,
    ]);
  });
});

describe("the entry points", () => {
  it("open the browser path from @parley/client/web and the Connect stream from @parley/client/node", async () => {
    const gateway = new FakeGateway();
    const identity = DeviceIdentity.generate("both");
    identity.registered = true;
    const options = { transport: gateway.transport, identity, heartbeat: { intervalMs: 60_000, timeoutMs: 60_000 } };
    const browser = new WebClient("https://chat.example.com", options);
    const node = new NodeClient("127.0.0.1:1", options);
    clients.push(browser, node);
    await browser.join("lobby");
    await node.join("lobby");
    expect(gateway.sessions.map((session) => session.kind)).toEqual(["subscribe", "connect"]);
    expect([browser.baseUrl, node.address]).toEqual(["https://chat.example.com", "127.0.0.1:1"]);
  });

  it("keeps a browser's keys in Web Storage", async () => {
    const items = new Map<string, string>();
    const storage = {
      getItem: (key: string) => items.get(key) ?? null,
      setItem: (key: string, value: string) => void items.set(key, value),
      removeItem: (key: string) => void items.delete(key),
    };
    const gateway = new FakeGateway();
    const client = new WebClient("https://chat.example.com", {
      transport: gateway.transport,
      username: "web",
      keyStore: localStorageKeyStore("parley-keys", storage),
    });
    clients.push(client);
    await client.connect();
    const stored = DeviceIdentity.fromKeyFileText(items.get("parley-keys")!);
    expect([stored.username, stored.registered, stored.deviceId]).toEqual(["web", true, client.deviceId]);
    expect(items.has("parley-keys.pending")).toBe(false);
  });
});
