// A model's shape as the planner sees it: every tensor the engine holds (HF names and shapes, the
// tables of native/src/models/*.cc, experts stacked), what kind of parameter it is and how tensor
// and expert parallelism cut it. Read from an HF config.json (object, file or folder), with the
// defaults the engine's config readers use.
import { existsSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";

/** What a parameter is, for the memory breakdown. */
export type TensorKind = "embedding" | "dense" | "expert" | "vision";

/**
 * How tensor parallelism cuts a tensor (native/src/parallel/tensor_parallel.h): column and vocab
 * split dim 0, row dim 1, replicated keeps it whole; stacked experts split dim 0 over the expert group.
 */
export type SplitKind = "replicated" | "column" | "row" | "vocab" | "expert";

export interface PlanTensor {
  /** HF name, as the engine holds it (experts stacked: `mlp.experts.gate_up_proj`). */
  name: string;
  shape: number[];
  kind: TensorKind;
  /** Decoder layer; -1 before the first (embedding, vision tower), `layers` after the last (final norm, lm head). */
  layer: number;
  split: SplitKind;
  /** Column/row splits by heads: heads in the split dimension (fewer than ranks: replicated). */
  heads?: number;
  /** Stacked experts: the dimension of each expert that expert-tensor (or rollout tensor) parallelism cuts. */
  innerDim?: number;
  /** Loaded and saved but not trained (kept in fp32): DeepSeek-V3's e_score_correction_bias. */
  buffer?: boolean;
  /** Matmul weight of a forward (counts in the FLOP model); norms, biases and the embedding lookup do not. */
  matmul: boolean;
  /** Weight decay under "biases-and-norms" (the engine's rule: not a bias, more than one dimension). */
  decays: boolean;
}

export type Attention =
  | {
      kind: "gqa";
      heads: number;
      kvHeads: number;
      headDim: number;
      /** Qwen3's per-head RMSNorm of queries and keys (its inputs are kept for backward). */
      qkNorm?: boolean;
    }
  | {
      kind: "mla";
      heads: number;
      qLoraRank: number;
      kvLoraRank: number;
      qkNopeDim: number;
      qkRopeDim: number;
      vDim: number;
    };

export interface MoeSpec {
  experts: number;
  topK: number;
  /** Per expert. */
  intermediate: number;
  /** The shared experts' total intermediate size (0: none). */
  sharedIntermediate: number;
  /** Decoder layers with the mixture (ascending). */
  layers: number[];
}

export interface ModelSpec {
  architecture: string;
  vocab: number;
  hidden: number;
  layers: number;
  /** The dense MLP's intermediate size. */
  intermediate: number;
  tied: boolean;
  attention: Attention;
  moe?: MoeSpec;
  /** Qwen2.5-VL: the vision tower (replicated under tensor parallelism, on the first pipeline stage). */
  vision?: { depth: number; hidden: number; heads: number };
  tensors: PlanTensor[];
  /** What the shape leaves out or assumes (multi-token prediction layers, …). */
  notes: string[];
}

export const supportedPlanArchitectures = [
  "Qwen2ForCausalLM",
  "Qwen3ForCausalLM",
  "LlamaForCausalLM",
  "Qwen3MoeForCausalLM",
  "MixtralForCausalLM",
  "DeepseekV3ForCausalLM",
  "Qwen2_5_VLForConditionalGeneration",
] as const;

type Json = Record<string, unknown>;

class ConfigReader {
  constructor(
    readonly c: Json,
    readonly where: string,
  ) {}
  has(key: string): boolean {
    return this.c[key] !== undefined && this.c[key] !== null;
  }
  int(key: string, fallback?: number, min = 1): number {
    const v = this.has(key) ? this.c[key] : fallback;
    if (v === undefined)
      throw new RangeError(`${this.where}: ${key} is missing (an integer ≥ ${min} is required)`);
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v < min) {
      throw new RangeError(`${this.where}: ${key} is ${JSON.stringify(v)}; expected an integer ≥ ${min}`);
    }
    return v;
  }
  flag(key: string, fallback: boolean): boolean {
    const v = this.c[key];
    if (v === undefined || v === null) return fallback;
    if (typeof v === "boolean") return v;
    if (typeof v === "number") return v !== 0;
    throw new TypeError(`${this.where}: ${key} is ${JSON.stringify(v)}; expected true or false`);
  }
  intList(key: string): number[] {
    const v = this.c[key];
    if (v === undefined || v === null) return [];
    if (!Array.isArray(v) || !v.every((x) => Number.isSafeInteger(x))) {
      throw new TypeError(`${this.where}: ${key} is ${JSON.stringify(v)}; expected a list of layer indices`);
    }
    return v as number[];
  }
}

