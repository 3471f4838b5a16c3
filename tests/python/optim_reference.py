"""Reference optimizer numerics from PyTorch, for tests/native/optim.test.ts.

    python optim_reference.py adamw IN.json OUT.json
    python optim_reference.py clip IN.json OUT.json

Tensors travel as flat lists of numbers (fp32 values survive JSON exactly).
adamw: {params: [{name, shape, data, dtype, decays}], grads: [[flat per param] per step], lrs, config}
  -> {params: {name: flat}, masters, exp_avg, exp_avg_sq}. bf16 parameters are updated the way
  mixed-precision trainers do: torch.optim.AdamW on fp32 masters with fp32 copies of the bf16
  gradients, then the masters rounded into the bf16 parameters.
clip: {grads: [{shape, data}], max_norm} -> {norm, grads: [flat]}
"""

import json
import sys

import torch


def adamw(spec):
    cfg = spec["config"]
    params, masters = [], []
    for p in spec["params"]:
        dtype = getattr(torch, p["dtype"])
        param = torch.tensor(p["data"], dtype=torch.float32).reshape(p["shape"]).to(dtype)
        params.append(param)
        masters.append(param.float().clone().requires_grad_(True))
    groups = [
        {"params": [m for m, p in zip(masters, spec["params"]) if p["decays"]], "weight_decay": cfg["weightDecay"]},
        {"params": [m for m, p in zip(masters, spec["params"]) if not p["decays"]], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(
        [g for g in groups if g["params"]], lr=spec["lrs"][0], betas=(cfg["beta1"], cfg["beta2"]), eps=cfg["eps"]
    )
    for step_grads, lr in zip(spec["grads"], spec["lrs"]):
        for group in opt.param_groups:
            group["lr"] = lr
        for m, p, g in zip(masters, params, step_grads):
            # the gradient arrives in the parameter's dtype, as autograd would leave it
            m.grad = torch.tensor(g, dtype=torch.float32).reshape(m.shape).to(p.dtype).float()
        opt.step()
        for m, p in zip(masters, params):
            p.copy_(m.detach())
    names = [p["name"] for p in spec["params"]]
    flat = lambda t: t.detach().float().reshape(-1).tolist()
    return {
        "params": {n: flat(p) for n, p in zip(names, params)},
        "masters": {n: flat(m) for n, m in zip(names, masters)},
        "exp_avg": {n: flat(opt.state[m]["exp_avg"]) for n, m in zip(names, masters)},
        "exp_avg_sq": {n: flat(opt.state[m]["exp_avg_sq"]) for n, m in zip(names, masters)},
    }


def clip(spec):
    params = []
    for g in spec["grads"]:
        p = torch.zeros(g["shape"], requires_grad=True)
        p.grad = torch.tensor(g["data"], dtype=torch.float32).reshape(g["shape"])
        params.append(p)
    norm = torch.nn.utils.clip_grad_norm_(params, spec["max_norm"])
    return {"norm": norm.item(), "grads": [p.grad.reshape(-1).tolist() for p in params]}


if __name__ == "__main__":
    mode, src, dst = sys.argv[1:4]
    with open(src) as f:
        spec = json.load(f)
    out = {"adamw": adamw, "clip": clip}[mode](spec)
    with open(dst, "w") as f:
        json.dump(out, f)
