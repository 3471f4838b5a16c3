"""verl 0.9.1's rollout correction (trainer/ppo/rollout_corr_helper.py: truncated IS weights,
rejection masks, IS / RS / off-policy metrics) written out plainly in torch float64 on padded
[responses, length] tensors.

usage: rollout_correction_reference.py CASES.json
  CASES.json: a list of {old: number[][], rollout: number[][], mask: number[][], rolloutIs?,
  isUpper, isLower?, batchNormalize, rejection: [{option, lower?, upper}]}. Prints a list of
  {weights?: number[][], mask: number[][], metrics: {name: value}} with verl's metric names.
"""

import json
import math
import sys

import torch

SAFE = 20.0


def mm(v, m, axis=None):
    s = (torch.where(m.bool(), v, 0.0) * m).sum() if axis is None else (torch.where(m.bool(), v, 0.0) * m).sum(axis)
    return s / ((m.sum() if axis is None else m.sum(axis)) + 1e-8)


def msum(v, m, axis):
    return (torch.where(m.bool(), v, 0.0) * m).sum(axis)


def is_weights(lr, m, level, upper, lower, normalize):
    icepop = lower is not None
    if level == "token":
        lr_metrics = lr
        raw = torch.exp(torch.clamp(lr, -SAFE, SAFE))
    else:
        lsum = msum(lr, m, -1).unsqueeze(-1)
        lr_metrics = lsum
        raw = torch.exp(torch.clamp(lsum, -SAFE, SAFE)).expand_as(lr)
    raw = raw * m
    if not icepop:
        w = raw.clamp(max=upper)
    else:
        w = torch.where((raw >= lower) & (raw <= upper), raw, torch.zeros_like(raw))
    met = {}
    low = 1.0 / upper if lower is None else lower
    lu, ll = math.log(upper), math.log(low)
    if level == "sequence":
        met["rollout_is_max"] = torch.exp(torch.clamp(lr_metrics.max(), max=SAFE)).item()
        met["rollout_is_min"] = torch.exp(lr_metrics.min()).item()
        met["rollout_is_mean"] = mm(w, m).item()
        met["rollout_is_ratio_fraction_high"] = (lr_metrics > lu).double().mean().item()
        met["rollout_is_ratio_fraction_low"] = (lr_metrics < ll).double().mean().item()
    else:
        met["rollout_is_mean"] = mm(w, m).item()
        met["rollout_is_ratio_fraction_high"] = mm((raw > upper).double(), m).item()
        met["rollout_is_ratio_fraction_low"] = mm((raw < low).double(), m).item()
        met["rollout_is_max"] = w.masked_fill(~m.bool(), float("-inf")).max().item()
        met["rollout_is_min"] = w.masked_fill(~m.bool(), float("inf")).min().item()
    wc = w.clamp(min=0.0, max=upper)
    if m.sum() > 1:
        mc = mm(wc, m)
        met["rollout_is_std"] = torch.sqrt(torch.clamp(mm(wc.square(), m) - mc.square(), min=0.0)).item()
    else:
        met["rollout_is_std"] = 0.0
    met["rollout_is_eff_sample_size"] = 1.0 / mm((wc / (mm(wc, m) + 1e-8)).square(), m).item()
    seq = mm(w, m, -1)
    met["rollout_is_seq_mean"] = seq.mean().item()
    met["rollout_is_seq_std"] = seq.std().item() if seq.numel() > 1 else 0.0
    met["rollout_is_seq_max"] = seq.max().item()
    met["rollout_is_seq_min"] = seq.min().item()
    met["rollout_is_seq_max_deviation"] = (seq - 1.0).abs().max().item()
    raw_seq = mm(raw, m, -1)
    met["rollout_is_seq_fraction_high"] = (raw_seq > upper).double().mean().item()
    met["rollout_is_seq_fraction_low"] = (raw_seq < low).double().mean().item()
    if icepop:
        met["rollout_is_oob_ratio"] = mm(((raw < lower) | (raw > upper)).double(), m).item()
    if normalize:
        if level == "token":
            mean = mm(w, m)
        else:
            sw = mm(w, m, -1)
            sm = (m.sum(-1) > 0).double()
            mean = (sw * sm).sum() / sm.sum().clamp_min(1e-8)
        if mean > 1e-8:
            w = w / mean
            met["rollout_is_batch_norm_factor"] = mean.item()
        else:
            met["rollout_is_batch_norm_factor"] = 1.0
    return w, met


def rs_metrics(name, stat, m, valid, level, seq_stat, upper, lower, k1):
    met, p = {}, f"rollout_rs_{name}"
    seqv = seq_stat if seq_stat is not None else mm(stat, m, -1)
    sv = seqv[valid]
    met[f"{p}_mean"] = mm(stat, m).item()
    if level == "sequence" and sv.numel() > 0:
        met[f"{p}_max"], met[f"{p}_min"] = sv.max().item(), sv.min().item()
        met[f"{p}_fraction_high"] = (sv > upper).double().mean().item()
        met[f"{p}_fraction_low"] = (sv < lower).double().mean().item() if k1 else 0.0
    else:
        met[f"{p}_max"] = stat.masked_fill(~m.bool(), float("-inf")).max().item()
        met[f"{p}_min"] = stat.masked_fill(~m.bool(), float("inf")).min().item()
        met[f"{p}_fraction_high"] = mm((stat > upper).double(), m).item()
        met[f"{p}_fraction_low"] = mm((stat < lower).double(), m).item() if k1 else 0.0
    if m.sum() > 1:
        c = stat.clamp(min=lower if k1 else 0.0, max=upper)
        mc = mm(c, m)
        met[f"{p}_std"] = torch.sqrt(torch.clamp(mm(c.square(), m) - mc.square(), min=0.0)).item()
    else:
        met[f"{p}_std"] = 0.0
    met[f"{p}_seq_mean"] = sv.mean().item()
    met[f"{p}_seq_std"] = sv.std().item() if sv.numel() > 1 else 0.0
    met[f"{p}_seq_max"], met[f"{p}_seq_min"] = sv.max().item(), sv.min().item()
    met[f"{p}_seq_max_deviation"] = sv.abs().max().item()
    met[f"{p}_seq_fraction_high"] = (sv > upper).double().mean().item()
    if k1:
        met[f"{p}_seq_fraction_low"] = (sv < lower).double().mean().item()
    return met


