"""Reference outputs of HF transformers for the model parity test.

usage: model_reference.py OUT_DIR
For each tiny random case writes OUT_DIR/<case>/: config.json, weights.bin + weights.json (raw
little-endian float32, name/shape/offset), grads.bin + grads.json, reference.json (packed batch,
per-token logprobs and entropy, weighted-NLL loss, greedy continuations).
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
import transformers as tf

torch.set_num_threads(2)

BASE = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, vocab_size=512, rms_norm_eps=1e-6)
CASES = {
    "qwen2_tied_bias": (tf.Qwen2Config, dict(num_hidden_layers=2, num_key_value_heads=2, tie_word_embeddings=True)),
    "qwen3_headdim32_mqa_linear": (
        tf.Qwen3Config,
        dict(num_hidden_layers=3, num_key_value_heads=1, head_dim=32, tie_word_embeddings=False,
             rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}),
    ),
    "llama_dynamic": (
        tf.LlamaConfig,
        dict(num_hidden_layers=2, num_key_value_heads=2, max_position_embeddings=16,
             rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}),
    ),
    "llama_yarn_tied": (
        tf.LlamaConfig,
        dict(num_hidden_layers=2, num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=64,
             rope_parameters={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16,
                              "rope_theta": 10000.0}),
    ),
    "llama3_headdim32_bias": (
        tf.LlamaConfig,
        dict(num_hidden_layers=2, num_key_value_heads=1, head_dim=32, attention_bias=True,
             rope_parameters={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                              "high_freq_factor": 4.0, "original_max_position_embeddings": 64,
                              "rope_theta": 500000.0}),
    ),
    "qwen3_yarn_tied": (
        tf.Qwen3Config,
        dict(num_hidden_layers=2, num_key_value_heads=2, tie_word_embeddings=True,
             rope_parameters={"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 32,
                              "rope_theta": 1000000.0}),
    ),
}
LENGTHS = [7, 21, 2, 12]
PROMPT_LENGTHS = [3, 9, 5]
NEW_TOKENS = 32
TEMPERATURE = 0.7


def write_tensors(path: Path, named):
    manifest, offset = [], 0
    with open(path.with_suffix(".bin"), "wb") as f:
        for name, t in named:
            data = t.detach().to(torch.float32).contiguous().numpy().astype("<f4").tobytes()
            f.write(data)
            manifest.append({"name": name, "shape": list(t.shape), "offset": offset})
            offset += len(data)
    path.with_suffix(".json").write_text(json.dumps(manifest))


def fresh_rope(model):
    """Dynamic rope keeps state between calls; each sequence starts from a fresh model's state."""
    rope = model.model.rotary_emb
    rope.inv_freq = rope.original_inv_freq.clone()
    rope.max_seq_len_cached = rope.original_max_seq_len


def seq_logprobs(model, ids, temperature):
    fresh_rope(model)
    logits = model(input_ids=ids[None]).logits[0, :-1].float() / temperature  # [n-1, vocab]
    log_probs = torch.log_softmax(logits, -1)
    lp = log_probs.gather(1, ids[1:, None])[:, 0]
    ent = -(log_probs.exp() * log_probs).sum(-1)
    return lp, ent


def run_case(name, config_cls, extra, out: Path, seed: int):
    torch.manual_seed(seed)
    config = config_cls(**BASE, **extra, attn_implementation="eager")
    config.architectures = [config_cls.__name__.replace("Config", "ForCausalLM")]
    model = getattr(tf, config.architectures[0])(config).eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.08 * torch.randn_like(p))
    out.mkdir(parents=True)
    config_dict = config.to_dict()
    (out / "config.json").write_text(json.dumps(config_dict))
    named = [(n, p) for n, p in model.state_dict().items() if not (config.tie_word_embeddings and n == "lm_head.weight")]
    write_tensors(out / "weights", named)

    gen = torch.Generator().manual_seed(seed)
    seqs = [torch.randint(0, config.vocab_size, (n,), generator=gen) for n in LENGTHS]
    weights = [torch.rand(n - 1, generator=gen) for n in LENGTHS]
    ref = {"tokens": torch.cat(seqs).tolist(), "cuSeqlens": np.cumsum([0] + LENGTHS).tolist(),
           "lossWeights": torch.cat(weights).tolist(), "temperature": TEMPERATURE}

    with torch.no_grad():
        lps, ents = zip(*(seq_logprobs(model, s, 1.0) for s in seqs))
        ref["logprobs"] = torch.cat(lps).tolist()
        ref["entropy"] = torch.cat(ents).tolist()
        lps_t, ents_t = zip(*(seq_logprobs(model, s, TEMPERATURE) for s in seqs))
        ref["logprobsT"] = torch.cat(lps_t).tolist()
        ref["entropyT"] = torch.cat(ents_t).tolist()

    model.zero_grad()
    loss = sum(-(w * seq_logprobs(model, s, TEMPERATURE)[0]).sum() for s, w in zip(seqs, weights))
    loss.backward()
    ref["loss"] = loss.item()
    params = dict(model.named_parameters())
    write_tensors(out / "grads", [(n, params[n].grad) for n, _ in named])

    prompts = [torch.randint(0, config.vocab_size, (n,), generator=gen) for n in PROMPT_LENGTHS]
    ref["prompts"] = [p.tolist() for p in prompts]
    greedy = []
    with torch.no_grad():
        for p in prompts:
            fresh_rope(model)
            o = model.generate(p[None], attention_mask=torch.ones(1, len(p), dtype=torch.long), do_sample=False,
                               max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, eos_token_id=None,
                               pad_token_id=0)
            greedy.append(o[0, len(p):].tolist())
    ref["greedy"] = greedy
    (out / "reference.json").write_text(json.dumps(ref))


def main():
    out = Path(sys.argv[1])
    for i, (name, (cls, extra)) in enumerate(CASES.items()):
        run_case(name, cls, extra, out / name, seed=1234 + i)
    print(json.dumps(list(CASES)))


if __name__ == "__main__":
    main()