/** The config.json of an HF folder, a config.json file, or the parsed object as it is. */
export function readHfConfig(source: string | Json): { config: Json; where: string } {
  if (typeof source !== "string") {
    if (source === null || typeof source !== "object" || Array.isArray(source)) {
      throw new TypeError("model: expected an HF folder, a config.json path or the parsed config object");
    }
    return { config: source, where: "config.json" };
  }
  if (!existsSync(source)) throw new RangeError(`model: ${JSON.stringify(source)} does not exist`);
  const file = statSync(source).isDirectory() ? join(source, "config.json") : source;
  if (!existsSync(file))
    throw new RangeError(`model: ${file} does not exist (an HF folder has a config.json)`);
  let config: unknown;
  try {
    config = JSON.parse(readFileSync(file, "utf8"));
  } catch (error) {
    throw new RangeError(`model: ${file} is not JSON: ${(error as Error).message}`);
  }
  if (config === null || typeof config !== "object" || Array.isArray(config)) {
    throw new TypeError(`model: ${file} holds ${JSON.stringify(config)}, not an object`);
  }
  return { config: config as Json, where: file };
}

/** The model's tensors and shape from its HF config (see readHfConfig for the forms). */
export function modelSpec(source: string | Json): ModelSpec {
  const { config, where } = readHfConfig(source);
  const arch = Array.isArray(config.architectures) ? config.architectures[0] : undefined;
  if (typeof arch !== "string") {
    throw new RangeError(
      `${where}: architectures is ${JSON.stringify(config.architectures)}; supported: ${supportedPlanArchitectures.join(", ")}`,
    );
  }
  switch (arch) {
    case "Qwen2ForCausalLM":
    case "Qwen3ForCausalLM":
    case "LlamaForCausalLM":
    case "Qwen3MoeForCausalLM":
    case "MixtralForCausalLM":
      return gqaDecoder(arch, new ConfigReader(config, where));
    case "DeepseekV3ForCausalLM":
      return deepseekV3(new ConfigReader(config, where));
    case "Qwen2_5_VLForConditionalGeneration":
      return qwen25vl(config, where);
    default:
      throw new RangeError(
        `${where}: architecture ${JSON.stringify(arch)} is not supported; supported: ${supportedPlanArchitectures.join(", ")}`,
      );
  }
}

interface Common {
  vocab: number;
  hidden: number;
  intermediate: number;
  layers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  tied: boolean;
}

function common(r: ConfigReader): Common {
  const heads = r.int("num_attention_heads");
  const hidden = r.int("hidden_size");
  const kvHeads = r.int("num_key_value_heads", heads);
  if (heads % kvHeads !== 0) {
    throw new RangeError(
      `${r.where}: num_attention_heads (${heads}) must be a multiple of num_key_value_heads (${kvHeads})`,
    );
  }
  const headDim = r.has("head_dim") ? r.int("head_dim") : Math.floor(hidden / heads);
  if (headDim < 1)
    throw new RangeError(`${r.where}: hidden_size ${hidden} < num_attention_heads ${heads}; set head_dim`);
  return {
    vocab: r.int("vocab_size"),
    hidden,
    intermediate: r.int("intermediate_size"),
    layers: r.int("num_hidden_layers"),
    heads,
    kvHeads,
    headDim,
    tied: r.flag("tie_word_embeddings", false),
  };
}

