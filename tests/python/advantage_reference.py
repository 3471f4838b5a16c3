"""verl 0.9.1's advantage estimators (core_algos.py: compute_<name>_outcome_advantage,
compute_gae_advantage_return, masked_whiten) written out plainly in torch on padded
[responses, length] tensors, float64 so that the comparison measures the formula, not rounding.

usage: advantage_reference.py CASES.json
  CASES.json: a list of {estimator, tokenRewards: number[][], groups: (number|string)[],
  values?: number[][], gamma?, lam?, normByStd?}. Prints a list of {advantages: number[][],
  returns: number[][]} (per response, its tokens only).
"""

import json
import sys
from collections import defaultdict

import torch


def masked_mean(v, m):
    return (v * m).sum() / (m.sum() + 1e-8)


def masked_whiten(v, m):
    mean = masked_mean(v, m)
    var = masked_mean((v - mean) ** 2, m)
    n = m.sum()
    var = var * n / (n - 1)
    return (v - mean) * torch.rsqrt(var + 1e-8)


def grpo_passk(scores, index, norm):
    adv = torch.zeros_like(scores)
    ids, members = defaultdict(list), defaultdict(list)
    for i, g in enumerate(index):
        ids[g].append(scores[i])
        members[g].append(i)
    for g in ids:
        r = torch.stack(ids[g])
        top, top_idx = torch.topk(r, 2)
        a = top[0] - top[1]
        if norm:
            a = a / (torch.std(r) + 1e-6)
        adv[members[g][top_idx[0].item()]] = a
    return adv


def opo(scores, lengths, index):
    by_score, by_len = defaultdict(list), defaultdict(list)
    for i, g in enumerate(index):
        by_score[g].append(scores[i])
        by_len[g].append(lengths[i])
    base = {}
    for g in by_score:
        if len(by_score[g]) == 1:
            base[g] = torch.tensor(0.0, dtype=scores.dtype)
        else:
            s, n = torch.stack(by_score[g]), torch.stack(by_len[g])
            base[g] = (n * s).sum() / n.sum()
    return torch.stack([scores[i] - base[g] for i, g in enumerate(index)])


def gpg(scores, index):
    alpha = len(scores) / torch.count_nonzero(scores).clamp(min=1)
    by = defaultdict(list)
    for i, g in enumerate(index):
        by[g].append(scores[i])
    mean = {g: (torch.tensor(0.0, dtype=scores.dtype) if len(v) == 1 else torch.mean(torch.stack(v))) for g, v in by.items()}
    return torch.stack([alpha * (scores[i] - mean[g]) for i, g in enumerate(index)])


def reinforce_pp(rewards, mask, gamma):
    returns = torch.zeros_like(rewards)
    running = 0
    for t in reversed(range(rewards.shape[1])):
        new = rewards[:, t] + gamma * running
        returns[:, t] = new * mask[:, t]
        running = new * mask[:, t] + running * (1 - mask[:, t])
    return masked_whiten(returns, mask) * mask, returns


def gae(rewards, values, mask, gamma, lam):
    nextvalues, lastgaelam, rev = 0, 0, []
    for t in reversed(range(rewards.shape[-1])):
        delta = rewards[:, t] + gamma * nextvalues - values[:, t]
        lastgaelam_ = delta + gamma * lam * lastgaelam
        nextvalues = values[:, t] * mask[:, t] + (1 - mask[:, t]) * nextvalues
        lastgaelam = lastgaelam_ * mask[:, t] + (1 - mask[:, t]) * lastgaelam
        rev.append(lastgaelam)
    adv = torch.stack(rev[::-1], dim=1)
    returns = adv + values
    return masked_whiten(adv, mask), returns


def padded(rows):
    length = max(1, max(len(r) for r in rows))
    return torch.tensor([list(r) + [0.0] * (length - len(r)) for r in rows], dtype=torch.float64)


def run(case):
    rows = case["tokenRewards"]
    rewards = padded(rows)
    mask = padded([[1.0] * len(r) for r in rows])
    index = case["groups"]
    scores = rewards.sum(-1)
    lengths = mask.sum(-1)
    name = case["estimator"]
    if name == "grpo_passk":
        adv = grpo_passk(scores, index, case.get("normByStd", True)).unsqueeze(-1) * mask
        ret = adv
    elif name == "opo":
        adv = opo(scores, lengths, index).unsqueeze(-1) * mask
        ret = adv
    elif name == "gpg":
        adv = gpg(scores, index).unsqueeze(-1) * mask
        ret = adv
    elif name == "reinforce_plus_plus":
        adv, ret = reinforce_pp(rewards, mask, case.get("gamma", 1.0))
    elif name == "gae":
        adv, ret = gae(rewards, padded(case["values"]), mask, case.get("gamma", 1.0), case.get("lam", 1.0))
    else:
        raise ValueError(name)
    cut = lambda m: [m[i, : len(r)].tolist() for i, r in enumerate(rows)]  # noqa: E731
    return {"advantages": cut(adv), "returns": cut(ret)}


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        cases = json.load(f)
    print(json.dumps([run(c) for c in cases]))
