import { ConnectError, Code as ConnectCode } from "@connectrpc/connect";
import { afterEach, describe, expect, it } from "vitest";
import { ParleyClient, type ClientOptions } from "../src/client.js";
import { sleep, type ConnectionState } from "../src/connection.js";
import { UnauthenticatedError, UnavailableError, type ParleyError } from "../src/errors.js";
import { HistoryBatch_Kind } from "../src/gen/parley/gateway/v1/gateway_pb.js";
import { DeviceIdentity } from "../src/identity.js";
import type { RoomEvent } from "../src/rooms.js";
import { connectStreamSession, subscribeSession } from "../src/session.js";
import { FakeGateway, defaultAnswer, eventsFrame, recordingSleep, until } from "./fake-gateway.js";

const clients: ParleyClient[] = [];

function clientOf(gateway: FakeGateway, delays: number[], options: Partial<ClientOptions> = {}): ParleyClient {
  const identity = DeviceIdentity.generate("tester");
  identity.registered = true;
  const client = new ParleyClient({
    transport: gateway.transport,
    session: subscribeSession,
    identity,
    heartbeat: { intervalMs: 60_000, timeoutMs: 60_000 },
    backoff: { initialMs: 100, capMs: 1_000 },
    sleep: recordingSleep(delays),
    random: () => 0.5,
    logger: { warn: () => undefined, error: () => undefined },
    ...options,
  });
  clients.push(client);
  return client;
}

function statesOf(client: ParleyClient): ConnectionState[] {
  const states: ConnectionState[] = [];
  client.onState((state) => {
    states.push(state);
  });
  return states;
}

async function take(iterator: AsyncIterator<RoomEvent>, count: number): Promise<number[]> {
  const seqs: number[] = [];
  while (seqs.length < count) {
    const next = await iterator.next();
    if (next.done) {
      break;
    }
    seqs.push(next.value.seq);
  }
  return seqs;
}

const restart = (): ConnectError => new ConnectError("the server restarts", ConnectCode.Unavailable);

afterEach(async () => {
  await Promise.all(clients.splice(0).map((client) => client.close()));
});

describe.each([
  ["the browser path", subscribeSession],
  ["the Connect stream", connectStreamSession],
])("reconnecting over %s", (_, session) => {
  it("joins again from the last sequence seen, and every event arrives once", async () => {
    const gateway = new FakeGateway();
    const delays: number[] = [];
    const client = clientOf(gateway, delays, { session });
    const states = statesOf(client);
    await client.connect();
    const room = await client.join("lobby");
    const iterator = room[Symbol.asyncIterator]();
    const first = await gateway.session(1);
    first.push(eventsFrame("lobby", [1, 2]));
    expect(await take(iterator, 2)).toEqual([1, 2]);

    gateway.answer = (request, fake) => {
      if (request.command.case !== "join") {
        return defaultAnswer(request);
      }
      queueMicrotask(() => {
        fake.push({
          frame: {
            case: "history",
            value: {
              roomId: "lobby",
              kind: HistoryBatch_Kind.REPLAY,
              recovered: true,
              epoch: "e1",
              ...eventsFrameValue([3, 4]),
            },
          },
        });
        fake.push(eventsFrame("lobby", [5]));
      });
      return {
        status: { code: 0 },
        result: {
          case: "join",
          value: { room: { roomId: "lobby" }, subscriptions: ["*"], epoch: "e1", lastSeq: 4n, recovered: true },
        },
      };
    };
    first.end(restart());

    expect(await take(iterator, 3)).toEqual([3, 4, 5]);
    const rejoin = (await gateway.session(2)).commands[0]?.command;
    expect(rejoin?.case).toBe("join");
    if (rejoin?.case === "join") {
      expect([rejoin.value.sinceSeq, rejoin.value.epoch, rejoin.value.resume, rejoin.value.subscriptions]).toEqual([
        2n,
        "e1",
        true,
        ["*"],
      ]);
    }
    expect(room.recovered).toBe(true);
    expect(room.lastSeq).toBe(5);
    expect(room.joined).toBe(true);
    await until(() => states.length === 4);
    expect(states).toEqual(["connecting", "connected", "reconnecting", "connected"]);
    expect(delays).toEqual([50]); // full jitter: half (random 0.5) of the first ceiling, 100 ms
  });
});

