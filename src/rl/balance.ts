// Dynamic batch sizes: split a mini-batch across data-parallel ranks with equal token loads, then
// pack each rank's sequences into micro-batches under a token budget. Pure bookkeeping over
// sequence lengths; returns index lists. The partition mirrors `karmarkar_karp` in
// verl/utils/seqlen_balancing.py; the packing differs from verl's rearrange_micro_batches (see
// `planMicroBatches`).

/**
 * Multi-way Karmarkar–Karp (largest differencing): every item starts as a partial k-way partition;
 * the two partitions with the largest spread (heaviest − lightest part) are merged, heaviest part
 * of one with the lightest of the other, until one remains. With `equalSize`, the items are first
 * taken k at a time in sorted order, one per part, so every part ends with `n / k` items (verl's
 * `equal_size`, used by its `_balance_batch`). Returns k lists of item indices, each ascending.
 */
export function karmarkarKarpPartition(
  lengths: ArrayLike<number>,
  partitionCount: number,
  options: { equalSize?: boolean } = {},
): number[][] {
  checkPartitionCount(partitionCount);
  const n = lengths.length;
  const order = Array.from({ length: n }, (_, i) => i).sort((a, b) => lengths[a] - lengths[b] || a - b);
  const heap = new MaxHeap<PartialPartition>((a, b) => compareSpread(a, b));
  if (options.equalSize) {
    if (n % partitionCount !== 0) {
      throw new RangeError(
        `equalSize needs the sequence count (${n}) to be a multiple of the partition count (${partitionCount})`,
      );
    }
    for (let offset = 0; offset < n; offset += partitionCount) {
      const parts = order.slice(offset, offset + partitionCount).map((i) => part([i], lengths[i]));
      heap.push(partialPartition(parts));
    }
  } else {
    for (const i of order) {
      const parts = [part([i], lengths[i])];
      for (let p = 1; p < partitionCount; p++) parts.push(part([], 0));
      heap.push(partialPartition(parts));
    }
  }
  if (heap.size === 0) return Array.from({ length: partitionCount }, () => []);
  while (heap.size > 1) {
    const a = heap.pop();
    const b = heap.pop();
    // Both hold their parts heaviest first: pair a's heaviest with b's lightest.
    const merged = a.parts.map((p, i) => {
      const q = b.parts[partitionCount - 1 - i];
      return part([...p.indices, ...q.indices], p.tokens + q.tokens);
    });
    heap.push(partialPartition(merged));
  }
  return heap.pop().parts.map((p) => p.indices.sort((x, y) => x - y));
}

/**
 * Greedy: each item in the given order to the currently lightest part. Mirrors verl's
 * `greedy_partition` (which, despite a variable named `sorted_seqlen`, does not sort); the
 * baseline Karmarkar–Karp is tested against. Sorted longest first it is the LPT rule.
 */
export function greedyPartition(lengths: ArrayLike<number>, partitionCount: number): number[][] {
  checkPartitionCount(partitionCount);
  const order = Array.from({ length: lengths.length }, (_, i) => i);
  const parts = Array.from({ length: partitionCount }, () => part([], 0));
  for (const i of order) {
    let lightest = parts[0];
    for (const p of parts) if (p.tokens < lightest.tokens) lightest = p;
    lightest.indices.push(i);
    lightest.tokens += lengths[i];
  }
  return parts.map((p) => p.indices.sort((x, y) => x - y));
}

/** Heaviest part's tokens minus the lightest's. */
export function partitionSpreadTokens(lengths: ArrayLike<number>, partitions: number[][]): number {
  const loads = partitions.map((p) => p.reduce((sum, i) => sum + lengths[i], 0));
  return Math.max(...loads) - Math.min(...loads);
}

/**
 * verl's calculate_workload: a transformer's cost of a sequence, linear in its length for the
 * matmuls and quadratic for attention, `24576·L + L²` (relative units, not FLOPs).
 */
export function attentionWorkload(length: number): number {
  return 24576 * length + length * length;
}

