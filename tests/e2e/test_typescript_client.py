"""The TypeScript client (clients/typescript, built once with tsc) against a real server, next to the Python SDK.

Each test runs small Node scripts (ESM, importing the built package) as child
processes that print JSON lines: a Python client and a TypeScript client in the
same room exchange events and subject messages both ways; the same refusals
arrive as the same typed errors on both; a TypeScript client resumes after a
server restart with every kept event once; and the quick start of
docs/typescript.md runs as written. The server runs examples/parley.toml, as
the doc says.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from parley import Client, ParleyError
from parley.messages import SubjectMessage
from services import allinone
from services.runtime.config import Config, load_config
from tests.support import REPO, build_typescript_client, running, wait_until

# Tests that build clients/typescript/dist run in one xdist worker, one after another (make test: -n 2).
pytestmark = pytest.mark.xdist_group("typescript-build")
PACKAGE = REPO / "clients" / "typescript"
NODE_ENTRY = (PACKAGE / "dist" / "node.js").as_uri()
CONFIG_FILE = REPO / "examples" / "parley.toml"
DOC = REPO / "docs" / "typescript.md"
TS_BLOCK = re.compile(r"```ts\n(.*?)```", re.S)
LINE_TIMEOUT = 15.0


@pytest.fixture(scope="module", autouse=True)
def built_package() -> None:
    """The package compiled once for the module (into clients/typescript/dist)."""
    assert shutil.which("node") is not None, "node is not installed"
    build_typescript_client()


def example_config(data_dir: Path, **overrides: Any) -> Config:
    """examples/parley.toml on a free port, with this test's data directory."""
    values: dict[str, Any] = {
        "server.host": "127.0.0.1",
        "server.port": 0,
        "server.data_dir": data_dir,
        "server.grace_seconds": 1.0,
        "auth.registrations_per_minute": 10_000,
        **overrides,
    }
    return load_config(CONFIG_FILE, overrides=values)


def as_script(source: str, address: str) -> str:
    """A script importing the built package (the way an app imports it) at this test's server."""
    return source.replace('"@parley/client/node"', json.dumps(NODE_ENTRY)).replace("localhost:50051", address)


def write_script(source: str, address: str, workdir: Path) -> Path:
    """The script as a file of its own in `workdir`."""
    path = workdir / f"script-{len(list(workdir.glob('script-*.mjs')))}.mjs"
    path.write_text(as_script(source, address))
    return path


class NodeScript:
    """A Node script in a child process; it prints one JSON object per line."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def line(self, wanted: Callable[[dict[str, Any]], bool] = lambda _: True) -> dict[str, Any]:
        """The next printed object `wanted` accepts (others are skipped)."""
        assert self.process.stdout is not None
        while True:
            raw = await asyncio.wait_for(self.process.stdout.readline(), LINE_TIMEOUT)
            if not raw:
                raise AssertionError(f"the script ended early: {await self.errors()}")
            printed = json.loads(raw)
            if wanted(printed):
                return printed

    async def finished(self) -> str:
        """Waits for a clean exit; returns what the script printed after the lines already read."""
        out, err = await asyncio.wait_for(self.process.communicate(), LINE_TIMEOUT)
        assert self.process.returncode == 0, err.decode()
        return out.decode()

    async def errors(self) -> str:
        assert self.process.stderr is not None
        return (await self.process.stderr.read()).decode()


@contextlib.asynccontextmanager
async def node_script(
    source: str, address: str, workdir: Path, *args: str, env: dict[str, str] | None = None
) -> AsyncIterator[NodeScript]:
    process = await asyncio.create_subprocess_exec(
        "node",
        str(write_script(source, address, workdir)),
        address,
        *args,
        cwd=workdir,
        env={**os.environ, **(env or {})},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield NodeScript(process)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


EXCHANGE = """
import { Client } from "@parley/client/node";
const [address, keyFile] = process.argv.slice(2);
const say = (value) => console.log(JSON.stringify(value));
const until = async (check) => { while (!check()) await new Promise((r) => setTimeout(r, 10)); };

const client = new Client(address, { username: "tsuser", keyFile });
await client.connect();
const subjects = [];
await client.subscribe("news:*", (message) => { subjects.push(message); });
const room = await client.join("chat");
const presence = [];
room.onPresence((change) => { presence.push(change); });
const events = room.events();
say({ ready: client.userId });

