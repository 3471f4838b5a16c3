// One rank of bench/parallel.ts: `node dist/bench/parallel-rank.js '<config JSON>'`. Times
// training steps (policy loss over micro-batches in one policySteps call, 1F1B on a pipeline, then
// the optimizer) of the model in the given layout and prints {rank, ok, stepSeconds, traffic,
// schedule, peakStepBytes}: one step's collectives, the schedule's own seconds and point-to-point
// waits, and how far the resident memory rose above its level before the step (run with a fixed
// malloc mmap threshold, so freed tensors leave the resident set: activations, gradients and
// temporaries at their peak).
import { readFileSync, writeFileSync } from "node:fs";
import {
  type Layout,
  Mesh,
  Model,
  type PolicyMicroBatch,
  ProcessGroup,
  type RecomputeOptions,
} from "../src/index.js";

/** Resident kilobytes now and at the high-water mark since the last reset (Linux /proc). */
function resident(): { now: number; peak: number } {
  const status = readFileSync("/proc/self/status", "utf8");
  const kb = (key: string) => Number(new RegExp(`${key}:\\s+(\\d+) kB`).exec(status)?.[1] ?? Number.NaN);
  return { now: kb("VmRSS"), peak: kb("VmHWM") };
}

interface Config {
  port: number;
  rank: number;
  worldSize: number;
  layout: Layout;
  modelDir: string;
  vocab: number;
  sequences: number;
  length: number;
  steps: number;
  /** Sequences per micro-batch (default 1). */
  perMicroBatch?: number;
  recompute?: RecomputeOptions;
}

const c = JSON.parse(process.argv[2] ?? "{}") as Config;
try {
  const pg = await ProcessGroup.create({
    port: c.port,
    rank: c.rank,
    worldSize: c.worldSize,
    backend: "gloo",
    timeoutMs: 60_000,
  });
  const mesh = await Mesh.create(pg, c.layout);
  const model = await Model.load(c.modelDir, { mesh });
  model.initOptimizer({ lr: 1e-4, maxGradNorm: 1 });
  if (c.recompute) model.setTraining({ recompute: c.recompute });
  const data = mesh.info.layout.data;
  const mine = Array.from({ length: c.sequences }, (_, i) => i).filter(
    (i) => i % data === mesh.coordinates.data,
  );
  const counts = { tokens: c.sequences * (c.length - 1), sequences: c.sequences };
  // Micro-batches of `perMicroBatch` sequences (the last may be shorter), all in one call.
  const per = c.perMicroBatch ?? 1;
  const schedule = { seconds: 0, waitSeconds: 0, bytesSent: 0, microBatches: 0, stages: 1 };
  const step = async () => {
    const micro: PolicyMicroBatch[] = [];
    for (let m = 0; m < mine.length; m += per) {
      const group = mine.slice(m, m + per);
      const tokens = Int32Array.from(
        group.flatMap((i) =>
          Array.from({ length: c.length }, (_, j) => 2 + ((i * 31 + j * 7) % (c.vocab - 2))),
        ),
      );
      const cu = Int32Array.from(group.map((_, k) => k * c.length).concat(group.length * c.length));
      const n = tokens.length - group.length;
      const ones = new Float32Array(n).fill(1);
      // On a pipeline only the last stage has logprobs; the others' inputs go unused.
      const got = (await model.logprobs(tokens, cu)).logprobs;
      const old = got.length === n ? got : new Float32Array(n);
      micro.push({ tokens, cuSeqlens: cu, perToken: { oldLogprobs: old, advantages: ones, mask: ones } });
    }
    const out = await model.policySteps(micro, counts);
    schedule.seconds += out.schedule.seconds;
    schedule.waitSeconds += out.schedule.waitSeconds;
    schedule.bytesSent += out.schedule.bytesSent;
    schedule.microBatches = out.schedule.microBatches;
    schedule.stages = out.schedule.stages;
    await model.optimizerStep();
  };
  await step(); // warm-up
  schedule.seconds = schedule.waitSeconds = schedule.bytesSent = 0;
  mesh.traffic(true);
  const before = resident().now;
  writeFileSync("/proc/self/clear_refs", "5"); // resets VmHWM to the current resident size
  const started = process.hrtime.bigint();
  for (let s = 0; s < c.steps; s++) await step();
  const stepSeconds = Number(process.hrtime.bigint() - started) / 1e9 / c.steps;
  const peakStepBytes = (resident().peak - before) * 1024;
  schedule.seconds /= c.steps;
  schedule.waitSeconds /= c.steps;
  schedule.bytesSent /= c.steps;
  const traffic = mesh.traffic(true);
  for (const kinds of Object.values(traffic)) {
    for (const t of Object.values(kinds)) {
      t.calls /= c.steps;
      t.bytes /= c.steps;
      t.seconds /= c.steps;
    }
  }
  process.stdout.write(
    `${JSON.stringify({ rank: c.rank, ok: true, stepSeconds, traffic, schedule, peakStepBytes })}\n`,
  );
  model.dispose();
  mesh.dispose();
  pg.dispose();
} catch (error) {
  process.stdout.write(`${JSON.stringify({ rank: c.rank, ok: false, error: (error as Error).message })}\n`);
}
