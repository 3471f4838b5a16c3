"""Reference side of tests/unit/rl-metrics.test.ts: the metrics log's Arrow file as pyarrow (and so
pandas, polars, DuckDB) sees it, and a file written by pyarrow for tiller to read.

  metrics_reference.py read PATH    print {columns, types, metadata, rows}; NaN as "NaN", null as null
  metrics_reference.py write PATH   write a pandas-style file (Int64 step, Float32 and Int64 metrics)
"""

import json
import math
import sys

import pyarrow as pa
import pyarrow.ipc as ipc


def cell(value):
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, float) and math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def read(path: str) -> dict:
    with pa.memory_map(path) as source:
        table = ipc.open_file(source).read_all()
    metadata = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    return {
        "columns": table.column_names,
        "types": [str(f.type) for f in table.schema],
        "nullable": [f.nullable for f in table.schema],
        "metadata": metadata,
        "rows": [{k: cell(v) for k, v in row.items()} for row in table.to_pylist()],
    }


def write(path: str) -> None:
    table = pa.table(
        {
            "step": pa.array([1, 2, 3], pa.int64()),
            "critic/score/mean": pa.array([0.25, None, 0.75], pa.float32()),
            "perf/total_num_tokens": pa.array([100, 200, None], pa.int64()),
        }
    )
    with ipc.new_file(path, table.schema) as writer:
        writer.write_table(table)


def main() -> None:
    command, path = sys.argv[1:3]
    if command == "read":
        print(json.dumps(read(path)))
    elif command == "write":
        write(path)
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main()