let fromPython;
for await (const event of events) {
  if (event.sender !== client.userId) { fromPython = event; break; }
}
await client.publish("news:ts", { from: "ts", list: [1, null, true] });
const published = await room.trigger("message", { text: "hello from TypeScript", extra: { n: 2.5, ok: [true, null] } });
await until(() => subjects.length === 2);
say({
  fromPython: { event: fromPython.event, data: fromPython.data, sender: fromPython.sender, seq: fromPython.seq },
  published,
  subjects,
  participants: Object.keys(await room.participants()).sort(),
  presence,
});
await client.close();
"""


async def test_python_and_typescript_clients_exchange_events_and_subject_messages(tmp_path: Path) -> None:
    async with running(allinone.create_server, example_config(tmp_path / "data")) as (_, address):
        async with Client(address, username="pyuser", key_file=tmp_path / "py.json") as py:
            room = await py.join("chat")
            joined: list[tuple[str, bool]] = []
            room.on_presence(lambda user_id, present: joined.append((user_id, present)))
            events = room.events()
            subjects: list[SubjectMessage] = []
            await py.message.subscribe("news:*", subjects.append)
            async with node_script(EXCHANGE, address, tmp_path, str(tmp_path / "ts.json")) as ts:
                ts_user = (await ts.line())["ready"]
                await wait_until(lambda: (ts_user, True) in joined)
                await py.message.publish("news:py", {"from": "py"})
                sent = {"text": "hello from Python", "n": 1, "nested": {"a": [1, None, True]}}
                mine = await room.trigger("message", sent)
                theirs = await anext(e async for e in events if e.sender == ts_user)
                result = await ts.line()
                await ts.finished()

            assert result["fromPython"] == {"event": "message", "data": sent, "sender": py.user_id, "seq": mine.seq}
            assert theirs.data == {"text": "hello from TypeScript", "extra": {"n": 2.5, "ok": [True, None]}}
            assert [theirs.seq, theirs.handle] == [result["published"]["seq"], result["published"]["handle"]]
            # Each subscribed to news:*: both see both messages, their own included.
            both = [
                {"subject": "news:py", "sender": py.user_id, "data": {"from": "py"}},
                {"subject": "news:ts", "sender": ts_user, "data": {"from": "ts", "list": [1, None, True]}},
            ]
            assert result["subjects"] == both
            assert [{"subject": s.subject, "sender": s.sender, "data": s.data} for s in subjects] == both
            assert result["participants"] == sorted([py.user_id, ts_user])
            assert {"userId": ts_user, "joined": True} in result["presence"]


REFUSALS = """
import { Client } from "@parley/client/node";
const [address, keyFile, takenName] = process.argv.slice(2);
const client = new Client(address, { username: "tsrefused", keyFile });
await client.connect();
const room = await client.join("chat");
const refusals = {
  join_missing_room: () => client.join("no-such-room"),
  get_missing_room: () => client.getRoom("no-such-room"),
  oversize_payload: () => room.trigger("message", { text: "x".repeat(20000) }),
  event_not_listed: () => room.trigger("no_such_event", {}),
  payload_against_schema: () => room.trigger("message", { text: 5 }),
  bad_room_id: () => client.createRoom("Bad Id!"),
  taken_username: () => new Client(address, { username: takenName }).connect(),
};
const seen = {};
for (const [name, refused] of Object.entries(refusals)) {
  try {
    await refused();
    seen[name] = null;
  } catch (error) {
    seen[name] = [error.name, error.reason, error.codeName];
  }
}
console.log(JSON.stringify(seen));
await client.close();
"""


async def python_refusals(py: Client, address: str) -> dict[str, list[str] | None]:
    room = await py.join("chat")
    refusals = {
        "join_missing_room": lambda: py.join("no-such-room"),
        "get_missing_room": lambda: py.get_room("no-such-room"),
        "oversize_payload": lambda: room.trigger("message", {"text": "x" * 20000}),
        "event_not_listed": lambda: room.trigger("no_such_event", {}),
        "payload_against_schema": lambda: room.trigger("message", {"text": 5}),
        "bad_room_id": lambda: py.create_room("Bad Id!"),
        "taken_username": lambda: Client(address, username="pyrefused").connect(),
    }
    seen: dict[str, list[str] | None] = {}
    for name, refused in refusals.items():
        try:
            await refused()
            seen[name] = None
        except ParleyError as error:
            seen[name] = [type(error).__name__, error.reason, error.code.name]
    return seen


async def test_the_same_refusals_arrive_as_the_same_typed_errors(tmp_path: Path) -> None:
    async with running(allinone.create_server, example_config(tmp_path / "data")) as (_, address):
        async with Client(address, username="pyrefused", key_file=tmp_path / "py.json") as py:
            in_python = await python_refusals(py, address)
            async with node_script(REFUSALS, address, tmp_path, str(tmp_path / "ts.json"), "pyrefused") as ts:
                in_typescript = await ts.line()
                await ts.finished()

    assert in_typescript == in_python
    assert in_python["join_missing_room"] == ["NotFoundError", "ROOM_NOT_FOUND", "NOT_FOUND"]
    assert in_python["oversize_payload"] == ["PayloadTooLargeError", "PAYLOAD_TOO_LARGE", "RESOURCE_EXHAUSTED"]
    assert in_python["taken_username"] == ["AlreadyExistsError", "USERNAME_TAKEN", "ALREADY_EXISTS"]
    assert all(refusal is not None for refusal in in_python.values())


ROOM_CALLS = """
import { Client } from "@parley/client/node";
const [address, keyFile] = process.argv.slice(2);
const client = new Client(address, { username: "tscalls", keyFile });
await client.connect();
const room = await client.join("chat");
const subscriptions = [
  await room.unsubscribe(["typing"]),
  await room.subscribe(["typing"]),
  await room.unsubscribe(),
  await room.subscribeAll(),
];
const [one, two, three] = [
  await room.trigger("message", { text: "one" }),
  await room.trigger("message", { text: "two" }),
  await room.trigger("message", { text: "three" }),
];
const edited = await room.edit(one.handle, { text: "one, edited" });
const deleted = await room.delete(two.handle);
await room.sendEphemeral("typing", { typing: true });
const latest = (await room.history({ limit: 2 })).map((e) => [e.seq, e.data, e.deleted]);
const older = (await room.history({ limit: 5, before: three.seq })).map((e) => e.seq);
const byOffset = (await client.getHistory("chat", { start: 1, end: 3 })).map((e) => e.seq);
await room.leave();
const created = await client.createRoom("ts-room", { name: "From TypeScript", events: ["note"] });
const listed = (await client.listRooms()).map((r) => r.roomId);
await client.deleteRoom("ts-room");
const me = await client.whoami();
const byName = await client.getUser({ username: "pywatcher" });
const byId = await client.getUser({ userId: byName.userId });
const nobody = await client
  .getUser({ username: "nobody-at-all" })
  .catch((error) => [error.constructor.name, error.reason]);
