// Random tiny HF folders of the dense and mixture-of-experts families for multi-rank tests: written through the engine
// (Model.create + save), so they need no Python, with head counts chosen per case.
import { mkdirSync } from "node:fs";
import { Model, type NamedHostTensor } from "../../src/index.js";
import { mulberry32 } from "../../src/rl/data.js";

type TensorMaker = (name: string, dims: number[], around?: number, std?: number) => NamedHostTensor;

/** Uniform random tensors of a given mean and standard deviation, drawn in call order from `seed`. */
function tensorMaker(seed: number, defaultStd: number): TensorMaker {
  const random = mulberry32(seed);
  return (name, dims, around = 0, std = defaultStd) => {
    const n = dims.reduce((a, b) => a * b, 1);
    const data = new Float32Array(n);
    for (let i = 0; i < n; i++) data[i] = around + std * (2 * random() - 1) * Math.sqrt(3);
    return { name, dtype: "float32", shape: dims, data };
  };
}

/** The config.json fields every tiny family shares. */
function commonConfig(c: {
  vocab: number;
  hidden: number;
  layers: number;
  heads: number;
  kvHeads: number;
  tied: boolean;
}) {
  return {
    vocab_size: c.vocab,
    hidden_size: c.hidden,
    num_hidden_layers: c.layers,
    num_attention_heads: c.heads,
    num_key_value_heads: c.kvHeads,
    hidden_act: "silu",
    max_position_embeddings: 128,
    rms_norm_eps: 1e-6,
    rope_theta: 10000,
    tie_word_embeddings: c.tied,
    eos_token_id: 1,
    dtype: "float32",
  };
}

/** Grouped-query attention's q/k/v/o weights of one layer (`a`: its self_attn prefix). */
function attentionTensors(
  tensor: TensorMaker,
  a: string,
  heads: number,
  kvHeads: number,
  headDim: number,
  hidden: number,
  std?: number,
) {
  return [
    tensor(`${a}.q_proj.weight`, [heads * headDim, hidden], 0, std),
    tensor(`${a}.k_proj.weight`, [kvHeads * headDim, hidden], 0, std),
    tensor(`${a}.v_proj.weight`, [kvHeads * headDim, hidden], 0, std),
    tensor(`${a}.o_proj.weight`, [hidden, heads * headDim], 0, std),
  ];
}

/** A SwiGLU MLP's weights (`m`: its prefix). */
function mlpTensors(tensor: TensorMaker, m: string, inter: number, hidden: number, std?: number) {
  return [
    tensor(`${m}.gate_proj.weight`, [inter, hidden], 0, std),
    tensor(`${m}.up_proj.weight`, [inter, hidden], 0, std),
    tensor(`${m}.down_proj.weight`, [hidden, inter], 0, std),
  ];
}

/** Builds the model from `tensors` and saves it as an HF folder in `dir`. */
async function saveTinyFolder(
  dir: string,
  config: Record<string, unknown>,
  tensors: NamedHostTensor[],
): Promise<void> {
  mkdirSync(dir, { recursive: true });
  const model = Model.create(config, tensors);
  try {
    await model.save(dir);
  } finally {
    model.dispose();
  }
}

export interface TinyDenseShape {
  family: "qwen3" | "qwen2" | "llama";
  heads: number;
  kvHeads: number;
  hidden?: number;
  layers?: number;
  vocab?: number;
  tied?: boolean;
  seed?: number;
}

