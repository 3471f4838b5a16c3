// A controller and two CPU workers that join it by address, as real processes over ipc://:
// ranks, the engine behind worker commands, the process group, 1,000 requests in flight, a 1M-row
// Arrow table, malformed input, and a worker killed mid-command.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { tableFromArrays } from "apache-arrow";
import * as zmq from "zeromq";
import { type Cluster, connect, Model, type TillerError } from "../../src/index.js";
import { tempDir } from "../helpers/python.js";
import { alive, killAll, killPid, type Spawned, tiller, tinyLlama, waitFor } from "../helpers/runtime.js";
import { writeTinyDense } from "../helpers/tiny-models.js";

const dir = tempDir("cluster");
const address = `ipc://${dir.path}/c.sock`;
const maxMessageBytes = 64 * 2 ** 20;
let controller: Spawned;
const workers: Spawned[] = [];
let cluster: Cluster;

function startWorker(): Spawned {
  const w = tiller(["worker", "--controller", address]);
  workers.push(w);
  return w;
}

before(async () => {
  controller = tiller([
    "controller",
    "--bind",
    address,
    "--workers",
    "2",
    "--heartbeat-timeout-ms",
    "1500",
    "--controller-timeout-ms",
    "3000",
    "--max-message-bytes",
    String(maxMessageBytes),
  ]);
  startWorker();
  startWorker();
  cluster = await connect(address, { timeoutMs: 20_000 });
  await cluster.waitForWorkers(2, 30_000);
});

after(async () => {
  cluster?.close();
  killAll();
  await new Promise((r) => setTimeout(r, 100));
  dir.cleanup();
});

test("two CPU workers join by address and get ranks 0 and 1", { timeout: 30_000 }, async () => {
  const state = await cluster.status();
  assert.equal(state.worldSize, 2);
  assert.deepEqual(
    state.workers.map((w) => w.rank),
    [0, 1],
  );
  assert.deepEqual(new Set(state.workers.map((w) => w.pid)), new Set(workers.map((w) => w.pid)));
  for (const w of state.workers) {
    assert.equal(w.device, "cpu");
    assert.ok((w.memory.hostTotalBytes as number) > 0, "a worker reports its memory");
  }
  const info = await cluster.run("worker.info", {});
  assert.deepEqual(
    info.map((r) => r.result.pid),
    state.workers.map((w) => w.pid),
  );
});

test("worker commands run on the engine: load, logprobs, generate, free", { timeout: 60_000 }, async () => {
  const { config, tensors } = tinyLlama(7);
  const loaded = await cluster.run("model.load", { name: "tiny", config, tensors });
  assert.equal(loaded.length, 2);
  assert.equal(
    loaded[0]?.result.parameters,
    tensors.reduce((n, t) => n + t.data.length, 0),
  );
  const tokens = new Int32Array([1, 5, 9, 3, 7, 2, 4, 11, 13]);
  const cuSeqlens = new Int32Array([0, 4, 9]);
  const remote = await cluster.run("model.logprobs", { name: "tiny", tokens, cuSeqlens }, { ranks: [1] });
  const local = Model.create(config, tensors);
  after(() => local.dispose());
  const expected = await local.logprobs(tokens, cuSeqlens);
  assert.ok(remote[0]?.result.logprobs instanceof Float32Array);
  assert.deepEqual(Array.from(remote[0]?.result.logprobs ?? []), Array.from(expected.logprobs));
  const prompts = [new Int32Array([1, 2, 3]), new Int32Array([4, 5])];
  const generated = await cluster.run("model.generate", { name: "tiny", prompts, maxNewTokens: 5 });
  const expectedTokens = (await local.generate(prompts, { maxNewTokens: 5 })).map((g) =>
    Array.from(g.tokens),
  );
  for (const { result } of generated) {
    assert.deepEqual(
      result.generations.map((g) => Array.from(g.tokens)),
      expectedTokens,
    );
  }
  assert.deepEqual((await cluster.status()).workers[0]?.models, ["tiny"]);
  await assert.rejects(cluster.run("model.logprobs", { name: "nope", tokens, cuSeqlens }), /no model "nope"/);
  await cluster.run("model.free", { name: "tiny" });
  assert.deepEqual((await cluster.status()).workers[0]?.models, []);
});

