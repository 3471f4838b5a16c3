// Qwen3-235B-A22B, the layout and settings of verl's examples/grpo_trainer/run_qwen3-236b_megatron.sh
// (32 nodes × 8 H20, Megatron TP 4, PP 8, EP 4): DAPO's clip-higher and overlong shaping through
// main_ppo, without group filtering, on dapo-math-17k (data_source "math_dapo", tiller's built-in
// DAPO math verifier).
//
// `model.shape` is Qwen3-235B-A22B's config.json: num_hidden_layers 94, num_attention_heads 64,
// num_key_value_heads 4, hidden_size 4096, vocab_size 151936, num_experts 128.
//
// verl                                           tiller
//   trainer.nnodes=32 × n_gpus_per_node=8          parallel.gpus: 256
//   megatron.tensor_model_parallel_size=4          parallel.tensor: 4
//   megatron.pipeline_model_parallel_size=8        parallel.pipeline: 8
//   megatron.expert_model_parallel_size=4          parallel.expert: 4
//   (expert_tensor_parallel_size null: Megatron
//     then uses the tensor size)                   parallel.expertTensor: 4 (ours defaults to 1)
//   (data parallel: 256 / (4 × 8))                 parallel.data: computed, 8 (expert data parallel 2)
//   data.train_batch_size=256                      promptsPerStep: 256
//   data.max_prompt_length=2048                    data.maxPromptTokens: 2048
//   data.max_response_length=4096                  rollout.maxResponseTokens: 4096
//   rollout.n=4                                    rollout.samplesPerPrompt: 4
//   rollout temperature 1.0, top_p 1.0, top_k -1   rollout: temperature 1, topP 1, topK 0 (off)
//   actor.ppo_mini_batch_size=16 (prompts)         miniBatchesPerStep: 256 / 16 = 16
//   actor.ppo_micro_batch_size_per_gpu=1           tokensPerMicroBatch: 6144 (2048 + 4096: one longest
//                                                    sequence; verl's micro-batches are one sequence)
//   adv_estimator=grpo                             algorithm.advantage: "grpo"
//   clip_ratio_low=0.2, clip_ratio_high=0.28,
//     clip_ratio_c=10.0                            algorithm.loss: clipRatioLow 0.2, clipRatioHigh 0.28, clipRatioC 10
//   loss_agg_mode=token-mean, entropy_coeff=0      algorithm.loss: aggMode "token-mean", entropyCoeff 0
//   use_kl_loss=False, use_kl_in_reward=False      no algorithm.loss.kl, no algorithm.klReward
//   reward_kwargs.overlong_buffer_cfg: enable,
//     len=4096, penalty_factor=0.1                 algorithm.overlong: { bufferTokens: 4096, penaltyFactor: 0.1 }
//                                                    (the buffer is the whole response length, as in verl)
//   actor.optim.lr=1e-6                            optimizer.lr: 1e-6
//   actor.optim.lr_warmup_steps=10                 optimizer.schedule: constant-with-warmup, warmupSteps
//                                                    10 × 16 = 160 (verl counts training steps, we
//                                                    count optimizer updates)
//   actor.optim.weight_decay=0.1                   optimizer.weightDecay: 0.1
//   actor.optim.clip_grad=1.0                      optimizer.maxGradNorm: 1
//   trainer.total_training_steps=100               totalSteps: 100
//   trainer.save_freq=20                           checkpoint.everySteps: 20
//
//   override_transformer_config.num_layers_in_first_pipeline_stage=5 / _last_=5
//                                                  parallel.firstStageLayers: 5, lastStageLayers: 5
//                                                  (94 = 5 + 6 × 14 + 5, checked against the shape)
// Not expressible here: param / grad / optimizer offload (offload=True) and the reference's param offload,
// use_dist_checkpointing with the mcore dist_ckpt (model.path is an HF folder), gradient
// checkpointing, rollout gpu_memory_utilization /
// enable_chunked_prefill / max_num_batched_tokens, the log-prob micro-batch sizes (4),
// data.truncation='left' (we drop over-long prompts), validation (aime-2024, val_kwargs, test_freq=10).
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

/** Qwen3-235B-A22B's config.json numbers that a layout must divide. */
export const qwen3_235bShape: ModelShape = {
  layers: 94,
  attentionHeads: 64,
  kvHeads: 4,
  hiddenSize: 4096,
  vocabSize: 151936,
  experts: 128,
};

/** verl's layout: 256 GPUs, TP 4, PP 8 (stages 5, 6 × 14, 5), EP 4, ETP = TP (data parallel 8 is computed). */
export const qwen3_235bVerlLayout: ParallelLayout & { gpus: number } = {
  tensor: 4,
  pipeline: 8,
  context: 1,
  expert: 4,
  expertTensor: 4,
  firstStageLayers: 5,
  lastStageLayers: 5,
  gpus: 32 * 8,
};

/**
 * Qwen3-235B-A22B with verl's layout and settings. Today's engine trains on one rank, so this config
 * validates (resolveConfig) but does not train. `shape` defaults to Qwen3-235B-A22B's whatever
 * `modelPath` is (the recipe is about this model).
 */
export function qwen3_235b(options: RecipeOptions = {}): ExperimentConfig {
  const promptsPerStep = 256;
  const maxPromptTokens = 2 * 1024;
  const maxResponseTokens = 4 * 1024;
  const miniBatchesPerStep = miniBatchesOf(promptsPerStep, 16);
  return {
    ...runFields(options, "qwen3-235b", 100),
    model: modelField(
      options.modelPath ?? home("verl", "models", "Qwen3-235B-A22B"),
      shapeOf(options, qwen3_235bShape),
    ),
    data: { train: options.trainFiles ?? home("verl", "dataset", "dapo-math-17k.parquet"), maxPromptTokens },
    promptsPerStep,
    // verl's gen_tp=8: the rollout at TP8 over the same GPUs (resharded from TP4 × EP4 × PP8 each sync).
    rollout: {
      samplesPerPrompt: 4,
      maxResponseTokens,
      temperature: 1,
      topP: 1,
      topK: 0,
      parallel: { tensor: 8 },
    },
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
      overlong: { bufferTokens: 4 * 1024, penaltyFactor: 0.1 },
    },
    optimizer: {
      lr: 1e-6,
      weightDecay: 0.1,
      maxGradNorm: 1,
      schedule: { kind: "constant-with-warmup", warmupSteps: updatesOf(10, miniBatchesPerStep) },
    },
    checkpoint: { everySteps: 20 },
    parallel: { ...(options.parallel ?? qwen3_235bVerlLayout) },
  };
}