/** A tensor with the defaults: matmul when 2-D or more and not the embedding, decays unless a bias or 1-D. */
function t(
  name: string,
  shape: number[],
  kind: TensorKind,
  layer: number,
  split: SplitKind = "replicated",
  extra: Partial<Pick<PlanTensor, "heads" | "innerDim" | "buffer">> = {},
): PlanTensor {
  return {
    name,
    shape,
    kind,
    layer,
    split,
    ...extra,
    matmul: shape.length >= 2 && name !== "model.embed_tokens.weight" && !extra.buffer,
    decays: !name.endsWith(".bias") && shape.length > 1,
  };
}

function head(c: Common): { first: PlanTensor[]; last: PlanTensor[] } {
  const last = [t("model.norm.weight", [c.hidden], "dense", c.layers)];
  if (!c.tied) last.push(t("lm_head.weight", [c.vocab, c.hidden], "embedding", c.layers, "vocab"));
  return { first: [t("model.embed_tokens.weight", [c.vocab, c.hidden], "embedding", -1, "vocab")], last };
}

function stackedExperts(
  p: string,
  layer: number,
  experts: number,
  inter: number,
  hidden: number,
): PlanTensor[] {
  return [
    t(`${p}mlp.experts.gate_up_proj`, [experts, 2 * inter, hidden], "expert", layer, "expert", {
      innerDim: 1,
    }),
    t(`${p}mlp.experts.down_proj`, [experts, hidden, inter], "expert", layer, "expert", { innerDim: 2 }),
  ];
}

function swiglu(p: string, layer: number, inter: number, hidden: number): PlanTensor[] {
  return [
    t(`${p}gate_proj.weight`, [inter, hidden], "dense", layer, "column"),
    t(`${p}up_proj.weight`, [inter, hidden], "dense", layer, "column"),
    t(`${p}down_proj.weight`, [hidden, inter], "dense", layer, "row"),
  ];
}

type GqaArch =
  | "Qwen2ForCausalLM"
  | "Qwen3ForCausalLM"
  | "LlamaForCausalLM"
  | "Qwen3MoeForCausalLM"
  | "MixtralForCausalLM";

