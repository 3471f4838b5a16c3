"""Summarises a Kineto Chrome trace written by Model.profileNext: GPU kernel time by kernel name
(and by the CPU op that launched it, where the trace links them), top N, with shares of the total.

usage: trace_summary.py TRACE.json [TOP]
"""

import json
import re
import sys
from collections import defaultdict


def short(name: str) -> str:
    name = name.replace("(anonymous namespace)::", "")
    name = re.sub(r"<.*", "", name)  # templates
    name = re.sub(r"\(.*", "", name)
    return name[:90]


def main() -> None:
    path = sys.argv[1]
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 40
    with open(path, encoding="utf-8") as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    kernels = [e for e in events if e.get("cat") == "kernel" and "dur" in e]
    ops = [e for e in events if e.get("cat") == "cpu_op" and "dur" in e]
    if not kernels:
        print(f"{path}: no GPU kernels (CPU trace?); top CPU ops:")
        by = defaultdict(lambda: [0.0, 0])
        for e in ops:
            by[e["name"]][0] += e["dur"]
            by[e["name"]][1] += 1
        for name, (dur, n) in sorted(by.items(), key=lambda kv: -kv[1][0])[:top]:
            print(f"{dur / 1000:9.2f} ms  {n:6d}×  {name}")
        return
    total = sum(e["dur"] for e in kernels)
    start = min(e["ts"] for e in kernels)
    end = max(e["ts"] + e["dur"] for e in kernels)
    print(f"{path}: {len(kernels)} kernels, {total / 1000:.1f} ms of kernel time over {(end - start) / 1000:.1f} ms "
          f"(GPU busy {100 * total / max(end - start, 1):.0f}%)")
    by = defaultdict(lambda: [0.0, 0])
    for e in kernels:
        k = short(e["name"])
        by[k][0] += e["dur"]
        by[k][1] += 1
    for name, (dur, n) in sorted(by.items(), key=lambda kv: -kv[1][0])[:top]:
        print(f"{dur / 1000:9.2f} ms {100 * dur / total:5.1f}%  {n:6d}×  {name}")
    # Kernel time by the ATen op that launched it (external id / correlation links).
    launch_op = {}
    runtime = [e for e in events if e.get("cat") in ("cuda_runtime", "cuda_driver")]
    corr_to_ext = {e.get("args", {}).get("correlation"): e.get("args", {}).get("External id") for e in runtime}
    ext_to_op = {}
    for e in ops:
        ext = e.get("args", {}).get("External id")
        if ext is not None:
            ext_to_op[ext] = e["name"]
    by_op = defaultdict(float)
    for e in kernels:
        ext = e.get("args", {}).get("External id")
        if ext is None:
            ext = corr_to_ext.get(e.get("args", {}).get("correlation"))
        by_op[ext_to_op.get(ext, "?")] += e["dur"]
    print("\nkernel time by launching op:")
    for name, dur in sorted(by_op.items(), key=lambda kv: -kv[1])[:25]:
        print(f"{dur / 1000:9.2f} ms {100 * dur / total:5.1f}%  {name}")


if __name__ == "__main__":
    main()
