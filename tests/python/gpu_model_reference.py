# GPU reference for tests/gpu/model.test.ts: makes a small random Qwen3 with HF, saves it (bf16) to
# DIR/model, and writes DIR/reference.json with HF's per-token logprobs of a packed batch computed
# on CUDA in bf16 and in fp32, and on the CPU in fp32.
# usage: gpu_model_reference.py DIR
import json
import os
import sys

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

out = sys.argv[1]
torch.manual_seed(0)
config = Qwen3Config(
    vocab_size=4096, hidden_size=256, intermediate_size=704, num_hidden_layers=4, num_attention_heads=8,
    num_key_value_heads=2, head_dim=64, max_position_embeddings=1024, rope_theta=1e6, tie_word_embeddings=False,
)
model = Qwen3ForCausalLM(config).to(torch.bfloat16)
model.save_pretrained(os.path.join(out, "model"))

lengths = [37, 120, 5, 64]
gen = torch.Generator().manual_seed(1)
sequences = [torch.randint(0, config.vocab_size, (n,), generator=gen) for n in lengths]


def logprobs(m, dtype, device="cuda"):
    m = m.to(device, dtype).eval()
    result = []
    with torch.no_grad():
        for s in sequences:
            logits = m(s[None].to(device)).logits[0].float()
            lp = torch.log_softmax(logits[:-1], -1).gather(-1, s[1:].to(device)[:, None])[:, 0]
            result += lp.cpu().tolist()
    return result


ref = {
    "tokens": torch.cat(sequences).tolist(),
    "cuSeqlens": [0] + torch.tensor(lengths).cumsum(0).tolist(),
    "bf16": logprobs(model, torch.bfloat16),
    "fp32": logprobs(model, torch.float32),
    "cpuFp32": logprobs(model, torch.float32, "cpu"),
    "tf32": {"cublas": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32,
             "precision": torch.get_float32_matmul_precision()},
}
with open(os.path.join(out, "reference.json"), "w") as f:
    json.dump(ref, f)
print("ok")