// native/src/models/{qwen2,qwen3,llama,qwen3_moe,mixtral}.cc and dense.cc's tensor_table.
function gqaDecoder(arch: GqaArch, r: ConfigReader, forceQkvBias = false): ModelSpec {
  const c = common(r);
  const qwen3 = arch === "Qwen3ForCausalLM" || arch === "Qwen3MoeForCausalLM";
  const qkvBias =
    forceQkvBias ||
    arch === "Qwen2ForCausalLM" ||
    (arch !== "MixtralForCausalLM" && r.flag("attention_bias", false));
  const oBias = (arch === "LlamaForCausalLM" || qwen3) && r.flag("attention_bias", false);
  let moe: MoeSpec | undefined;
  if (arch === "Qwen3MoeForCausalLM") {
    const experts = r.has("num_experts") ? r.int("num_experts", 0, 0) : r.int("num_local_experts", 0, 0);
    const step = r.int("decoder_sparse_step", 1);
    const denseOnly = new Set(r.intList("mlp_only_layers"));
    const layers = [];
    for (let i = 0; i < c.layers; i++)
      if (!denseOnly.has(i) && experts > 0 && (i + 1) % step === 0) layers.push(i);
    moe = {
      experts,
      topK: r.int("num_experts_per_tok"),
      intermediate: r.int("moe_intermediate_size"),
      sharedIntermediate: 0,
      layers,
    };
  } else if (arch === "MixtralForCausalLM") {
    moe = {
      experts: r.int("num_local_experts"),
      topK: r.int("num_experts_per_tok"),
      intermediate: c.intermediate,
      sharedIntermediate: 0,
      layers: Array.from({ length: c.layers }, (_, i) => i),
    };
  }
  if (moe && moe.topK > moe.experts) {
    throw new RangeError(`${r.where}: num_experts_per_tok ${moe.topK} exceeds the ${moe.experts} experts`);
  }
  const qOut = c.heads * c.headDim;
  const kvOut = c.kvHeads * c.headDim;
  const { first, last } = head(c);
  const tensors = [...first];
  const moeLayers = new Set(moe?.layers ?? []);
  for (let i = 0; i < c.layers; i++) {
    const p = `model.layers.${i}.`;
    const a = `${p}self_attn.`;
    tensors.push(
      t(`${p}input_layernorm.weight`, [c.hidden], "dense", i),
      t(`${a}q_proj.weight`, [qOut, c.hidden], "dense", i, "column", { heads: c.heads }),
      t(`${a}k_proj.weight`, [kvOut, c.hidden], "dense", i, "column", { heads: c.kvHeads }),
      t(`${a}v_proj.weight`, [kvOut, c.hidden], "dense", i, "column", { heads: c.kvHeads }),
    );
    if (qkvBias) {
      tensors.push(
        t(`${a}q_proj.bias`, [qOut], "dense", i, "column", { heads: c.heads }),
        t(`${a}k_proj.bias`, [kvOut], "dense", i, "column", { heads: c.kvHeads }),
        t(`${a}v_proj.bias`, [kvOut], "dense", i, "column", { heads: c.kvHeads }),
      );
    }
    if (qwen3)
      tensors.push(
        t(`${a}q_norm.weight`, [c.headDim], "dense", i),
        t(`${a}k_norm.weight`, [c.headDim], "dense", i),
      );
    tensors.push(t(`${a}o_proj.weight`, [c.hidden, qOut], "dense", i, "row", { heads: c.heads }));
    if (oBias) tensors.push(t(`${a}o_proj.bias`, [c.hidden], "dense", i));
    tensors.push(t(`${p}post_attention_layernorm.weight`, [c.hidden], "dense", i));
    if (moe && moeLayers.has(i)) {
      tensors.push(
        t(`${p}mlp.gate.weight`, [moe.experts, c.hidden], "dense", i),
        ...stackedExperts(p, i, moe.experts, moe.intermediate, c.hidden),
      );
    } else {
      tensors.push(...swiglu(`${p}mlp.`, i, c.intermediate, c.hidden));
    }
  }
  tensors.push(...last);
  return {
    architecture: arch,
    vocab: c.vocab,
    hidden: c.hidden,
    layers: c.layers,
    intermediate: c.intermediate,
    tied: c.tied,
    attention: {
      kind: "gqa",
      heads: c.heads,
      kvHeads: c.kvHeads,
      headDim: c.headDim,
      ...(qwen3 ? { qkNorm: true } : {}),
    },
    ...(moe ? { moe } : {}),
    tensors,
    notes: [],
  };
}