export interface MicroBatchPlanOptions {
  /** Most tokens (prompt + response, as the lengths count them) in one micro-batch on one rank. */
  tokensPerMicroBatch: number;
  dataParallelRanks: number;
  /** Give every rank the same number of sequences (verl's `_balance_batch`). Default false. */
  equalSequencesPerRank?: boolean;
  /**
   * What the ranks' shares balance: "tokens" (default) or "attention", verl's attention-aware
   * workload (attentionWorkload), which weighs long sequences more than their token count.
   */
  balance?: "tokens" | "attention";
  /**
   * At least this many micro-batches per rank where the sequences allow (pipeline parallelism:
   * the stage count, so that 1F1B has a micro-batch for every stage), made by splitting the
   * heaviest as below. Default 1.
   */
  minMicroBatches?: number;
}

export interface RankPlan {
  /** Sequences (indices into the mini-batch) this rank trains on, ascending. */
  sequenceIndices: number[];
  /** This rank's micro-batches, each a list of sequence indices; some may be empty (see below). */
  microBatches: number[][];
}

export interface MicroBatchPlan {
  ranks: RankPlan[];
  /** Every rank runs this many micro-batches, so their collectives line up. */
  microBatchesPerRank: number;
}

/**
 * Splits a mini-batch across ranks by Karmarkar–Karp on token counts, then packs each rank's
 * sequences first-fit decreasing into the fewest micro-batches of at most `tokensPerMicroBatch`.
 * Ranks must run the same number of micro-batches (FSDP gathers and gradient syncs are collective),
 * so a rank with fewer is brought up to the most: first by splitting its heaviest micro-batch that
 * holds two or more sequences into two lighter ones (more, smaller steps cost little and spread
 * the work), and only when every micro-batch holds one sequence by adding empty ones, which the
 * worker runs as a no-op forward/backward that joins the collectives.
 *
 * Differs from verl's rearrange_micro_batches, which makes ceil(total / budget) micro-batches by
 * Karmarkar–Karp and can then exceed the budget; here the budget is a hard limit.
 *
 * sequenceLengths: [sequences], tokens per sequence.
 */
export function planMicroBatches(
  sequenceLengths: ArrayLike<number>,
  options: MicroBatchPlanOptions,
): MicroBatchPlan {
  const { tokensPerMicroBatch, dataParallelRanks } = options;
  if (!Number.isInteger(tokensPerMicroBatch) || tokensPerMicroBatch < 1) {
    throw new RangeError(`tokensPerMicroBatch must be a positive integer, got ${tokensPerMicroBatch}`);
  }
  checkPartitionCount(dataParallelRanks, "dataParallelRanks");
  for (let i = 0; i < sequenceLengths.length; i++) {
    const length = sequenceLengths[i];
    if (!Number.isInteger(length) || length < 0) {
      throw new RangeError(`sequence ${i} has length ${length}; lengths must be integers ≥ 0`);
    }
    if (length > tokensPerMicroBatch) {
      throw new RangeError(
        `sequence ${i} has ${length} tokens, more than tokensPerMicroBatch = ${tokensPerMicroBatch}; ` +
          "raise tokensPerMicroBatch to at least the longest prompt + response, or lower the length limits",
      );
    }
  }
  const balance = options.balance ?? "tokens";
  if (balance !== "tokens" && balance !== "attention") {
    throw new RangeError(`balance: ${JSON.stringify(balance)}; allowed: "tokens", "attention"`);
  }
  const loads =
    balance === "attention" ? Array.from(sequenceLengths, (l) => attentionWorkload(l)) : sequenceLengths;
  const rankSequences = karmarkarKarpPartition(loads, dataParallelRanks, {
    equalSize: options.equalSequencesPerRank ?? false,
  });
  const rankBins = rankSequences.map((indices) =>
    firstFitDecreasing(sequenceLengths, indices, tokensPerMicroBatch),
  );
  const least = options.minMicroBatches ?? 1;
  checkPartitionCount(least, "minMicroBatches");
  // Split towards the pipeline's count as far as sequences allow; never pad up to it.
  for (const bins of rankBins) {
    while (bins.length < least && splitHeaviest(sequenceLengths, bins)) {}
  }
  const microBatchesPerRank = Math.max(1, ...rankBins.map((bins) => bins.length));
  for (const bins of rankBins) {
    while (bins.length < microBatchesPerRank) {
      if (!splitHeaviest(sequenceLengths, bins)) bins.push(part([], 0));
    }
  }
  return {
    ranks: rankSequences.map((sequenceIndices, r) => ({
      sequenceIndices,
      microBatches: rankBins[r].map((bin) => bin.indices),
    })),
    microBatchesPerRank,
  };
}

