// Controller overhead at scale: 64 real worker processes (CPU, no engine loaded) and one RL step
// of the DeepSeek-V3 recipe's size — 512 prompts × 2 samples, 2k-token prompts, 4k-token responses
// as token ids, per-token logprobs back — moved through the run's fan-out (RunRanks, the code the
// experiment's roles use) with `debug.payload` standing in for the engine's work. Measured: seconds,
// messages and bytes of dispatch and collection per step, against the naive dispatch in the same
// run (every rank's arguments encoded for it, every rank replying with data); then what one step
// would move at the recipe's 512 ranks.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type RankCall, type RankCallEach, RunRanks, settleAll } from "../src/controller/roles.js";
import { Controller } from "../src/controller/server.js";
import type { BenchResult } from "./common.js";

const workers = Number(process.env.TILLER_BENCH_CONTROLLER_WORKERS ?? 64);
// The recipe at 512 ranks is TP1 · PP16 · DP32 (EP32 folded); at 64 ranks: TP4 × DP16 here, so
// replicas of several ranks are exercised (their data encoded once, one rank replying).
const tensor = 4;
const prompts = 512;
const samples = 2;
const promptTokens = 2048;
const responseTokens = 4096;
const sequencesPerMicroBatch = 8;

interface Tally {
  seconds: number;
  commands: number;
  commandBytes: number;
  commandBodyBytes: number;
  replies: number;
  replyBytes: number;
  replyBodyBytes: number;
}

type Send = (
  ranks: RunRanks,
  argsOf: (d: number) => { arrays: (Int32Array | Float32Array)[]; replyFloats: number } | undefined,
) => Promise<unknown>;

/** One step's traffic: generate, old logprobs, ref logprobs (per micro-batch round), the update. */
async function step(ranks: RunRanks, send: Send): Promise<void> {
  const replicas = ranks.layout.data;
  const sequences = prompts * samples;
  const perReplica = sequences / replicas;
  const seqTokens = promptTokens + responseTokens;
  // Generation: each replica's prompts go out; tokens and logprobs of every response come back.
  const promptIds = Array.from({ length: perReplica }, () => new Int32Array(promptTokens).fill(7));
  await send(ranks, () => ({ arrays: promptIds, replyFloats: perReplica * responseTokens * 2 }));
  // Two logprob passes (old, reference): packed micro-batches out, per-token logprob + entropy back.
  const rounds = perReplica / sequencesPerMicroBatch;
  const packed = new Int32Array(sequencesPerMicroBatch * seqTokens).fill(3);
  for (let pass = 0; pass < 2; pass++) {
    for (let k = 0; k < rounds; k++) {
      await send(ranks, () => ({ arrays: [packed], replyFloats: 2 * sequencesPerMicroBatch * seqTokens }));
    }
  }
  // The update: every micro-batch's tokens and per-token old logprobs, advantages, mask, ref.
  const perToken = new Float32Array(sequencesPerMicroBatch * (seqTokens - 1)).fill(0.5);
  const update = Array.from({ length: rounds }, () => [
    packed,
    perToken,
    perToken,
    perToken,
    perToken,
  ]).flat();
  await send(ranks, () => ({ arrays: update, replyFloats: 16 }));
}

async function measure(controller: Controller, ranks: RunRanks, send: Send): Promise<Tally> {
  const before = { ...controller.pool.traffic };
  const t0 = performance.now();
  await step(ranks, send);
  const seconds = (performance.now() - t0) / 1000;
  const after = controller.pool.traffic;
  return {
    seconds,
    commands: after.commands - before.commands,
    commandBytes: after.commandBytes - before.commandBytes,
    commandBodyBytes: after.commandBodyBytes - before.commandBodyBytes,
    replies: after.replies - before.replies,
    replyBytes: after.replyBytes - before.replyBytes,
    replyBodyBytes: after.replyBodyBytes - before.replyBodyBytes,
  };
}

const gb = (bytes: number) => `${(bytes / 1e9).toFixed(2)} GB`;

async function withController<T>(count: number, fn: (controller: Controller) => Promise<T>): Promise<T> {
  const dir = mkdtempSync(join(tmpdir(), "tiller-bench-controller-"));
  const controller = await Controller.start({
    bind: `ipc://${dir}/c.sock`,
    local: { kind: "cpu", count },
    heartbeatTimeoutMs: 60_000,
    controllerTimeoutMs: 60_000,
  });
  try {
    const deadline = Date.now() + 240_000;
    while (controller.pool.ranks().length < count) {
      if (Date.now() > deadline)
        throw new Error(`only ${controller.pool.ranks().length} of ${count} workers joined`);
      await new Promise((r) => setTimeout(r, 200));
    }
    return await fn(controller);
  } finally {
    await controller.shutdown();
    rmSync(dir, { recursive: true, force: true });
  }
}

function runRanks(controller: Controller, count: number, shared: boolean): RunRanks {
  const pool = controller.pool;
  const call: RankCall = (rank, command, args) => pool.call(rank, command, args) as never;
  const callEach: RankCallEach = (r, command, args, options) =>
    pool.callEach(r, command, args, options) as never;
  const layout = {
    tensor,
    context: 1,
    pipeline: 1,
    expert: 1,
    data: count / tensor,
    sequenceParallel: false,
  };
  return new RunRanks(layout, call, shared ? callEach : undefined);
}

