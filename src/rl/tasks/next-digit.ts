// The built-in verifiable task of the quickstart: "472=" → "3", the digit after the prompt's last
// digit (9 → 0). Small enough for a tiny model trained from random weights on a CPU to learn in
// well under a minute, with a reward a random policy already earns now and then (1 in 10
// answers), so GRPO has signal from the first step; the model must learn to look back past "="
// and map each digit to the next. Writes a prompt file in verl's layout, a character-level
// tokenizer, and a tiny Qwen3-shaped model folder.
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { Model } from "../../native/model.js";
import type { ExperimentConfig } from "../config.js";
import { mulberry32 } from "../data.js";
import { NEXT_DIGIT_SOURCE } from "../rewards/next-digit.js";

export { NEXT_DIGIT_SOURCE, nextDigitScore } from "../rewards/next-digit.js";

/** Every three-digit "abc=" (1,000 prompts), as verl-layout JSONL rows; the answer is (c + 1) mod 10. */
export function nextDigitRows(): Record<string, unknown>[] {
  const rows: Record<string, unknown>[] = [];
  for (let n = 0; n < 1000; n++) {
    const digits = String(n).padStart(3, "0");
    rows.push({
      data_source: NEXT_DIGIT_SOURCE,
      prompt: [{ role: "user", content: `${digits}=` }],
      ability: "next-digit",
      reward_model: { style: "rule", ground_truth: String((n + 1) % 10) },
      extra_info: { index: n },
    });
  }
  return rows;
}

const SPECIALS = ["<pad>", "<eos>"];
const CHARS = "0123456789+=";

/** A character-level HF tokenizer (WordLevel over single characters) with a plain chat template. */
export function tokenizerFiles(): Record<string, unknown> {
  const vocab: Record<string, number> = {};
  for (const t of [...SPECIALS, ...CHARS, "?"]) vocab[t] = Object.keys(vocab).length;
  const added = SPECIALS.map((content, id) => ({
    id,
    content,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
    special: true,
  }));
  return {
    "tokenizer.json": {
      version: "1.0",
      truncation: null,
      padding: null,
      added_tokens: added,
      normalizer: null,
      pre_tokenizer: { type: "Split", pattern: { Regex: "." }, behavior: "Isolated", invert: false },
      post_processor: null,
      decoder: { type: "Fuse" },
      model: { type: "WordLevel", vocab, unk_token: "?" },
    },
    "tokenizer_config.json": {
      eos_token: "<eos>",
      pad_token: "<pad>",
      chat_template: "{% for message in messages %}{{ message['content'] }}{% endfor %}",
      tokenizer_class: "PreTrainedTokenizerFast",
    },
    "generation_config.json": { eos_token_id: 1, pad_token_id: 0 },
  };
}

export interface TinyModelOptions {
  seed?: number;
  hiddenSize?: number;
  layers?: number;
  /** Standard deviation of the random weights (default 0.02, as HF's initializer_range). */
  initStd?: number;
  /** A Qwen3-MoE instead of a dense Qwen3: routed experts per layer and experts per token. */
  moe?: { experts: number; topK: number };
  /**
   * Rows of the embedding (default: the tokenizer's 15 ids). More rows are ids no text maps to, as
   * real models pad vocab_size (Qwen3: 151,936 for 151,669 tokens) — 16 splits over 2 or 4 ranks.
   */
  vocabSize?: number;
}

