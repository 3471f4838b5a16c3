# Writes a randomly initialised HF model folder (bf16 safetensors) of a named shape for benchmarks.
# usage: make_model.py SHAPE DIR      SHAPE: qwen3-0.6b | qwen3-moe-5.6b
import sys

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM

SHAPES = {
    # Qwen3-0.6B's published config, random weights.
    "qwen3-0.6b": lambda: Qwen3ForCausalLM(Qwen3Config(
        vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
        num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
        rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True)),
    # Qwen3-30B-A3B's layer shape, 8 layers: 128 experts, top-8, 5.6B parameters.
    "qwen3-moe-5.6b": lambda: Qwen3MoeForCausalLM(Qwen3MoeConfig(
        vocab_size=151936, hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768,
        num_hidden_layers=8, num_attention_heads=32, num_key_value_heads=4, head_dim=128,
        num_experts=128, num_experts_per_tok=8, norm_topk_prob=True, decoder_sparse_step=1,
        max_position_embeddings=40960, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=False)),
}

shape, out = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
    model = SHAPES[shape]().to(torch.bfloat16)
model.save_pretrained(out)
print(sum(p.numel() for p in model.parameters()))
