"""Reference outputs of HF transformers for the mixture-of-experts parity test.

usage: moe_reference.py make OUT_DIR
  For each tiny random case writes OUT_DIR/<case>/: config.json, weights.bin + weights.json (the
  model's state_dict, experts stacked as transformers holds them, raw little-endian float32 with
  name/shape/offset), grads.bin + grads.json (gradients of a weighted NLL), reference.json (packed
  batch, per-token logprobs and entropy, loss, greedy continuations, and a forced routing with the
  logprobs HF computes under it), replay_grads.bin/.json (gradients under that routing) and hf/
  (the folder save_pretrained writes: experts stored one tensor per expert). DeepSeek cases also get
  hf_mtp/, the same folder plus tensors of an extra multi-token-prediction layer. Prints the case
  names as JSON.
usage: moe_reference.py verify REF_DIR SAVED_DIR [REF_DIR SAVED_DIR ...]
  Loads each pair in fp32 and prints [{missing, unexpected, maxLogitDiff}] as JSON.
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
import transformers as tf
from safetensors.torch import load_file, save_file

# Tiny models: one thread is several times faster than two (no OpenMP hand-offs per small op).
torch.set_num_threads(1)

SMALL = dict(vocab_size=256, rms_norm_eps=1e-5, attn_implementation="eager")
CASES = {
    # Layers 0 and 2 are MoE (layer 1 is listed in mlp_only_layers); renormalised top-2 of 8.
    "qwen3_moe_mlp_only": (
        tf.Qwen3MoeConfig,
        dict(hidden_size=48, intermediate_size=96, moe_intermediate_size=32, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16, num_hidden_layers=3, num_experts=8, num_experts_per_tok=2,
             norm_topk_prob=True, mlp_only_layers=[1], decoder_sparse_step=1),
    ),
    # decoder_sparse_step 2: only layer 1 of 3 is MoE; raw top-3 probabilities; tied embeddings.
    "qwen3_moe_step2_tied": (
        tf.Qwen3MoeConfig,
        dict(hidden_size=32, intermediate_size=64, moe_intermediate_size=24, num_attention_heads=4,
             num_key_value_heads=1, num_hidden_layers=3, num_experts=6, num_experts_per_tok=3,
             norm_topk_prob=False, decoder_sparse_step=2, tie_word_embeddings=True),
    ),
    "mixtral": (
        tf.MixtralConfig,
        dict(hidden_size=48, intermediate_size=40, num_attention_heads=4, num_key_value_heads=2,
             num_hidden_layers=2, num_local_experts=4, num_experts_per_tok=2),
    ),
    # A sliding window shorter than the longest sequence (21) and than prompt + 32 new tokens.
    "mixtral_window": (
        tf.MixtralConfig,
        dict(hidden_size=32, intermediate_size=32, num_attention_heads=4, num_key_value_heads=4,
             num_hidden_layers=2, num_local_experts=4, num_experts_per_tok=2, sliding_window=8),
    ),
    # q_lora_rank, YaRN with mscale_all_dim, 4 groups of 2 keeping 2, one dense layer first.
    "deepseek_v3_qlora_yarn": (
        tf.DeepseekV3Config,
        dict(hidden_size=48, intermediate_size=80, moe_intermediate_size=24, num_attention_heads=4,
             num_key_value_heads=4, num_hidden_layers=3, q_lora_rank=24, kv_lora_rank=16, qk_nope_head_dim=16,
             qk_rope_head_dim=8, v_head_dim=12, n_routed_experts=8, num_experts_per_tok=3, n_group=4,
             topk_group=2, first_k_dense_replace=1, n_shared_experts=1, routed_scaling_factor=2.5,
             norm_topk_prob=True, max_position_embeddings=64,
             rope_parameters={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16,
                              "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 0.8,
                              "rope_theta": 10000.0}),
    ),
    # Moonlight's shape: no q_lora_rank, one group, two shared experts, MoE from layer 0; also
    # rope not interleaved, attention biases and unnormalised weights.
    "deepseek_v3_moonlight": (
        tf.DeepseekV3Config,
        dict(hidden_size=32, intermediate_size=64, moe_intermediate_size=16, num_attention_heads=2,
             num_key_value_heads=2, num_hidden_layers=2, q_lora_rank=None, kv_lora_rank=16, qk_nope_head_dim=8,
             qk_rope_head_dim=8, v_head_dim=8, n_routed_experts=6, num_experts_per_tok=2, n_group=1,
             topk_group=1, first_k_dense_replace=0, n_shared_experts=2, routed_scaling_factor=1.7,
             norm_topk_prob=False, rope_interleave=False, attention_bias=True),
    ),
    # Two groups keeping one, two dense layers of three, tied embeddings.
    "deepseek_v3_groups_tied": (
        tf.DeepseekV3Config,
        dict(hidden_size=32, intermediate_size=48, moe_intermediate_size=16, num_attention_heads=4,
             num_key_value_heads=4, num_hidden_layers=3, q_lora_rank=16, kv_lora_rank=12, qk_nope_head_dim=8,
             qk_rope_head_dim=4, v_head_dim=8, n_routed_experts=8, num_experts_per_tok=2, n_group=2,
             topk_group=1, first_k_dense_replace=2, n_shared_experts=1, routed_scaling_factor=2.0,
             tie_word_embeddings=True),
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


def seq_logprobs(model, ids, temperature):
    logits = model(input_ids=ids[None]).logits[0, :-1].float() / temperature  # [n-1, vocab]
    log_probs = torch.log_softmax(logits, -1)
    lp = log_probs.gather(1, ids[1:, None])[:, 0]
    ent = -(log_probs.exp() * log_probs).sum(-1)
    return lp, ent


def routers(model):
    """The router modules in layer order, with how each computes its weights."""
    out = []
    for layer in model.model.layers:
        gate = getattr(layer.mlp, "gate", None)
        if isinstance(gate, torch.nn.Module) and hasattr(gate, "top_k"):
            out.append(gate)
    return out


class ForcedRouting:
    """Makes every router use given experts ([tokens, moe_layers, top_k]; -1 rows route normally),
    with weights read from the router's own distribution at those experts."""

    def __init__(self, model):
        self.rows = None
        self.config = model.config
        self.originals = []
        for index, router in enumerate(routers(model)):
            self.originals.append((router, router.forward))
            router.forward = self.wrap(router, router.forward, index)

    def wrap(self, router, original, index):
        config = self.config

        def forward(hidden_states):
            logits, _, chosen = original(hidden_states)
            forced = self.rows[:, index, :]
            experts = torch.where(forced[:, :1] >= 0, forced, chosen)
            if isinstance(router, tf.models.deepseek_v3.modeling_deepseek_v3.DeepseekV3TopkRouter):
                weights = logits.sigmoid().gather(1, experts)
                if config.norm_topk_prob:
                    weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
                weights = weights * config.routed_scaling_factor
            else:
                weights = torch.softmax(logits.float(), -1).gather(1, experts)
                if getattr(config, "norm_topk_prob", True):
                    weights = weights / weights.sum(-1, keepdim=True)
            return logits, weights.to(logits.dtype), experts

        return forward

    def restore(self):
        for router, original in self.originals:
            router.forward = original