describe("reconnection", () => {
  it("says when a resume could not prove continuity", async () => {
    const gateway = new FakeGateway();
    const client = clientOf(gateway, []);
    await client.connect();
    const room = await client.join("lobby");
    (await gateway.session(1)).push(eventsFrame("lobby", [1]));
    await until(() => room.lastSeq === 1);
    gateway.answer = (request) =>
      request.command.case === "join"
        ? {
            status: { code: 0 },
            result: {
              case: "join",
              value: {
                room: { roomId: "lobby" },
                epoch: "e2",
                lastSeq: 9n,
                recovered: false,
                unrecoveredReason: "EPOCH_CHANGED",
              },
            },
          }
        : defaultAnswer(request);
    gateway.sessions[0]!.end(restart());
    await gateway.session(2);
    await until(() => client.state === "connected" && room.joined);
    const { recovered, unrecoveredReason, epoch, lastSeq } = room;
    expect([recovered, unrecoveredReason, epoch, lastSeq]).toEqual([false, "EPOCH_CHANGED", "e2", 9]);
  });

  it("backs off between failed attempts and gives up after the attempt limit", async () => {
    const gateway = new FakeGateway();
    const delays: number[] = [];
    const client = clientOf(gateway, delays, { backoff: { initialMs: 100, capMs: 300, maxAttempts: 4 } });
    const errors: ParleyError[] = [];
    client.onError((error) => {
      errors.push(error);
    });
    await client.connect();
    const room = await client.join("lobby");
    gateway.refuseOpen = { error: restart(), times: 10 };
    gateway.sessions[0]!.end(restart());
    await until(() => client.state === "failed");
    expect(delays).toEqual([50, 100, 150, 150]); // half of 100, 200, 300 (the cap), 300
    expect(room.closed).toBe(true);
    await until(() => errors.length === 1);
    expect(errors[0]).toBeInstanceOf(UnavailableError);
    await expect(room.trigger("message", 1)).rejects.toBeInstanceOf(UnavailableError);
  });

  it("does not reconnect after a final ending", async () => {
    const gateway = new FakeGateway();
    const delays: number[] = [];
    const client = clientOf(gateway, delays);
    await client.connect();
    const room = await client.join("lobby");
    gateway.sessions[0]!.end(new ConnectError("revoked", ConnectCode.Unauthenticated));
    await until(() => client.state === "failed");
    expect(delays).toEqual([]);
    expect(gateway.sessions).toHaveLength(1);
    expect(room.closed).toBe(true);
  });

  it("reconnects after TOKEN_EXPIRED, which a fresh token cures", async () => {
    const gateway = new FakeGateway();
    const client = clientOf(gateway, [], { session: connectStreamSession });
    await client.connect();
    await client.join("lobby");
    const first = await gateway.session(1);
    first.push({
      frame: {
        case: "goAway",
        value: { status: { code: ConnectCode.Unauthenticated, reason: "TOKEN_EXPIRED", message: "expired" } },
      },
    });
    first.end(new ConnectError("expired", ConnectCode.Unauthenticated));
    await gateway.session(2);
    await until(() => client.state === "connected");
  });

  it("sends a publish again, with the same key, when its session ended before the answer", async () => {
    const gateway = new FakeGateway();
    const client = clientOf(gateway, []);
    await client.connect();
    await client.join("lobby");
    const room = await client.join("lobby");
    gateway.answer = (request, fake) => {
      if (request.command.case !== "publish") {
        return defaultAnswer(request);
      }
      if (fake.id === "s1") {
        queueMicrotask(() => fake.end(restart())); // the answer is lost with the session
        return null;
      }
      return { status: { code: 0 }, result: { case: "publish", value: { seqs: [1n], handles: ["h1"] } } };
    };
    expect(await room.trigger("message", { text: "once" })).toEqual({ seq: 1, handle: "h1" });
    const keys = gateway.commands.flatMap((command) =>
      command.command.case === "publish" ? [command.command.value.events[0]?.idempotencyKey] : [],
    );
    expect(keys).toHaveLength(2);
    expect(keys[0]).toBe(keys[1]);
  });

  it("comes back after a draining gateway's hint rather than the backoff", async () => {
    const gateway = new FakeGateway();
    const delays: number[] = [];
    const client = clientOf(gateway, delays);
    await client.connect();
    await client.join("lobby");
    const first = await gateway.session(1);
    first.push({
      frame: { case: "goAway", value: { status: { code: 14, reason: "DRAINING" }, reconnectWithinMs: 4_000 } },
    });
    await until(() => first.commands.length === 1);
    first.end(restart());
    await gateway.session(2);
    await until(() => client.state === "connected");
    expect(delays).toEqual([2_000]);
  });

  it("ends a session whose pings go unanswered, and opens another", async () => {
    const gateway = new FakeGateway();
    gateway.answer = (request, fake) =>
      request.command.case === "ping" && fake.id === "s1" ? null : defaultAnswer(request);
    const client = clientOf(gateway, [], {
      heartbeat: { intervalMs: 1_000, timeoutMs: 1_000 },
      sleep: (ms, signal) => sleep(ms / 100, signal), // a hundred times faster
    });
    const endings: (ParleyError | null)[] = [];
    client.onDisconnect((error) => {
      endings.push(error);
    });
    await client.connect();
    const room = await client.join("lobby");
    await gateway.session(2);
    await until(() => client.state === "connected" && room.joined);
    expect(endings[0]?.message).toBe("no heartbeat reply within 1s; the link is dead");
  });

  it("ends a browser session whose Subscribe stream stalls while SendCommand still answers pings", async () => {
    const gateway = new FakeGateway();
    const client = clientOf(gateway, [], {
      heartbeat: { intervalMs: 1_000, timeoutMs: 1_000 },
      sleep: (ms, signal) => sleep(ms / 100, signal), // a hundred times faster
    });
    const states = statesOf(client);
    const endings: (ParleyError | null)[] = [];
    client.onDisconnect((error) => {
      endings.push(error);
    });
    await client.connect();
    const room = await client.join("lobby");
    const first = await gateway.session(1);
    const pings = (): number => first.commands.filter((command) => command.command.case === "ping").length;
    await until(() => pings() >= 3); // confirmed on the stream while it flows: the session holds
    expect(gateway.sessions).toHaveLength(1);
    first.stalled = true;
    const pingsBeforeStall = pings();
    const second = await gateway.session(2);
    await until(() => client.state === "connected" && room.joined);
    // The first ping the stream did not carry was the last: its unary answer alone did not count.
    expect(pings() - pingsBeforeStall).toBeLessThanOrEqual(2);
    expect(states).toEqual(["connecting", "connected", "reconnecting", "connected"]);
    expect(endings[0]?.message).toBe("no heartbeat reply within 1s; the link is dead");
    const rejoin = second.commands[0]?.command;
    expect(rejoin?.case === "join" && rejoin.value.roomId).toBe("lobby");
  });

  it("fails a login the server refuses as UnauthenticatedError", async () => {
    const gateway = new FakeGateway();
    const client = clientOf(gateway, []);
    gateway.refuseOpen = { error: new ConnectError("bad token", ConnectCode.Unauthenticated), times: 1 };
    await client.connect();
    await expect(client.join("lobby")).rejects.toBeInstanceOf(UnauthenticatedError);
    expect(client.state).toBe("disconnected");
  });
});

function eventsFrameValue(seqs: number[]) {
  const frame = eventsFrame("lobby", seqs).frame;
  return { events: frame?.case === "events" ? (frame.value.events ?? []) : [] };
}
