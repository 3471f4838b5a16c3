// Karmarkar–Karp balancing across ranks and token-budget micro-batch packing.
import assert from "node:assert/strict";
import { test } from "node:test";
import { mulberry32 } from "../../src/rl/data.js";
import {
  greedyPartition,
  karmarkarKarpPartition,
  partitionSpreadTokens,
  planMicroBatches,
} from "../../src/rl/index.js";

function assertExactlyOnce(partitions: number[][], count: number): void {
  const seen = partitions.flat().sort((a, b) => a - b);
  assert.deepEqual(
    seen,
    Array.from({ length: count }, (_, i) => i),
  );
}

test("hand-checked: [8, 7, 6, 5, 4] into 2 parts", () => {
  // KK: {8}{7} → spread 1, {6}{5} → 1, {4} with one of those → 3, then 16 | 14 → spread 2.
  // greedy in order: 8→A, 7→B, 6→B, 5→A, 4→A: 17 | 13 → spread 4.
  const lengths = [8, 7, 6, 5, 4];
  const kk = karmarkarKarpPartition(lengths, 2);
  assertExactlyOnce(kk, 5);
  assert.equal(partitionSpreadTokens(lengths, kk), 2);
  assert.equal(partitionSpreadTokens(lengths, greedyPartition(lengths, 2)), 4);
});

test("equalSize gives every part the same number of items", () => {
  const lengths = [1, 100, 2, 99, 3, 98, 4, 97];
  const parts = karmarkarKarpPartition(lengths, 4, { equalSize: true });
  assertExactlyOnce(parts, 8);
  for (const p of parts) assert.equal(p.length, 2);
  assert.equal(partitionSpreadTokens(lengths, parts), 0); // 1+100, 2+99, 3+98, 4+97
  assert.throws(() => karmarkarKarpPartition([1, 2, 3], 2, { equalSize: true }), /multiple of/);
});

test("KK spread ≤ verl's greedy spread on seeded random inputs", () => {
  for (let seed = 1; seed <= 200; seed++) {
    const next = mulberry32(seed);
    const count = 8 + Math.floor(next() * 120);
    const ranks = [2, 4, 8][seed % 3];
    const lengths = Array.from({ length: count }, () => 1 + Math.floor(next() * 8192));
    const kk = karmarkarKarpPartition(lengths, ranks);
    assertExactlyOnce(kk, count);
    const kkSpread = partitionSpreadTokens(lengths, kk);
    const greedySpread = partitionSpreadTokens(lengths, greedyPartition(lengths, ranks));
    assert.ok(kkSpread <= greedySpread, `seed ${seed}: KK ${kkSpread} > greedy ${greedySpread}`);
  }
});

test("plan: every sequence once, budgets respected, equal micro-batch counts", () => {
  for (let seed = 1; seed <= 100; seed++) {
    const next = mulberry32(seed);
    const tokensPerMicroBatch = 4096 + Math.floor(next() * 8192);
    const dataParallelRanks = 1 + (seed % 8);
    const count = Math.floor(next() * 200);
    const lengths = Array.from({ length: count }, () => 1 + Math.floor(next() * tokensPerMicroBatch));
    const plan = planMicroBatches(lengths, { tokensPerMicroBatch, dataParallelRanks });
    assert.equal(plan.ranks.length, dataParallelRanks);
    assertExactlyOnce(
      plan.ranks.flatMap((r) => r.microBatches),
      count,
    );
    for (const rank of plan.ranks) {
      assert.equal(rank.microBatches.length, plan.microBatchesPerRank);
      assert.deepEqual(
        rank.microBatches.flat().sort((a, b) => a - b),
        rank.sequenceIndices,
      );
      for (const mb of rank.microBatches) {
        assert.ok(mb.reduce((s, i) => s + lengths[i], 0) <= tokensPerMicroBatch);
      }
    }
  }
});

test("hand-checked plan: [8, 7, 6, 5, 4] over 2 ranks with 10 tokens per micro-batch", () => {
  const lengths = [8, 7, 6, 5, 4];
  const plan = planMicroBatches(lengths, { tokensPerMicroBatch: 10, dataParallelRanks: 2 });
  // KK: {7, 5, 4} = 16 | {8, 6} = 14; FFD: [7] [5, 4] and [8] [6].
  assert.deepEqual(
    plan.ranks.map((r) => r.microBatches),
    [
      [[1], [3, 4]],
      [[0], [2]],
    ],
  );
  assert.equal(plan.microBatchesPerRank, 2);
});

