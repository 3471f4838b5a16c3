"""verl 0.9.1's clipped value loss (core_algos.py compute_value_loss with agg_loss) written out in
torch fp32 on padded [sequences, length] tensors, with the mini-batch counts passed in.

usage: value_loss_reference.py CASES.json
  CASES.json: a list of {inputs: {vpreds, values, returns, mask, cuSeqlens}, counts: {tokens,
  sequences}, config: {cliprangeValue?, aggMode?, lossScaleFactor?}}. Prints a list of
  {loss, vfClipfrac, vpredMean, gradVpreds}.
"""

import json
import sys

import torch

from policy_loss_reference import agg, masked_mean, padded


def value_loss(case):
    x, counts, cfg = case["inputs"], case["counts"], case["config"]
    cu = x["cuSeqlens"]
    flat = lambda k: torch.tensor(x[k], dtype=torch.float32)  # noqa: E731
    vp_flat = flat("vpreds").requires_grad_(True)
    vpreds = padded(vp_flat, cu)
    values, returns, mask = padded(flat("values"), cu), padded(flat("returns"), cu), padded(flat("mask"), cu)
    c = cfg.get("cliprangeValue", 0.5)
    clipped = torch.max(torch.min(vpreds, values + c), values - c)  # verl_F.clip_by_value
    l1 = (vpreds - returns) ** 2
    l2 = (clipped - returns) ** 2
    loss = 0.5 * agg(torch.max(l1, l2), mask, cfg.get("aggMode", "token-mean"), counts["tokens"],
                     counts["sequences"], cfg.get("lossScaleFactor", 1.0))
    loss.backward()
    scale = (mask.sum() + 1e-8) / counts["tokens"]  # verl's micro-batch token mean over the mini-batch's tokens
    return {"loss": loss.item(), "vfClipfrac": (masked_mean(torch.gt(l2, l1).float(), mask) * scale).item(),
            "vpredMean": (masked_mean(vpreds.detach(), mask) * scale).item(), "gradVpreds": vp_flat.grad.tolist()}


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        cases = json.load(f)
    print(json.dumps([value_loss(case) for case in cases]))
