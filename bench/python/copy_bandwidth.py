# The device's copy bandwidth, for the decode-step bandwidth limit in bench/generate.ts: a 2 GiB
# bf16 tensor copied into another, bytes read plus bytes written per second (best of 10 timed).
# usage: copy_bandwidth.py DEVICE  -> prints {"bytes_per_second"} as JSON
import json
import sys
import time

import torch

device = sys.argv[1]
n = 2**30  # elements: 2 GiB of bf16
src = torch.empty(n, device=device, dtype=torch.bfloat16).normal_()
dst = torch.empty_like(src)
best = float("inf")
for i in range(13):
    torch.cuda.synchronize()
    start = time.perf_counter()
    dst.copy_(src)
    torch.cuda.synchronize()
    if i >= 3:
        best = min(best, time.perf_counter() - start)
print(json.dumps({"bytes_per_second": 2 * src.numel() * src.element_size() / best}))
