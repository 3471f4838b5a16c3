// PPO with a critic (GAE) and validation on the real engine (fp32 CPU), through the worker's
// command table in this process: the quickstart task learns with a value model (reward and
// critic/vf_explained_var rise), resume with the critic's state is exact, and validation rows
// appear at the configured steps, before training, equal across a resume and to validate() alone.
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { ExperimentRun, findCheckpoint } from "../../src/controller/experiment.js";
import { type ExperimentConfig, resolveConfig } from "../../src/rl/config.js";
import { nextDigitRows, writeNextDigitData, writeTinyModel } from "../../src/rl/tasks/next-digit.js";
import { localRank } from "../../src/worker/local.js";
import { tempDir } from "../helpers/python.js";

const dir = tempDir("rl-ppo");
let modelPath = "";
let dataFile = "";
let valFile = "";
before(async () => {
  modelPath = join(dir.path, "model");
  await writeTinyModel(modelPath, { seed: 1 });
  dataFile = writeNextDigitData(join(dir.path, "data"));
  // 40 held-out prompts: every 25th of the task's.
  valFile = join(dir.path, "data", "val.jsonl");
  writeFileSync(
    valFile,
    `${nextDigitRows()
      .filter((_, i) => i % 25 === 3)
      .map((r) => JSON.stringify(r))
      .join("\n")}\n`,
  );
});
after(() => dir.cleanup());

function ppoConfig(name: string, overrides: Partial<ExperimentConfig> = {}): ExperimentConfig {
  return {
    name,
    runDir: join(dir.path, "runs", name),
    seed: 1,
    model: { path: modelPath, dtype: "float32" },
    data: { train: dataFile, maxPromptTokens: 8 },
    promptsPerStep: 16,
    rollout: { samplesPerPrompt: 8, maxResponseTokens: 1, temperature: 1 },
    tokensPerMicroBatch: 2048,
    algorithm: { advantage: "gae", gamma: 1, lam: 1, loss: { clipRatioLow: 0.2, clipRatioHigh: 0.28 } },
    critic: { lr: 3e-3, weightDecay: 0 },
    optimizer: { lr: 3e-3, weightDecay: 0 },
    totalSteps: 40,
    ...overrides,
  };
}

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;

test("PPO with a critic (GAE) learns the next-digit task: reward and critic/vf_explained_var rise", async () => {
  const local = localRank();
  const run = await ExperimentRun.create(resolveConfig(ppoConfig("ppo-learns")), local.call);
  try {
    const rows = await run.run(40);
    const reward = rows.map((r) => r["critic/score/mean"] as number);
    const explained = rows.map((r) => r["critic/vf_explained_var"] as number);
    const first = (xs: number[]) => mean(xs.slice(0, 8));
    const last = (xs: number[]) => mean(xs.slice(-8));
    console.log(
      `PPO+critic, 40 steps: reward ${first(reward).toFixed(3)} → ${last(reward).toFixed(3)}; ` +
        `vf_explained_var ${first(explained).toFixed(3)} → ${last(explained).toFixed(3)}; ` +
        `vf_loss ${first(rows.map((r) => r["critic/vf_loss"] as number)).toFixed(4)} → ${last(rows.map((r) => r["critic/vf_loss"] as number)).toFixed(4)}`,
    );
    for (const key of [
      "critic/vf_loss",
      "critic/vf_clipfrac",
      "critic/vpred_mean",
      "critic/grad_norm",
      "critic/lr",
      "critic/values/mean",
      "critic/values/max",
      "critic/values/min",
      "critic/returns/mean",
      "critic/returns/max",
      "critic/returns/min",
      "critic/vf_explained_var",
      "timing_s/values",
      "timing_s/update_critic",
    ]) {
      assert.ok(
        rows.every((r) => Number.isFinite(r[key])),
        `${key} in every row`,
      );
    }
    assert.ok(
      last(reward) > first(reward) + 0.15 && last(reward) > 2 * first(reward),
      `reward ${first(reward)} → ${last(reward)}`,
    );
    assert.ok(
      last(explained) > first(explained),
      `explained variance ${first(explained)} → ${last(explained)}`,
    );
  } finally {
    await run.close();
    local.dispose();
  }
});