test("a rank with fewer micro-batches splits its heaviest one", () => {
  // KK: {4, 3, 2} = 9 | {4, 3} = 7. FFD: [4, 3] [2] and [4, 3]; the second rank splits [4, 3].
  const plan = planMicroBatches([4, 4, 3, 3, 2], { tokensPerMicroBatch: 8, dataParallelRanks: 2 });
  assert.deepEqual(
    plan.ranks.map((r) => r.microBatches),
    [
      [[1, 3], [4]],
      [[0], [2]],
    ],
  );
});

test("a rank of single-sequence micro-batches pads with empty ones", () => {
  // 5 sequences of the full budget over 4 ranks: one rank has 2, the others 1 plus 1 empty.
  const plan = planMicroBatches([5, 5, 5, 5, 5], { tokensPerMicroBatch: 5, dataParallelRanks: 4 });
  assert.equal(plan.microBatchesPerRank, 2);
  const emptyCounts = plan.ranks.map((r) => r.microBatches.filter((mb) => mb.length === 0).length);
  assert.deepEqual(emptyCounts.sort(), [0, 1, 1, 1]);
  // More ranks than sequences: the idle rank still runs one (empty) micro-batch.
  const idle = planMicroBatches([5], { tokensPerMicroBatch: 5, dataParallelRanks: 2 });
  assert.deepEqual(idle.ranks.map((r) => r.microBatches).sort(), [[[]], [[0]]]);
});

test("minMicroBatches (a pipeline's stages) splits micro-batches until each rank has that many, as far as its sequences go", () => {
  // One bin of all 6 sequences fits the budget; 4 stages want 4 micro-batches.
  const plan = planMicroBatches([3, 3, 2, 2, 1, 1], {
    tokensPerMicroBatch: 100,
    dataParallelRanks: 1,
    minMicroBatches: 4,
  });
  assert.equal(plan.microBatchesPerRank, 4);
  const mbs = plan.ranks[0]?.microBatches ?? [];
  assert.deepEqual(mbs.flat().sort(), [0, 1, 2, 3, 4, 5]);
  assert.ok(
    mbs.every((mb) => mb.length > 0),
    "no empty micro-batch is made to reach the count",
  );
  // Fewer sequences than stages: as many micro-batches as sequences, no padding.
  const few = planMicroBatches([3, 2], {
    tokensPerMicroBatch: 100,
    dataParallelRanks: 1,
    minMicroBatches: 4,
  });
  assert.deepEqual(
    few.ranks[0]?.microBatches.map((mb) => mb.length),
    [1, 1],
  );
  assert.throws(
    () => planMicroBatches([3], { tokensPerMicroBatch: 10, dataParallelRanks: 1, minMicroBatches: 0 }),
    /minMicroBatches/,
  );
});

test("a sequence over the budget is an error naming its index, length and the budget", () => {
  assert.throws(
    () => planMicroBatches([10, 300, 20], { tokensPerMicroBatch: 256, dataParallelRanks: 2 }),
    /sequence 1 has 300 tokens, more than tokensPerMicroBatch = 256/,
  );
});

test("attention-aware balance (verl's calculate_workload): 24576·L + L², and the plan balances it instead of tokens", async () => {
  const { attentionWorkload } = await import("../../src/rl/balance.js");
  assert.equal(attentionWorkload(1000), 24576 * 1000 + 1000 * 1000);
  // One 40k-token sequence, four of 10k, five of 2k: attention makes the long one heavier than its tokens.
  const lengths = [40_000, ...new Array(4).fill(10_000), ...new Array(5).fill(2_000)];
  const byTokens = planMicroBatches(lengths, { tokensPerMicroBatch: 40_000, dataParallelRanks: 2 });
  const byWork = planMicroBatches(lengths, {
    tokensPerMicroBatch: 40_000,
    dataParallelRanks: 2,
    balance: "attention",
  });
  const load = (plan: typeof byTokens, f: (l: number) => number) =>
    plan.ranks.map((r) => r.sequenceIndices.reduce((n, i) => n + f(lengths[i] as number), 0));
  const spread = (xs: number[]) => Math.max(...xs) - Math.min(...xs);
  assert.ok(spread(load(byTokens, (l) => l)) <= 2_000, "tokens: an even split of the tokens");
  assert.ok(
    spread(load(byWork, attentionWorkload)) < spread(load(byTokens, attentionWorkload)),
    "attention balance lowers the spread of the attention workload",
  );
  assert.throws(
    () =>
      planMicroBatches(lengths, {
        tokensPerMicroBatch: 40_000,
        dataParallelRanks: 2,
        balance: "flops" as "tokens",
      }),
    /balance: "flops"/,
  );
});