def rejection(lr, m, options):
    s = torch.clamp(lr, -SAFE, SAFE)
    stats = {"k1": -s, "k2": 0.5 * s**2, "k3": torch.exp(s) - 1.0 - s}
    mb = m.bool()
    valid = m.sum(-1) > 0
    combined = torch.ones_like(m)
    met = {}
    for o in options:
        name, upper, lower = o["option"], o["upper"], o.get("lower")
        k1 = name.endswith("k1")
        lo_log, up = (math.log(lower), math.log(upper)) if k1 else (None, upper)
        tok = stats[name[-2:]]
        seq_stat = None
        if name.startswith("token"):
            stat = tok
            keep = ((stat >= lo_log) & (stat <= up)) if k1 else (stat <= up)
            level = "token"
        else:
            if name.startswith("seq_sum"):
                seq_stat = msum(tok, m, -1)
            elif name.startswith("seq_mean"):
                seq_stat = mm(tok, m, -1)
            else:
                v = tok.masked_fill(~mb, float("-inf")).max(-1).values
                seq_stat = torch.where(v == float("-inf"), torch.zeros_like(v), v)
            sk = ((seq_stat >= lo_log) & (seq_stat <= up)) if k1 else (seq_stat <= up)
            keep = sk.unsqueeze(-1).expand_as(mb)
            stat = seq_stat.unsqueeze(-1).expand_as(m)
            level = "sequence"
        km = keep.double()
        combined = combined * km
        seq_keep = (~((~keep) & mb)).all(-1)
        met.update(rs_metrics(name, stat, m, valid, level, seq_stat, up, lo_log if k1 else 0.0, k1))
        met[f"rollout_rs_{name}_masked_fraction"] = mm(1 - km, m).item()
        vf = valid.double()
        met[f"rollout_rs_{name}_seq_masked_fraction"] = (((1.0 - seq_keep.double()) * vf).sum() / vf.sum()).item()
    met["rollout_rs_masked_fraction"] = mm(1 - combined, m).item()
    kept = (combined > 0.5) & mb
    met["rollout_rs_seq_masked_fraction"] = (~kept & mb).any(-1).double().mean().item()
    return m * combined, met


def offpolicy(old, rollout, m):
    met = {}
    mt = mm(old, m, -1)
    met["training_ppl"] = torch.exp(-mt).mean().item()
    met["training_log_ppl"] = (-mt).mean().item()
    met["kl"] = mm(rollout - old, m).item()
    lr = old - rollout
    met["k3_kl"] = mm(torch.exp(lr) - lr - 1, m).item()
    mr = mm(rollout, m, -1)
    met["rollout_ppl"] = torch.exp(-mr).mean().item()
    met["rollout_log_ppl"] = (-mr).mean().item()
    d = mr - mt
    met["log_ppl_diff"] = d.mean().item()
    met["log_ppl_abs_diff"] = d.abs().mean().item()
    met["log_ppl_diff_max"], met["log_ppl_diff_min"] = d.max().item(), d.min().item()
    met["ppl_ratio"] = torch.exp(d).mean().item()
    rho = torch.exp(torch.clamp(lr, -SAFE, SAFE))
    met["chi2_token"] = (mm(rho.square(), m) - 1.0).item()
    ls = msum(lr, m, -1)
    met["chi2_seq"] = (torch.exp(2.0 * torch.clamp(ls, -SAFE, SAFE)).mean() - 1.0).item()
    return met


def padded(rows):
    n = max(1, max(len(r) for r in rows))
    return torch.tensor([list(r) + [0.0] * (n - len(r)) for r in rows], dtype=torch.float64)


def run(c):
    old, rollout, m = padded(c["old"]), padded(c["rollout"]), padded(c["mask"])
    lr = old - rollout
    met, out = {}, {}
    if c.get("rolloutIs"):
        w, wm = is_weights(lr, m, c["rolloutIs"], c["isUpper"], c.get("isLower"), c["batchNormalize"])
        met.update(wm)
        out["weights"] = [w[i, : len(r)].tolist() for i, r in enumerate(c["old"])]
    new_mask = m.clone()
    if c["rejection"]:
        new_mask, rm = rejection(lr, m, c["rejection"])
        met.update(rm)
    met.update(offpolicy(old, rollout, m))
    out["mask"] = [new_mask[i, : len(r)].tolist() for i, r in enumerate(c["old"])]
    out["metrics"] = {f"rollout_corr/{k}": v for k, v in met.items()}
    return out


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        cases = json.load(f)
    print(json.dumps([run(c) for c in cases]))
