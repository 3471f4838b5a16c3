// The experiment config's new algorithm settings: verl's names accepted, defaults as verl's, and
// bad values refused naming the field, the value and what is allowed.
import assert from "node:assert/strict";
import { test } from "node:test";
import { type ExperimentConfig, resolveConfig } from "../../src/rl/config.js";

const base: ExperimentConfig = {
  model: { path: "models/tiny" },
  data: { train: "data/train.jsonl", maxPromptTokens: 8 },
  promptsPerStep: 4,
  rollout: { samplesPerPrompt: 4, maxResponseTokens: 4 },
  tokensPerMicroBatch: 64,
  optimizer: { lr: 1e-3 },
};

test("loss modes, KL straight-through names and token-sum resolve; unknown ones are refused naming the field", () => {
  const r = resolveConfig({
    ...base,
    algorithm: {
      loss: { lossMode: "gspo", aggMode: "token-sum", kl: { type: "k3+", coeff: 0.01 }, tauPos: 2 },
    },
  });
  assert.equal(r.algorithm.loss.lossMode, "gspo");
  assert.equal(r.algorithm.loss.aggMode, "token-sum");
  assert.deepEqual(r.algorithm.loss.kl, { type: "k3+", coeff: 0.01 });
  assert.equal(r.algorithm.loss.tauPos, 2);
  assert.equal(resolveConfig(base).algorithm.loss.lossMode, "vanilla");
  assert.throws(
    () => resolveConfig({ ...base, algorithm: { loss: { lossMode: "ppo" as "vanilla" } } }),
    /algorithm\.loss\.lossMode: "ppo"; allowed: "vanilla", "gspo"/,
  );
  assert.throws(
    () => resolveConfig({ ...base, algorithm: { loss: { clipCovRatio: 0 } } }),
    /algorithm\.loss\.clipCovRatio: 0 must be > 0/,
  );
});

test("advantage estimators by verl's names; gamma and lam in [0, 1]; a critic only with gae, defaults as verl's", () => {
  assert.equal(
    resolveConfig({ ...base, algorithm: { advantage: "reinforce_plus_plus" } }).algorithm.advantage,
    "reinforce++",
  );
  assert.equal(
    resolveConfig({ ...base, algorithm: { advantage: "grpo_passk" } }).algorithm.advantage,
    "grpo_passk",
  );
  assert.throws(
    () => resolveConfig({ ...base, algorithm: { gamma: 1.5 } }),
    /algorithm\.gamma: 1\.5 must be in \[0, 1\]/,
  );
  const ppo = resolveConfig({ ...base, algorithm: { advantage: "gae", lam: 0.95 } });
  assert.deepEqual(ppo.critic, {
    path: "models/tiny",
    lr: 1e-5,
    weightDecay: 0.01,
    maxGradNorm: 1,
    cliprangeValue: 0.5,
    aggMode: "token-mean",
    warmupSteps: 0,
  });
  assert.equal(ppo.algorithm.lam, 0.95);
  assert.deepEqual(resolveConfig(ppo as unknown as ExperimentConfig), ppo, "resolves again to itself");
  assert.throws(
    () => resolveConfig({ ...base, critic: { lr: 1e-5 } }),
    /critic: a value model is used by algorithm\.advantage "gae" only/,
  );
  assert.throws(
    () => resolveConfig({ ...base, algorithm: { advantage: "gae" }, critic: { cliprangeValue: -1 } }),
    /critic\.cliprangeValue: -1 must be ≥ 0/,
  );
});

test("validation needs data.val; its defaults are verl's val_kwargs (greedy, n = 1) and val_before_train", () => {
  const r = resolveConfig({
    ...base,
    data: { ...base.data, val: ["a.jsonl", "b.parquet"] },
    validation: { everySteps: 5 },
  });
  assert.deepEqual(r.data.val, ["a.jsonl", "b.parquet"]);
  assert.deepEqual(r.validation, {
    everySteps: 5,
    samplesPerPrompt: 1,
    temperature: 0,
    topP: 1,
    topK: 0,
    beforeTraining: true,
  });
  assert.throws(
    () => resolveConfig({ ...base, validation: { everySteps: 5 } }),
    /validation: needs held-out prompts: set data\.val/,
  );
  assert.throws(
    () => resolveConfig({ ...base, data: { ...base.data, val: "v.jsonl" }, validation: { temperature: -1 } }),
    /validation\.temperature: -1 must be ≥ 0/,
  );
});