test("worker commands train: train step, optimizer step, save, load the saved folder", {
  timeout: 90_000,
}, async () => {
  const { config, tensors } = tinyLlama(11);
  await cluster.run("model.load", { name: "actor", config, tensors });
  await cluster.run("model.initOptimizer", {
    name: "actor",
    options: { lr: 1e-2, schedule: { kind: "constant" } },
  });
  const tokens = new Int32Array([3, 1, 4, 1, 5, 9, 2, 6, 5, 3]);
  const cuSeqlens = new Int32Array([0, 6, 10]);
  const lossMask = new Float32Array(8).fill(1);
  const before = await cluster.run("model.logprobs", { name: "actor", tokens, cuSeqlens }, { ranks: [0] });
  const step = await cluster.run("model.trainStep", {
    name: "actor",
    tokens,
    cuSeqlens,
    lossMask,
    tokenNormaliser: 8,
  });
  assert.ok(step.every((r) => Number.isFinite(r.result.loss) && r.result.tokens === 8));
  const updated = await cluster.run("model.optimizerStep", { name: "actor" });
  assert.deepEqual(
    updated.map((r) => [r.result.step, r.result.skipped]),
    [
      [1, false],
      [1, false],
    ],
  );
  const after0 = await cluster.run("model.logprobs", { name: "actor", tokens, cuSeqlens }, { ranks: [0] });
  const sum = (a: Float32Array | undefined) => (a ?? new Float32Array()).reduce((x, y) => x + y, 0);
  assert.ok(
    sum(after0[0]?.result.logprobs) > sum(before[0]?.result.logprobs),
    "a step on the NLL raises logprobs",
  );
  const folder = `${dir.path}/saved`;
  await cluster.run("model.save", { name: "actor", dir: folder }, { ranks: [0] });
  await cluster.run("model.load", { name: "reloaded", dir: folder }, { ranks: [1] });
  const reloaded = await cluster.run(
    "model.logprobs",
    { name: "reloaded", tokens, cuSeqlens },
    { ranks: [1] },
  );
  assert.deepEqual(
    Array.from(reloaded[0]?.result.logprobs ?? []),
    Array.from(after0[0]?.result.logprobs ?? []),
  );
  await cluster.run("model.free", { name: "actor" });
  await cluster.run("model.free", { name: "reloaded" }, { ranks: [1] });
});

test("an all-reduce through the engine's process group sums across ranks", { timeout: 60_000 }, async () => {
  await cluster.initProcessGroup("gloo");
  const results = await Promise.all(
    [0, 1].map((rank) =>
      cluster.run(
        "dist.allReduce",
        { values: new Float32Array([rank + 1, 10 * (rank + 1)]) },
        { ranks: [rank] },
      ),
    ),
  );
  for (const [r] of results) assert.deepEqual(Array.from(r?.result.values ?? []), [3, 30]);
});

test("through the controller: dist.mesh at TP2, a sharded model.load on both workers, logprobs equal one device's", {
  timeout: 90_000,
}, async () => {
  await cluster.initProcessGroup("gloo");
  const folder = `${dir.path}/tp-model`;
  await writeTinyDense(folder, { family: "qwen3", heads: 4, kvHeads: 2 });
  const meshes = await cluster.run("dist.mesh", { tensor: 2 });
  assert.deepEqual(
    meshes.map((m) => [m.rank, m.result.describe, m.result.coordinates.tensor]),
    [
      [0, "TP2", 0],
      [1, "TP2", 1],
    ],
  );
  assert.equal((await cluster.run("worker.info", {}, { ranks: [1] }))[0]?.result.mesh?.describe, "TP2");
  await cluster.run("model.load", { name: "tp", dir: folder, sharded: true });
  const tokens = new Int32Array([3, 17, 4, 1, 50, 9, 2, 6, 5, 33, 8]);
  const cuSeqlens = new Int32Array([0, 6, 11]);
  const sharded = await cluster.run("model.logprobs", { name: "tp", tokens, cuSeqlens });
  const single = await Model.load(folder);
  try {
    const ref = await single.logprobs(tokens, cuSeqlens);
    for (const r of sharded) {
      const got = r.result.logprobs;
      assert.equal(got.length, ref.logprobs.length);
      for (let i = 0; i < got.length; i++) {
        assert.ok(Math.abs((got[i] ?? 0) - (ref.logprobs[i] ?? 0)) <= 1e-5, `rank ${r.rank}, token ${i}`);
      }
    }
  } finally {
    single.dispose();
  }
  await cluster.run("model.free", { name: "tp" });
});