/** Writes the folder and returns its config.json. Biases (Qwen2; Llama's attention_bias) are random, not zero. */
export async function writeTinyDense(dir: string, shape: TinyDenseShape): Promise<Record<string, unknown>> {
  const hidden = shape.hidden ?? 32;
  const layers = shape.layers ?? 2;
  const vocab = shape.vocab ?? 96;
  const headDim = 8;
  const inter = 48;
  const tied = shape.tied ?? shape.family === "qwen2";
  const bias = shape.family !== "qwen3";
  const architecture = { qwen3: "Qwen3ForCausalLM", qwen2: "Qwen2ForCausalLM", llama: "LlamaForCausalLM" }[
    shape.family
  ];
  const config: Record<string, unknown> = {
    architectures: [architecture],
    model_type: shape.family,
    ...commonConfig({ vocab, hidden, layers, heads: shape.heads, kvHeads: shape.kvHeads, tied }),
    intermediate_size: inter,
    head_dim: headDim,
    ...(shape.family === "llama" ? { attention_bias: true } : {}),
  };
  const tensor = tensorMaker(shape.seed ?? 3, 0.08);
  const q = shape.heads * headDim;
  const kv = shape.kvHeads * headDim;
  const tensors = [
    tensor("model.embed_tokens.weight", [vocab, hidden], 0, 0.5),
    tensor("model.norm.weight", [hidden], 1, 0.1),
  ];
  if (!tied) tensors.push(tensor("lm_head.weight", [vocab, hidden], 0, 0.3));
  for (let l = 0; l < layers; l++) {
    const p = `model.layers.${l}`;
    tensors.push(
      tensor(`${p}.input_layernorm.weight`, [hidden], 1, 0.1),
      tensor(`${p}.post_attention_layernorm.weight`, [hidden], 1, 0.1),
      ...attentionTensors(tensor, `${p}.self_attn`, shape.heads, shape.kvHeads, headDim, hidden, 0.3),
      ...mlpTensors(tensor, `${p}.mlp`, inter, hidden, 0.3),
    );
    if (shape.family === "qwen3") {
      tensors.push(
        tensor(`${p}.self_attn.q_norm.weight`, [headDim], 1, 0.1),
        tensor(`${p}.self_attn.k_norm.weight`, [headDim], 1, 0.1),
      );
    }
    if (bias) {
      tensors.push(
        tensor(`${p}.self_attn.q_proj.bias`, [q], 0, 0.1),
        tensor(`${p}.self_attn.k_proj.bias`, [kv], 0, 0.1),
        tensor(`${p}.self_attn.v_proj.bias`, [kv], 0, 0.1),
      );
    }
    if (shape.family === "llama") tensors.push(tensor(`${p}.self_attn.o_proj.bias`, [hidden], 0, 0.1));
  }
  await saveTinyFolder(dir, config, tensors);
  return config;
}

export interface TinyMoeShape {
  family: "qwen3_moe" | "mixtral" | "deepseek_v3";
  heads?: number;
  /** Qwen3-MoE and Mixtral (DeepSeek-V3's MLA has as many key-value heads as heads). */
  kvHeads?: number;
  experts?: number;
  topK?: number;
  layers?: number;
  /** Qwen3-MoE: layers with the dense MLP (mlp_only_layers). */
  mlpOnlyLayers?: number[];
  /** Qwen3-MoE: every decoder_sparse_step-th layer is MoE. */
  sparseStep?: number;
  /** DeepSeek-V3: 0 for no query bottleneck (Moonlight); default 16. */
  qLoraRank?: number;
  /** DeepSeek-V3: n_group / topk_group / first_k_dense_replace / n_shared_experts. */
  groups?: number;
  topGroups?: number;
  firstDense?: number;
  sharedExperts?: number;
  hidden?: number;
  vocab?: number;
  seed?: number;
}

/**
 * A random tiny folder of a mixture-of-experts family, experts stored one tensor per expert as
 * save_pretrained writes them; returns its config.json. (Router weights spread wider make the
 * model sharper: a 1e-7 difference in summation order then grows past 1e-5 within three AdamW
 * updates, so they are drawn as the other projections are.)
 */
