// The protocol pieces that hold no process: checks that name the field, body framing of typed
// arrays and Arrow tables, derived endpoints, the loopback test, Z85 and key files.
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { tableFromArrays, tableToIPC } from "apache-arrow";
import { ArrowCheckError, checkArrowStream } from "../../src/protocol/arrow-check.js";
import { ArrowGuard } from "../../src/protocol/arrow-guard.js";
import { endpointsOf, isLocalOnly } from "../../src/protocol/endpoints.js";
import { decode, encode, FrameError, placeBodiesGuarded } from "../../src/protocol/frames.js";
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

/**
 * A small valid Arrow stream like a client would send: ints, floats, dictionary strings. 77 rows:
 * an odd count, so that no vtable size, buffer length or offset (all even) can be mistaken for it.
 */
function sampleStream(): Uint8Array {
  const table = tableFromArrays({
    id: Int32Array.from({ length: 77 }, (_, i) => i),
    score: Float64Array.from({ length: 77 }, (_, i) => i / 3),
    text: Array.from({ length: 77 }, (_, i) => `row ${i % 5}`),
  });
  return tableToIPC(table, "stream");
}

/** The first offset at or after `from` holding `value` as a little-endian int64. */
function findInt64(bytes: Uint8Array, value: bigint, from = 0): number {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let i = from; i + 8 <= bytes.length; i++) if (view.getBigInt64(i, true) === value) return i;
  return -1;
}

test("an Arrow stream whose row count or buffer span exceeds its body is refused before decoding", () => {
  const good = sampleStream();
  assert.equal(checkArrowStream(good).rows, 77);
  // The record batch's row count (or a column's length) holds 77 as an int64 after the schema
  // message: claim 2^40 instead.
  const schemaEnd = 8 + new DataView(good.buffer, good.byteOffset).getInt32(4, true);
  const at = findInt64(good, 77n, schemaEnd);
  assert.ok(at > 0, "the row count is in the metadata");
  const huge = good.slice();
  new DataView(huge.buffer).setBigInt64(at, 2n ** 40n, true);
  assert.throws(
    () => checkArrowStream(huge),
    (e: Error) => e instanceof ArrowCheckError && /rows|values/.test(e.message),
  );
  const frames = [Buffer.from(JSON.stringify({ args: { $body: 0 }, bodies: ["arrow"] })), huge];
  assert.throws(
    () => decode(frames, "args"),
    (e: Error) => e instanceof FrameError && /not a valid Arrow/.test(e.message),
  );
  // A stream cut short and one with bytes after its end are refused too.
  assert.throws(() => checkArrowStream(good.subarray(0, good.length - 9)), ArrowCheckError);
  const trailing = new Uint8Array(good.length + 4);
  trailing.set(good);
  assert.throws(() => checkArrowStream(trailing), ArrowCheckError);
});

test("every single-byte change of an Arrow stream either decodes or is refused, none running away (< 1 s each)", () => {
  const good = sampleStream();
  let refused = 0;
  let slowest = 0;
  for (let i = 0; i < good.length; i++) {
    for (const value of [0x00, 0xff, (good[i] as number) ^ 0x40]) {
      if (value === good[i]) continue;
      const bytes = good.slice();
      bytes[i] = value;
      const started = performance.now();
      try {
        decode([Buffer.from(JSON.stringify({ args: { $body: 0 }, bodies: ["arrow"] })), bytes], "args");
      } catch (error) {
        assert.ok(error instanceof FrameError, `byte ${i} = ${value}: ${(error as Error).message}`);
        refused++;
      }
      slowest = Math.max(slowest, performance.now() - started);
    }
  }
  console.log(
    `${good.length}-byte stream: ${refused} of ${good.length * 3} changes refused; slowest ${slowest.toFixed(1)} ms`,
  );
  assert.ok(refused > 0, "changes to the metadata are refused");
  // Unchecked, such changes made the decoder allocate until the heap ran out (≈ 30 s, then abort).
  assert.ok(slowest < 1000, `slowest decode ${slowest} ms`);
});

test("a stream that passes the structural check is decoded on trial in a bounded thread first", async () => {
  const guard = new ArrowGuard({ timeoutMs: 5000 });
  try {
    const table = tableFromArrays({ x: new Float64Array([1, 2, 3]) });
    const frames = [
      Buffer.from(JSON.stringify({ args: { t: { $body: 0 } }, bodies: ["arrow"] })),
      tableToIPC(table, "stream"),
    ];
    const header = JSON.parse(Buffer.from(frames[0] as Uint8Array).toString()) as {
      args: unknown;
      bodies: unknown;
    };
    const placed = (await placeBodiesGuarded(header.args, header.bodies, frames.slice(1), guard)) as {
      t: typeof table;
    };
    assert.equal(placed.t.numRows, 3);
    const bad = (frames[1] as Uint8Array).slice();
    const schemaEnd = 8 + new DataView(bad.buffer).getInt32(4, true);
    new DataView(bad.buffer).setBigInt64(findInt64(bad, 3n, schemaEnd), 2n ** 45n, true);
    await assert.rejects(placeBodiesGuarded(header.args, header.bodies, [bad], guard), FrameError);
  } finally {
    guard.close();
  }
});

test("schema checks know only own fields: toString, constructor and __proto__ are unknown fields", () => {
  const check = workerCommandArgs["model.free"];
  for (const key of ["toString", "constructor", "hasOwnProperty", "__proto__"]) {
    const value = JSON.parse(`{"name": "m", "${key}": {"name": "other"}}`);
    assert.throws(
      () => check(value, "args"),
      (e: ValidationError) => e instanceof ValidationError && e.field === `args.${key}`,
      key,
    );
  }
  // A "__proto__" key that travels through the body placement stays an own field, not a prototype.
  const frames = [Buffer.from('{"args": {"name": "m", "__proto__": {"extra": 1}}}')];
  const { payload } = decode(frames, "args");
  assert.equal(Object.getPrototypeOf(payload), Object.prototype);
  assert.throws(
    () => check(payload, "args"),
    (e: ValidationError) => e.field === "args.__proto__",
  );
  // An inherited value never stands in for a missing field.
  const inherited = Object.create({ name: "from-prototype" }) as object;
  assert.throws(
    () => check(inherited, "args"),
    (e: ValidationError) => e.field === "args.name",
  );
});