test("1,000 mixed requests, 32 in flight: each answered once, correctly", { timeout: 120_000 }, async (t) => {
  const start = performance.now();
  const total = 1000;
  let next = 0;
  let inFlight = 0;
  let maxInFlight = 0;
  const answered = new Array<number>(total).fill(0);
  const unmatchedBefore = cluster.unmatchedReplies;
  const one = async (i: number) => {
    const kind = i % 10;
    if (kind < 4) {
      const payload = new Int32Array([i, i * 2, -i]);
      const back = (await cluster.call("echo", { i, payload })) as { i: number; payload: Int32Array };
      assert.equal(back.i, i);
      assert.deepEqual(Array.from(back.payload), Array.from(payload));
    } else if (kind === 4) {
      assert.equal((await cluster.status()).workers.length, 2);
    } else if (kind < 7) {
      const rank = i % 2;
      const [r] = await cluster.run("debug.sleep", { ms: i % 3 }, { ranks: [rank] });
      assert.equal(r?.rank, rank);
      assert.equal(r?.result.sleptMs, i % 3);
    } else if (kind === 7) {
      const info = await cluster.run("worker.info", {});
      assert.equal(info.length, 2);
    } else if (kind === 8) {
      await assert.rejects(
        cluster.call("noSuchMethod" as "status", {}),
        (e: TillerError) => e.code === "UNKNOWN_METHOD",
      );
    } else {
      await assert.rejects(
        cluster.call("run", { command: "debug.sleep", args: { ms: "slow" } }),
        (e: TillerError) => e.code === "BAD_ARGS" && e.field === "args.args.ms",
      );
    }
    answered[i] = (answered[i] ?? 0) + 1;
  };
  const lane = async () => {
    while (next < total) {
      const i = next++;
      inFlight++;
      maxInFlight = Math.max(maxInFlight, inFlight);
      try {
        await one(i);
      } finally {
        inFlight--;
      }
    }
  };
  await Promise.all(Array.from({ length: 32 }, lane));
  t.diagnostic(`${total} requests in ${(performance.now() - start).toFixed(0)} ms`);
  assert.equal(maxInFlight, 32);
  assert.ok(
    answered.every((n) => n === 1),
    "every request answered exactly once",
  );
  assert.equal(cluster.unmatchedReplies, unmatchedBefore, "no stray or duplicated replies");
});

test("an Arrow table of 1M rows round-trips intact", { timeout: 60_000 }, async (t) => {
  const rows = 1_000_000;
  const id = new Int32Array(rows);
  const score = new Float64Array(rows);
  for (let i = 0; i < rows; i++) {
    id[i] = i;
    score[i] = Math.sin(i);
  }
  const table = tableFromArrays({ id, score });
  const start = performance.now();
  const back = (await cluster.call("echo", { table })) as { table: typeof table };
  t.diagnostic(
    `1M-row table (${((rows * 12) / 2 ** 20).toFixed(1)} MiB) round trip: ${(performance.now() - start).toFixed(0)} ms`,
  );
  assert.equal(back.table.numRows, rows);
  const backId = back.table.getChild("id")?.toArray() as Int32Array;
  const backScore = back.table.getChild("score")?.toArray() as Float64Array;
  assert.ok(Buffer.from(backId.buffer, backId.byteOffset, backId.byteLength).equals(Buffer.from(id.buffer)));
  assert.ok(
    Buffer.from(backScore.buffer, backScore.byteOffset, backScore.byteLength).equals(
      Buffer.from(score.buffer),
    ),
  );
});

