"""Writes small verl-layout prompt files for tests/unit/dataset.test.ts.

usage: prompt_data.py OUT_DIR
Writes good.parquet and good.jsonl (the same 6 rows: nested prompt list, struct reward_model,
extra_info with an int64), and bad.parquet (row 2's reward_model.ground_truth is a list)."""
import json
import sys

import pyarrow as pa
import pyarrow.parquet as pq

out = sys.argv[1]
rows = []
for i in range(6):
    prompt = [{"role": "user", "content": f"question {i} " + "word " * (i * 3)}]
    if i % 2 == 0:
        prompt.insert(0, {"role": "system", "content": "Be brief."})
    rows.append(
        {
            "data_source": "openai/gsm8k" if i % 2 else "math_dapo",
            "prompt": prompt,
            "ability": "math",
            "reward_model": {"ground_truth": str(i * 10), "style": "rule"},
            "extra_info": {"index": i, "split": "train"},
        }
    )
pq.write_table(pa.Table.from_pylist(rows), f"{out}/good.parquet")
with open(f"{out}/good.jsonl", "w") as f:
    for r in rows:
        f.write(json.dumps(r) + "\n")
bad = [dict(r) for r in rows[:3]]
bad_schema = pa.schema(
    [
        ("data_source", pa.string()),
        ("prompt", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
        ("reward_model", pa.struct([("ground_truth", pa.list_(pa.string())), ("style", pa.string())])),
    ]
)
for r in bad:
    r.pop("ability")
    r.pop("extra_info")
    r["reward_model"] = {"ground_truth": [r["reward_model"]["ground_truth"]], "style": "rule"}
pq.write_table(pa.Table.from_pylist(bad, schema=bad_schema), f"{out}/bad.parquet")
print(json.dumps(rows))