// native/src/models/deepseek_v3.cc (defaults: transformers' DeepseekV3Config). The engine holds no
// tensor-parallel split for MLA yet; the splits here are Megatron's (q/kv down-projections and
// their norms replicated, q_b/kv_b column by heads, o row, shared experts as a dense MLP).
function deepseekV3(r: ConfigReader): ModelSpec {
  const c = common(r);
  if (c.kvHeads !== c.heads) {
    throw new RangeError(
      `${r.where}: num_key_value_heads (${c.kvHeads}) must equal num_attention_heads (${c.heads}): MLA expands its latent to every head`,
    );
  }
  const qLoraListed = Object.hasOwn(r.c, "q_lora_rank");
  const qLoraRank = r.has("q_lora_rank") ? r.int("q_lora_rank") : qLoraListed ? 0 : 1536;
  const kvLoraRank = r.int("kv_lora_rank");
  const qkNopeDim = r.int("qk_nope_head_dim");
  const qkRopeDim = r.int("qk_rope_head_dim");
  const vDim = r.int("v_head_dim");
  const bias = r.flag("attention_bias", false);
  const experts = r.int("n_routed_experts");
  const topK = r.int("num_experts_per_tok");
  const moeInter = r.int("moe_intermediate_size");
  const shared = moeInter * r.int("n_shared_experts", 1, 0);
  const firstDense = r.int("first_k_dense_replace", 3, 0);
  const layers = [];
  for (let i = firstDense; i < c.layers; i++) layers.push(i);
  const h = c.hidden;
  const heads = c.heads;
  const qOut = heads * (qkNopeDim + qkRopeDim);
  const { first, last } = head(c);
  const tensors = [...first];
  for (let i = 0; i < c.layers; i++) {
    const p = `model.layers.${i}.`;
    const a = `${p}self_attn.`;
    tensors.push(t(`${p}input_layernorm.weight`, [h], "dense", i));
    if (qLoraRank > 0) {
      tensors.push(t(`${a}q_a_proj.weight`, [qLoraRank, h], "dense", i));
      if (bias) tensors.push(t(`${a}q_a_proj.bias`, [qLoraRank], "dense", i));
      tensors.push(
        t(`${a}q_a_layernorm.weight`, [qLoraRank], "dense", i),
        t(`${a}q_b_proj.weight`, [qOut, qLoraRank], "dense", i, "column", { heads }),
      );
    } else {
      tensors.push(t(`${a}q_proj.weight`, [qOut, h], "dense", i, "column", { heads }));
    }
    tensors.push(t(`${a}kv_a_proj_with_mqa.weight`, [kvLoraRank + qkRopeDim, h], "dense", i));
    if (bias) tensors.push(t(`${a}kv_a_proj_with_mqa.bias`, [kvLoraRank + qkRopeDim], "dense", i));
    tensors.push(
      t(`${a}kv_a_layernorm.weight`, [kvLoraRank], "dense", i),
      t(`${a}kv_b_proj.weight`, [heads * (qkNopeDim + vDim), kvLoraRank], "dense", i, "column", { heads }),
      t(`${a}o_proj.weight`, [h, heads * vDim], "dense", i, "row", { heads }),
    );
    if (bias) tensors.push(t(`${a}o_proj.bias`, [h], "dense", i));
    tensors.push(t(`${p}post_attention_layernorm.weight`, [h], "dense", i));
    if (i >= firstDense) {
      tensors.push(
        t(`${p}mlp.gate.weight`, [experts, h], "dense", i),
        t(`${p}mlp.gate.e_score_correction_bias`, [experts], "dense", i, "replicated", { buffer: true }),
        ...stackedExperts(p, i, experts, moeInter, h),
      );
      if (shared > 0) tensors.push(...swiglu(`${p}mlp.shared_experts.`, i, shared, h));
    } else {
      tensors.push(...swiglu(`${p}mlp.`, i, c.intermediate, h));
    }
  }
  tensors.push(...last);
  const mtp = r.has("num_nextn_predict_layers") ? r.int("num_nextn_predict_layers", 0, 0) : 0;
  return {
    architecture: "DeepseekV3ForCausalLM",
    vocab: c.vocab,
    hidden: h,
    layers: c.layers,
    intermediate: c.intermediate,
    tied: c.tied,
    attention: { kind: "mla", heads, qLoraRank, kvLoraRank, qkNopeDim, qkRopeDim, vDim },
    moe: { experts, topK, intermediate: moeInter, sharedIntermediate: shared, layers },
    tensors,
    notes:
      mtp > 0
        ? [
            `${mtp} multi-token-prediction layer(s) (num_nextn_predict_layers) are not counted: the engine skips them when loading and does not run MTP`,
          ]
        : [],
  };
}

