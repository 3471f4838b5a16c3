// What every rank must hold after the collectives scenario of tests/helpers/dist-rank.ts, computed in
// plain JS; shared by the gloo (tests/native) and NCCL (tests/gpu) tests.
import assert from "node:assert/strict";
import { int64Values, rankValues } from "./dist-rank.js";
import type { RankResult } from "./ranks.js";

type Plain = { shape: number[]; dtype: string; values: (number | string)[] };

function columns<T>(world: number, row: (rank: number) => T[]): T[][] {
  const rows = Array.from({ length: world }, (_, r) => row(r));
  return (rows[0] ?? []).map((_, i) => rows.map((values) => values[i] as T));
}

/** What every rank must hold after the collectives scenario, computed here in plain JS. */
function expectedCollectives(world: number): Record<string, unknown> {
  const cols = columns(world, rankValues);
  const sum = cols.map((c) => c.reduce((a, b) => a + b, 0));
  const big = columns(world, int64Values);
  const ranks = Array.from({ length: world }, (_, r) => r);
  const rankSum = ranks.reduce((a, b) => a + b, 0);
  const f32 = (values: number[], shape: number[]): Plain => ({ shape, dtype: "float32", values });
  return {
    "float32/sum": f32(sum, [2, 3]),
    "float32/max": f32(
      cols.map((c) => Math.max(...c)),
      [2, 3],
    ),
    "float32/min": f32(
      cols.map((c) => Math.min(...c)),
      [2, 3],
    ),
    "float32/avg": f32(
      sum.map((s) => Math.fround(s / world)),
      [2, 3],
    ),
    "bfloat16/sum": { shape: [6], dtype: "bfloat16", values: sum },
    "bfloat16/max": { shape: [6], dtype: "bfloat16", values: cols.map((c) => Math.max(...c)) },
    "int64/sum": {
      shape: [3],
      dtype: "int64",
      values: big.map((c) => c.reduce((a, b) => a + b, 0n).toString()),
    },
    "int64/max": {
      shape: [3],
      dtype: "int64",
      values: big.map((c) => bigMax(c).toString()),
    },
    broadcast: f32([42, -1, 3.25, Math.fround(1e30)], [2, 2]),
    allGather: f32(
      ranks.flatMap((r) => [r, r + 0.5, -1 - r, 100 + r]),
      [2 * world, 2],
    ),
    ordered: [f32([rankSum, world], [2, 1]), f32([1, 2 * (world - 1)], [2])],
  };
}

function expectedReduceScatter(world: number, rank: number): Plain {
  const rankSum = (world * (world - 1)) / 2;
  return {
    shape: [1, 2],
    dtype: "float32",
    values: [world * (2 * rank) * 10 + rankSum, world * (2 * rank + 1) * 10 + rankSum],
  };
}

function bigMax(values: bigint[]): bigint {
  // biome-ignore lint/complexity/useMathMinMax: Math.max does not take bigints
  return values.reduce((best, v) => (v > best ? v : best));
}

export function checkCollectives(results: RankResult[], world: number): void {
  // Through JSON, as the ranks' results came (so -0 reads as 0 on both sides).
  const expected = JSON.parse(JSON.stringify(expectedCollectives(world))) as Record<string, unknown>;
  for (const result of results) {
    assert.equal(result.ok, true, `rank ${result.rank}: ${result.error}`);
    for (const [key, value] of Object.entries(expected)) {
      assert.deepEqual(result[key], value, `rank ${result.rank}: ${key}`);
    }
    assert.deepEqual(result.reduceScatter, expectedReduceScatter(world, result.rank), `rank ${result.rank}`);
    assert.equal(typeof result.barrierMs, "number");
  }
}
