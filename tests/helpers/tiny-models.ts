// Random tiny HF folders of the dense families for multi-rank tests: written through the engine
// (Model.create + save), so they need no Python, with head counts chosen per case.
import { mkdirSync } from "node:fs";
import { Model, type NamedHostTensor } from "../../src/index.js";
import { mulberry32 } from "../../src/rl/data.js";

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
    vocab_size: vocab,
    hidden_size: hidden,
    intermediate_size: inter,
    num_hidden_layers: layers,
    num_attention_heads: shape.heads,
    num_key_value_heads: shape.kvHeads,
    head_dim: headDim,
    hidden_act: "silu",
    max_position_embeddings: 128,
    rms_norm_eps: 1e-6,
    rope_theta: 10000,
    tie_word_embeddings: tied,
    eos_token_id: 1,
    dtype: "float32",
    ...(shape.family === "llama" ? { attention_bias: true } : {}),
  };
  const random = mulberry32(shape.seed ?? 3);
  const tensor = (name: string, dims: number[], around = 0, std = 0.08): NamedHostTensor => {
    const n = dims.reduce((a, b) => a * b, 1);
    const data = new Float32Array(n);
    for (let i = 0; i < n; i++) data[i] = around + std * (2 * random() - 1) * Math.sqrt(3);
    return { name, dtype: "float32", shape: dims, data };
  };
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
      tensor(`${p}.self_attn.q_proj.weight`, [q, hidden], 0, 0.3),
      tensor(`${p}.self_attn.k_proj.weight`, [kv, hidden], 0, 0.3),
      tensor(`${p}.self_attn.v_proj.weight`, [kv, hidden], 0, 0.3),
      tensor(`${p}.self_attn.o_proj.weight`, [hidden, q], 0, 0.3),
      tensor(`${p}.mlp.gate_proj.weight`, [inter, hidden], 0, 0.3),
      tensor(`${p}.mlp.up_proj.weight`, [inter, hidden], 0, 0.3),
      tensor(`${p}.mlp.down_proj.weight`, [hidden, inter], 0, 0.3),
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
  mkdirSync(dir, { recursive: true });
  const model = Model.create(config, tensors);
  try {
    await model.save(dir);
  } finally {
    model.dispose();
  }
  return config;
}
