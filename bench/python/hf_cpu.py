# HF transformers baselines for bench/cpu.ts, fp32 on the CPU with THREADS intra-op threads:
#   hf_cpu.py train DIR BATCH SEQ STEPS THREADS -> {"seconds_per_step"}: the fastest of STEPS
#     steps (forward, causal-LM loss, backward, torch.optim.AdamW step) on BATCH x SEQ random tokens.
#   hf_cpu.py generate DIR PROMPTS PROMPT_LEN NEW_TOKENS THREADS -> {"seconds"}: the faster of two
#     greedy generations (dynamic cache, no early stop) of PROMPTS random prompts.
# TILLER_BENCH_PROFILE=DIR also writes a torch.profiler table of one more step/generation there.
import json
import os
import sys
import time

import torch
from transformers import AutoModelForCausalLM

mode, model_dir, a, b, c, threads = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:7])
torch.set_num_threads(threads)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
vocab = model.config.vocab_size
generator = torch.Generator().manual_seed(0)
profile_dir = os.environ.get("TILLER_BENCH_PROFILE")


def profiled(name, fn):
    if not profile_dir:
        return
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    with open(os.path.join(profile_dir, f"hf-{name}.txt"), "w") as f:
        f.write(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40))


if mode == "train":
    batch, seq, steps = a, b, c
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    ids = torch.randint(0, vocab, (batch, seq), generator=generator)

    def step():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up: allocator, optimizer state
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    profiled("train", step)
    # The fastest step: on a shared machine the others include time given to other processes.
    print(json.dumps({"seconds_per_step": min(times)}))
elif mode == "generate":
    prompts, prompt_len, new_tokens = a, b, c
    model.eval()
    ids = torch.randint(0, vocab, (prompts, prompt_len), generator=generator)

    def run():
        return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                              min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)

    with torch.no_grad():
        run()  # warm-up
        seconds = float("inf")
        for _ in range(2):  # the faster of two, as for training
            start = time.perf_counter()
            out = run()
            seconds = min(seconds, time.perf_counter() - start)
        profiled("generate", run)
    assert out.shape[1] == prompt_len + new_tokens
    print(json.dumps({"seconds": seconds}))
else:
    raise SystemExit(f"mode {mode!r}: expected train or generate")
