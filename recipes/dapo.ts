// DAPO with the hyper-parameters of verl's recipe/dapo/run_dapo_qwen2.5_32b.sh (Qwen2.5-32B on
// dapo-math-17k, 16 nodes × 8 GPUs). The Parquet's rows carry data_source "math_dapo": tiller scores
// them with its built-in DAPO math verifier, whose `acc` the group filter reads.
//
// verl                                           tiller
//   data.train_batch_size=512 (train_prompt_bsz)   promptsPerStep: 512
//   data.max_prompt_length=2048                    data.maxPromptTokens: 2048
//   data.max_response_length=20480                 rollout.maxResponseTokens: 20480
//   rollout.n=16                                   rollout.samplesPerPrompt: 16
//   rollout temperature 1.0, top_p 1.0, top_k -1   rollout: temperature 1, topP 1, topK 0 (off)
//   actor.ppo_mini_batch_size=32 (prompts)         miniBatchesPerStep: 512 / 32 = 16
//   actor.use_dynamic_bsz=True,
//     ppo_max_token_len_per_gpu=2048+20480         tokensPerMicroBatch: 22528 (one longest sequence;
//                                                    verl multiplies it by the Ulysses size per group)
//   algorithm.adv_estimator=grpo                   algorithm.advantage: "grpo"
//   actor.clip_ratio_low=0.2, clip_ratio_high=0.28 algorithm.loss.clipRatioLow 0.2 / clipRatioHigh 0.28
//   actor.clip_ratio_c=10.0                        algorithm.loss.clipRatioC: 10
//   actor.loss_agg_mode=token-mean                 algorithm.loss.aggMode: "token-mean"
//   actor.entropy_coeff=0                          algorithm.loss.entropyCoeff: 0
//   use_kl_loss=False, use_kl_in_reward=False      no algorithm.loss.kl, no algorithm.klReward
//   algorithm.filter_groups.enable=True,
//     metric=acc, max_num_gen_batches=10           algorithm.dynamicSampling: { metric: "acc", maxGenerationRounds: 10 }
//   reward_model.overlong_buffer.enable=True,
//     len=4096, penalty_factor=1.0                 algorithm.overlong: { bufferTokens: 4096, penaltyFactor: 1 }
//   actor.optim.lr=1e-6                            optimizer.lr: 1e-6
//   actor.optim.lr_warmup_steps=10                 optimizer.schedule: constant-with-warmup, warmupSteps
//                                                    10 × 16 = 160 (verl counts training steps, we
//                                                    count optimizer updates)
//   actor.optim.weight_decay=0.1                   optimizer.weightDecay: 0.1
//   actor.grad_clip=1.0                            optimizer.maxGradNorm: 1
//   trainer.save_freq=25                           checkpoint.everySteps: 25
//   trainer.total_epochs=1                         totalSteps: left to the caller (verl runs one pass
//                                                    over the file; the LR is constant after warmup)
//   NNODES=16 × 8 GPUs, FSDP over all 128,
//     ulysses_sequence_parallel_size=8             parallel: one rank by default (today's engine);
//                                                    verl's layout is dapoVerlLayout (context 8, data 16)
//
// Not expressible here: data.gen_batch_size=1536 (3 × train_prompt_bsz; each of our generation
// rounds draws promptsPerStep prompts), data.truncation='left' (we drop over-long prompts rather
// than cut them), fsdp param/optimizer offload, gradient checkpointing, rollout.tensor_model_parallel_size=4,
// rollout gpu_memory_utilization / enable_chunked_prefill / max_num_batched_tokens, the log-prob
// token budgets of the reference and rollout (infer_ppo_max_token_len: tiller uses tokensPerMicroBatch),
// data.val_files (aime-2024) with val_kwargs (top_p 0.7, n 1) and trainer.test_freq=5.
import type { ExperimentConfig, ModelShape, ParallelLayout } from "../src/rl/config.js";
import {
  home,
  miniBatchesOf,
  modelField,
  type RecipeOptions,
  runFields,
  shapeOf,
  updatesOf,
} from "./common.js";

/** Qwen2.5-32B's config.json: the model verl's DAPO script trains. */
export const qwen25_32bShape: ModelShape = {
  layers: 64,
  attentionHeads: 40,
  kvHeads: 8,
  hiddenSize: 5120,
  vocabSize: 152064,
};

/** verl's layout for the 32B run: 128 GPUs, Ulysses sequence parallel 8 (our context), data 16. */
export const dapoVerlLayout: ParallelLayout & { gpus: number } = { context: 8, gpus: 16 * 8 };

/**
 * DAPO with verl's hyper-parameters. `shape` defaults to Qwen2.5-32B's only when `modelPath` is left
 * at its default (another model: pass its shape to validate a layout).
 */
export function dapo(options: RecipeOptions = {}): ExperimentConfig {
  const promptsPerStep = 512;
  const maxPromptTokens = 2 * 1024;
  const maxResponseTokens = 20 * 1024;
  const miniBatchesPerStep = miniBatchesOf(promptsPerStep, 32);
  const shape = shapeOf(options, options.modelPath === undefined ? qwen25_32bShape : undefined);
  return {
    ...runFields(options, "dapo"),
    model: modelField(options.modelPath ?? home("verl", "models", "Qwen2.5-32B"), shape),
    data: { train: options.trainFiles ?? home("verl", "data", "dapo-math-17k.parquet"), maxPromptTokens },
    promptsPerStep,
    rollout: { samplesPerPrompt: 16, maxResponseTokens, temperature: 1, topP: 1, topK: 0 },
    miniBatchesPerStep,
    epochsPerStep: 1,
    tokensPerMicroBatch: maxPromptTokens + maxResponseTokens,
    algorithm: {
      advantage: "grpo",
      loss: {
        clipRatioLow: 0.2,
        clipRatioHigh: 0.28,
        clipRatioC: 10,
        aggMode: "token-mean",
        entropyCoeff: 0,
      },
      dynamicSampling: { metric: "acc", maxGenerationRounds: 10 },
      overlong: { bufferTokens: 4 * 1024, penaltyFactor: 1 },
    },
    optimizer: {
      lr: 1e-6,
      weightDecay: 0.1,
      maxGradNorm: 1,
      schedule: { kind: "constant-with-warmup", warmupSteps: updatesOf(10, miniBatchesPerStep) },
    },
    checkpoint: { everySteps: 25 },
    ...(options.parallel ? { parallel: { ...options.parallel } } : {}),
  };
}
