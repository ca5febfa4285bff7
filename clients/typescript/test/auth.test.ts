import { ConnectError, Code as ConnectCode } from "@connectrpc/connect";
import * as ed from "@noble/ed25519";
import { afterEach, describe, expect, it } from "vitest";
import { Auth } from "../src/auth.js";
import { ParleyClient } from "../src/client.js";
import { AlreadyExistsError, ValidationError } from "../src/errors.js";
import { DeviceIdentity, deviceCertificateBytes } from "../src/identity.js";
import { memoryKeyStore } from "../src/keystore.js";
import { subscribeSession } from "../src/session.js";
import { FakeGateway, recordingSleep, until } from "./fake-gateway.js";

const clients: ParleyClient[] = [];

afterEach(async () => {
  await Promise.all(clients.splice(0).map((client) => client.close()));
});

describe("registration", () => {
  it("registers a certified device, then keeps the keys as the key file", async () => {
    const gateway = new FakeGateway();
    const keys = memoryKeyStore();
    const auth = new Auth(gateway.transport, { username: "ann", keyStore: keys, deviceName: "laptop" });
    await auth.ensureRegistered();

    const [request] = gateway.registrations;
    const device = request?.device;
    expect(request?.username).toBe("ann");
    expect(device?.displayName).toBe("laptop");
    const signed = deviceCertificateBytes(request!.userSigningKey, device!.signingKey, device!.dhKey);
    expect(ed.verify(device!.certificate, signed, request!.userSigningKey)).toBe(true);
    const stored = DeviceIdentity.fromKeyFileText((await keys.read("current"))!);
    expect([stored.username, stored.userId, stored.registered]).toEqual(["ann", "u1", true]);
    expect(await keys.read("pending")).toBeNull();
    await auth.ensureRegistered(); // registered: nothing more to do
    expect(gateway.registrations).toHaveLength(1);
  });

  it("keeps the pending keys when the outcome is unknown, and registers with them next time", async () => {
    const gateway = new FakeGateway();
    const keys = memoryKeyStore();
    gateway.refuseRegistration = new ConnectError("connection reset", ConnectCode.Unavailable);
    await expect(new Auth(gateway.transport, { username: "bo", keyStore: keys }).ensureRegistered()).rejects.toThrow();
    expect(await keys.read("pending")).not.toBeNull();
    gateway.refuseRegistration = null;
    await new Auth(gateway.transport, { username: "bo", keyStore: keys }).ensureRegistered();
    const [first, second] = gateway.registrations;
    expect(second?.device?.signingKey).toEqual(first?.device?.signingKey);
  });

  it("takes a taken name for its own earlier registration when the device can log in", async () => {
    const gateway = new FakeGateway();
    gateway.refuseRegistration = new ConnectError("taken", ConnectCode.AlreadyExists);
    const keys = memoryKeyStore();
    await new Auth(gateway.transport, { username: "cy", keyStore: keys }).ensureRegistered();
    expect(await keys.read("current")).not.toBeNull();

    gateway.refuseLogin = new ConnectError("unknown device", ConnectCode.NotFound);
    const other = memoryKeyStore();
    const refused = new Auth(gateway.transport, { username: "cy", keyStore: other }).ensureRegistered();
    await expect(refused).rejects.toSatisfy(
      (error) => error instanceof AlreadyExistsError && error.reason === "USERNAME_TAKEN",
    );
    expect([await other.read("current"), await other.read("pending")]).toEqual([null, null]);
  });

  it("refuses a key file of another user, and a missing username", async () => {
    const gateway = new FakeGateway();
    const keys = memoryKeyStore("keys.json");
    await new Auth(gateway.transport, { username: "dee", keyStore: keys }).ensureRegistered();
    await expect(new Auth(gateway.transport, { username: "eve", keyStore: keys }).identity()).rejects.toThrow(
      /keys.json belongs to dee, not eve/,
    );
    const nameless = new Auth(gateway.transport, { keyStore: memoryKeyStore() });
    await expect(nameless.identity()).rejects.toBeInstanceOf(ValidationError);
  });
});

describe("tokens", () => {
  it("refreshes an access token close to expiry, one exchange at a time", async () => {
    const gateway = new FakeGateway();
    gateway.tokenTtlMs = 10_000; // inside the 30 s margin: every use refreshes
    const identity = DeviceIdentity.generate("fay");
    identity.registered = true;
    const auth = new Auth(gateway.transport, { identity });
    await auth.login();
    const tokens = await Promise.all([auth.accessToken(), auth.accessToken()]);
    expect(gateway.refreshes).toBe(2); // one exchange per call, in turn: never the same refresh token twice
    expect(tokens).toEqual(["token-refreshed1", "token-refreshed2"]);
    expect(await auth.logout()).toBe(1);
    expect(auth.session).toBeNull();
  });

  it("hands the realtime session a fresh token before its own expires", async () => {
    const gateway = new FakeGateway();
    gateway.tokenTtlMs = 40_000;
    const delays: number[] = [];
    const identity = DeviceIdentity.generate("gus");
    identity.registered = true;
    const client = new ParleyClient({
      transport: gateway.transport,
      session: subscribeSession,
      identity,
      heartbeat: { intervalMs: 60_000, timeoutMs: 60_000 },
      sleep: recordingSleep(delays),
    });
    clients.push(client);
    await client.connect();
    await client.join("lobby");
    const fake = await gateway.session(1);
    await until(() => fake.commands.some((command) => command.command.case === "refresh"));
    const refresh = fake.commands.find((command) => command.command.case === "refresh")?.command;
    expect(refresh?.case === "refresh" && refresh.value.accessToken).toBe("token-refreshed1");
    expect(delays[0]).toBeGreaterThan(15_000); // halfway through a 40 s token (its lead is 25 s)
    expect(delays[0]).toBeLessThanOrEqual(20_000);
  });
});
