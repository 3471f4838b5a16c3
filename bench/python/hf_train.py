# HF transformers baseline for bench/train.ts: one training step (forward, causal-LM loss, backward,
# torch.optim.AdamW step) on BATCH x SEQ random tokens, bf16 parameters on cuda:0.
# usage: hf_train.py DIR BATCH SEQ STEPS -> {"tokens_per_second"}
import json
import sys
import time

import torch
from transformers import AutoModelForCausalLM

model_dir, batch, seq, steps = sys.argv[1], *map(int, sys.argv[2:5])
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).cuda().train()
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
ids = torch.randint(0, model.config.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(0)).cuda()


def step():
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


step()  # warm-up: allocator, cuBLAS, optimizer state
torch.cuda.synchronize()
start = time.perf_counter()
for _ in range(steps):
    step()
torch.cuda.synchronize()
seconds = (time.perf_counter() - start) / steps
print(json.dumps({"seconds_per_step": seconds, "tokens_per_second": batch * seq / seconds,
                  "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30}))