def add_mtp_layer(folder: Path, out: Path, layers: int):
    """A copy of a save_pretrained folder with tensors of one multi-token-prediction layer added."""
    out.mkdir()
    tensors = load_file(folder / "model.safetensors")
    prefix = f"model.layers.{layers}."
    extra = {prefix + "enorm.weight": torch.ones(8), prefix + "eh_proj.weight": torch.zeros(8, 16),
             prefix + "self_attn.kv_a_layernorm.weight": torch.ones(8)}
    save_file({**tensors, **extra}, out / "model.safetensors", metadata={"format": "pt"})
    (out / "config.json").write_text((folder / "config.json").read_text())


def run_case(name, config_cls, extra, out: Path, seed: int):
    torch.manual_seed(seed)
    config = config_cls(**SMALL, **extra)
    config.architectures = [config_cls.__name__.replace("Config", "ForCausalLM")]
    model = getattr(tf, config.architectures[0])(config).eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif pname.endswith(".bias"):
                p.copy_(0.05 * torch.randn_like(p))
            else:
                p.copy_(0.08 * torch.randn_like(p))
        for bname, b in model.named_buffers():
            # Zero in a fresh model; random, it must steer selection without weighting.
            if bname.endswith("e_score_correction_bias"):
                b.copy_(0.05 * torch.randn_like(b))
    out.mkdir(parents=True)
    (out / "config.json").write_text(json.dumps(config.to_dict()))
    named = [(n, t) for n, t in model.state_dict().items() if not (config.tie_word_embeddings and n == "lm_head.weight")]
    write_tensors(out / "weights", named)
    model.save_pretrained(out / "hf")
    if "deepseek" in name:
        add_mtp_layer(out / "hf", out / "hf_mtp", config.num_hidden_layers)

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

    params = dict(model.named_parameters())

    def weighted_nll_grads():
        model.zero_grad()
        loss = sum(-(w * seq_logprobs(model, s, TEMPERATURE)[0]).sum() for s, w in zip(seqs, weights))
        loss.backward()
        return loss.item(), [(n, params[n].grad) for n, _ in named if n in params]

    ref["loss"], grads = weighted_nll_grads()
    write_tensors(out / "grads", grads)

    # A forced routing: random distinct experts per (token, layer), a fifth of the rows -1.
    moe_layers = len(routers(model))
    top_k, experts = config.num_experts_per_tok, routers(model)[0].weight.shape[0]
    total = sum(LENGTHS)
    forced = torch.rand(total, moe_layers, experts, generator=gen).argsort(-1)[..., :top_k]
    free = torch.rand(total, generator=gen) < 0.2
    forced[free] = -1
    ref["routedExperts"] = forced.flatten().tolist()
    ref["moe"] = {"layers": moe_layers, "experts": experts, "topK": top_k}
    forcing = ForcedRouting(model)
    starts = np.cumsum([0] + LENGTHS)
    with torch.no_grad():
        replayed = []
        for s, a in zip(seqs, starts):
            forcing.rows = forced[a:a + len(s)]
            replayed.append(seq_logprobs(model, s, 1.0)[0])
        ref["replayLogprobs"] = torch.cat(replayed).tolist()
    model.zero_grad()
    loss = 0
    for s, w, a in zip(seqs, weights, starts):
        forcing.rows = forced[a:a + len(s)]
        loss = loss + -(w * seq_logprobs(model, s, TEMPERATURE)[0]).sum()
    loss.backward()
    ref["replayLoss"] = loss.item()
    write_tensors(out / "replay_grads", [(n, params[n].grad) for n, _ in named if n in params])
    forcing.restore()

    prompts = [torch.randint(0, config.vocab_size, (n,), generator=gen) for n in PROMPT_LENGTHS]
    ref["prompts"] = [p.tolist() for p in prompts]
    greedy = []
    with torch.no_grad():
        for p in prompts:
            o = model.generate(p[None], attention_mask=torch.ones(1, len(p), dtype=torch.long), do_sample=False,
                               max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, eos_token_id=None,
                               pad_token_id=0)
            greedy.append(o[0, len(p):].tolist())
    ref["greedy"] = greedy
    (out / "reference.json").write_text(json.dumps(ref))


def verify(pairs):
    results = []
    ids = torch.tensor([[5, 17, 200, 2, 99, 41, 7, 3, 250, 8, 64, 1]])
    for ref_dir, saved_dir in pairs:
        reference = tf.AutoModelForCausalLM.from_pretrained(ref_dir, dtype=torch.float32).eval()
        saved, info = tf.AutoModelForCausalLM.from_pretrained(saved_dir, dtype=torch.float32,
                                                              output_loading_info=True)
        with torch.no_grad():
            diff = (reference(ids).logits - saved.eval()(ids).logits).abs().max().item()
        results.append({"missing": sorted(info["missing_keys"]), "unexpected": sorted(info["unexpected_keys"]),
                        "maxLogitDiff": diff})
    print(json.dumps(results))


def main():
    if sys.argv[1] == "make":
        out = Path(sys.argv[2])
        for i, (name, (cls, extra)) in enumerate(CASES.items()):
            run_case(name, cls, extra, out / name, seed=4321 + i)
        print(json.dumps(list(CASES)))
    elif sys.argv[1] == "verify":
        rest = sys.argv[2:]
        verify(list(zip(rest[0::2], rest[1::2])))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