test("malformed input gets an error reply and the controller keeps serving", {
  timeout: 60_000,
}, async () => {
  const raw = new zmq.Dealer({ linger: 0, receiveTimeout: 5000 });
  raw.connect(address);
  const ask = async (frames: (string | Uint8Array)[]) => {
    await raw.send(frames);
    const [header] = await raw.receive();
    return JSON.parse(header?.toString() ?? "null") as {
      id: number | null;
      ok: boolean;
      error?: { code: string; field?: string };
    };
  };
  try {
    let r = await ask([Buffer.from([0xff, 0x00, 0x13, 0x37])]);
    assert.deepEqual([r.id, r.ok, r.error?.code], [null, false, "BAD_FRAME"]);
    r = await ask(["[1, 2, 3]"]);
    assert.equal(r.error?.code, "BAD_FRAME");
    r = await ask([JSON.stringify({ id: 3, method: "fly", args: {} })]);
    assert.deepEqual([r.id, r.error?.code], [3, "UNKNOWN_METHOD"]);
    r = await ask([JSON.stringify({ id: 4, method: "run", args: { command: 5 } })]);
    assert.deepEqual([r.id, r.error?.code, r.error?.field], [4, "BAD_ARGS", "args.command"]);
    r = await ask([
      JSON.stringify({ id: 5, method: "run", args: { command: "model.load", args: { name: 3 } } }),
    ]);
    assert.deepEqual([r.error?.code, r.error?.field], ["BAD_ARGS", "args.args.name"]);
    r = await ask([JSON.stringify({ id: 6, method: "echo", args: { $body: 0 }, bodies: ["Float32Array"] })]);
    assert.deepEqual([r.id, r.error?.code], [6, "BAD_FRAME"]);
    r = await ask([
      JSON.stringify({ id: 7, method: "echo", args: { $body: 0 }, bodies: ["Float32Array"] }),
      Buffer.alloc(7),
    ]);
    assert.deepEqual([r.id, r.error?.code], [7, "BAD_FRAME"]);
    r = await ask([
      JSON.stringify({ id: 8, method: "echo", args: { $body: 0 }, bodies: ["Uint8Array"] }),
      Buffer.alloc(maxMessageBytes + 1),
    ]);
    assert.deepEqual([r.id, r.error?.code], [8, "TOO_LARGE"]);

    // A bounded run of random messages, seeded: each gets exactly one reply, all errors.
    let seed = 12345;
    const random = () => {
      seed = (seed * 1103515245 + 12345) >>> 0;
      return seed / 2 ** 32;
    };
    const pieces = [
      '{"id":',
      "1",
      '"method":',
      '"run"',
      "{",
      "}",
      ",",
      '"$body":',
      "[",
      "]",
      "null",
      '"args":',
    ];
    for (let i = 0; i < 300; i++) {
      const frames = Array.from({ length: 1 + Math.floor(random() * 3) }, () => {
        if (random() < 0.5) {
          return Buffer.from(
            Array.from({ length: Math.floor(random() * 64) }, () => Math.floor(random() * 256)),
          );
        }
        return Array.from(
          { length: Math.floor(random() * 12) },
          () => pieces[Math.floor(random() * pieces.length)],
        ).join("");
      });
      const reply = await ask(frames);
      assert.equal(reply.ok, false, `random message ${i} should be refused`);
    }
  } finally {
    raw.close();
  }
  const state = await cluster.status({ timeoutMs: 5000 });
  assert.equal(state.workers.length, 2, "still serving, workers still there");
});

test("a worker killed mid-command is reported within 5 s; the controller keeps serving", {
  timeout: 60_000,
}, async (t) => {
  const lost: unknown[] = [];
  const stop = cluster.on("worker.lost", (f) => lost.push(f));
  const victim = (await cluster.status()).workers.find((w) => w.rank === 1);
  assert.ok(victim);
  const running = cluster.run("debug.sleep", { ms: 60_000 }, { ranks: [1] });
  await new Promise((r) => setTimeout(r, 1000));
  const killedAt = Date.now();
  killPid(victim.pid, "SIGKILL");
  const error = (await running.then(
    () => assert.fail("the command should fail"),
    (e: TillerError) => e,
  )) as TillerError;
  const elapsed = Date.now() - killedAt;
  t.diagnostic(`a killed joined worker was reported after ${elapsed} ms (heartbeat timeout 1500 ms)`);
  assert.ok(elapsed < 5000, `reported after ${elapsed} ms`);
  assert.equal(error.code, "WORKER_LOST");
  assert.equal(error.rank, 1);
  assert.equal(error.command, "debug.sleep");
  assert.match(error.stderrTail ?? "", /debug\.sleep: sleeping 60000 ms/);
  await waitFor("the worker.lost event", () => lost.length > 0 || undefined, 5000);
  stop();
  const state = await cluster.status({ timeoutMs: 5000 });
  assert.deepEqual(
    state.workers.map((w) => w.rank),
    [0],
  );
  assert.equal(state.failures.at(-1)?.rank, 1);
  assert.deepEqual(state.failures.at(-1)?.commands, ["debug.sleep"]);
  // A replacement joins and takes the free rank: the run can resume.
  startWorker();
  const back = await cluster.waitForWorkers(2, 30_000);
  assert.deepEqual(
    back.workers.map((w) => w.rank),
    [0, 1],
  );
});

test("when the controller dies, its workers exit", { timeout: 30_000 }, async () => {
  const pids = (await cluster.status()).workers.map((w) => w.pid);
  killPid(controller.pid, "SIGKILL");
  await waitFor("workers to exit", () => pids.every((p) => !alive(p)) || undefined, 10_000);
});
