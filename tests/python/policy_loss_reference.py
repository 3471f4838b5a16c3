"""verl 0.9.1's policy losses (core_algos.py: compute_policy_loss_<mode>, agg_loss, kl_penalty)
written out plainly in torch fp32 on padded [sequences, length] tensors, as verl holds them, with
the mini-batch counts passed in as the engine takes them (verl's batch_num_tokens and
global_batch_size).

usage: policy_loss_reference.py CASES.json
  CASES.json: a list of {inputs: {logprobs, oldLogprobs, advantages, mask, entropy, refLogprobs?,
  rolloutIsWeights?, cuSeqlens}, counts: {tokens, sequences}, config}. Prints a list of
  {loss, metrics, gradLogprobs, gradEntropy} as JSON; a metric the mode does not measure is absent.
"""

import json
import sys

import torch


def masked_mean(v, m):
    return (torch.where(m.bool(), v, 0.0) * m).sum() / (m.sum() + 1e-8)


def agg(loss_mat, mask, mode, tokens, sequences, scale):
    if mode == "token-mean":
        return (loss_mat * mask).sum() / tokens
    if mode == "token-sum":
        return (loss_mat * mask).sum()
    if mode in ("seq-mean-token-sum", "seq-mean-token-sum-norm"):
        seq_losses = (loss_mat * mask).sum(-1)
        seq_mask = (mask.sum(-1) > 0).float()
        loss = (seq_losses * seq_mask).sum() / sequences
        return loss / scale if mode == "seq-mean-token-sum-norm" else loss
    if mode == "seq-mean-token-mean":
        n = mask.sum(-1)
        seq_losses = (loss_mat * mask).sum(-1) / (n + 1e-8)
        return (seq_losses * (n > 0).float()).sum() / sequences
    raise ValueError(mode)


def kl_penalty(kind, logp, ref):
    base = kind[:-1] if kind.endswith("+") else kind
    d = logp - ref
    if base in ("k1", "kl"):
        value = d
    elif base == "abs":
        value = d.abs()
    elif base in ("k2", "mse"):
        value = 0.5 * d.square()
    elif base in ("k3", "low_var_kl"):
        kl = torch.clamp(ref - logp, min=-20, max=20)
        value = torch.clamp(torch.exp(kl) - kl - 1, min=-10, max=10)
    else:
        raise ValueError(kind)
    if not kind.endswith("+") or kind in ("mse", "k2"):
        return value
    k2 = 0.5 * d.square()
    return k2 - k2.detach() + value.detach()


def surrogate(cfg, old, logp, adv, mask, w, a, n_seq):
    """(pg_loss, metrics) of cfg's loss mode; metrics as verl reports them (token means)."""
    mode = cfg.get("lossMode", "vanilla")
    low, high = cfg.get("clipRatioLow", 0.2), cfg.get("clipRatioHigh", 0.2)
    weigh = (lambda x: x * w) if w is not None else (lambda x: x)  # noqa: E731
    tm = lambda v: masked_mean(v.detach().float(), mask)  # noqa: E731
    if mode == "vanilla":
        c = cfg.get("clipRatioC", 3.0)
        nkl = torch.clamp(logp - old, min=-20.0, max=20.0)
        ratio = torch.exp(nkl)
        l1 = -adv * ratio
        l2 = -adv * torch.clamp(ratio, 1 - low, 1 + high)
        c1 = torch.maximum(l1, l2)
        l3 = -adv * c
        c2 = torch.min(l3, c1)
        pg = torch.where(adv < 0, c2, c1)
        return a(weigh(pg)), {"pgClipfrac": tm(torch.gt(l2, l1)), "ppoKl": tm(-nkl),
                              "pgClipfracLower": tm(torch.gt(c1, l3) * (adv < 0))}
    if mode == "gspo":
        nkl = logp - old
        seq_len = mask.sum(-1).clamp(min=1)
        nkl_seq = (nkl * mask).sum(-1) / seq_len
        log_r = torch.clamp(logp - logp.detach() + nkl_seq.detach().unsqueeze(-1), max=10.0)
        r = torch.exp(log_r)
        l1 = -adv * r
        l2 = -adv * torch.clamp(r, 1 - low, 1 + high)
        return a(weigh(torch.maximum(l1, l2))), {"pgClipfrac": tm(torch.gt(l2, l1)), "ppoKl": tm(-nkl)}
    if mode == "sapo":
        tau_pos = torch.tensor(cfg.get("tauPos", 1.0))
        tau_neg = torch.tensor(cfg.get("tauNeg", 1.05))
        nkl = torch.clamp(logp - old, min=-20.0, max=20.0)
        ratio = torch.exp(nkl)
        taus = torch.where(adv > 0, tau_pos, tau_neg)
        gates = torch.sigmoid(taus * (ratio - 1.0)) * (4.0 / taus)
        return a(weigh(-gates * adv), "seq-mean-token-mean"), {"ppoKl": tm(-nkl)}
    if mode == "gpg":
        return a(weigh(-logp * adv)), {}
    if mode == "clip_cov":
        ratio_k = cfg.get("clipCovRatio", 0.0002)
        lb, ub = cfg.get("clipCovLb", 1.0), cfg.get("clipCovUb", 5.0)
        nkl = logp - old
        ratio = torch.exp(nkl)
        l1 = -adv * ratio
        corr = torch.ones_like(adv)
        l2 = -adv * torch.clamp(ratio, 1 - low, 1 + high)
        clip_by_origin = (l2 > l1) & (mask > 0)
        cov = (adv - masked_mean(adv, mask)) * (logp - masked_mean(logp.detach(), mask))
        cov = cov.detach().clone()
        cov[mask == 0] = -torch.inf
        cov[clip_by_origin] = -torch.inf
        clip_num = max(int(ratio_k * mask.sum().item()), 1)
        idx = torch.nonzero((cov < ub) & (cov > lb) & (mask > 0))
        if len(idx) > 0:
            perm = torch.randperm(len(idx), generator=torch.Generator().manual_seed(cfg.get("seed", 0)))
            idx = idx[perm[: min(clip_num, len(idx))]]
            corr[idx[:, 0], idx[:, 1]] = 0
        return a(weigh(torch.maximum(l1, l2) * corr)), {"pgClipfrac": tm(corr == 0), "ppoKl": tm(-nkl)}
    if mode == "kl_cov":
        ratio_k = cfg.get("klCovRatio", 0.0002)
        coef = cfg.get("ppoKlCoef", 0.1)
        nkl = logp - old
        ratio = torch.exp(nkl)
        l1 = -adv * ratio
        lkl = -adv * ratio + coef * nkl.abs()
        pg = l1.clone()
        valid = mask > 0
        valid_idx = torch.nonzero(valid.reshape(-1), as_tuple=True)[0]
        va = adv[valid].detach().reshape(-1)
        vl = logp[valid].detach().reshape(-1)
        if len(va) > 0:
            cov = (va - va.mean()) * (vl - vl.mean())
            k = max(1, int(len(cov) * ratio_k))
            big = valid_idx[torch.topk(cov, k, largest=True).indices]
            rows, cols = big // adv.shape[1], big % adv.shape[1]
            pg[rows, cols] = lkl[rows, cols]
        return a(weigh(pg)), {"ppoKl": tm(nkl.abs())}
    if mode == "geo_mean":
        nkl = logp - old
        sgn = torch.sign(adv)
        nkl_clamp = torch.clamp(nkl, -low, high)
        nkl_min = sgn * torch.min(sgn * nkl, sgn * nkl_clamp)
        n = mask.sum(-1)
        ratio = torch.exp((nkl_min * mask).sum(-1) / (n + 1e-8))
        seq_adv = (adv * mask).sum(-1) / (n + 1e-8)
        pg = -seq_adv * ratio
        if w is not None:
            pg = pg * torch.exp((torch.log(w + 1e-10) * mask).sum(-1) / (n + 1e-8))
        clipped = torch.ne(nkl, nkl_clamp)
        # verl: torch.mean over the rows; the rows of the mini-batch are counts.sequences.
        return pg.sum() / n_seq, {"pgClipfrac": tm(clipped * (adv > 0)), "ppoKl": tm(-nkl),
                                  "pgClipfracLower": tm(clipped * (adv < 0))}
    if mode == "cispo":
        nkl = torch.clamp(logp - old, min=-20.0, max=20.0)
        ratio = torch.exp(nkl)
        clipped = torch.clamp(ratio, 1 - low, 1 + high)
        pg = -clipped.detach() * adv * logp
        return a(weigh(pg)), {"pgClipfrac": tm(ratio != clipped), "ppoKl": tm(-nkl)}
    raise ValueError(mode)


