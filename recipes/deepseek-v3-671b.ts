// DeepSeek-V3 671B with GRPO, the layout of verl's examples/grpo_trainer/run_deepseek671b_math_megatron.sh
// (512 H20 96 GB: 64 nodes × 8, Megatron PP 16, TP 1, EP 32, ETP 1) on GSM8K. recipe/dapo/
// test_dapo_dspk_671b_megatron.sh runs DAPO on the same layout. The Parquet is verl's GSM8K
// (data_source "openai/gsm8k"), scored by tiller's built-in GSM8K verifier.
//
// `model.shape` is DeepSeek-V3(-0324)'s config.json: num_hidden_layers 61, num_attention_heads 128,
// num_key_value_heads 128 (MLA: every head has its own K/V from the shared latent), hidden_size 7168,
// vocab_size 129280, n_routed_experts 256 (the shared expert and the 3 dense first layers are not
// split over expert ranks). The script disables MTP (num_nextn_predict_layers=0).
//
// verl                                           tiller
//   trainer.nnodes=64 × n_gpus_per_node=8          parallel.gpus: 512
//   megatron.tensor_model_parallel_size=1          parallel.tensor: 1
//   megatron.pipeline_model_parallel_size=16       parallel.pipeline: 16
//   megatron.expert_model_parallel_size=32         parallel.expert: 32
//   megatron.expert_tensor_parallel_size=1         parallel.expertTensor: 1
//   (context_parallel_size default 1)              parallel.context: 1
//   (data parallel: 512 / (1 × 16 × 1))            parallel.data: computed, 32 (expert data parallel 1)
//   data.train_batch_size=512                      promptsPerStep: 512
//   data.max_prompt_length=2048                    data.maxPromptTokens: 2048
//   data.max_response_length=4096                  rollout.maxResponseTokens: 4096
//   rollout.n=4                                    rollout.samplesPerPrompt: 4
//   rollout temperature 1.0, top_p 1.0, top_k -1   rollout: temperature 1, topP 1, topK 0 (off)
//   rollout.tensor_model_parallel_size=32 (INFER_TP) rollout.parallel: { tensor: 32 } (× 16 replicas)
//   actor.ppo_mini_batch_size=128 (prompts)        miniBatchesPerStep: 512 / 128 = 4
//   actor.ppo_micro_batch_size_per_gpu=1           tokensPerMicroBatch: 6144 (2048 + 4096: one longest
//                                                    sequence; verl's micro-batches are one sequence)
//   actor.optim.lr=1e-6                            optimizer.lr: 1e-6 (no warmup)
//   (defaults) weight_decay 0.01, clip_grad 1.0,
//     clip_ratio 0.2, clip_ratio_c 3, token-mean,
//     entropy_coeff 0                              the same, written out
//   actor.use_kl_loss=False,
//     algorithm.use_kl_in_reward=False             no algorithm.loss.kl, no algorithm.klReward
//   trainer.total_epochs=100                       totalSteps: 1400 (7473 rows // 512 = 14 an epoch)
//   trainer.save_freq=-1                           checkpoint.everySteps: 0
//
//   override_transformer_config.num_layers_in_first_pipeline_stage=3 / _last_=2
//                                                  parallel.firstStageLayers: 3, lastStageLayers: 2
//                                                  (61 = 3 + 14 × 4 + 2, checked against the shape)
// Not expressible here: the commented-out full recompute (recompute_granularity / method / num_layers),
// param / grad / optimizer offload (ALL_OFFLOAD=True) and the reference's param offload,
// use_dist_checkpointing with a Megatron dist_ckpt path (model.path is an HF folder), use_torch_compile,
// rollout gpu_memory_utilization, validation
// (data.val_files, trainer.test_freq=5).
//
// The 80 GB variant (run_deepseek671b_math_megatron_80gb.sh: 256 H100, EP 16, first/last stages 4/1,
// full recompute, use_kl_loss=True with kl_loss_coef 0.001, dynamic batch with 6144 tokens per GPU)
// is this recipe with `parallel: { tensor: 1, pipeline: 16, expert: 16, expertTensor: 1, gpus: 256 }`
// and the KL loss added.
import type { ExperimentConfig, ModelShape, ParallelLayout } from "../src/rl/config.js";
import { home, miniBatchesOf, modelField, type RecipeOptions, runFields, shapeOf } from "./common.js";

/** DeepSeek-V3's config.json numbers that a layout must divide. */
export const deepseekV3Shape: ModelShape = {
  layers: 61,
  attentionHeads: 128,
  kvHeads: 128,
  hiddenSize: 7168,
  vocabSize: 129280,
  experts: 256,
};

/** verl's layout: 512 GPUs, PP 16 (stages 3, 14 × 4, 2), TP 1, EP 32, ETP 1 (data parallel 32 is computed). */
export const deepseekV3VerlLayout: ParallelLayout & { gpus: number } = {
  tensor: 1,
  pipeline: 16,
  context: 1,
  expert: 32,
  expertTensor: 1,
  firstStageLayers: 3,
  lastStageLayers: 2,
  gpus: 64 * 8,
};

/**
 * DeepSeek-V3 671B GRPO on GSM8K with verl's layout. Today's engine trains on one rank, so this
 * config validates (resolveConfig) but does not train. `shape` defaults to DeepSeek-V3's whatever
 * `modelPath` is (the recipe is about this model).
 */
export function deepseekV3_671b(options: RecipeOptions = {}): ExperimentConfig {
  const promptsPerStep = 512;
  const maxPromptTokens = 2048;
  const maxResponseTokens = 4096;
  return {
    ...runFields(options, "deepseek-v3-671b", 1400),
    // verl's script reads the config from "<path_to_dsv3_config>" (deepseek-ai/DeepSeek-V3-0324).
    model: modelField(
      options.modelPath ?? home("models", "DeepSeek-V3-0324"),
      shapeOf(options, deepseekV3Shape),
    ),
    data: { train: options.trainFiles ?? "/data/gsm8k/train.parquet", maxPromptTokens },
    promptsPerStep,
    rollout: {
      samplesPerPrompt: 4,
      maxResponseTokens,
      temperature: 1,
      topP: 1,
      topK: 0,
      parallel: { tensor: 32 },
    },
    miniBatchesPerStep: miniBatchesOf(promptsPerStep, 128),
    epochsPerStep: 1,
    tokensPerMicroBatch: maxPromptTokens + maxResponseTokens,
    algorithm: {
      advantage: "grpo",
      loss: { clipRatioLow: 0.2, clipRatioHigh: 0.2, clipRatioC: 3, aggMode: "token-mean", entropyCoeff: 0 },
    },
    optimizer: { lr: 1e-6, weightDecay: 0.01, maxGradNorm: 1 },
    checkpoint: { everySteps: 0 },
    parallel: { ...(options.parallel ?? deepseekV3VerlLayout) },
  };
}
