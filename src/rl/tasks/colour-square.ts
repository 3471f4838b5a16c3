// A small verifiable vision task: "which colour is the square?" — a 32 × 32 picture with a red,
// green or blue square on a noisy grey background, answered by one token ("r", "g", "b"). Writes
// a random tiny Qwen2.5-VL folder (vision tower, M-RoPE decoder, a character tokenizer whose chat
// template writes the image placeholders, a preprocessor config) and prompts in verl's multimodal
// layout (`<image>` in the prompt, the PNG bytes in `images`). A random policy is right one time in
// nine, so GRPO has signal from the first step; learning needs the image.
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { Model, type NamedHostTensor } from "../../native/model.js";
import { encodePng } from "../../vision/image.js";
import type { ExperimentConfig } from "../config.js";
import { mulberry32 } from "../data.js";
import { COLOUR_SQUARE_SOURCE } from "./colour-square-reward.js";

export { COLOUR_SQUARE_SOURCE, colourSquareScore } from "./colour-square-reward.js";

const SPECIALS = ["<pad>", "<eos>", "<|vision_start|>", "<|image_pad|>", "<|vision_end|>"];
const CHARS = "rgb?";
const COLOURS: [string, [number, number, number]][] = [
  ["r", [220, 30, 40]],
  ["g", [30, 190, 50]],
  ["b", [40, 60, 220]],
];
export const colourSquareSize = 32;

/** One picture: grey noise, a square of the colour at a random place and size. PNG bytes. */
export function colourSquareImage(colour: number, random: () => number): Uint8Array {
  const n = colourSquareSize;
  const data = new Uint8Array(n * n * 3);
  for (let i = 0; i < data.length; i++) data[i] = 110 + Math.floor(random() * 60);
  const side = 10 + Math.floor(random() * 8);
  const x0 = Math.floor(random() * (n - side));
  const y0 = Math.floor(random() * (n - side));
  const rgb = (COLOURS[colour] as [string, [number, number, number]])[1];
  for (let y = y0; y < y0 + side; y++) {
    for (let x = x0; x < x0 + side; x++) {
      for (let c = 0; c < 3; c++)
        data[(y * n + x) * 3 + c] = Math.max(
          0,
          Math.min(255, (rgb[c] ?? 0) + Math.floor(random() * 30) - 15),
        );
    }
  }
  return encodePng({ width: n, height: n, data });
}

/** `count` rows in verl's multimodal layout (the image base64-encoded, as JSONL carries bytes). */
export function colourSquareRows(count: number, seed = 0): Record<string, unknown>[] {
  const random = mulberry32(seed);
  return Array.from({ length: count }, (_, index) => {
    const colour = Math.floor(random() * 3);
    const png = colourSquareImage(colour, random);
    return {
      data_source: COLOUR_SQUARE_SOURCE,
      prompt: [{ role: "user", content: "<image>?" }],
      images: [{ bytes: Buffer.from(png).toString("base64") }],
      ability: "vision",
      reward_model: { style: "rule", ground_truth: (COLOURS[colour] as [string, unknown])[0] },
      extra_info: { index },
    };
  });
}

function tokenizerFiles(): Record<string, unknown> {
  const vocab: Record<string, number> = {};
  for (const t of [...SPECIALS, ...CHARS]) vocab[t] = Object.keys(vocab).length;
  const added = SPECIALS.map((content, id) => ({
    id,
    content,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
    special: true,
  }));
  // Qwen2.5-VL's template in miniature: image parts become vision-start, one placeholder, vision-end.
  const template =
    "{% for message in messages %}{% if message['content'] is string %}{{ message['content'] }}" +
    "{% else %}{% for part in message['content'] %}{% if part['type'] == 'image' %}" +
    "<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ part['text'] }}{% endif %}{% endfor %}" +
    "{% endif %}{% endfor %}";
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
      chat_template: template,
      tokenizer_class: "PreTrainedTokenizerFast",
    },
    "generation_config.json": { eos_token_id: 1, pad_token_id: 0 },
    "preprocessor_config.json": {
      image_processor_type: "Qwen2VLImageProcessor",
      min_pixels: colourSquareSize * colourSquareSize,
      max_pixels: colourSquareSize * colourSquareSize,
      patch_size: 4,
      temporal_patch_size: 2,
      merge_size: 2,
    },
  };
}