def padded(flat, cu):
    rows = [flat[a:b] for a, b in zip(cu[:-1], cu[1:])]
    length = max(len(r) for r in rows)
    return torch.stack([torch.cat([r, torch.zeros(length - len(r))]) for r in rows])


def unpadded(mat, cu):
    return torch.cat([mat[i, : b - a] for i, (a, b) in enumerate(zip(cu[:-1], cu[1:]))])


def policy_loss(case):
    x, counts, cfg = case["inputs"], case["counts"], case["config"]
    cu = x["cuSeqlens"]
    flat = lambda k: torch.tensor(x[k], dtype=torch.float32)  # noqa: E731
    logp_flat = flat("logprobs").requires_grad_(True)
    entropy_flat = flat("entropy").requires_grad_(True)
    logp, entropy = padded(logp_flat, cu), padded(entropy_flat, cu)
    old, adv, mask = padded(flat("oldLogprobs"), cu), padded(flat("advantages"), cu), padded(flat("mask"), cu)
    w = padded(flat("rolloutIsWeights"), cu) if "rolloutIsWeights" in x else None
    mode = cfg.get("aggMode", "token-mean")
    n_tok, n_seq, scale = counts["tokens"], counts["sequences"], cfg.get("lossScaleFactor", 1.0)

    def a(v, m=mode):
        return agg(v, mask, m, n_tok, n_seq, scale)

    pg_loss, pg_metrics = surrogate(cfg, old, logp, adv, mask, w, a, n_seq)
    # Every token mean here is over the mini-batch's tokens, as the engine reports it.
    pg_metrics = {k: (v * (mask.sum() + 1e-8) / n_tok).item() for k, v in pg_metrics.items()}
    entropy_loss = a(entropy)
    loss = pg_loss - cfg.get("entropyCoeff", 0.0) * entropy_loss
    kl = cfg.get("kl", {"type": "none"})
    kl_loss = torch.zeros(())
    if kl["type"] != "none":
        kl_loss = a(kl_penalty(kl["type"], logp, padded(flat("refLogprobs"), cu)))
        loss = loss + kl.get("coeff", 0.0) * kl_loss
    loss.backward()
    metrics = {"pgLoss": pg_loss.item(), **pg_metrics, "entropy": entropy_loss.item(), "klLoss": kl_loss.item()}
    return {"loss": loss.item(), "metrics": metrics, "gradLogprobs": logp_flat.grad.tolist(),
            "gradEntropy": entropy_flat.grad.tolist()}


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        cases = json.load(f)
    print(json.dumps([policy_loss(case) for case in cases]))