// The run's path: a replica's arguments lifted once, its other ranks quiet (and, with relay, the
// data sent to its first rank only).
const fanOut: Send = (ranks, argsOf) => ranks.replicas("debug.payload", argsOf, { quietOthers: true });
// Naive: every rank encoded and called on its own, every rank's reply carries the data.
const perRank: Send = (ranks, argsOf) =>
  settleAll(
    Array.from({ length: ranks.layout.data }, (_, d) => {
      const args = argsOf(d);
      return args ? ranks.replica(d).map((r) => ranks.call(r, "debug.payload", args)) : [];
    }).flat(),
  );

const detail = (t: Tally) =>
  `${t.commands} commands ${gb(t.commandBytes)} out, ${t.replies} replies ${gb(t.replyBytes)} back`;

export async function benchController(): Promise<BenchResult[]> {
  // 1. Many workers, no engine loaded (~75 MB each): shared encoding and quiet ranks vs naive.
  const [a, b] = await withController(workers, async (controller) => {
    const ours = runRanks(controller, workers, true);
    ours.relay = false; // no process groups here: relaying needs the engine's replica groups
    const naive = runRanks(controller, workers, false);
    await measure(controller, ours, fanOut); // warm-up: sockets, JIT
    return [await measure(controller, ours, fanOut), await measure(controller, naive, perRank)] as const;
  });
  // 2. Fewer workers with the engine's process groups (~420 MB each): the relay sends a
  // replica's data to one rank, which broadcasts it over the replica's gloo group.
  const relayWorkers = Number(process.env.TILLER_BENCH_RELAY_WORKERS ?? 8);
  const [r, n] = await withController(relayWorkers, async (controller) => {
    const ranks = runRanks(controller, relayWorkers, true);
    const pool = controller.pool;
    const all = Array.from({ length: relayWorkers }, (_, k) => k);
    const port = ((await pool.call(0, "worker.freePort", {})) as { port: number }).port;
    await settleAll(
      all.map((rank) =>
        pool.call(rank, "dist.init", {
          rank,
          worldSize: relayWorkers,
          storeHost: "127.0.0.1",
          storePort: port,
          backend: "gloo",
        }),
      ),
    );
    await ranks.all("dist.mesh", { tensor, data: relayWorkers / tensor });
    ranks.relay = true;
    const minBytes = process.env.TILLER_RELAY_MIN_BYTES;
    process.env.TILLER_RELAY_MIN_BYTES = "0"; // every command relayed, the micro-batches too
    await measure(controller, ranks, fanOut);
    const relayed = await measure(controller, ranks, fanOut);
    if (minBytes === undefined) delete process.env.TILLER_RELAY_MIN_BYTES;
    else process.env.TILLER_RELAY_MIN_BYTES = minBytes;
    ranks.relay = false;
    return [relayed, await measure(controller, ranks, fanOut)] as const;
  });
  // At the recipe's 512 ranks (TP1 · PP16 · DP32) a replica is 16 ranks (its pipeline stages):
  // relayed, each replica's share of the batch goes out once, so the bytes out are the batch's
  // (`a` sent it `tensor` times here); replies come from one rank per replica, the batch's too.
  const data = a.commandBodyBytes / tensor;
  const replicaSize512 = 16;
  const replicas512 = 32;
  const perReplica512 = (prompts * samples) / replicas512;
  const commands512 = 512 * (2 + (2 * perReplica512) / sequencesPerMicroBatch);
  const out512 = data;
  const secondsPerByte = a.seconds / (a.commandBytes + a.replyBytes);
  return [
    {
      name: `controller step dispatch+collection, ${workers} workers (TP${tensor}×DP${workers / tensor}), DeepSeek-V3-recipe batch`,
      value: a.seconds,
      unit: "s",
      baselineName: "every rank encoded and replying",
      baseline: b.seconds,
      ratio: b.seconds / a.seconds,
      detail:
        `ours: ${detail(a)}; naive: ${detail(b)}; at 512 ranks (TP1·PP16·DP32): ${commands512} commands, ` +
        `≈ ${gb(out512)} of arrays out relayed (${gb(out512 * replicaSize512)} without) and ${gb(a.replyBodyBytes)} back, ` +
        `≈ ${((out512 + a.replyBodyBytes) * secondsPerByte).toFixed(1)} s at this machine's measured bytes/s (one controller process, 2 cores)`,
    },
    {
      name: `controller step, ${relayWorkers} workers (TP${tensor}×DP${relayWorkers / tensor}), a replica's data relayed by its first rank`,
      value: r.seconds,
      unit: "s",
      baselineName: "the data sent to every rank of a replica",
      baseline: n.seconds,
      ratio: n.seconds / r.seconds,
      detail: `relayed: ${detail(r)}; to every rank: ${detail(n)}; bytes out ÷ ${(n.commandBytes / r.commandBytes).toFixed(2)}`,
    },
  ];
}
