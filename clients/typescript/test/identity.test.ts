import { mkdtempSync, chmodSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { fromBase64, toBase64 } from "../src/encoding.js";
import { DeviceIdentity, deviceCertificateBytes, loginChallengeBytes, x25519PublicKey } from "../src/identity.js";
import { loadKeyFile, readPrivate, saveKeyFile } from "../src/node.js";
import { python } from "./python.js";

const hex = (bytes: Uint8Array): string => Buffer.from(bytes).toString("hex");
const seed = (first: number): Uint8Array => Uint8Array.from({ length: 32 }, (_, i) => first + i);

function fixedIdentity(): DeviceIdentity {
  return DeviceIdentity.create({
    username: "fixed",
    displayName: "laptop",
    deviceSigningSeed: seed(1),
    deviceDhPrivate: seed(33),
    userSigningSeed: seed(65),
    userId: "u123",
    registered: true,
  });
}

interface PythonView {
  device_id: string;
  device_signing_key: string;
  dh_key: string;
  user_key: string;
  certificate_bytes: string;
  certificate: string;
  challenge_bytes: string;
  challenge_signature: string;
  key_file: Record<string, unknown>;
}

// The Python client's view of a key file given on stdin (base64 JSON fields as in a key file).
const PYTHON_VIEW = `
import json, sys
from parley.crypto import identity as proofs
from parley.device_identity import DeviceIdentity
identity = DeviceIdentity.from_json(json.loads(sys.stdin.read()))
keys = identity.certify(identity)
nonce = bytes(range(100, 132))
print(json.dumps({
    "device_id": identity.device_id,
    "device_signing_key": keys.signing_key.hex(),
    "dh_key": keys.dh_key.hex(),
    "user_key": identity.user_public_key.hex(),
    "certificate_bytes": proofs.device_certificate_bytes(identity.user_public_key, keys.signing_key, keys.dh_key).hex(),
    "certificate": keys.certificate.hex(),
    "challenge_bytes": proofs.login_challenge_bytes("ch-1", nonce, identity.user_id, identity.device_id).hex(),
    "challenge_signature": identity.sign_challenge("ch-1", nonce, identity.user_id).hex(),
    "key_file": identity.to_json(),
}))
`;

describe("device identity", () => {
  it("builds and signs exactly the bytes the Python client does, for fixed keys", async () => {
    const identity = fixedIdentity();
    const expected = python<PythonView>(PYTHON_VIEW, identity.toKeyFileText());
    const certified = await identity.certify();
    const nonce = Uint8Array.from({ length: 32 }, (_, i) => 100 + i);

    expect(identity.deviceId).toBe(expected.device_id);
    expect(hex(certified.signingKey)).toBe(expected.device_signing_key);
    expect(hex(certified.dhKey)).toBe(expected.dh_key);
    expect(hex(identity.userPublicKey)).toBe(expected.user_key);
    expect(hex(deviceCertificateBytes(identity.userPublicKey, certified.signingKey, certified.dhKey))).toBe(
      expected.certificate_bytes,
    );
    expect(hex(certified.certificate)).toBe(expected.certificate);
    expect(hex(loginChallengeBytes("ch-1", nonce, "u123", identity.deviceId))).toBe(expected.challenge_bytes);
    expect(hex(identity.signChallenge("ch-1", nonce, "u123"))).toBe(expected.challenge_signature);
    expect(identity.toJson()).toEqual(expected.key_file);
    expect(certified.displayName).toBe("laptop");
  });

  it("derives the X25519 public key of a raw private key as libsodium does", async () => {
    const privateKey = seed(0);
    const expected = python<{ public: string }>(
      `import json, nacl.public
print(json.dumps({"public": nacl.public.PrivateKey(bytes(range(32))).public_key.encode().hex()}))`,
    );
    expect(hex(await x25519PublicKey(privateKey))).toBe(expected.public);
  });

  it("writes a key file the Python client loads, and loads one the Python client wrote", async () => {
    const directory = mkdtempSync(path.join(tmpdir(), "parley-keys-"));
    const mine = DeviceIdentity.generate("tsuser", "phone");
    mine.userId = "u42";
    mine.registered = true;
    const written = path.join(directory, "nested", "ts.json");
    await saveKeyFile(written, mine);
    expect(statSync(written).mode & 0o777).toBe(0o600);
    const seenByPython = python<{ device_id: string; user_id: string; registered: boolean; name: string }>(
      `import json, sys
from parley.device_identity import DeviceIdentity
i = DeviceIdentity.load(${JSON.stringify(written)})
print(json.dumps({
    "device_id": i.device_id, "user_id": i.user_id, "registered": i.registered, "name": i.display_name,
}))`,
    );
    expect(seenByPython).toEqual({ device_id: mine.deviceId, user_id: "u42", registered: true, name: "phone" });

    const fromPython = path.join(directory, "py.json");
    const pythonKeys = python<{ device_id: string; user_key: string; dh_key: string }>(
      `import json
from pathlib import Path
from parley.device_identity import DeviceIdentity
i = DeviceIdentity.generate("pyuser", "desk")
i.user_id, i.registered = "u7", True
i.save(Path(${JSON.stringify(fromPython)}))
print(json.dumps({
    "device_id": i.device_id,
    "user_key": i.user_public_key.hex(),
    "dh_key": i.device_dh_key.public_key.encode().hex(),
}))`,
    );
    const loaded = await loadKeyFile(fromPython);
    expect(loaded.deviceId).toBe(pythonKeys.device_id);
    expect(hex(loaded.userPublicKey)).toBe(pythonKeys.user_key);
    expect(hex(await loaded.deviceDhKey())).toBe(pythonKeys.dh_key);
    const { username, userId, registered, displayName } = loaded;
    expect([username, userId, registered, displayName]).toEqual(["pyuser", "u7", true, "desk"]);
    // And back: what the TypeScript client writes of it is what Python wrote.
    expect(JSON.parse(await readPrivate(fromPython))).toEqual(loaded.toJson());
  });

  it("refuses a key file others can read, and one of another version", async () => {
    const directory = mkdtempSync(path.join(tmpdir(), "parley-keys-"));
    const open = path.join(directory, "open.json");
    writeFileSync(open, fixedIdentity().toKeyFileText());
    chmodSync(open, 0o644);
    await expect(loadKeyFile(open)).rejects.toThrow(/readable by others \(mode 644\)/);
    expect(() => DeviceIdentity.fromJson({ ...fixedIdentity().toJson(), version: 2 })).toThrow(/version 2/);
  });

  it("keeps the user key only on the device that holds it", async () => {
    const withoutUserKey = DeviceIdentity.fromJson({ ...fixedIdentity().toJson(), user_signing_seed: null });
    expect(withoutUserKey.holdsUserKey).toBe(false);
    await expect(withoutUserKey.certify()).rejects.toThrow(/does not hold the user signing key/);
    expect(toBase64(fromBase64(fixedIdentity().toJson().device_signing_seed))).toBe(toBase64(seed(1)));
  });
});
