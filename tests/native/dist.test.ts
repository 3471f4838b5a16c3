// Process groups over gloo on loopback: real separate Node processes (tests/helpers/dist-rank.ts)
// for 2 and 3 ranks get exact collective results in float32, bfloat16 and int64; a missing or
// stalled peer ends in a clear error within the timeout; bad arguments name the field.
import assert from "node:assert/strict";
import { test } from "node:test";
import { backendAvailable, type HostTensor, ProcessGroup } from "../../src/index.js";
import { addon } from "../../src/native/binding.js";
import type { NativeDistAddon } from "../../src/native/dist.js";
import { checkCollectives } from "../helpers/dist-expected.js";
import type { RankConfig } from "../helpers/dist-rank.js";
import { freePort, runRanks } from "../helpers/ranks.js";

function configs(
  world: number,
  port: number,
  timeoutMs: number,
  scenario: RankConfig["scenario"],
): RankConfig[] {
  return Array.from({ length: world }, (_, rank) => ({
    port,
    rank,
    worldSize: world,
    backend: "gloo" as const,
    timeoutMs,
    scenario,
  }));
}

for (const world of [2, 3]) {
  test(`gloo, ${world} processes: all-reduce sum/max/min/avg (float32, bfloat16, int64), broadcast from rank 1, all-gather, reduce-scatter, barrier`, {
    timeout: 60_000,
  }, async () => {
    const results = await runRanks(configs(world, await freePort(), 20_000, "collectives"), 50_000);
    assert.deepEqual(
      results.map((r) => r.rank),
      Array.from({ length: world }, (_, r) => r),
    );
    checkCollectives(results, world);
  });
}

test("gloo, 3 ranks with rank 2 never started: ranks 0 and 1 fail within the timeout, naming rank 2", {
  timeout: 30_000,
}, async () => {
  const timeoutMs = 2_000;
  const port = await freePort();
  const results = await runRanks(configs(3, port, timeoutMs, "join").slice(0, 2), 20_000);
  for (const result of results) {
    assert.equal(result.ok, false, `rank ${result.rank} should have failed`);
    assert.match(
      result.error ?? "",
      new RegExp(
        `rendezvous at 127\\.0\\.0\\.1:${port}: rank\\(s\\) 2 of worldSize 3 did not join within 2000 ms`,
      ),
    );
    assert.ok(
      (result.elapsedMs ?? 0) >= timeoutMs - 100,
      `rank ${result.rank} waited ${result.elapsedMs} ms`,
    );
    assert.ok((result.elapsedMs ?? 0) < timeoutMs + 8_000, `rank ${result.rank} took ${result.elapsedMs} ms`);
  }
});

test("gloo, a peer that joins but never calls the collective: the all-reduce fails after the timeout", {
  timeout: 30_000,
}, async () => {
  const timeoutMs = 2_000;
  const [first, second] = configs(2, await freePort(), timeoutMs, "allReduceAfterJoin");
  assert.ok(first && second);
  const [reducer, staller] = await runRanks([first, { ...second, scenario: "stall" }], 20_000);
  assert.equal(reducer?.ok, false);
  assert.match(
    reducer?.error ?? "",
    /allReduce on rank 0 of 2 \(gloo, store 127\.0\.0\.1:\d+, timeout 2000 ms\) failed: .*[Tt]imed out/,
  );
  assert.ok((reducer?.elapsedMs ?? 0) >= timeoutMs - 100);
  assert.equal(staller?.ok, true);
});

test("a world of one: collectives return the input; avg of int64 and unknown ops are refused", async () => {
  const pg = await ProcessGroup.create({ port: await freePort(), rank: 0, worldSize: 1, timeoutMs: 5_000 });
  try {
    assert.deepEqual([pg.rank, pg.worldSize, pg.backend, pg.device], [0, 1, "gloo", "cpu"]);
    const t: HostTensor = { data: Float32Array.from([1.5, -2]), dtype: "float32", shape: [2] };
    for (const op of ["sum", "avg", "max", "min"] as const) {
      const out = await pg.allReduce(t, op);
      assert.deepEqual(Array.from(out.data as Float32Array), [1.5, -2]);
    }
    assert.deepEqual(Array.from(t.data as Float32Array), [1.5, -2], "the input is not changed");
    const ints: HostTensor = { data: BigInt64Array.from([1n]), dtype: "int64", shape: [1] };
    assert.throws(() => pg.allReduce(ints, "avg"), /op: avg needs a floating dtype, tensor.dtype is int64/);
    assert.throws(
      () => pg.allReduce(t, "prod" as "sum"),
      /op: "prod" is not a reduce op; allowed: sum, avg, max, min/,
    );
    assert.throws(() => pg.broadcast(t, 1), /root: 1 must be a rank in 0..0/);
    assert.throws(
      () => pg.allGather({ ...t, shape: [] }),
      /tensor.shape: \[\] holds 1 elements, but data has 2/,
    );
    assert.throws(
      () => pg.allReduce({ ...t, dtype: "int32" }),
      /tensor.data: dtype int32 travels in a Int32Array/,
    );
    // The native checks stand on their own too (the TS layer is not the only guard).
    const raw = addon() as unknown as NativeDistAddon;
    assert.throws(
      () => raw.processGroupAllReduce({} as never, t, "sum", "cpu"),
      /group: not a process-group handle/,
    );
    assert.throws(
      () => raw.processGroupAllReduce(pg as never, t, "sum", "cpu"),
      /group: not a process-group handle/,
    );
  } finally {
    pg.dispose();
  }
  await assert.rejects(async () => pg.barrier(), /group: this process group was disposed/);
});

