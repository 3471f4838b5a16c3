"""Runs TypeScript cells one after another in a tslab kernel and interrupts one of them as the
Jupyter front end's Interrupt does (jupyter_client's interrupt_kernel: SIGINT to the kernel), for
tests/notebook/interrupt.test.ts. Each cell's outputs are written as {type, text} records.

usage: interrupt_kernel.py JUPYTER_PATH CWD CELLS_JSON INTERRUPT_CELL AFTER_S OUT_JSON
"""

import json
import os
import queue
import sys
import time

timeout_s = 60


def main() -> None:
    jupyter_path, cwd, cells_path, interrupt_cell, after_s, out_path = sys.argv[1:7]
    os.environ["JUPYTER_PATH"] = jupyter_path
    from jupyter_client.manager import KernelManager

    with open(cells_path, encoding="utf-8") as f:
        sources = json.load(f)
    km = KernelManager(kernel_name="tslab")
    km.start_kernel(cwd=cwd)
    kc = km.client()
    kc.start_channels()
    results = []
    try:
        kc.wait_for_ready(timeout=60)
        for i, source in enumerate(sources):
            msg_id = kc.execute(source)
            interrupt_at = time.monotonic() + float(after_s) if i == int(interrupt_cell) else None
            deadline = time.monotonic() + timeout_s
            outputs = []
            while True:
                if interrupt_at is not None and time.monotonic() >= interrupt_at:
                    km.interrupt_kernel()
                    outputs.append({"type": "interrupted", "text": ""})
                    interrupt_at = None
                try:
                    msg = kc.get_iopub_msg(timeout=0.2)
                except queue.Empty:
                    if not km.is_alive():
                        raise SystemExit(f"the kernel died running cell {i}") from None
                    if time.monotonic() > deadline:
                        raise SystemExit(f"cell {i} still runs after {timeout_s} s: the kernel hangs") from None
                    continue
                if msg["parent_header"].get("msg_id") != msg_id:
                    continue
                kind, content = msg["msg_type"], msg["content"]
                if kind == "stream":
                    outputs.append({"type": "stream", "text": content["text"]})
                elif kind in ("execute_result", "display_data"):
                    outputs.append({"type": kind, "text": content["data"].get("text/plain", "")})
                elif kind == "error":
                    outputs.append({"type": "error", "text": f"{content['ename']}: {content['evalue']}"})
                elif kind == "status" and content["execution_state"] == "idle":
                    break
            results.append(outputs)
            if i == int(interrupt_cell):
                # tslab aborts what arrives in the 200 ms after a failed cell (a front end's queued cells).
                time.sleep(0.5)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