/** Writes a random tiny Qwen3 (tied embeddings) and the tokenizer into `dir`; returns the config. */
export async function writeTinyModel(
  dir: string,
  options: TinyModelOptions = {},
): Promise<Record<string, unknown>> {
  const hidden = options.hiddenSize ?? 64;
  const layers = options.layers ?? 2;
  const heads = 4;
  const kvHeads = 2;
  const headDim = hidden / heads;
  const intermediate = hidden * 3;
  const tokens = SPECIALS.length + CHARS.length + 1;
  const vocab = options.vocabSize ?? tokens;
  if (!Number.isInteger(vocab) || vocab < tokens) {
    throw new RangeError(
      `vocabSize: ${options.vocabSize} must be an integer ≥ the tokenizer's ${tokens} ids`,
    );
  }
  const std = options.initStd ?? 0.02;
  const moe = options.moe;
  const moeIntermediate = hidden;
  const config = {
    architectures: [moe ? "Qwen3MoeForCausalLM" : "Qwen3ForCausalLM"],
    model_type: moe ? "qwen3_moe" : "qwen3",
    ...(moe
      ? {
          num_experts: moe.experts,
          num_experts_per_tok: moe.topK,
          moe_intermediate_size: moeIntermediate,
          decoder_sparse_step: 1,
          mlp_only_layers: [],
          norm_topk_prob: true,
        }
      : {}),
    vocab_size: vocab,
    hidden_size: hidden,
    intermediate_size: intermediate,
    num_hidden_layers: layers,
    num_attention_heads: heads,
    num_key_value_heads: kvHeads,
    head_dim: headDim,
    hidden_act: "silu",
    max_position_embeddings: 64,
    rms_norm_eps: 1e-6,
    rope_theta: 10000,
    tie_word_embeddings: true,
    attention_bias: false,
    bos_token_id: null,
    eos_token_id: 1,
    pad_token_id: 0,
    dtype: "float32",
  };
  const random = mulberry32(options.seed ?? 0);
  // Box–Muller normal samples from the seeded generator: the same folder on every machine.
  const normal = (n: number) => {
    const out = new Float32Array(n);
    for (let i = 0; i < n; i += 2) {
      const u = Math.max(random(), 1e-12);
      const v = random();
      const r = Math.sqrt(-2 * Math.log(u)) * std;
      out[i] = r * Math.cos(2 * Math.PI * v);
      if (i + 1 < n) out[i + 1] = r * Math.sin(2 * Math.PI * v);
    }
    return out;
  };
  const tensor = (name: string, shape: number[], data?: Float32Array) => ({
    name,
    dtype: "float32" as const,
    shape,
    data: data ?? normal(shape.reduce((a, b) => a * b, 1)),
  });
  const ones = (n: number) => new Float32Array(n).fill(1);
  const tensors = [
    tensor("model.embed_tokens.weight", [vocab, hidden]),
    tensor("model.norm.weight", [hidden], ones(hidden)),
  ];
  for (let l = 0; l < layers; l++) {
    const p = `model.layers.${l}`;
    tensors.push(
      tensor(`${p}.input_layernorm.weight`, [hidden], ones(hidden)),
      tensor(`${p}.post_attention_layernorm.weight`, [hidden], ones(hidden)),
      tensor(`${p}.self_attn.q_proj.weight`, [heads * headDim, hidden]),
      tensor(`${p}.self_attn.k_proj.weight`, [kvHeads * headDim, hidden]),
      tensor(`${p}.self_attn.v_proj.weight`, [kvHeads * headDim, hidden]),
      tensor(`${p}.self_attn.o_proj.weight`, [hidden, heads * headDim]),
      tensor(`${p}.self_attn.q_norm.weight`, [headDim], ones(headDim)),
      tensor(`${p}.self_attn.k_norm.weight`, [headDim], ones(headDim)),
    );
    if (moe) {
      tensors.push(tensor(`${p}.mlp.gate.weight`, [moe.experts, hidden]));
      for (let e = 0; e < moe.experts; e++) {
        tensors.push(
          tensor(`${p}.mlp.experts.${e}.gate_proj.weight`, [moeIntermediate, hidden]),
          tensor(`${p}.mlp.experts.${e}.up_proj.weight`, [moeIntermediate, hidden]),
          tensor(`${p}.mlp.experts.${e}.down_proj.weight`, [hidden, moeIntermediate]),
        );
      }
    } else {
      tensors.push(
        tensor(`${p}.mlp.gate_proj.weight`, [intermediate, hidden]),
        tensor(`${p}.mlp.up_proj.weight`, [intermediate, hidden]),
        tensor(`${p}.mlp.down_proj.weight`, [hidden, intermediate]),
      );
    }
  }
  mkdirSync(dir, { recursive: true });
  const model = Model.create(config, tensors, { device: "cpu", dtype: "float32" });
  try {
    await model.save(dir);
  } finally {
    model.dispose();
  }
  for (const [file, content] of Object.entries(tokenizerFiles())) {
    writeFileSync(join(dir, file), `${JSON.stringify(content, null, 2)}\n`);
  }
  return config;
}

/** Writes the prompts as `<dir>/train.jsonl`; returns its path. */
export function writeNextDigitData(dir: string): string {
  mkdirSync(dir, { recursive: true });
  const file = join(dir, "train.jsonl");
  writeFileSync(
    file,
    `${nextDigitRows()
      .map((r) => JSON.stringify(r))
      .join("\n")}\n`,
  );
  return file;
}

/**
 * Held-out prompts for validation: 100 four-digit "abcd=" prompts (never in the training set, which
 * has three digits), the same rule. Writes `<dir>/val.jsonl`; returns its path.
 */
export function writeNextDigitHeldOut(dir: string): string {
  mkdirSync(dir, { recursive: true });
  const file = join(dir, "val.jsonl");
  const rows: string[] = [];
  for (let k = 0; k < 100; k++) {
    const n = 1000 + ((k * 7919) % 9000);
    rows.push(
      JSON.stringify({
        data_source: NEXT_DIGIT_SOURCE,
        prompt: [{ role: "user", content: `${n}=` }],
        ability: "next-digit",
        reward_model: { style: "rule", ground_truth: String((n + 1) % 10) },
        extra_info: { index: n },
      }),
    );
  }
  writeFileSync(file, `${rows.join("\n")}\n`);
  return file;
}

export interface NextDigitSetup {
  modelPath: string;
  dataFile: string;
  /** The held-out four-digit prompts (writeNextDigitHeldOut). */
  valFile: string;
  /** A GRPO config that learns the task in well under a minute on a CPU. */
  config: ExperimentConfig;
}

/**
 * Writes the tiny model (once) and the prompts under `dir`, and returns a GRPO config for them:
 * 16 prompts × 8 one-token answers per step, lr 3e-3. `overrides` replace top-level settings.
 */
export async function prepareNextDigit(
  dir: string,
  overrides: Partial<ExperimentConfig> = {},
  options: TinyModelOptions = {},
): Promise<NextDigitSetup> {
  const modelPath = resolve(dir, "model");
  if (!existsSync(join(modelPath, "config.json"))) await writeTinyModel(modelPath, { seed: 1, ...options });
  const dataFile = writeNextDigitData(resolve(dir, "data"));
  const valFile = writeNextDigitHeldOut(resolve(dir, "data"));
  const config: ExperimentConfig = {
    name: "next-digit",
    seed: 1,
    model: { path: modelPath, dtype: "float32" },
    data: { train: dataFile, maxPromptTokens: 8 },
    promptsPerStep: 16,
    rollout: { samplesPerPrompt: 8, maxResponseTokens: 1, temperature: 1 },
    tokensPerMicroBatch: 2048,
    algorithm: { advantage: "grpo", loss: { aggMode: "token-mean", clipRatioLow: 0.2, clipRatioHigh: 0.28 } },
    optimizer: { lr: 3e-3, weightDecay: 0 },
    totalSteps: 80,
    ...overrides,
  };
  return { modelPath, dataFile, valFile, config };
}
