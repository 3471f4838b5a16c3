# HF transformers baseline for bench/generate.ts: greedy generation of PROMPTS random prompts of
# PROMPT_LEN tokens, NEW_TOKENS new tokens each (no early stop), bf16 on cuda:0.
# usage: hf_generate.py DIR PROMPTS PROMPT_LEN NEW_TOKENS CACHE(static|dynamic) -> {"tokens_per_second"}
import json
import sys
import time

import torch
from transformers import AutoModelForCausalLM

model_dir, prompts, prompt_len, new_tokens, cache = sys.argv[1], *map(int, sys.argv[2:5]), sys.argv[5]
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).cuda().eval()
ids = torch.randint(0, model.config.vocab_size, (prompts, prompt_len), generator=torch.Generator().manual_seed(0)).cuda()


def run(n):
    return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                          do_sample=False, cache_implementation=cache, pad_token_id=0)


with torch.no_grad():
    # Warm-up at the measured shape: the static cache compiles per cache length, and a shorter
    # warm-up would leave that compile inside the timed call.
    run(new_tokens)
    torch.cuda.synchronize()
    start = time.perf_counter()
    out = run(new_tokens)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
assert out.shape[1] == prompt_len + new_tokens
print(json.dumps({"seconds": seconds, "tokens_per_second": prompts * new_tokens / seconds}))
