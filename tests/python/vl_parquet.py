"""Rewrites verl-layout JSONL rows (images base64-encoded) as Parquet the way verl's multimodal
preprocessing (e.g. geo3k) stores them: `images` a list of {bytes: binary, path: string}.

usage: vl_parquet.py IN.jsonl OUT.parquet
"""

import base64
import json
import sys

import pyarrow as pa
import pyarrow.parquet as pq


def main():
    rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
    for r in rows:
        r["images"] = [{"bytes": base64.b64decode(i["bytes"]), "path": None} for i in r["images"]]
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([
        ("data_source", pa.string()),
        ("prompt", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
        ("images", pa.list_(image)),
        ("ability", pa.string()),
        ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", pa.string())])),
        ("extra_info", pa.struct([("index", pa.int64())])),
    ])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), sys.argv[2], compression="snappy")


if __name__ == "__main__":
    main()