test("bad options name the field", async () => {
  const port = 29_999;
  const cases: [Record<string, unknown>, RegExp][] = [
    [{ port, rank: 2, worldSize: 2 }, /rank: 2 must be an integer in 0..1 \(worldSize 2\)/],
    [{ port, rank: -1, worldSize: 2 }, /rank: -1 must be an integer in 0..1/],
    [{ port, rank: 0, worldSize: 0 }, /worldSize: 0 must be a positive integer/],
    [{ port: 70_000, rank: 0, worldSize: 1 }, /port: 70000 must be a TCP port/],
    [{ port, rank: 0, worldSize: 1, backend: "mpi" }, /backend: "mpi" is not a backend; allowed: gloo, nccl/],
    [{ port, rank: 0, worldSize: 1, timeoutMs: 0 }, /timeoutMs: 0 must be a positive integer/],
    [{ port, rank: 0, worldSize: 1, device: "cuda:0" }, /device: gloo groups work on "cpu"/],
    [{ port, rank: 0, worldSize: 1, hostStore: "yes" }, /hostStore: "yes" must be a boolean/],
    [{ port, rank: 0, worldSize: 1, host: "" }, /host: "" must be a host name/],
  ];
  for (const [options, message] of cases) {
    await assert.rejects(ProcessGroup.create(options as never), message, JSON.stringify(options));
  }
  if (!backendAvailable("nccl")) {
    await assert.rejects(
      ProcessGroup.create({ port, rank: 0, worldSize: 1, backend: "nccl", device: "cuda:0" }),
      /backend: nccl is not available in this build/,
    );
  }
  // The engine's own checks, reached without the TS layer.
  const raw = addon() as unknown as NativeDistAddon;
  const base = { host: "127.0.0.1", port, rank: 0, worldSize: 1, backend: "gloo" as const, timeoutMs: 1000 };
  await assert.rejects(
    raw.processGroupCreate({ ...base, rank: 3, worldSize: 2 }),
    /rank: 3 is out of range for worldSize 2 \(0..1\)/,
  );
  await assert.rejects(
    raw.processGroupCreate({ ...base, worldSize: 0 }),
    /worldSize: must be at least 1, got 0/,
  );
  await assert.rejects(
    raw.processGroupCreate({ ...base, backend: "mpi" as never }),
    /backend: 'mpi' is not a backend/,
  );
  assert.throws(() => raw.processGroupBarrier({} as never), /group: not a process-group handle/);
});

test("no store at host:port: a clear error naming it, within the timeout", { timeout: 20_000 }, async () => {
  const port = await freePort();
  const started = Date.now();
  await assert.rejects(
    ProcessGroup.create({ port, rank: 1, worldSize: 2, timeoutMs: 1_500 }),
    new RegExp(`rendezvous: no store answered at 127\\.0\\.0\\.1:${port} within 1500 ms`),
  );
  const elapsed = Date.now() - started;
  assert.ok(elapsed < 1_500 + 5_000, `took ${elapsed} ms`);
});

test("the peer never comes (in process): rank 0 names the missing rank after the timeout", {
  timeout: 20_000,
}, async () => {
  const port = await freePort();
  const started = Date.now();
  await assert.rejects(
    ProcessGroup.create({ port, rank: 0, worldSize: 2, timeoutMs: 1_500 }),
    new RegExp(
      `rendezvous at 127\\.0\\.0\\.1:${port}: rank\\(s\\) 1 of worldSize 2 did not join within 1500 ms`,
    ),
  );
  const elapsed = Date.now() - started;
  assert.ok(elapsed >= 1_400 && elapsed < 1_500 + 5_000, `took ${elapsed} ms`);
});