/** Writes a random tiny Qwen2.5-VL (tied embeddings) with its tokenizer into `dir`; returns the config. */
export async function writeTinyVisionModel(dir: string, seed = 0): Promise<Record<string, unknown>> {
  const vocab = SPECIALS.length + CHARS.length;
  const hidden = 64;
  const heads = 4;
  const kvHeads = 2;
  const headDim = hidden / heads;
  const inter = 192;
  const layers = 2;
  const vision = { depth: 2, hidden: 32, inter: 64, heads: 2, patch: 4, temporal: 2, merge: 2 };
  const config = {
    architectures: ["Qwen2_5_VLForConditionalGeneration"],
    model_type: "qwen2_5_vl",
    image_token_id: SPECIALS.indexOf("<|image_pad|>"),
    video_token_id: SPECIALS.indexOf("<|image_pad|>"),
    vision_start_token_id: SPECIALS.indexOf("<|vision_start|>"),
    vision_end_token_id: SPECIALS.indexOf("<|vision_end|>"),
    tie_word_embeddings: true,
    eos_token_id: 1,
    pad_token_id: 0,
    dtype: "float32",
    text_config: {
      model_type: "qwen2_5_vl_text",
      vocab_size: vocab,
      hidden_size: hidden,
      intermediate_size: inter,
      num_hidden_layers: layers,
      num_attention_heads: heads,
      num_key_value_heads: kvHeads,
      hidden_act: "silu",
      max_position_embeddings: 128,
      rms_norm_eps: 1e-6,
      rope_parameters: { rope_type: "default", mrope_section: [2, 3, 3], rope_theta: 10000 },
      tie_word_embeddings: true,
      eos_token_id: 1,
      pad_token_id: 0,
    },
    vision_config: {
      model_type: "qwen2_5_vl_vision",
      depth: vision.depth,
      hidden_size: vision.hidden,
      intermediate_size: vision.inter,
      num_heads: vision.heads,
      in_channels: 3,
      patch_size: vision.patch,
      temporal_patch_size: vision.temporal,
      spatial_merge_size: vision.merge,
      window_size: 16,
      out_hidden_size: hidden,
      fullatt_block_indexes: [1],
      hidden_act: "silu",
    },
  };
  const random = mulberry32(seed);
  const std = 0.02;
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
  const tensors: NamedHostTensor[] = [];
  const add = (name: string, shape: number[], fill?: number) => {
    const n = shape.reduce((a, b) => a * b, 1);
    tensors.push({
      name,
      dtype: "float32",
      shape,
      data: fill === undefined ? normal(n) : new Float32Array(n).fill(fill),
    });
  };
  add("model.embed_tokens.weight", [vocab, hidden]);
  add("model.norm.weight", [hidden], 1);
  for (let l = 0; l < layers; l++) {
    const p = `model.layers.${l}`;
    add(`${p}.input_layernorm.weight`, [hidden], 1);
    add(`${p}.post_attention_layernorm.weight`, [hidden], 1);
    add(`${p}.self_attn.q_proj.weight`, [heads * headDim, hidden]);
    add(`${p}.self_attn.q_proj.bias`, [heads * headDim], 0);
    add(`${p}.self_attn.k_proj.weight`, [kvHeads * headDim, hidden]);
    add(`${p}.self_attn.k_proj.bias`, [kvHeads * headDim], 0);
    add(`${p}.self_attn.v_proj.weight`, [kvHeads * headDim, hidden]);
    add(`${p}.self_attn.v_proj.bias`, [kvHeads * headDim], 0);
    add(`${p}.self_attn.o_proj.weight`, [hidden, heads * headDim]);
    add(`${p}.mlp.gate_proj.weight`, [inter, hidden]);
    add(`${p}.mlp.up_proj.weight`, [inter, hidden]);
    add(`${p}.mlp.down_proj.weight`, [hidden, inter]);
  }
  const d = vision.hidden;
  const merged = d * vision.merge * vision.merge;
  add("visual.patch_embed.proj.weight", [d, 3, vision.temporal, vision.patch, vision.patch]);
  for (let l = 0; l < vision.depth; l++) {
    const p = `visual.blocks.${l}`;
    add(`${p}.norm1.weight`, [d], 1);
    add(`${p}.norm2.weight`, [d], 1);
    add(`${p}.attn.qkv.weight`, [3 * d, d]);
    add(`${p}.attn.qkv.bias`, [3 * d], 0);
    add(`${p}.attn.proj.weight`, [d, d]);
    add(`${p}.attn.proj.bias`, [d], 0);
    add(`${p}.mlp.gate_proj.weight`, [vision.inter, d]);
    add(`${p}.mlp.gate_proj.bias`, [vision.inter], 0);
    add(`${p}.mlp.up_proj.weight`, [vision.inter, d]);
    add(`${p}.mlp.up_proj.bias`, [vision.inter], 0);
    add(`${p}.mlp.down_proj.weight`, [d, vision.inter]);
    add(`${p}.mlp.down_proj.bias`, [d], 0);
  }
  add("visual.merger.ln_q.weight", [d], 1);
  add("visual.merger.mlp.0.weight", [merged, merged]);
  add("visual.merger.mlp.0.bias", [merged], 0);
  add("visual.merger.mlp.2.weight", [hidden, merged]);
  add("visual.merger.mlp.2.bias", [hidden], 0);
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

export interface ColourSquareSetup {
  modelPath: string;
  dataFile: string;
  /** A GRPO config for the task on a CPU: 16 prompts × 8 one-token answers per step. */
  config: ExperimentConfig;
}

/**
 * Writes the tiny model (once) and `rows` prompts (JSONL) under `dir`; returns a GRPO config whose
 * reward is colourSquareScore. `dataFile` may name a Parquet file of the same rows instead.
 */
export async function prepareColourSquare(
  dir: string,
  overrides: Partial<ExperimentConfig> = {},
  rows = 512,
): Promise<ColourSquareSetup> {
  const modelPath = resolve(dir, "model");
  if (!existsSync(join(modelPath, "config.json"))) await writeTinyVisionModel(modelPath, 1);
  const dataDir = resolve(dir, "data");
  mkdirSync(dataDir, { recursive: true });
  const dataFile = join(dataDir, "train.jsonl");
  writeFileSync(
    dataFile,
    `${colourSquareRows(rows, 2)
      .map((r) => JSON.stringify(r))
      .join("\n")}\n`,
  );
  const reward = fileURLToPath(new URL("./colour-square-reward.js", import.meta.url));
  const config: ExperimentConfig = {
    name: "colour-square",
    seed: 1,
    model: { path: modelPath, dtype: "float32" },
    data: { train: dataFile, maxPromptTokens: 32 },
    promptsPerStep: 16,
    rollout: { samplesPerPrompt: 8, maxResponseTokens: 1, temperature: 1 },
    tokensPerMicroBatch: 4096,
    algorithm: { advantage: "grpo", loss: { aggMode: "token-mean", clipRatioLow: 0.2, clipRatioHigh: 0.28 } },
    optimizer: { lr: 3e-3, weightDecay: 0 },
    reward: { fn: { module: reward, exportName: "colourSquareScore" } },
    totalSteps: 60,
    ...overrides,
  };
  return { modelPath, dataFile, config };
}
