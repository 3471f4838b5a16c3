"""Reads a table file the way pandas/polars users would (pyarrow) and prints its schema and rows as JSON."""
import json
import math
import sys

import pyarrow.feather as feather
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

path = sys.argv[1]
if path.endswith(".parquet"):
    table = pq.read_table(path)
elif path.endswith(".arrows"):
    table = ipc.open_stream(path).read_all()
else:
    table = feather.read_table(path)


def clean(v):
    if isinstance(v, float) and math.isnan(v):
        return "NaN"
    if isinstance(v, list):
        return [clean(x) for x in v]
    return v


print(json.dumps({
    "schema": {f.name: str(f.type) for f in table.schema},
    "rows": [{k: clean(v) for k, v in r.items()} for r in table.to_pylist()],
    "num_rows": table.num_rows,
}))
