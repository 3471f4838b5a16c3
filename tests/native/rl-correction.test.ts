// Rollout correction and verl's newer loss modes through the RL loop (fp32 CPU, where the old
// logprobs are recomputed): IS weights and rejection reach the update and report rollout_corr/
// metrics; bypass mode trains on the rollout logprobs; a sequence-level loss mode (gspo) and a
// loss without ratio metrics (gpg) run end to end with the metrics they measure.
import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { ExperimentRun } from "../../src/controller/experiment.js";
import { type ExperimentConfig, resolveConfig } from "../../src/rl/config.js";
import { writeNextDigitData, writeTinyModel } from "../../src/rl/tasks/next-digit.js";
import { localRank } from "../../src/worker/local.js";
import { tempDir } from "../helpers/python.js";

const dir = tempDir("rl-correction");
let modelPath = "";
let dataFile = "";
before(async () => {
  modelPath = join(dir.path, "model");
  await writeTinyModel(modelPath, { seed: 2 });
  dataFile = writeNextDigitData(join(dir.path, "data"));
});
after(() => dir.cleanup());

function config(name: string, algorithm: ExperimentConfig["algorithm"]): ExperimentConfig {
  return {
    name,
    runDir: join(dir.path, "runs", name),
    seed: 3,
    model: { path: modelPath, dtype: "float32" },
    data: { train: dataFile, maxPromptTokens: 8 },
    promptsPerStep: 8,
    rollout: { samplesPerPrompt: 4, maxResponseTokens: 3 },
    tokensPerMicroBatch: 4096,
    algorithm,
    optimizer: { lr: 3e-3, weightDecay: 0 },
    totalSteps: 2,
  };
}

async function rows(c: ExperimentConfig, steps: number) {
  const local = localRank();
  const run = await ExperimentRun.create(resolveConfig(c), local.call);
  try {
    return { rows: await run.run(steps), samples: run.batch?.samples ?? [] };
  } finally {
    await run.close();
    local.dispose();
  }
}

test("rollout correction in the loop: token TIS weights and a token_k2 rejection mask reach the update, with rollout_corr/ metrics", async () => {
  const { rows: r, samples } = await rows(
    config("tis", {
      rolloutCorrection: {
        rolloutIs: "token",
        rolloutIsThreshold: 2,
        rolloutRs: "token_k2",
        rolloutRsThreshold: 1e-16,
      },
    }),
    1,
  );
  const row = r[0] as Record<string, number>;
  for (const k of [
    "rollout_corr/rollout_is_mean",
    "rollout_corr/rollout_is_eff_sample_size",
    "rollout_corr/rollout_rs_token_k2_masked_fraction",
    "rollout_corr/rollout_rs_masked_fraction",
    "rollout_corr/training_ppl",
    "rollout_corr/chi2_token",
  ]) {
    assert.ok(Number.isFinite(row[k]), `${k} in the row`);
  }
  // A threshold of 1e-16 on ½(log ratio)² rejects every token whose logprobs differ at all.
  const weights = samples.flatMap((s) => Array.from(s.rolloutIsWeights ?? []));
  assert.ok(weights.length > 0 && weights.every((w) => w > 0 && w <= 2), "weights in (0, cap]");
  const kept = samples.flatMap((s) => Array.from(s.lossMask ?? []));
  const rejected = kept.filter((m) => m === 0).length;
  assert.ok(Math.abs(rejected / kept.length - (row["rollout_corr/rollout_rs_masked_fraction"] ?? -1)) < 1e-9);
  console.log(
    `TIS: k2 max ${row["rollout_corr/rollout_rs_token_k2_max"]}, is max ${row["rollout_corr/rollout_is_max"]}, mean weight ${row["rollout_corr/rollout_is_mean"]}, ESS ${row["rollout_corr/rollout_is_eff_sample_size"]}; rejected ${rejected}/${kept.length} tokens; actor/pg_loss ${row["actor/pg_loss"]}`,
  );
});

test("bypass mode trains on the rollout logprobs; the mismatch is still measured, on a sample", async () => {
  const { rows: r, samples } = await rows(config("bypass", { rolloutCorrection: { bypassMode: true } }), 1);
  const row = r[0] as Record<string, number>;
  // Skipping the old-logprob pass never hides the rollout/training difference (issue 16's rule).
  assert.ok(Number.isFinite(row["training/rollout_probs_diff_max"]));
  assert.ok((row["training/rollout_probs_diff_sequences"] ?? 0) > 0);
  assert.ok(samples.every((s) => s.oldLogprobs === s.rolloutLogprobs));
  assert.ok(Number.isFinite(row["actor/pg_loss"]));
});

test("gspo and gpg through the loop: each reports the metrics it measures, and only those", async () => {
  const gspo = (await rows(config("gspo", { loss: { lossMode: "gspo", aggMode: "seq-mean-token-mean" } }), 2))
    .rows;
  assert.ok(
    gspo.every((row) => Number.isFinite(row["actor/pg_clipfrac"]) && Number.isFinite(row["actor/ppo_kl"])),
  );
  assert.ok(gspo.every((row) => row["actor/pg_clipfrac_lower"] === undefined));
  const gpg = (await rows(config("gpg", { advantage: "gpg", loss: { lossMode: "gpg" } }), 2)).rows;
  assert.ok(
    gpg.every((row) => Number.isFinite(row["actor/pg_loss"]) && row["actor/pg_clipfrac"] === undefined),
  );
});