test("critic warmup: the actor waits while the step is below critic.warmupSteps, the critic trains", async () => {
  const local = localRank();
  const run = await ExperimentRun.create(
    resolveConfig(ppoConfig("ppo-warmup", { totalSteps: 3, critic: { lr: 3e-3, warmupSteps: 3 } })),
    local.call,
  );
  try {
    const rows = await run.run(3);
    assert.deepEqual(
      rows.map((r) => r["actor/updates"]),
      [0, 0, 1],
    );
    assert.ok(rows.every((r) => Number.isFinite(r["critic/vf_loss"])));
  } finally {
    await run.close();
    local.dispose();
  }
});

test("PPO resume with the critic's state is exact; validation rows at steps 0, 2, 4 equal across the resume and to validate() alone", async () => {
  const c = ppoConfig("ppo-resume", {
    totalSteps: 4,
    checkpoint: { everySteps: 2, keep: 1 },
    data: { train: dataFile, val: valFile, maxPromptTokens: 8 },
    validation: { everySteps: 2, samplesPerPrompt: 2, temperature: 1 },
  });
  const straight = await (async () => {
    const local = localRank();
    const run = await ExperimentRun.create(
      resolveConfig({ ...c, runDir: join(dir.path, "runs", "straight") }),
      local.call,
    );
    try {
      await run.run(4);
      const alone = await run.validate();
      // The validation's generations are kept for the inspector: 40 prompts × 2 samples.
      const table = run.validationRollouts();
      assert.equal(table.numRows, 80);
      assert.ok(table.getChild("acc") !== null);
      return { rows: run.metrics.rows, alone };
    } finally {
      await run.close();
      local.dispose();
    }
  })();
  // The task's reward reports acc, so acc is the headline (val-core) variable, reward an aux one.
  const valKey = "val-core/tiller/next-digit/acc/mean@2";
  assert.deepEqual(
    straight.rows.filter((r) => r[valKey] !== undefined).map((r) => r.step),
    [0, 2, 4],
    "validation at step 0 (before training) and every 2 steps",
  );
  for (const k of [
    "val-core/tiller/next-digit/acc/best@2/mean",
    "val-core/tiller/next-digit/acc/maj@2/mean",
    "val-core/tiller/next-digit/acc/best@2/std",
    "val-aux/tiller/next-digit/acc/worst@2/std",
    "val-aux/tiller/next-digit/reward/worst@2/mean",
    "val-aux/tiller/next-digit/score/mean@2",
    "val-aux/tiller/next-digit/reward/std@2",
  ]) {
    assert.ok(Number.isFinite(straight.rows.find((r) => r.step === 2)?.[k]), k);
  }
  const row4 = straight.rows.find((r) => r.step === 4) as Record<string, number>;
  assert.equal(straight.alone.step, 4);
  for (const [k, v] of Object.entries(straight.alone.metrics))
    assert.equal(row4[k], v, `validate() alone: ${k}`);

  // The first half, then a fresh worker resumed from the checkpoint at step 2.
  {
    const local = localRank();
    const run = await ExperimentRun.create(resolveConfig(c), local.call);
    try {
      await run.run(2);
    } finally {
      await run.close();
      local.dispose();
    }
  }
  const checkpoint = (await findCheckpoint(join(dir.path, "runs", "ppo-resume"))).dir;
  assert.match(checkpoint, /step-000002$/);
  const local = localRank();
  const resumed = await ExperimentRun.resume(checkpoint, local.call);
  try {
    await resumed.run();
    const keys = [
      "critic/score/mean",
      "actor/pg_loss",
      "actor/grad_norm",
      "critic/vf_loss",
      "critic/grad_norm",
      "critic/values/mean",
      "critic/vf_explained_var",
      valKey,
    ];
    for (const step of [3, 4]) {
      const a = straight.rows.find((r) => r.step === step) as Record<string, number>;
      const b = resumed.metrics.rows.find((r) => r.step === step) as Record<string, number>;
      for (const k of keys) assert.equal(b[k], a[k], `step ${step} ${k}`);
    }
    const b4 = resumed.metrics.rows.find((r) => r.step === 4) as Record<string, number>;
    for (const k of Object.keys(row4).filter((k) => k.startsWith("val-"))) assert.equal(b4[k], row4[k], k);
    console.log(
      `resumed PPO run: steps 3-4 equal the uninterrupted run (critic included); held-out acc mean@2: step 0 ${straight.rows[0]?.[valKey]}, step 4 ${row4[valKey]}`,
    );
  } finally {
    await resumed.close();
    local.dispose();
  }
});