console.log(JSON.stringify({
  users: [byName.username, byId.username, byId.userId === byName.userId], nobody,
  subscriptions, one, two, three, edited, deleted, latest, older, byOffset, left: room.closed,
  created: [created.roomId, created.name, created.events.map((e) => e.name)], listed,
  me: [me.userId, me.username, me.deviceId === client.deviceId],
  revoked: await client.logout(),
}));
"""


async def test_the_room_calls_of_a_typescript_client_reach_a_python_client(tmp_path: Path) -> None:
    async with running(allinone.create_server, example_config(tmp_path / "data")) as (_, address):
        async with Client(address, username="pywatcher", key_file=tmp_path / "py.json") as py:
            room = await py.join("chat")
            seen: list[tuple[str, Any]] = []
            room.on_edited(lambda change: seen.append(("edited", change.handle, change.data)))
            room.on_deleted(lambda change: seen.append(("deleted", change.handle, change.data)))
            room.on_ephemeral(lambda signal: seen.append(("signal", signal.subject, signal.data, signal.expired)))
            room.on_presence(lambda user_id, present: seen.append(("presence", user_id, present)))
            async with node_script(ROOM_CALLS, address, tmp_path, str(tmp_path / "ts.json")) as ts:
                done = await ts.line()
                await ts.finished()
            ts_user = done["me"][0]
            expected = [
                ("edited", done["one"]["handle"], {"text": "one, edited"}),
                ("deleted", done["two"]["handle"], None),
                ("signal", "typing", {"typing": True}, False),
                ("signal", "typing", None, True),  # it ends when its sender leaves
                ("presence", ts_user, False),
            ]
            await wait_until(lambda: all(entry in seen for entry in expected))

    assert done["subscriptions"] == [["*", "-typing"], ["*"], [], ["*"]]
    assert [done["edited"]["seq"], done["edited"]["data"]] == [done["one"]["seq"], {"text": "one, edited"}]
    assert [done["deleted"]["seq"], done["deleted"]["deleted"]] == [done["two"]["seq"], True]
    assert done["latest"] == [[done["three"]["seq"], {"text": "three"}, False], [done["two"]["seq"], None, True]]
    assert done["older"] == [done["two"]["seq"], done["one"]["seq"]]
    assert done["byOffset"] == done["older"]
    assert done["left"] is True
    assert done["created"] == ["ts-room", "From TypeScript", ["note"]]
    assert "ts-room" in done["listed"]
    assert done["me"] == [ts_user, "tscalls", True]
    assert done["users"] == ["pywatcher", "pywatcher", True]
    assert done["nobody"] == ["NotFoundError", "USER_NOT_FOUND"]
    assert done["revoked"] >= 1


RESUME = """
import { Client } from "@parley/client/node";
const [address, keyFile, expected] = process.argv.slice(2);
const say = (value) => console.log(JSON.stringify(value));
// random 1: the reconnection waits the draining gateway's whole hint, so events are missed meanwhile.
const client = new Client(address, { username: "tsresume", keyFile, random: () => 1 });
const states = [];
client.onState((state) => { states.push(state); say({ state }); });
let replayed = 0;
client.onHistory((roomId, events) => { replayed += events.length; });
await client.connect();
const room = await client.join("chat");
say({ ready: client.userId });
const received = [];
for await (const event of room) {
  received.push({ seq: event.seq, n: event.data.n });
  say({ received: event.seq });
  if (received.length === Number(expected)) break;
}
say({ received, recovered: room.recovered, replayed, states });
await client.close();
"""


async def test_a_typescript_client_resumes_after_a_server_restart_with_every_kept_event_once(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    settings = {"gateway.drain_reconnect_within_ms": 2500}
    async with running(allinone.create_server, example_config(data_dir, **settings)) as (server, address):
        port = int(address.rsplit(":", 1)[1])
        async with (
            node_script(RESUME, address, tmp_path, str(tmp_path / "ts.json"), "5") as ts,
            Client(address, username="bob", key_file=tmp_path / "bob.json", reconnect=False) as bob,
        ):
            await ts.line(lambda printed: "ready" in printed)
            first = await (await bob.join("chat")).trigger("message", {"text": "before", "n": 1})
            await ts.line(lambda printed: printed.get("received") == first.seq)

            await server.stop(1)
            restarted = example_config(data_dir, **settings, **{"server.port": port})
            async with running(allinone.create_server, restarted):
                bob_room = await bob.join("chat")
                missed = [(await bob_room.trigger("message", {"text": "missed", "n": n})).seq for n in (2, 3, 4)]
                await ts.line(lambda printed: printed.get("state") == "reconnecting")
                await ts.line(lambda printed: printed.get("state") == "connected")
                live = await bob_room.trigger("message", {"text": "live", "n": 5})
                summary = await ts.line(lambda printed: "recovered" in printed)
                await ts.finished()

    assert [event["seq"] for event in summary["received"]] == [first.seq, *missed, live.seq]
    assert [event["n"] for event in summary["received"]] == [1, 2, 3, 4, 5]
    assert summary["recovered"] is True
    assert summary["replayed"] == len(missed)
    assert summary["states"] == ["connecting", "connected", "reconnecting", "connected"]


async def test_the_quick_start_of_the_typescript_doc_runs_as_written(tmp_path: Path) -> None:
    blocks = TS_BLOCK.findall(DOC.read_text())
    assert blocks, "docs/typescript.md has no ```ts block"
    home = tmp_path / "home"
    async with running(allinone.create_server, example_config(tmp_path / "data")) as (_, address):
        for attempt in ("first", "second"):  # the second run logs in with the key file the first one wrote
            async with node_script(blocks[0], address, tmp_path, env={"HOME": str(home)}) as quick_start:
                printed = await quick_start.finished()
            assert "stored at" in printed, f"{attempt} run: {printed}"
            assert "hello from TypeScript" in printed, f"{attempt} run: {printed}"
    assert (home / ".config" / "parley" / "ts-demo.json").stat().st_mode & 0o777 == 0o600


async def test_the_errors_example_of_the_typescript_doc_runs_as_written(tmp_path: Path) -> None:
    errors_example = next(block for block in TS_BLOCK.findall(DOC.read_text()) if "PayloadTooLargeError" in block)
    async with running(allinone.create_server, example_config(tmp_path / "data")) as (_, address):
        async with node_script(errors_example, address, tmp_path, env={"HOME": str(tmp_path / "home")}) as script:
            printed = await script.finished()
    assert printed.split("\n")[:2] == ["ROOM_NOT_FOUND", "PAYLOAD_TOO_LARGE 16384"], printed
