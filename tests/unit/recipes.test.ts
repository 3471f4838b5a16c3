// The recipes translated from verl's scripts: each resolves with verl's counts, and layouts made
// wrong on purpose are refused with a ConfigError naming the field at fault.
import assert from "node:assert/strict";
import { homedir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import {
  dapo,
  dapoVerlLayout,
  deepseekV3_671b,
  deepseekV3Shape,
  grpoGsm8k,
  qwen2_7bShape,
  qwen3_235b,
  qwen3_235bShape,
  qwen25_32bShape,
  recipe,
  recipes,
} from "../../recipes/index.js";
import {
  ConfigError,
  type ExperimentConfig,
  needsReference,
  type ResolvedConfig,
  resolveConfig,
} from "../../src/rl/config.js";

/** Asserts that resolveConfig refuses `config` with a ConfigError naming `field` (and matching `message`). */
function refuses(config: ExperimentConfig, field: string, message?: RegExp): void {
  assert.throws(
    () => resolveConfig(config),
    (error: unknown) => {
      assert.ok(error instanceof ConfigError, `expected a ConfigError, got ${String(error)}`);
      assert.equal(error.field, field, error.message);
      if (message) assert.match(error.message, message);
      return true;
    },
  );
}

const responsesOf = (c: ResolvedConfig) => c.promptsPerStep * c.rollout.samplesPerPrompt;
const layoutProduct = (p: ResolvedConfig["parallel"]) => p.tensor * p.pipeline * p.context * p.data;

test("every recipe resolves, and each call returns a fresh config", () => {
  assert.deepEqual(Object.keys(recipes).sort(), ["dapo", "deepseek-v3-671b", "grpo-gsm8k", "qwen3-235b"]);
  for (const [name, make] of Object.entries(recipes)) {
    const resolved = resolveConfig(make({ runDir: "/tmp/r" }));
    assert.equal(resolved.name, name);
    assert.equal(resolved.runDir, "/tmp/r");
    assert.equal(layoutProduct(resolved.parallel), resolved.parallel.gpus, name);
    assert.equal(responsesOf(resolved) % resolved.miniBatchesPerStep, 0, name);
    assert.ok(
      resolved.tokensPerMicroBatch >= resolved.data.maxPromptTokens + resolved.rollout.maxResponseTokens,
    );
    const a = make();
    const fresh = make();
    a.rollout.samplesPerPrompt = 99;
    if (a.parallel) a.parallel.gpus = 3;
    if (a.algorithm?.loss) a.algorithm.loss.clipRatioLow = 0.01;
    assert.deepEqual(make(), fresh, `${name}: a change to one config shows in the next`);
  }
  assert.deepEqual(recipe("dapo"), dapo());
  assert.throws(() => recipe("ppo"), /known: grpo-gsm8k, dapo, deepseek-v3-671b, qwen3-235b/);
  assert.throws(() => recipe("toString"), /known:/);
});

test("grpo-gsm8k: verl's run_qwen2-7b_seq_balance.sh counts", () => {
  const c = resolveConfig(grpoGsm8k());
  assert.deepEqual(c.data.train, [join(homedir(), "data", "gsm8k", "train.parquet")]);
  assert.equal(c.model.path, join(homedir(), "models", "Qwen2-7B-Instruct"));
  assert.deepEqual(c.model.shape, qwen2_7bShape);
  assert.equal(c.data.maxPromptTokens, 512);
  assert.equal(c.rollout.maxResponseTokens, 1024);
  assert.equal(c.promptsPerStep, 1024);
  assert.equal(c.rollout.samplesPerPrompt, 5);
  assert.equal(responsesOf(c), 5120);
  assert.equal(c.miniBatchesPerStep, 4); // 1024 / ppo_mini_batch_size 256
  assert.equal(responsesOf(c) / c.miniBatchesPerStep, 1280); // 256 prompts × 5
  assert.equal(c.tokensPerMicroBatch, 24000);
  assert.equal(c.algorithm.advantage, "grpo");
  assert.deepEqual(c.algorithm.loss.kl, { type: "low_var_kl", coeff: 0.001 });
  assert.equal(c.algorithm.loss.entropyCoeff, 0);
  assert.equal(c.algorithm.loss.aggMode, "token-mean");
  assert.equal(c.algorithm.klReward, undefined);
  assert.equal(needsReference(c), true);
  assert.equal(c.optimizer.lr, 1e-6);
  assert.equal(c.optimizer.schedule, undefined);
  assert.equal(c.totalSteps, 105); // 7473 // 1024 × 15 epochs
  assert.equal(c.checkpoint.everySteps, 20);
  assert.deepEqual([c.parallel.gpus, c.parallel.data], [1, 1]);

  // verl's 8-GPU FSDP layout: all data parallel.
  const eight = resolveConfig(grpoGsm8k({ parallel: { gpus: 8 } })).parallel;
  assert.deepEqual([eight.tensor, eight.pipeline, eight.data, eight.gpus], [1, 1, 8, 8]);
  // Another model: no shape unless given.
  const other = resolveConfig(
    grpoGsm8k({ modelPath: "/m/qwen3-0.6b", trainFiles: ["/d/a.parquet", "/d/b.parquet"] }),
  );
  assert.equal(other.model.shape, undefined);
  assert.deepEqual(other.data.train, ["/d/a.parquet", "/d/b.parquet"]);
  assert.equal(resolveConfig(grpoGsm8k({ shape: null })).model.shape, undefined);
});

test("dapo: verl's run_dapo_qwen2.5_32b.sh counts and DAPO settings", () => {
  const c = resolveConfig(dapo());
  assert.equal(c.model.path, join(homedir(), "verl", "models", "Qwen2.5-32B"));
  assert.deepEqual(c.data.train, [join(homedir(), "verl", "data", "dapo-math-17k.parquet")]);
  assert.equal(c.data.maxPromptTokens, 2048);
  assert.equal(c.rollout.maxResponseTokens, 20480);
  assert.equal(c.promptsPerStep, 512);
  assert.equal(c.rollout.samplesPerPrompt, 16);
  assert.equal(responsesOf(c), 8192);
  assert.equal(c.miniBatchesPerStep, 16); // 512 / train_prompt_mini_bsz 32
  assert.equal(responsesOf(c) / c.miniBatchesPerStep, 512); // 32 prompts × 16
  assert.equal(c.tokensPerMicroBatch, 22528);
  assert.deepEqual(
    [c.algorithm.loss.clipRatioLow, c.algorithm.loss.clipRatioHigh, c.algorithm.loss.clipRatioC],
    [0.2, 0.28, 10],
  );
  assert.equal(c.algorithm.loss.aggMode, "token-mean");
  assert.equal(c.algorithm.loss.entropyCoeff, 0);
  assert.equal(c.algorithm.loss.kl, undefined);
  assert.equal(needsReference(c), false);
  assert.deepEqual(c.algorithm.overlong, { bufferTokens: 4096, penaltyFactor: 1 });
  assert.deepEqual(c.algorithm.dynamicSampling, { metric: "acc", maxGenerationRounds: 10 });
  assert.equal(c.optimizer.lr, 1e-6);
  assert.equal(c.optimizer.weightDecay, 0.1);
  assert.equal(c.optimizer.maxGradNorm, 1);
  // lr_warmup_steps=10 training steps = 160 optimizer updates; the schedule spans totalSteps' updates.
  assert.deepEqual(c.optimizer.schedule, {
    kind: "constant-with-warmup",
    warmupSteps: 160,
    totalSteps: 1600,
  });
  assert.equal(c.checkpoint.everySteps, 25);
  assert.equal(c.parallel.gpus, 1);

  // verl's layout: 128 GPUs, Ulysses 8 as context parallel, 16 data-parallel groups.
  const verl = resolveConfig(dapo({ parallel: dapoVerlLayout })).parallel;
  assert.deepEqual([verl.context, verl.data, verl.gpus], [8, 16, 128]);
  assert.equal(layoutProduct(verl), 128);
  assert.deepEqual(resolveConfig(dapo()).model.shape, qwen25_32bShape);
  assert.equal(resolveConfig(dapo({ totalSteps: 400 })).optimizer.schedule?.totalSteps, 6400);
});

test("deepseek-v3-671b: verl's 512-GPU layout, data parallel computed", () => {
  const c = resolveConfig(deepseekV3_671b());
  assert.deepEqual(c.model.shape, deepseekV3Shape);
  assert.deepEqual(c.parallel, {
    tensor: 1,
    pipeline: 16,
    context: 1,
    expert: 32,
    expertTensor: 1,
    virtualPipeline: 1,
    sequenceParallel: false,
    data: 32,
    gpus: 512,
    // verl's num_layers_in_first/last_pipeline_stage: 61 = 3 + 14 × 4 + 2.
    firstStageLayers: 3,
    lastStageLayers: 2,
  });
  assert.equal(layoutProduct(c.parallel), 512);
  // Expert data parallel: tensor × context × data / (expert × expertTensor) = 32 / 32.
  assert.equal(
    (c.parallel.tensor * c.parallel.context * c.parallel.data) /
      (c.parallel.expert * c.parallel.expertTensor),
    1,
  );
  assert.equal((deepseekV3Shape.experts ?? 0) / c.parallel.expert, 8); // routed experts per rank
  assert.equal(c.promptsPerStep, 512);
  assert.equal(c.rollout.samplesPerPrompt, 4);
  assert.equal(c.miniBatchesPerStep, 4); // 512 / ppo_mini_batch_size 128
  // verl splits each mini-batch over the data-parallel ranks: 512 responses / 32 = 16 a rank.
  assert.equal(responsesOf(c) / c.miniBatchesPerStep / c.parallel.data, 16);
  assert.equal(c.data.maxPromptTokens, 2048);
  assert.equal(c.rollout.maxResponseTokens, 4096);
  assert.equal(c.tokensPerMicroBatch, 6144);
  assert.equal(needsReference(c), false);
  assert.equal(c.totalSteps, 1400);
  assert.deepEqual(c.data.train, ["/data/gsm8k/train.parquet"]);

  // The 80 GB variant's layout: 256 H100, EP 16.
  const h100 = resolveConfig(
    deepseekV3_671b({ parallel: { tensor: 1, pipeline: 16, expert: 16, expertTensor: 1, gpus: 256 } }),
  ).parallel;
  assert.deepEqual([h100.data, h100.gpus], [16, 256]);
  // The shape stays when only the path changes (the recipe is about this model).
  assert.deepEqual(resolveConfig(deepseekV3_671b({ modelPath: "/m/dsv3" })).model.shape, deepseekV3Shape);
});

test("qwen3-235b: verl's 256-GPU layout (ETP = TP, as Megatron's default)", () => {
  const c = resolveConfig(qwen3_235b());
  assert.deepEqual(c.model.shape, qwen3_235bShape);
  assert.deepEqual(
    [c.parallel.tensor, c.parallel.pipeline, c.parallel.context, c.parallel.expert, c.parallel.expertTensor],
    [4, 8, 1, 4, 4],
  );
  assert.equal(c.parallel.data, 8);
  assert.equal(c.parallel.gpus, 256);
  // verl's num_layers_in_first/last_pipeline_stage: 94 = 5 + 6 × 14 + 5.
  assert.deepEqual([c.parallel.firstStageLayers, c.parallel.lastStageLayers], [5, 5]);
  assert.equal(layoutProduct(c.parallel), 256);
  assert.equal(c.promptsPerStep, 256);
  assert.equal(c.rollout.samplesPerPrompt, 4);
  assert.equal(c.miniBatchesPerStep, 16); // 256 / ppo_mini_batch_size 16
  assert.equal(responsesOf(c) / c.miniBatchesPerStep / c.parallel.data, 8);
  assert.equal(c.tokensPerMicroBatch, 6144);
  assert.deepEqual(c.algorithm.overlong, { bufferTokens: 4096, penaltyFactor: 0.1 });
  assert.equal(c.algorithm.dynamicSampling, undefined);
  assert.equal(c.algorithm.loss.clipRatioHigh, 0.28);
  assert.equal(c.algorithm.loss.clipRatioC, 10);
  assert.deepEqual(c.optimizer.schedule, {
    kind: "constant-with-warmup",
    warmupSteps: 160,
    totalSteps: 1600,
  });
  assert.equal(c.optimizer.weightDecay, 0.1);
  assert.equal(c.totalSteps, 100);
});

test("layouts that do not fit the model are refused, naming the field", () => {
  // 48 nodes: data 24, and 24 expert ranks fit tensor × context × data but do not divide 256 experts.
  refuses(
    deepseekV3_671b({ parallel: { pipeline: 16, expert: 24, gpus: 384 } }),
    "parallel.expert",
    /does not divide the 256 experts/,
  );
  // Expert ranks beyond the ranks of a stage (tensor × context × data = 32).
  refuses(
    deepseekV3_671b({ parallel: { pipeline: 16, expert: 64, gpus: 512 } }),
    "parallel.expert",
    /must divide/,
  );
  refuses(
    qwen3_235b({ parallel: { tensor: 4, pipeline: 8, expert: 8, expertTensor: 8, gpus: 256 } }),
    "parallel.expert",
  );
  // Expert ranks for a dense model.
  refuses(grpoGsm8k({ parallel: { expert: 2, gpus: 8 } }), "parallel.expert", /dense model/);
  // Tensor parallel that does not divide the 64 attention heads.
  refuses(
    qwen3_235b({ parallel: { tensor: 6, pipeline: 8, expert: 2, gpus: 240 } }),
    "parallel.tensor",
    /64 attention heads/,
  );
  // Tensor parallel 7 divides Qwen2-7B's 28 heads but not its 4 KV heads (nor they it).
  refuses(grpoGsm8k({ parallel: { tensor: 7, gpus: 7 } }), "parallel.tensor", /4 KV heads/);
  // 64 pipeline stages over 61 layers; 8 × 12 virtual stages over 94.
  refuses(
    deepseekV3_671b({ parallel: { pipeline: 64, expert: 8, gpus: 512 } }),
    "parallel.pipeline",
    /61 layers/,
  );
  refuses(
    qwen3_235b({ parallel: { ...qwen3_235b().parallel, virtualPipeline: 12 } }),
    "parallel.pipeline",
    /94 layers/,
  );
  // GPUs that tensor × pipeline × context do not divide; a data size that does not multiply out.
  refuses(deepseekV3_671b({ parallel: { pipeline: 16, expert: 32, gpus: 500 } }), "parallel.gpus");
  refuses(deepseekV3_671b({ parallel: { pipeline: 16, expert: 16, data: 16, gpus: 512 } }), "parallel.data");
});

test("batch counts that do not divide are refused, naming the field", () => {
  // 8192 responses do not cut into 3 mini-batches; 1024 responses cannot make 2048.
  refuses({ ...dapo(), miniBatchesPerStep: 3 }, "miniBatchesPerStep", /8192 responses/);
  refuses({ ...qwen3_235b(), miniBatchesPerStep: 2048 }, "miniBatchesPerStep", /1024 responses/);
  // A micro-batch budget below one longest sequence (2048 + 20480).
  refuses({ ...dapo(), tokensPerMicroBatch: 16384 }, "tokensPerMicroBatch", /22528/);
  // An overlong buffer longer than the responses.
  const short = qwen3_235b();
  refuses(
    { ...short, rollout: { ...short.rollout, maxResponseTokens: 2048 } },
    "algorithm.overlong.bufferTokens",
  );
  // GRPO and dynamic sampling need groups.
  const single = dapo();
  refuses({ ...single, rollout: { ...single.rollout, samplesPerPrompt: 1 } }, "rollout.samplesPerPrompt");
});
