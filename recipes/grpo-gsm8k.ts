// GRPO on GSM8K, as verl's examples/grpo_trainer/run_qwen2-7b_seq_balance.sh runs it (the same
// settings as run_qwen2-7b.sh, with dynamic batch sizes: ppo_max_token_len_per_gpu instead of a
// micro-batch count). Prompts are verl's GSM8K Parquet (examples/data_preprocess/gsm8k.py), whose
// rows carry data_source "openai/gsm8k": tiller scores them with its built-in GSM8K verifier.
//
// verl                                           tiller
//   data.train_batch_size=1024                     promptsPerStep: 1024
//   data.max_prompt_length=512                     data.maxPromptTokens: 512
//   data.filter_overlong_prompts=True              (always: longer prompts are dropped and counted)
//   data.max_response_length=1024                  rollout.maxResponseTokens: 1024
//   rollout.n=5                                    rollout.samplesPerPrompt: 5
//   actor.ppo_mini_batch_size=256 (prompts)        miniBatchesPerStep: 1024 / 256 = 4
//   actor.use_dynamic_bsz=True,
//     ppo_max_token_len_per_gpu=24000              tokensPerMicroBatch: 24000
//   actor.optim.lr=1e-6                            optimizer.lr: 1e-6 (constant: verl warms up 0 steps)
//   actor.use_kl_loss=True, kl_loss_coef=0.001,
//     kl_loss_type=low_var_kl                      algorithm.loss.kl: { type: "low_var_kl", coeff: 0.001 }
//   actor.entropy_coeff=0                          algorithm.loss.entropyCoeff: 0
//   (defaults) clip_ratio 0.2, loss_agg_mode
//     token-mean, weight_decay 0.01, grad_clip 1   the same, written out
//   algorithm.use_kl_in_reward=False               no algorithm.klReward
//   trainer.total_epochs=15                        totalSteps: 105 (7473 train rows // 1024 = 7 steps
//                                                    an epoch, verl drops the last partial batch)
//   trainer.save_freq=20                           checkpoint.everySteps: 20
//   trainer.n_gpus_per_node=8, nnodes=1 (FSDP)     parallel: one rank by default (today's engine);
//                                                    verl's layout is `parallel: { gpus: 8 }` (data 8)
//
// Not expressible here (engine or rollout choices, not experiment settings): model.use_remove_padding
// (tiller always packs), enable_gradient_checkpointing, fsdp_config param/optimizer offload and the
// reference's param_offload, rollout.tensor_model_parallel_size=2, rollout.name / mode /
// gpu_memory_utilization, data.val_files with trainer.test_freq=5 (no validation set in the config),
// data.truncation='error'.
import type { ExperimentConfig, ModelShape } from "../src/rl/config.js";
import { home, miniBatchesOf, modelField, type RecipeOptions, runFields, shapeOf } from "./common.js";

/** Qwen2-7B-Instruct's config.json: the model verl's script trains. */
export const qwen2_7bShape: ModelShape = {
  layers: 28,
  attentionHeads: 28,
  kvHeads: 4,
  hiddenSize: 3584,
  vocabSize: 152064,
};

/**
 * GRPO on GSM8K with verl's hyper-parameters. `shape` defaults to Qwen2-7B-Instruct's only when
 * `modelPath` is left at its default (another model: pass its shape to validate a layout).
 */
export function grpoGsm8k(options: RecipeOptions = {}): ExperimentConfig {
  const promptsPerStep = 1024;
  const miniBatchesPerStep = miniBatchesOf(promptsPerStep, 256);
  const shape = shapeOf(options, options.modelPath === undefined ? qwen2_7bShape : undefined);
  return {
    ...runFields(options, "grpo-gsm8k", 105),
    model: modelField(options.modelPath ?? home("models", "Qwen2-7B-Instruct"), shape),
    data: { train: options.trainFiles ?? home("data", "gsm8k", "train.parquet"), maxPromptTokens: 512 },
    promptsPerStep,
    rollout: { samplesPerPrompt: 5, maxResponseTokens: 1024, temperature: 1, topP: 1, topK: 0 },
    miniBatchesPerStep,
    epochsPerStep: 1,
    tokensPerMicroBatch: 24000,
    algorithm: {
      advantage: "grpo",
      loss: {
        clipRatioLow: 0.2,
        clipRatioHigh: 0.2,
        clipRatioC: 3,
        aggMode: "token-mean",
        entropyCoeff: 0,
        kl: { type: "low_var_kl", coeff: 0.001 },
      },
    },
    optimizer: { lr: 1e-6, weightDecay: 0.01, maxGradNorm: 1 },
    checkpoint: { everySteps: 20 },
    ...(options.parallel ? { parallel: { ...options.parallel } } : {}),
  };
}