// native/src/models/qwen2_5_vl.cc: the Qwen2 decoder (text_config or flat) plus the vision tower.
function qwen25vl(config: Json, where: string): ModelSpec {
  const vision = config.vision_config;
  if (vision === null || typeof vision !== "object")
    throw new RangeError(`${where}: vision_config is missing`);
  const v = new ConfigReader(vision as Json, `${where} vision_config`);
  const text = (config.text_config as Json | undefined) ?? config;
  const top = new ConfigReader(config, where);
  const tied =
    top.flag("tie_word_embeddings", false) ||
    new ConfigReader(text, where).flag("tie_word_embeddings", false);
  const textSpec = gqaDecoder(
    "Qwen2ForCausalLM",
    new ConfigReader({ ...text, tie_word_embeddings: tied }, where),
    true,
  );
  const d = v.int("hidden_size");
  const depth = v.int("depth");
  const inter = v.int("intermediate_size");
  const heads = v.int("num_heads");
  const outHidden = v.int("out_hidden_size");
  const channels = v.has("in_channels") ? v.int("in_channels") : v.int("in_chans", 3);
  const patch = v.int("patch_size", 14);
  const temporal = v.int("temporal_patch_size", 2);
  const merge = v.int("spatial_merge_size", 2);
  const merged = d * merge * merge;
  const vt = (name: string, shape: number[]) => t(name, shape, "vision", -1);
  const tower = [vt("visual.patch_embed.proj.weight", [d, channels, temporal, patch, patch])];
  for (let i = 0; i < depth; i++) {
    const p = `visual.blocks.${i}.`;
    tower.push(
      vt(`${p}norm1.weight`, [d]),
      vt(`${p}norm2.weight`, [d]),
      vt(`${p}attn.qkv.weight`, [3 * d, d]),
      vt(`${p}attn.qkv.bias`, [3 * d]),
      vt(`${p}attn.proj.weight`, [d, d]),
      vt(`${p}attn.proj.bias`, [d]),
      vt(`${p}mlp.gate_proj.weight`, [inter, d]),
      vt(`${p}mlp.gate_proj.bias`, [inter]),
      vt(`${p}mlp.up_proj.weight`, [inter, d]),
      vt(`${p}mlp.up_proj.bias`, [inter]),
      vt(`${p}mlp.down_proj.weight`, [d, inter]),
      vt(`${p}mlp.down_proj.bias`, [d]),
    );
  }
  tower.push(
    vt("visual.merger.ln_q.weight", [d]),
    vt("visual.merger.mlp.0.weight", [merged, merged]),
    vt("visual.merger.mlp.0.bias", [merged]),
    vt("visual.merger.mlp.2.weight", [outHidden, merged]),
    vt("visual.merger.mlp.2.bias", [outHidden]),
  );
  return {
    ...textSpec,
    architecture: "Qwen2_5_VLForConditionalGeneration",
    vision: { depth, hidden: d, heads },
    tensors: [...tower, ...textSpec.tensors],
    notes: ["the vision tower's FLOPs (image tokens) are not in the FLOP model; its parameters are"],
  };
}

export const numel = (shape: readonly number[]): number => shape.reduce((a, b) => a * b, 1);

export interface ParameterCounts {
  /** Every trained tensor (buffers excluded). */
  total: number;
  /** What one token passes through: everything but the experts it is not routed to. */
  active: number;
  byKind: Record<TensorKind, number>;
}

/** Parameter counts from the shapes (buffers left out, as the engine trains them not). */
export function parameterCounts(spec: ModelSpec): ParameterCounts {
  const byKind: Record<TensorKind, number> = { embedding: 0, dense: 0, expert: 0, vision: 0 };
  for (const x of spec.tensors) if (!x.buffer) byKind[x.kind] += numel(x.shape);
  const total = byKind.embedding + byKind.dense + byKind.expert + byKind.vision;
  const routed = spec.moe ? byKind.expert * (spec.moe.topK / spec.moe.experts) : 0;
  return { total, active: total - byKind.expert + routed, byKind };
}
