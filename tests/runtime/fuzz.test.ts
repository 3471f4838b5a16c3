// Fuzzing the controller over loopback ipc: valid client messages (JSON headers, typed-array and
// Arrow bodies) changed byte by byte, and Arrow bodies with five random bytes changed, are sent to
// a real controller with a worker. Every message must be answered, the controller must answer
// status throughout, its memory must stay bounded, and the worker must not die. Bounded: a few
// thousand messages, a fixed seed.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { after, test } from "node:test";
import { tableFromArrays } from "apache-arrow";
import * as zmq from "zeromq";
import { connect } from "../../src/index.js";
import { endpointsOf } from "../../src/protocol/endpoints.js";
import { encode } from "../../src/protocol/frames.js";
import { tempDir } from "../helpers/python.js";
import { killAll, tiller } from "../helpers/runtime.js";

const dir = tempDir("fuzz");
after(() => {
  killAll();
  dir.cleanup();
});

function rssBytes(pid: number): number {
  const line = readFileSync(`/proc/${pid}/status`, "utf8")
    .split("\n")
    .find((l) => l.startsWith("VmRSS:"));
  return Number(/(\d+)/.exec(line ?? "")?.[1] ?? Number.NaN) * 1024;
}

/** The valid messages to start from: every body kind a client sends, and each method family. */
function baseMessages(): Uint8Array[][] {
  const table = tableFromArrays({
    id: Int32Array.from({ length: 33 }, (_, i) => i),
    score: Float64Array.from({ length: 33 }, (_, i) => i * 0.25),
    text: Array.from({ length: 33 }, (_, i) => `r${i % 3}`),
  });
  return [
    encode({ id: 1, method: "status" }, "args", {}),
    encode({ id: 2, method: "echo" }, "args", { tokens: new Int32Array([1, 2, 3]), x: 1.5 }),
    encode({ id: 3, method: "echo" }, "args", { table }),
    encode({ id: 4, method: "run" }, "args", { command: "worker.info", args: {} }),
    encode({ id: 5, method: "experiment.call" }, "args", { id: "none", op: "state" }),
  ];
}

/** Seeded xorshift, so that a failure can be replayed. */
function random(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s / 2 ** 32;
  };
}

function* mutations(): Generator<Uint8Array[]> {
  for (const message of baseMessages()) {
    for (let f = 0; f < message.length; f++) {
      const frame = message[f] as Uint8Array;
      for (let i = 0; i < frame.length; i++) {
        for (const value of [0xff, (frame[i] as number) ^ 0x24]) {
          const changed = Uint8Array.from(frame);
          changed[i] = value;
          yield message.map((m, k) => (k === f ? changed : m));
        }
      }
    }
  }
  // The shape of the reported crash: an Arrow body with five bytes changed.
  const arrow = baseMessages()[2] as Uint8Array[];
  const next = random(16);
  for (let n = 0; n < 400; n++) {
    const body = Uint8Array.from(arrow[1] as Uint8Array);
    for (let k = 0; k < 5; k++) body[Math.floor(next() * body.length)] = Math.floor(next() * 256);
    yield [arrow[0] as Uint8Array, body];
  }
}

test("byte-by-byte mutated messages are all answered; status answers throughout, RSS stays bounded, no worker dies", {
  timeout: 300_000,
}, async () => {
  const address = `ipc://${dir.path}/c.sock`;
  const controller = tiller(["controller", "--bind", address, "--cpu", "1"]);
  const cluster = await connect(address, { timeoutMs: 20_000 });
  const before = await cluster.waitForWorkers(1, 30_000);
  const workerPid = before.workers[0]?.pid;
  const socket = new zmq.Dealer({ linger: 0, receiveTimeout: 15_000 });
  socket.connect(endpointsOf(address).clients);
  const baseline = rssBytes(controller.pid);
  let peak = baseline;
  let sent = 0;
  let answered = 0;
  let refused = 0;
  const started = Date.now();
  try {
    const batch: Uint8Array[][] = [];
    const flush = async () => {
      for (const frames of batch) await socket.send(frames);
      sent += batch.length;
      while (answered < sent) {
        const [header] = await socket.receive();
        answered++;
        if ((JSON.parse(String(header)) as { ok: boolean }).ok === false) refused++;
      }
      batch.length = 0;
      // Between batches: the controller still answers a plain status quickly.
      const state = await cluster.status({ timeoutMs: 3000 });
      assert.equal(state.workers[0]?.pid, workerPid, "the worker is still the same process");
      peak = Math.max(peak, rssBytes(controller.pid));
    };
    for (const frames of mutations()) {
      batch.push(frames);
      if (batch.length === 200) await flush();
    }
    await flush();
    const after = await cluster.status({ timeoutMs: 3000 });
    console.log(
      `${sent} mutated messages in ${((Date.now() - started) / 1000).toFixed(1)} s: all answered ` +
        `(${refused} refused); controller RSS ${(baseline / 2 ** 20).toFixed(0)} → peak ${(peak / 2 ** 20).toFixed(0)} MiB`,
    );
    assert.equal(answered, sent);
    assert.ok(refused > sent / 4, `most mutations are refused (${refused} of ${sent})`);
    assert.deepEqual(after.failures, [], "no worker was lost");
    assert.ok(peak - baseline < 400 * 2 ** 20, `RSS grew by ${((peak - baseline) / 2 ** 20).toFixed(0)} MiB`);
  } finally {
    socket.close();
    await cluster.shutdown();
    cluster.close();
    assert.equal(await controller.exited, 0, controller.output().slice(-2000));
  }
});
