# Baseline for bench/matmul.ts: the same matmul timed from plain PyTorch in Python.
# usage: matmul_torch.py DEVICE DTYPE M N K ITERATIONS  -> prints {"seconds", "tflops"} as JSON
import json
import sys
import time

import torch

device, dtype_name, m, n, k, iterations = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:7])
dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[dtype_name]
a = torch.randn(m, k, device=device, dtype=dtype)
b = torch.randn(k, n, device=device, dtype=dtype)
c = torch.empty(m, n, device=device, dtype=dtype)
sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
for _ in range(3):
    torch.matmul(a, b, out=c)
sync()
start = time.perf_counter()
for _ in range(iterations):
    torch.matmul(a, b, out=c)
sync()
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "tflops": 2 * m * n * k * iterations / seconds / 1e12}))
