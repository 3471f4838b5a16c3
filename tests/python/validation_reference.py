"""verl 0.9.1's validation metrics (trainer/ppo/metric_utils.py: bootstrap_metric, calc_maj_val,
process_validation_metrics; ray_trainer._val_metrics_update's naming) written out with numpy,
whose legacy generator (np.random.seed, np.random.choice) the bootstrap uses.

usage: validation_reference.py CASES.json
  CASES.json: a list of {dataSources: str[], uids: str[], infos: {name: values[]}}. Prints a list of
  {name: value} dicts with verl's metric names. Also `choice N ROWS COLS` prints the indices.
"""

import json
import sys
from collections import defaultdict
from functools import partial

import numpy as np


def bootstrap_metric(data, subset_size, reduce_fns, n_bootstrap=1000, seed=42):
    np.random.seed(seed)
    data_np = np.array(data, dtype=object)
    idx = np.random.choice(len(data_np), size=(n_bootstrap, subset_size), replace=True)
    out = np.empty((len(reduce_fns), n_bootstrap), dtype=np.float64)
    for f, fn in enumerate(reduce_fns):
        for b in range(n_bootstrap):
            out[f, b] = fn(data_np[idx[b]])
    return [(float(np.mean(out[f])), float(np.std(out[f]))) for f in range(len(reduce_fns))]


def calc_maj_val(data, vote_key, val_key):
    vote2vals = defaultdict(list)
    for d in data:
        vote2vals[d[vote_key]].append(d[val_key])
    vote2cnt = {k: len(v) for k, v in vote2vals.items()}
    return vote2vals[max(vote2cnt, key=vote2cnt.get)][0]


def gen_ns(n):
    if n <= 1:
        return []
    ns, k = [], 2
    while k < n:
        ns.append(k)
        k *= 2
    ns.append(n)
    return ns


def process(data_sources, uids, infos):
    tree = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for i, src in enumerate(data_sources):
        for name, vals in infos.items():
            tree[src][uids[i]][name].append(vals[i])
    result = {}
    for src, by_uid in tree.items():
        acc = defaultdict(lambda: defaultdict(list))
        for uid, var2vals in by_uid.items():
            preds = var2vals.get("pred")
            for name, vals in var2vals.items():
                vals = [v for v in vals if v is not None]
                if not vals or isinstance(vals[0], str):
                    continue
                has_pred = preds is not None and len(preds) == len(vals) and all(p is not None for p in preds)
                n = len(vals)
                m = {f"mean@{n}": float(np.mean(vals))}
                if n > 1:
                    m[f"std@{n}"] = float(np.std(vals))
                    for k in gen_ns(n):
                        (bm, bs), (wm, ws) = bootstrap_metric(vals, k, [np.max, np.min])
                        m[f"best@{k}/mean"], m[f"best@{k}/std"] = bm, bs
                        m[f"worst@{k}/mean"], m[f"worst@{k}/std"] = wm, ws
                        if has_pred:
                            votes = [{"val": v, "pred": p} for v, p in zip(vals, preds, strict=True)]
                            [(mm, ms)] = bootstrap_metric(votes, k, [partial(calc_maj_val, vote_key="pred", val_key="val")])
                            m[f"maj@{k}/mean"], m[f"maj@{k}/std"] = mm, ms
                for metric, v in m.items():
                    acc[name][metric].append(v)
        result[src] = {name: {metric: float(np.mean(v)) for metric, v in ms.items()} for name, ms in acc.items()}
    metrics = {}
    for src, var2metric in result.items():
        core = "acc" if "acc" in var2metric else "reward"
        for name, metric2val in var2metric.items():
            n_max = max(int(k.split("@")[-1].split("/")[0]) for k in metric2val)
            for metric, v in metric2val.items():
                sec = "val-core" if (name == core and any(metric.startswith(p) for p in ["mean", "maj", "best"]) and f"@{n_max}" in metric) else "val-aux"
                metrics[f"{sec}/{src}/{name}/{metric}"] = v
    return metrics


if __name__ == "__main__":
    if sys.argv[1] == "choice":
        n, rows, cols = map(int, sys.argv[2:5])
        np.random.seed(42)
        print(json.dumps(np.random.choice(n, size=(rows, cols), replace=True).reshape(-1).tolist()))
        sys.exit(0)
    with open(sys.argv[1]) as f:
        cases = json.load(f)
    print(json.dumps([process(c["dataSources"], c["uids"], c["infos"]) for c in cases]))
