// The protocol pieces that hold no process: checks that name the field, body framing of typed
// arrays and Arrow tables, derived endpoints, the loopback test, Z85 and key files.
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { tableFromArrays } from "apache-arrow";
import { endpointsOf, isLocalOnly } from "../../src/protocol/endpoints.js";
import { decode, encode, FrameError } from "../../src/protocol/frames.js";
import { makeKeyPair, readPublicKey, writeKeyPair, z85Encode } from "../../src/protocol/keys.js";
import { workerCommandArgs } from "../../src/protocol/messages.js";
import { ValidationError } from "../../src/protocol/schema.js";

test("worker command checks name the offending field", () => {
  const check = workerCommandArgs["model.generate"];
  const ok = check({ name: "m", prompts: [new Int32Array([1, 2])], maxNewTokens: 4 }, "args");
  assert.equal(ok.maxNewTokens, 4);
  const cases: [unknown, string][] = [
    [{ prompts: [new Int32Array(1)] }, "args.name"],
    [{ name: "m", prompts: [new Float32Array(1)] }, "args.prompts[0]"],
    [{ name: "m", prompts: [new Int32Array(1)], topP: 2 }, "args.topP"],
    [{ name: "m", prompts: [new Int32Array(1)], maxNewToken: 2 }, "args.maxNewToken"],
    [[], "args"],
  ];
  for (const [value, field] of cases) {
    assert.throws(
      () => check(value, "args"),
      (e: ValidationError) => e instanceof ValidationError && e.field === field,
      field,
    );
  }
});

test("typed arrays and Arrow tables travel as body frames, in place", () => {
  const tokens = new Int32Array([1, 2, 3, 4]).subarray(1);
  const table = tableFromArrays({ x: new Float64Array([0.5, 1.5]) });
  const frames = encode({ id: 1 }, "args", {
    tokens,
    nested: [{ big: new BigInt64Array([5n]) }],
    table,
    n: 3,
  });
  assert.equal(frames.length, 4);
  assert.equal(frames[1]?.buffer, tokens.buffer, "typed arrays are sent without a copy");
  const header = JSON.parse(Buffer.from(frames[0] as Uint8Array).toString());
  assert.deepEqual(header.bodies, ["Int32Array", "BigInt64Array", "arrow"]);
  const { payload } = decode(frames, "args") as { payload: Record<string, unknown> };
  assert.deepEqual(Array.from(payload.tokens as Int32Array), [2, 3, 4]);
  assert.deepEqual((payload.nested as { big: BigInt64Array }[])[0]?.big, new BigInt64Array([5n]));
  assert.deepEqual(Array.from((payload.table as typeof table).getChild("x")?.toArray() ?? []), [0.5, 1.5]);
  assert.equal(payload.n, 3);
});

test("a body at an odd offset is copied into alignment", () => {
  const bytes = new Uint8Array(9);
  new Float64Array(bytes.buffer.slice(0, 8))[0] = 2.5;
  const shifted = new Uint8Array(9);
  shifted.set(new Uint8Array(new Float64Array([2.5]).buffer), 1);
  const frames = [
    Buffer.from(JSON.stringify({ args: { $body: 0 }, bodies: ["Float64Array"] })),
    shifted.subarray(1),
  ];
  const { payload } = decode(frames, "args");
  assert.deepEqual(Array.from(payload as Float64Array), [2.5]);
});

test("framing errors are FrameErrors", () => {
  const bad: Uint8Array[][] = [
    [Buffer.from("not json")],
    [Buffer.from("[]")],
    [Buffer.from(JSON.stringify({ args: { $body: 0 }, bodies: ["Int32Array"] }))],
    [Buffer.from(JSON.stringify({ args: { $body: 0 }, bodies: ["Int32Array"] })), Buffer.alloc(3)],
    [Buffer.from(JSON.stringify({ args: { $body: 0 }, bodies: ["Nope"] })), Buffer.alloc(4)],
    [Buffer.from(JSON.stringify({ args: { $body: 0 }, bodies: ["arrow"] })), Buffer.from("garbage")],
  ];
  for (const frames of bad) assert.throws(() => decode(frames, "args"), FrameError);
  assert.throws(
    () =>
      decode(
        [Buffer.from(JSON.stringify({ args: { a: { $body: 1 } }, bodies: ["Int32Array"] })), Buffer.alloc(4)],
        "args",
      ),
    (e: ValidationError) => e.field === "args.a",
  );
});

test("endpoints derive from one address; only ipc and loopback count as local", () => {
  assert.deepEqual(endpointsOf("tcp://127.0.0.1:5555"), {
    clients: "tcp://127.0.0.1:5555",
    workers: "tcp://127.0.0.1:5556",
    events: "tcp://127.0.0.1:5557",
  });
  assert.equal(endpointsOf("ipc:///tmp/x.sock").events, "ipc:///tmp/x.sock.events");
  assert.throws(() => endpointsOf("tcp://127.0.0.1:65535"), RangeError);
  assert.throws(() => endpointsOf("udp://x"), TypeError);
  for (const a of ["ipc:///tmp/a", "tcp://127.0.0.1:1", "tcp://localhost:1", "tcp://[::1]:1"])
    assert.ok(isLocalOnly(a), a);
  for (const a of ["tcp://0.0.0.0:1", "tcp://*:1", "tcp://10.0.0.1:1", "tcp://head:1"])
    assert.ok(!isLocalOnly(a), a);
});

test("Z85 matches RFC 32 and ZeroMQ's own keys", () => {
  assert.equal(z85Encode(new Uint8Array([0x86, 0x4f, 0xd2, 0x6f, 0xb5, 0x59, 0xf7, 0x5b])), "HelloWorld");
  const { publicKey } = makeKeyPair();
  assert.equal(publicKey.length, 40);
});

test("a .pub file whose key starts with '{' (a Z85 character) reads as the key, not as JSON", () => {
  const dir = mkdtempSync(join(tmpdir(), "tiller-keys-"));
  try {
    const { secretKey } = makeKeyPair();
    const publicKey = `{${makeKeyPair().publicKey.slice(1)}`;
    const { publicFile, secretFile } = writeKeyPair(dir, "brace", { publicKey, secretKey });
    assert.equal(readPublicKey(publicFile), publicKey);
    assert.equal(readPublicKey(secretFile), publicKey);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