test("rollout correction: verl's options parse; bypass contradicting recomputation is refused", () => {
  const r = resolveConfig({
    ...base,
    algorithm: {
      rolloutCorrection: {
        rolloutIs: "token",
        rolloutIsThreshold: "0.5_2",
        rolloutRs: "seq_mean_k3",
        rolloutRsThreshold: 0.01,
      },
    },
  });
  assert.deepEqual(r.algorithm.rolloutCorrection, {
    rolloutIs: "token",
    isUpper: 2,
    isLower: 0.5,
    rolloutIsBatchNormalize: false,
    rejection: [{ option: "seq_mean_k3", upper: 0.01 }],
    bypassMode: false,
  });
  assert.throws(
    () =>
      resolveConfig({
        ...base,
        algorithm: { rolloutCorrection: { rolloutRs: "seq_k3", rolloutRsThreshold: 1 } },
      }),
    /algorithm\.rolloutCorrection\.rolloutRs: "seq_k3"; allowed/,
  );
  assert.throws(
    () =>
      resolveConfig({
        ...base,
        algorithm: { recomputeOldLogprobs: true, rolloutCorrection: { bypassMode: true } },
      }),
    /algorithm\.rolloutCorrection\.bypassMode/,
  );
});

test("rollout.parallel: its own layout over the run's GPUs, dropped when it places weights as training does; bad sizes name the field", () => {
  const shape = { layers: 4, attentionHeads: 8, kvHeads: 2, hiddenSize: 64, vocabSize: 32 };
  const at = (parallel: object, rollout: object) =>
    resolveConfig({
      ...base,
      model: { ...base.model, shape },
      parallel,
      rollout: { ...base.rollout, ...rollout },
    }).rollout;
  const split = at({ pipeline: 2, tensor: 2 }, { parallel: { tensor: 4 } });
  assert.deepEqual(split.parallel, { tensor: 4, data: 1 });
  assert.deepEqual(split.reshard, { bucketBytes: 256 * 2 ** 20, verify: false });
  assert.deepEqual(at({ tensor: 2, data: 2 }, { parallel: { tensor: 1 } }).parallel, { tensor: 1, data: 4 });
  // The training layout's own placement: the rollout reads the trainer's weights in place.
  assert.equal(at({ tensor: 2, data: 2 }, { parallel: { tensor: 2, data: 2 } }).parallel, undefined);
  assert.equal(at({ tensor: 2 }, {}).parallel, undefined);
  // Expert parallelism places experts differently from a data-parallel rollout of the same sizes.
  const moe = { ...shape, experts: 4 };
  assert.deepEqual(
    resolveConfig({
      ...base,
      model: { ...base.model, shape: moe },
      parallel: { data: 2, expert: 2 },
      rollout: { ...base.rollout, parallel: { data: 2 } },
    }).rollout.parallel,
    { tensor: 1, data: 2 },
  );
  assert.throws(
    () => at({ data: 4 }, { parallel: { tensor: 3 } }),
    /rollout\.parallel\.tensor: 3 does not divide the run's 4 GPUs/,
  );
  assert.throws(
    () => at({ data: 4 }, { parallel: { tensor: 2, data: 1 } }),
    /rollout\.parallel\.data: 2 × 1 \(tensor × data\) ≠ the run's 4 GPUs/,
  );
  assert.throws(
    () => at({ data: 16 }, { parallel: { tensor: 16 } }),
    /rollout\.parallel\.tensor: 16 does not divide the 8 attention heads/,
  );
  assert.throws(() => at({ data: 2 }, { parallel: { expert: 2 } }), /rollout\.parallel\.expert: unknown/);
  assert.throws(() => at({}, { reshard: { bucketBytes: 0 } }), /rollout\.reshard\.bucketBytes/);
  assert.throws(
    () => at({}, { reshard: { verify: "yes" } }),
    /rollout\.reshard\.verify: "yes" must be true or false/,
  );
  // The actor's parameters may leave only when the rollout holds its own copy.
  assert.throws(
    () => resolveConfig({ ...base, parallel: { data: 2 }, offload: { params: true } }),
    /offload\.params: the rollout generates with the training weights in place/,
  );
  assert.equal(
    resolveConfig({
      ...base,
      parallel: { data: 2 },
      rollout: { ...base.rollout, parallel: { tensor: 2 } },
      offload: { params: true },
    }).offload.params,
    true,
  );
});
