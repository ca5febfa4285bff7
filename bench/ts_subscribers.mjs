// A worker of bench/ts_fanout_bench.py: TypeScript (Node) subscribers of @parley/client, driven over stdin/stdout.
//
//     node bench/ts_subscribers.mjs
//
// Started by the benchmark, never by hand; it needs the built package
// (npm run build --workspace @parley/client). It speaks the protocol of
// bench/fanout_worker.py: one JSON command per line on stdin, one JSON reply
// line each on stdout carrying the command's "id" ({"error": ...} when it
// failed):
//
// - {"cmd": "connect", "subscribers": [{"address", "username", "key_file"}, ...]}:
//   one Client each (its own HTTP/2 connection), registered on first connect
//   and logged in, OPEN_CONCURRENCY at a time;
// - {"cmd": "join", "rooms": [one room per subscriber], "concurrency": C}:
//   client.join(room) and room.on(event, record) for each;
// - {"cmd": "reset", "tag": T}: counts events of tag T from now;
// - {"cmd": "count"}, {"cmd": "report"}: events received; with their latencies;
// - {"cmd": "close"}, {"cmd": "quit"}.
//
// A payload starts with the publisher's time.time_ns() (20 digits) and the
// tag at characters 21-22 (bench/fanout_wire.py); a delivery's latency is the
// wall clock when its handler runs minus that (one machine, one clock).

import { performance } from "node:perf_hooks";
import { createInterface } from "node:readline";
import { Client } from "../clients/typescript/dist/node.js";

const EVENT = "msg";
const OPEN_CONCURRENCY = 16;
const TAG_START = 21;
const TAG_END = 23;

/** The wall clock in nanoseconds, sub-microsecond (Date.now() has milliseconds only). */
const nowNs = () => (performance.timeOrigin + performance.now()) * 1e6;

class Stats {
  constructor() {
    this.errors = {};
    this.reset("");
  }

  reset(tag) {
    this.tag = tag;
    this.received = 0;
    this.stale = 0;
    this.lastNs = 0;
    this.latenciesUs = [];
  }

  record(data, receivedNs) {
    if (typeof data !== "string" || data.slice(TAG_START, TAG_END) !== this.tag) {
      this.stale += 1;
      return;
    }
    this.received += 1;
    this.lastNs = receivedNs;
    this.latenciesUs.push(Math.floor((receivedNs - Number(data.slice(0, 20))) / 1000));
  }

  error(reason) {
    this.errors[reason] = (this.errors[reason] ?? 0) + 1;
  }

  report() {
    return {
      received: this.received,
      stale: this.stale,
      last_ns: Math.round(this.lastNs),
      latencies_us: this.latenciesUs,
      errors: this.errors,
    };
  }
}

/** Runs `work` on each item, `concurrency` at a time; the failures counted by message. */
async function eachLimited(items, concurrency, work) {
  const failures = {};
  let next = 0;
  const lane = async () => {
    while (next < items.length) {
      const index = next++;
      try {
        await work(items[index], index);
      } catch (error) {
        const reason = `${error?.name ?? "Error"}: ${error?.message ?? error}`.slice(0, 200);
        failures[reason] = (failures[reason] ?? 0) + 1;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, items.length) }, lane));
  return failures;
}

class Worker {
  constructor() {
    this.stats = new Stats();
    this.clients = [];
    this.closing = false;
  }

  async connect(specs) {
    await this.close();
    const started = performance.now();
    const clients = specs.map(
      (spec) => new Client(spec.address, { username: spec.username, keyFile: spec.key_file }),
    );
    for (const client of clients) {
      client.onDisconnect((error) => {
        if (!this.closing) this.stats.error(`disconnect ${error?.reason || error?.message || "without error"}`);
      });
    }
    this.clients = clients;
    const failures = await eachLimited(clients, OPEN_CONCURRENCY, (client) => client.connect());
    if (Object.keys(failures).length > 0) {
      throw new Error(`connect failed: ${JSON.stringify(failures)}`);
    }
    this.closing = false;
    return { connected: clients.length, seconds: (performance.now() - started) / 1000, servers: {} };
  }

  async join(rooms, concurrency) {
    if (rooms.length !== this.clients.length) {
      throw new Error(`${rooms.length} rooms for ${this.clients.length} subscribers`);
    }
    const joinUs = [];
    const firstSentNs = Math.round(nowNs());
    const failures = await eachLimited(this.clients, concurrency || rooms.length || 1, async (client, index) => {
      const sent = performance.now();
      const room = await client.join(rooms[index]);
      room.on(EVENT, (event) => this.stats.record(event.data, nowNs()));
      joinUs.push(Math.round((performance.now() - sent) * 1000));
    });
    return {
      joined: joinUs.length,
      first_sent_ns: firstSentNs,
      last_ready_ns: Math.round(nowNs()),
      join_us: joinUs,
      failures,
    };
  }

  async close() {
    this.closing = true;
    const clients = this.clients;
    this.clients = [];
    await Promise.allSettled(clients.map((client) => client.close()));
  }

  async answer(command) {
    switch (command.cmd) {
      case "connect":
        return await this.connect(command.subscribers);
      case "join":
        return await this.join(command.rooms, Number(command.concurrency ?? 0));
      case "reset":
        this.stats.reset(String(command.tag));
        return { ok: true };
      case "count":
        return { received: this.stats.received, errors: Object.values(this.stats.errors).reduce((a, b) => a + b, 0) };
      case "report":
        return this.stats.report();
      case "close":
        await this.close();
        return { ok: true };
      default:
        throw new Error(`unknown command ${JSON.stringify(command.cmd)}`);
    }
  }
}

const emit = (document) => process.stdout.write(`${JSON.stringify(document)}\n`);

const worker = new Worker();
const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
for await (const line of lines) {
  const command = JSON.parse(line);
  if (command.cmd === "quit") break;
  let reply;
  try {
    reply = await worker.answer(command);
  } catch (error) {
    reply = { error: `${error?.name ?? "Error"}: ${error?.message ?? error}` };
  }
  emit({ ...reply, id: command.id });
}
await worker.close();
emit({ bye: true });
process.exit(0);
