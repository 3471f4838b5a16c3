"""HF model folders made by transformers, for the model-folder test.

usage: model_folder.py make OUT_DIR
  Writes OUT_DIR/<case>/ (a save_pretrained folder) and OUT_DIR/<case>.json (a packed batch and
  the per-token logprobs HF computes in fp32 from that folder) for each case; then broken copies
  OUT_DIR/bad_<what>/ of the qwen2 case. Prints the case names as JSON.
usage: model_folder.py verify REF_DIR SAVED_DIR
  Loads both folders in fp32 and prints {missing, unexpected, maxLogitDiff, equal} as JSON.
"""

import json
import shutil
import sys
from pathlib import Path

import torch
import transformers as tf
from safetensors.torch import load_file, save_file

torch.set_num_threads(2)

BASE = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, vocab_size=512,
            num_hidden_layers=2, rms_norm_eps=1e-6)
CASES = {
    # Stored in bf16: loading must cast to the requested fp32.
    "qwen3_bf16": (tf.Qwen3Config, tf.Qwen3ForCausalLM, dict(tie_word_embeddings=False), torch.bfloat16),
    "qwen2_tied": (tf.Qwen2Config, tf.Qwen2ForCausalLM, dict(tie_word_embeddings=True), torch.float32),
}
TOKENS = [[5, 17, 300, 2, 99, 411, 7], [1, 8, 250, 33, 64]]


def logprobs(model):
    out = []
    with torch.no_grad():
        for seq in TOKENS:
            ids = torch.tensor([seq])
            logits = model(ids).logits[0].float()
            lp = torch.log_softmax(logits[:-1], dim=-1).gather(1, ids[0, 1:, None])[:, 0]
            out += lp.tolist()
    return out


def make(out: Path):
    for name, (config_cls, model_cls, extra, dtype) in CASES.items():
        torch.manual_seed(0)
        model = model_cls(config_cls(**BASE, **extra)).to(dtype)
        # Random biases: HF initialises them to zero, which would hide a bias that is not loaded.
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if pname.endswith(".bias"):
                    p.normal_(0, 0.1)
        model.save_pretrained(out / name)
        ref = model_cls.from_pretrained(out / name, dtype=torch.float32)
        cu = [0]
        for seq in TOKENS:
            cu.append(cu[-1] + len(seq))
        (out / f"{name}.json").write_text(json.dumps(
            {"tokens": sum(TOKENS, []), "cuSeqlens": cu, "logprobs": logprobs(ref)}))
    src = out / "qwen2_tied"

    def copy(what):
        dst = out / f"bad_{what}"
        shutil.copytree(src, dst)
        return dst

    def edit_config(what, fn):
        dst = copy(what)
        config = json.loads((dst / "config.json").read_text())
        fn(config)
        (dst / "config.json").write_text(json.dumps(config))

    edit_config("arch", lambda c: c.update(architectures=["FooForCausalLM"]))
    edit_config("heads", lambda c: c.update(num_key_value_heads=3))
    edit_config("hidden", lambda c: c.update(hidden_size=0))
    edit_config("vocab", lambda c: c.pop("vocab_size"))

    def edit_tensors(what, fn):
        dst = copy(what)
        tensors = load_file(dst / "model.safetensors")
        fn(tensors)
        save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})

    edit_tensors("missing", lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    edit_tensors("extra", lambda t: t.update({"model.layers.0.mlp.gate_proj.weigth": torch.zeros(2)}))
    edit_tensors("shape", lambda t: t.update({"model.norm.weight": torch.ones(65)}))
    dst = copy("truncated")
    data = (dst / "model.safetensors").read_bytes()
    (dst / "model.safetensors").write_bytes(data[: len(data) // 2])
    print(json.dumps(list(CASES)))


def verify(ref_dir: Path, saved_dir: Path):
    arch = json.loads((ref_dir / "config.json").read_text())["architectures"][0]
    cls = getattr(tf, arch)
    ref = cls.from_pretrained(ref_dir, dtype=torch.float32)
    saved, info = cls.from_pretrained(saved_dir, dtype=torch.float32, output_loading_info=True)
    ids = torch.tensor([TOKENS[0]])
    with torch.no_grad():
        a, b = ref(ids).logits, saved(ids).logits
    print(json.dumps({"missing": list(info["missing_keys"]), "unexpected": list(info["unexpected_keys"]),
                      "maxLogitDiff": (a - b).abs().max().item(), "equal": bool(torch.equal(a, b))}))


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(Path(sys.argv[2]))
    else:
        verify(Path(sys.argv[2]), Path(sys.argv[3]))
