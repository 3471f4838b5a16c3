// The RL loop on the real engine (fp32 CPU), through the worker's command table in this process:
// stages in order and alone, micro-batching that does not change the update, exact resume from a
// checkpoint, atomic checkpoints, and the DAPO / KL / ReMax paths.
import assert from "node:assert/strict";
import { mkdirSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { ExperimentRun, findCheckpoint, verifyCheckpoint } from "../../src/controller/experiment.js";
import { type ExperimentConfig, resolveConfig } from "../../src/rl/config.js";
import { MetricsLog } from "../../src/rl/metrics.js";
import { writeNextDigitData, writeTinyModel } from "../../src/rl/tasks/next-digit.js";
import { localRank } from "../../src/worker/local.js";
import { tempDir } from "../helpers/python.js";

const dir = tempDir("rl-loop");
let modelPath = "";
let dataFile = "";
before(async () => {
  modelPath = join(dir.path, "model");
  await writeTinyModel(modelPath, { seed: 3 });
  dataFile = writeNextDigitData(join(dir.path, "data"));
});
after(() => dir.cleanup());

function config(name: string, overrides: Partial<ExperimentConfig> = {}): ExperimentConfig {
  return {
    name,
    runDir: join(dir.path, "runs", name),
    seed: 7,
    model: { path: modelPath, dtype: "float32" },
    data: { train: dataFile, maxPromptTokens: 8 },
    promptsPerStep: 8,
    rollout: { samplesPerPrompt: 4, maxResponseTokens: 3 },
    tokensPerMicroBatch: 4096,
    optimizer: { lr: 3e-3, weightDecay: 0.01 },
    totalSteps: 4,
    ...overrides,
  };
}

async function withRun<T>(
  c: ExperimentConfig,
  fn: (run: ExperimentRun, params: () => Map<string, Float32Array>) => Promise<T>,
) {
  const local = localRank();
  const run = await ExperimentRun.create(resolveConfig(c), local.call);
  const params = () =>
    new Map(
      (actorOf(local.state.models)?.parameters() ?? []).map((p) => [p.name, p.data as Float32Array] as const),
    );
  try {
    return await fn(run, params);
  } finally {
    await run.close();
    local.dispose();
  }
}

/** The run's actor among the worker's models (named actor.<run>). */
function actorOf<M>(models: Map<string, M>): M | undefined {
  return [...models].find(([name]) => name.startsWith("actor."))?.[1];
}

function maxDiff(a: Map<string, Float32Array>, b: Map<string, Float32Array>): number {
  assert.deepEqual([...a.keys()].sort(), [...b.keys()].sort());
  let max = 0;
  for (const [name, x] of a) {
    const y = b.get(name) as Float32Array;
    for (let i = 0; i < x.length; i++) max = Math.max(max, Math.abs((x[i] as number) - (y[i] as number)));
  }
  return max;
}

test("the stages run alone, in order, each timed; out-of-order calls are refused naming what is missing", async () => {
  await withRun(config("stages"), async (run) => {
    await assert.rejects(run.update(), /update: no step in progress; call rollout\(\) first/);
    const b = await run.rollout();
    assert.equal(b.samples.length, 8 * 4);
    assert.ok(b.samples.every((s) => s.response.length >= 1 && s.response.length <= 3));
    assert.ok(b.samples.every((s) => s.rolloutLogprobs.length === s.response.length));
    await assert.rejects(run.advantages(), /advantages: run score, old_logprobs, ref first/);
    await assert.rejects(run.rollout(), /step 1 is in progress/);
    await run.score();
    assert.ok(b.samples.every((s) => s.score === 0 || s.score === 1));
    await run.filter();
    await run.oldLogprobs();
    // On CPU the old logprobs are recomputed and compared with the rollout's: on-policy (one
    // epoch, one mini-batch), by the update's own forward (tests/native/old-logprobs.test.ts).
    assert.ok(run.recomputesOldLogprobs);
    assert.equal(b.oldLogprobsFromUpdate, true);
    await run.ref();
    await run.advantages();
    // GRPO: each group's advantages sum to zero (or are all zero when its scores are equal).
    const groups = new Map<string, number>();
    for (const s of b.samples)
      groups.set(s.uid, (groups.get(s.uid) ?? 0) + (s.advantages?.[0] ?? Number.NaN));
    for (const sum of groups.values()) assert.ok(Math.abs(sum) < 1e-4, `group advantage sum ${sum}`);
    await run.update();
    assert.ok((b.metrics["training/rollout_probs_diff_max"] as number) < 1e-5, JSON.stringify(b.metrics));
    await run.sync();
    assert.equal(run.step, 1);
    const row = run.metrics.last() as Record<string, number>;
    for (const key of [
      "actor/pg_loss",
      "actor/pg_clipfrac",
      "actor/pg_clipfrac_lower",
      "actor/ppo_kl",
      "actor/entropy",
      "actor/grad_norm",
      "actor/lr",
      "critic/score/mean",
      "critic/score/max",
      "critic/score/min",
      "critic/advantages/mean",
      "critic/advantages/max",
      "critic/advantages/min",
      "response_length/mean",
      "response_length/max",
      "response_length/min",
      "response_length/clip_ratio",
      "prompt_length/mean",
      "timing_s/gen",
      "timing_s/reward",
      "timing_s/old_log_prob",
      "timing_s/adv",
      "timing_s/update_actor",
      "timing_s/step",
      "perf/throughput",
      "training/rollout_probs_diff_max",
      "training/rollout_probs_diff_mean",
      "train/num_gen_batches",
    ]) {
      assert.ok(Number.isFinite(row[key]), `${key} = ${row[key]}`);
    }
    assert.equal(row["actor/lr"], 3e-3);
    assert.equal(row["prompt_length/mean"], 4);
    // The rollouts of the step, as an Arrow table.
    const table = run.rollouts();
    assert.equal(table.numRows, 32);
    assert.equal(table.getChild("response")?.get(0), b.samples[0]?.responseText);
    // metrics.arrow is on disk (written off the step's path: flushed here, as every client reply does)
    // and reads back the same row.
    await run.flushMetrics();
    const onDisk = await MetricsLog.readFile(join(run.runDir, "metrics.arrow"));
    assert.equal(onDisk.last()?.["actor/pg_loss"], row["actor/pg_loss"]);
  });
});

test("one update in 1 or in 4+ micro-batches gives the same parameters (fp32 CPU)", async () => {
  // Adam turns any gradient into a step of about lr, so float-rounding differences in near-zero
  // gradient entries show up at the scale of lr; a small rate keeps that below the 1e-5 bar.
  const optimizer = { lr: 1e-4, weightDecay: 0.01 };
  const one = await withRun(
    config("mb-one", { tokensPerMicroBatch: 4096, optimizer }),
    async (run, params) => {
      await run.runStep();
      return { params: params(), row: run.metrics.last() as Record<string, number> };
    },
  );
  const many = await withRun(
    config("mb-many", { tokensPerMicroBatch: 28, optimizer }),
    async (run, params) => {
      await run.runStep();
      return { params: params(), row: run.metrics.last() as Record<string, number> };
    },
  );
  // 32 sequences of 5-7 tokens in micro-batches of ≤ 28 tokens: at least 6 of them.
  assert.equal(one.row["actor/micro_batches"], 1);
  assert.ok(
    (many.row["actor/micro_batches"] as number) >= 6,
    `${many.row["actor/micro_batches"]} micro-batches`,
  );
  const diff = maxDiff(one.params, many.params);
  console.log(`parameters, 1 vs many micro-batches: max |diff| ${diff.toExponential(2)}`);
  assert.ok(diff < 1e-5, `max parameter difference ${diff}`);
  assert.ok(Math.abs((one.row["actor/pg_loss"] as number) - (many.row["actor/pg_loss"] as number)) < 1e-6);
  assert.ok(
    Math.abs((one.row["actor/grad_norm"] as number) - (many.row["actor/grad_norm"] as number)) < 1e-5,
  );
});

test("resuming from a checkpoint continues exactly as the uninterrupted run", async () => {
  const c = config("resume", {
    totalSteps: 4,
    miniBatchesPerStep: 2,
    checkpoint: { everySteps: 2, keep: 1 },
  });
  const straight = await withRun(
    { ...c, runDir: join(dir.path, "runs", "straight") },
    async (run, params) => {
      await run.run(4);
      return { params: params(), rows: run.metrics.rows };
    },
  );
  // The first half, then a fresh process state resumed from the run folder's checkpoint.
  await withRun(c, async (run) => {
    await run.run(2);
  });
  const checkpoint = (await findCheckpoint(join(dir.path, "runs", "resume"))).dir;
  assert.match(checkpoint, /step-000002$/);
  const local = localRank();
  const resumed = await ExperimentRun.resume(checkpoint, local.call);
  try {
    assert.equal(resumed.step, 2);
    await resumed.run();
    assert.equal(resumed.step, 4);
    const params = new Map(
      (actorOf(local.state.models)?.parameters() ?? []).map((p) => [p.name, p.data as Float32Array] as const),
    );
    const diff = maxDiff(straight.params, params);
    console.log(`resume vs uninterrupted after 4 steps: max |parameter diff| ${diff.toExponential(2)}`);
    assert.equal(diff, 0);
    const keys = [
      "critic/score/mean",
      "actor/pg_loss",
      "actor/grad_norm",
      "response_length/mean",
      "actor/entropy",
    ];
    for (const step of [3, 4]) {
      const a = straight.rows.find((r) => r.step === step) as Record<string, number>;
      const b = resumed.metrics.rows.find((r) => r.step === step) as Record<string, number>;
      for (const k of keys) assert.equal(b[k], a[k], `step ${step} ${k}`);
    }
    assert.deepEqual(
      resumed.metrics.rows.map((r) => r.step),
      [1, 2, 3, 4],
    );
  } finally {
    await resumed.close();
    local.dispose();
  }
});

test("checkpoints are atomic: a half-written one is skipped, a damaged one refused naming the file", async () => {
  const root = join(dir.path, "runs", "resume", "checkpoints");
  // The keep=1 policy left only the newest complete checkpoint.
  assert.deepEqual(
    readdirSync(root).filter((n) => n.startsWith("step-")),
    ["step-000004"],
  );
  // A save that died before its manifest: the folder exists but is never taken for a checkpoint.
  const partial = join(root, "step-000009");
  mkdirSync(partial);
  writeFileSync(join(partial, "state.json"), "{}");
  assert.match((await findCheckpoint(join(dir.path, "runs", "resume"))).dir, /step-000004$/);
  await assert.rejects(verifyCheckpoint(partial), /not a complete checkpoint/);
  // A damaged file in a complete one.
  const good = join(root, "step-000004");
  writeFileSync(join(good, "state.json"), '{"step": 4}\n'.padEnd(40, " "));
  await assert.rejects(verifyCheckpoint(good), /state\.json (has \d+ bytes|does not match its sha256)/);
});

test("DAPO: dynamic sampling keeps only groups with spread, overlong shaping, clip-higher", async () => {
  const c = config("dapo", {
    rollout: { samplesPerPrompt: 4, maxResponseTokens: 3 },
    algorithm: {
      dynamicSampling: { metric: "acc", maxGenerationRounds: 20 },
      overlong: { bufferTokens: 2, penaltyFactor: 0.5 },
      loss: { clipRatioLow: 0.2, clipRatioHigh: 0.28, aggMode: "token-mean" },
    },
  });
  await withRun(c, async (run) => {
    await run.runStep();
    const b = run.batch;
    assert.ok(b);
    assert.equal(b.samples.length, 8 * 4);
    const byGroup = new Map<string, number[]>();
    for (const s of b.samples) byGroup.set(s.uid, [...(byGroup.get(s.uid) ?? []), s.acc ?? -1]);
    assert.equal(byGroup.size, 8);
    for (const accs of byGroup.values()) assert.ok(new Set(accs).size > 1, "a kept group has spread");
    for (const s of b.samples) {
      const expected = (s.score ?? 0) + (s.response.length > 1 ? -((s.response.length - 1) / 2) * 0.5 : 0);
      assert.ok(
        Math.abs((s.shapedScore ?? Number.NaN) - expected) < 1e-12,
        `shaped ${s.shapedScore} vs ${expected}`,
      );
    }
    const row = run.metrics.last() as Record<string, number>;
    assert.ok((row["train/num_gen_batches"] as number) >= 1);
  });
  // A bound too low for a random model is a clear error, not an endless loop.
  const strict = config("dapo-strict", {
    promptsPerStep: 16,
    algorithm: { dynamicSampling: { metric: "acc", maxGenerationRounds: 1 } },
  });
  await withRun(strict, async (run) => {
    await run.rollout();
    await run.score();
    await assert.rejects(
      run.filter(),
      /dynamic sampling collected \d+ of 16 groups .* after 1 generation rounds/,
    );
  });
});

test("KL as a loss against the frozen reference, KL in the reward with an adaptive coefficient, RLOO, ReMax", async () => {
  await withRun(
    config("kl-loss", { algorithm: { loss: { kl: { type: "low_var_kl", coeff: 0.01 } } } }),
    async (run) => {
      await run.run(3);
      const row = run.metrics.last() as Record<string, number>;
      // After one update the actor has moved away from the reference: a positive KL.
      assert.ok((row["actor/kl_loss"] as number) > 0, `kl_loss ${row["actor/kl_loss"]}`);
    },
  );
  await withRun(
    config("kl-reward", {
      algorithm: {
        advantage: "rloo",
        klReward: { estimator: "k1", coefficient: 0.1, adaptive: { targetKl: 0.01, horizonResponses: 100 } },
      },
    }),
    async (run) => {
      await run.run(2);
      const row = run.metrics.last() as Record<string, number>;
      assert.ok(Number.isFinite(row["actor/reward_kl_penalty"]));
      assert.notEqual(
        row["actor/reward_kl_penalty_coeff"],
        0.1,
        "the adaptive coefficient moved after step 1",
      );
    },
  );
  await withRun(config("remax", { algorithm: { advantage: "remax" } }), async (run) => {
    await run.rollout();
    await run.score();
    const b = run.batch;
    assert.ok(b?.samples.every((s) => s.baselineScore === 0 || s.baselineScore === 1));
  });
});

test("bad config is refused before any work, naming the field", () => {
  const bad: [Partial<ExperimentConfig>, RegExp][] = [
    [{ promptsPerStep: 0 }, /promptsPerStep: 0 must be an integer ≥ 1/],
    [{ miniBatchesPerStep: 3 }, /miniBatchesPerStep: 3 must divide .* 32 responses/],
    [{ tokensPerMicroBatch: 5 }, /tokensPerMicroBatch: 5 is less than one sequence/],
    [{ rollout: { samplesPerPrompt: 1, maxResponseTokens: 3 } }, /rollout\.samplesPerPrompt: grpo compares/],
    [
      { algorithm: { loss: { clipRatioLow: 1.5 } } },
      /algorithm\.loss\.clipRatioLow: 1\.5 must be in \[0, 1\)/,
    ],
    [{ algorithm: { advantage: "ppo" as never } }, /algorithm\.advantage: "ppo"; allowed: "grpo"/],
    [{ optimizer: { lr: -1 } }, /optimizer\.lr: -1 must be > 0/],
    [
      { rollout: { samplesPerPrompt: 4, maxResponseTokens: 3, temprature: 1 } as never },
      /rollout\.temprature: unknown setting/,
    ],
    [{ parallel: { tensor: 2, gpus: 3 } }, /parallel\.gpus: 3 GPUs are not a multiple/],
  ];
  bad.push([
    { parallel: { data: 3 } },
    /miniBatchesPerStep: 1 mini-batches of 32 responses do not split over 3 data-parallel ranks/,
  ]);
  bad.push([
    { parallel: { pipeline: 1, virtualPipeline: 2 } },
    /parallel\.virtualPipeline: 2 virtual stages need pipeline > 1/,
  ]);
  // verl's max_num_gen_batches = 0 (and Infinity, which JSON turns into null) mean no bound.
  for (const rounds of [0, null, Number.POSITIVE_INFINITY]) {
    const r = resolveConfig(
      config("dapo-0", { algorithm: { dynamicSampling: { maxGenerationRounds: rounds as number } } }),
    );
    assert.equal(r.algorithm.dynamicSampling?.maxGenerationRounds, Number.POSITIVE_INFINITY);
  }
  for (const [overrides, message] of bad) {
    assert.throws(() => resolveConfig(config("bad", overrides)), message);
  }
});