export async function writeTinyMoe(dir: string, shape: TinyMoeShape): Promise<Record<string, unknown>> {
  const hidden = shape.hidden ?? 32;
  const vocab = shape.vocab ?? 96;
  const heads = shape.heads ?? 4;
  const kvHeads = shape.family === "deepseek_v3" ? heads : (shape.kvHeads ?? 2);
  const headDim = 8;
  const inter = 48;
  const moeInter = 16;
  const experts = shape.experts ?? 4;
  const topK = shape.topK ?? 2;
  const layers = shape.layers ?? 2;
  const tensor = tensorMaker(shape.seed ?? 5, 0.3);
  const common = commonConfig({ vocab, hidden, layers, heads, kvHeads, tied: false });
  let config: Record<string, unknown>;
  let moeLayers: number[];
  // Per-layer: the MoE block's name, its per-expert projection names, and a shared-expert width.
  let block = "mlp";
  let names = ["gate_proj", "up_proj", "down_proj"];
  let shared = 0;
  const qLora = shape.qLoraRank ?? 16;
  const mla = { kvLora: 16, nope: 8, rope: 8, v: 8 };
  if (shape.family === "qwen3_moe") {
    const step = shape.sparseStep ?? 1;
    const dense = shape.mlpOnlyLayers ?? [];
    config = {
      ...common,
      architectures: ["Qwen3MoeForCausalLM"],
      model_type: "qwen3_moe",
      head_dim: headDim,
      intermediate_size: inter,
      moe_intermediate_size: moeInter,
      num_experts: experts,
      num_experts_per_tok: topK,
      norm_topk_prob: true,
      decoder_sparse_step: step,
      mlp_only_layers: dense,
    };
    moeLayers = [...Array(layers).keys()].filter((i) => !dense.includes(i) && (i + 1) % step === 0);
  } else if (shape.family === "mixtral") {
    config = {
      ...common,
      architectures: ["MixtralForCausalLM"],
      model_type: "mixtral",
      head_dim: headDim,
      intermediate_size: moeInter,
      num_local_experts: experts,
      num_experts_per_tok: topK,
    };
    moeLayers = [...Array(layers).keys()];
    block = "block_sparse_moe";
    names = ["w1", "w3", "w2"];
  } else {
    const firstDense = shape.firstDense ?? 1;
    shared = moeInter * (shape.sharedExperts ?? 1);
    config = {
      ...common,
      architectures: ["DeepseekV3ForCausalLM"],
      model_type: "deepseek_v3",
      intermediate_size: inter,
      moe_intermediate_size: moeInter,
      q_lora_rank: qLora > 0 ? qLora : null,
      kv_lora_rank: mla.kvLora,
      qk_nope_head_dim: mla.nope,
      qk_rope_head_dim: mla.rope,
      v_head_dim: mla.v,
      n_routed_experts: experts,
      num_experts_per_tok: topK,
      n_group: shape.groups ?? 1,
      topk_group: shape.topGroups ?? 1,
      first_k_dense_replace: firstDense,
      n_shared_experts: shape.sharedExperts ?? 1,
      routed_scaling_factor: 2.5,
      norm_topk_prob: true,
      rope_interleave: true,
      attention_bias: false,
    };
    moeLayers = [...Array(layers).keys()].filter((i) => i >= firstDense);
  }
  const tensors = [
    tensor("model.embed_tokens.weight", [vocab, hidden], 0, 0.5),
    tensor("model.norm.weight", [hidden], 1, 0.1),
    tensor("lm_head.weight", [vocab, hidden], 0, 0.3),
  ];
  for (let l = 0; l < layers; l++) {
    const p = `model.layers.${l}`;
    const a = `${p}.self_attn`;
    tensors.push(
      tensor(`${p}.input_layernorm.weight`, [hidden], 1, 0.1),
      tensor(`${p}.post_attention_layernorm.weight`, [hidden], 1, 0.1),
    );
    if (shape.family === "deepseek_v3") {
      const qOut = heads * (mla.nope + mla.rope);
      if (qLora > 0) {
        tensors.push(
          tensor(`${a}.q_a_proj.weight`, [qLora, hidden]),
          tensor(`${a}.q_a_layernorm.weight`, [qLora], 1, 0.1),
          tensor(`${a}.q_b_proj.weight`, [qOut, qLora]),
        );
      } else {
        tensors.push(tensor(`${a}.q_proj.weight`, [qOut, hidden]));
      }
      tensors.push(
        tensor(`${a}.kv_a_proj_with_mqa.weight`, [mla.kvLora + mla.rope, hidden]),
        tensor(`${a}.kv_a_layernorm.weight`, [mla.kvLora], 1, 0.1),
        tensor(`${a}.kv_b_proj.weight`, [heads * (mla.nope + mla.v), mla.kvLora]),
        tensor(`${a}.o_proj.weight`, [hidden, heads * mla.v]),
      );
    } else {
      tensors.push(...attentionTensors(tensor, a, heads, kvHeads, headDim, hidden));
      if (shape.family === "qwen3_moe") {
        tensors.push(
          tensor(`${a}.q_norm.weight`, [headDim], 1, 0.1),
          tensor(`${a}.k_norm.weight`, [headDim], 1, 0.1),
        );
      }
    }
    if (!moeLayers.includes(l)) {
      tensors.push(...mlpTensors(tensor, `${p}.mlp`, inter, hidden));
      continue;
    }
    const [gate, up, down] = names as [string, string, string];
    tensors.push(tensor(`${p}.${block}.gate.weight`, [experts, hidden]));
    for (let e = 0; e < experts; e++) {
      const x = `${p}.${block}.experts.${e}`;
      tensors.push(
        tensor(`${x}.${gate}.weight`, [moeInter, hidden]),
        tensor(`${x}.${up}.weight`, [moeInter, hidden]),
        tensor(`${x}.${down}.weight`, [hidden, moeInter]),
      );
    }
    if (shape.family === "deepseek_v3") {
      tensors.push(
        tensor(`${p}.mlp.gate.e_score_correction_bias`, [experts], 0, 0.05),
        ...mlpTensors(tensor, `${p}.mlp.shared_experts`, shared, hidden),
      );
    }
  }
  await saveTinyFolder(dir, config, tensors);
  return config;
}
