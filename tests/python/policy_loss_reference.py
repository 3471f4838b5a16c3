"""verl's policy loss (core_algos.py: compute_policy_loss_vanilla, agg_loss, kl_penalty) written out
plainly in torch fp32, with the mini-batch counts passed in as the engine takes them.

usage: policy_loss_reference.py CASES.json
  CASES.json: a list of {inputs: {logprobs, oldLogprobs, advantages, mask, entropy, refLogprobs?,
  cuSeqlens}, counts: {tokens, sequences}, config}. Prints a list of {loss, metrics, gradLogprobs,
  gradEntropy} as JSON.
"""

import json
import sys

import torch


def agg(values, mask, cu, mode, tokens, sequences, scale):
    if mode == "token-mean":
        return (values * mask).sum() / max(tokens, 1)
    seq_sums = torch.stack([(values[a:b] * mask[a:b]).sum() for a, b in zip(cu[:-1], cu[1:])])
    if mode == "seq-mean-token-sum":
        return seq_sums.sum() / max(sequences, 1)
    if mode == "seq-mean-token-mean":
        seq_tokens = torch.stack([mask[a:b].sum() for a, b in zip(cu[:-1], cu[1:])])
        return (seq_sums / seq_tokens.clamp(min=1)).sum() / max(sequences, 1)
    if mode == "seq-mean-token-sum-norm":
        return seq_sums.sum() / (max(sequences, 1) * scale)
    raise ValueError(mode)


def kl_penalty(kind, logp, ref):
    if kind == "k1":
        return logp - ref
    if kind == "abs":
        return (logp - ref).abs()
    if kind == "k2":
        return 0.5 * (logp - ref) ** 2
    if kind in ("k3", "low_var_kl"):
        kl = torch.clamp(ref - logp, min=-20, max=20)
        return torch.clamp(torch.exp(kl) - kl - 1, min=-10, max=10)
    raise ValueError(kind)


def policy_loss(case):
    x, counts, cfg = case["inputs"], case["counts"], case["config"]
    t = lambda k: torch.tensor(x[k], dtype=torch.float32)  # noqa: E731
    logp = t("logprobs").requires_grad_(True)
    entropy = t("entropy").requires_grad_(True)
    old, adv, mask = t("oldLogprobs"), t("advantages"), t("mask")
    cu = x["cuSeqlens"]
    low, high, c = cfg.get("clipRatioLow", 0.2), cfg.get("clipRatioHigh", 0.2), cfg.get("clipRatioC", 3.0)
    mode = cfg.get("aggMode", "token-mean")
    n_tok, n_seq, scale = counts["tokens"], counts["sequences"], cfg.get("lossScaleFactor", 1.0)

    def a(v):
        return agg(v, mask, cu, mode, n_tok, n_seq, scale)

    def token_mean(v):
        return (v * mask).sum() / max(n_tok, 1)

    negative_approx_kl = torch.clamp(logp - old, min=-20.0, max=20.0)
    ratio = torch.exp(negative_approx_kl)
    pg_losses1 = -adv * ratio
    pg_losses2 = -adv * torch.clamp(ratio, 1 - low, 1 + high)
    clip_pg_losses1 = torch.maximum(pg_losses1, pg_losses2)
    pg_losses3 = -adv * c
    clip_pg_losses2 = torch.min(pg_losses3, clip_pg_losses1)
    pg_losses = torch.where(adv < 0, clip_pg_losses2, clip_pg_losses1)
    pg_loss = a(pg_losses)
    entropy_loss = a(entropy)
    loss = pg_loss - cfg.get("entropyCoeff", 0.0) * entropy_loss
    kl = cfg.get("kl", {"type": "none"})
    kl_loss = torch.zeros(())
    if kl["type"] != "none":
        kl_loss = a(kl_penalty(kl["type"], logp, t("refLogprobs")))
        loss = loss + kl.get("coeff", 0.0) * kl_loss
    loss.backward()
    with torch.no_grad():
        metrics = {
            "pgLoss": pg_loss.item(),
            "pgClipfrac": token_mean(torch.gt(pg_losses2, pg_losses1).float()).item(),
            "pgClipfracLower": token_mean((torch.gt(clip_pg_losses1, pg_losses3) * (adv < 0)).float()).item(),
            "ppoKl": token_mean(-negative_approx_kl).item(),
            "entropy": entropy_loss.item(),
            "klLoss": kl_loss.item(),
        }
    return {"loss": loss.item(), "metrics": metrics, "gradLogprobs": logp.grad.tolist(),
            "gradEntropy": entropy.grad.tolist()}


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        cases = json.load(f)
    print(json.dumps([policy_loss(case) for case in cases]))