interface Part {
  indices: number[];
  tokens: number;
}

interface PartialPartition {
  /** Heaviest first. */
  parts: Part[];
  spread: number;
}

function part(indices: number[], tokens: number): Part {
  return { indices, tokens };
}

function partialPartition(parts: Part[]): PartialPartition {
  parts.sort((a, b) => b.tokens - a.tokens);
  return { parts, spread: parts[0].tokens - parts[parts.length - 1].tokens };
}

/** Larger spread first; ties by the heavier heaviest part, as verl's `State.__lt__`. */
function compareSpread(a: PartialPartition, b: PartialPartition): number {
  return a.spread - b.spread || a.parts[0].tokens - b.parts[0].tokens;
}

function checkPartitionCount(count: number, name = "partitionCount"): void {
  if (!Number.isInteger(count) || count < 1) {
    throw new RangeError(`${name} must be a positive integer, got ${count}`);
  }
}

function firstFitDecreasing(lengths: ArrayLike<number>, indices: number[], budget: number): Part[] {
  const bins: Part[] = [];
  const order = [...indices].sort((a, b) => lengths[b] - lengths[a] || a - b);
  for (const i of order) {
    const bin = bins.find((b) => b.tokens + lengths[i] <= budget);
    if (bin) {
      bin.indices.push(i);
      bin.tokens += lengths[i];
    } else {
      bins.push(part([i], lengths[i]));
    }
  }
  return bins;
}

/** Splits the heaviest bin of ≥ 2 sequences into two (LPT: longest first); false if none. */
function splitHeaviest(lengths: ArrayLike<number>, bins: Part[]): boolean {
  let heaviest = -1;
  for (let b = 0; b < bins.length; b++) {
    if (bins[b].indices.length >= 2 && (heaviest < 0 || bins[b].tokens > bins[heaviest].tokens)) {
      heaviest = b;
    }
  }
  if (heaviest < 0) return false;
  const longestFirst = [...bins[heaviest].indices].sort((a, b) => lengths[b] - lengths[a] || a - b);
  const [first, second] = greedyPartition(
    longestFirst.map((i) => lengths[i]),
    2,
  ).map((positions) => positions.map((p) => longestFirst[p]).sort((a, b) => a - b));
  const tokens = (list: number[]) => list.reduce((sum, i) => sum + lengths[i], 0);
  bins.splice(heaviest, 1, part(first, tokens(first)), part(second, tokens(second)));
  return true;
}

/** Binary max-heap by `compare`. */
class MaxHeap<T> {
  #items: T[] = [];
  constructor(private readonly compare: (a: T, b: T) => number) {}

  get size(): number {
    return this.#items.length;
  }

  push(item: T): void {
    const items = this.#items;
    items.push(item);
    let i = items.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (this.compare(items[i], items[parent]) <= 0) break;
      [items[i], items[parent]] = [items[parent], items[i]];
      i = parent;
    }
  }

  pop(): T {
    const items = this.#items;
    if (items.length === 0) throw new Error("pop from an empty heap");
    const top = items[0];
    const last = items.pop() as T;
    if (items.length > 0) {
      items[0] = last;
      let i = 0;
      for (;;) {
        const left = 2 * i + 1;
        const right = left + 1;
        let largest = i;
        if (left < items.length && this.compare(items[left], items[largest]) > 0) largest = left;
        if (right < items.length && this.compare(items[right], items[largest]) > 0) largest = right;
        if (largest === i) break;
        [items[i], items[largest]] = [items[largest], items[i]];
        i = largest;
      }
    }
    return top;
  }
}
