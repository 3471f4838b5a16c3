// Multi-rank training steps on CPU worker processes (gloo, one thread each): TP2, TP2+SP and DP2
// (ZeRO-1) against one rank on the same model in the same run, with the bytes each group's
// collectives moved per step; a Qwen3-MoE shape at EP2 and TP2 × EP2 with its all-to-all bytes and
// the dispatch's share of the step; (`pipeline`) PP2 and PP4 with the measured bubble, the peak
// step memory per stage and the bytes sent between stages, CP2 and CP4 with the peak step memory
// per rank and the K/V all-gather bytes. No target on CPU (the GPU issue has them): the ratio is one rank's
// step time over the layout's, and the traffic is what the layout costs.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Layout, MeshTraffic, RecomputeOptions, ScheduleStats } from "../src/index.js";
import { freePort, runRanks } from "../tests/helpers/ranks.js";
import { writeTinyDense, writeTinyMoe } from "../tests/helpers/tiny-models.js";
import type { BenchResult } from "./common.js";

interface RankTiming {
  ok: boolean;
  error?: string;
  stepSeconds: number;
  traffic: MeshTraffic;
  schedule: ScheduleStats;
  /** How far the resident memory rose above its level before the step (bench/parallel-rank.ts). */
  peakStepBytes: number;
}

interface Workload {
  sequences: number;
  length: number;
  perMicroBatch: number;
  recompute?: RecomputeOptions;
}

const defaultWorkload: Workload = { sequences: 8, length: 128, perMicroBatch: 1 };

async function timeLayout(
  modelDir: string,
  vocab: number,
  layout: Layout,
  world: number,
  workload: Workload = defaultWorkload,
): Promise<RankTiming[]> {
  const port = await freePort();
  const configs = Array.from({ length: world }, (_, rank) => ({
    port,
    rank,
    worldSize: world,
    layout,
    modelDir,
    vocab,
    ...workload,
    steps: 3,
  }));
  // A fixed mmap threshold: tensors above 64 KiB come from mmap and go back on free, so the
  // resident set follows the live tensors (glibc's adaptive threshold would keep freed ones).
  const results = (await runRanks(
    configs,
    600_000,
    { MALLOC_MMAP_THRESHOLD_: "65536" },
    "../../bench/parallel-rank.js",
  )) as unknown as RankTiming[];
  for (const r of results) if (!r.ok) throw new Error(`rank failed: ${r.error}`);
  return results;
}

function describeTraffic(traffic: MeshTraffic): string {
  const parts: string[] = [];
  for (const [group, kinds] of Object.entries(traffic)) {
    for (const [kind, t] of Object.entries(kinds)) {
      if (t.calls > 0)
        parts.push(`${group} ${kind} ${(t.bytes / 2 ** 20).toFixed(2)} MiB in ${t.calls} calls`);
    }
  }
  return parts.length ? parts.join(", ") : "no collectives";
}

/**
 * Each layout's step time against one rank's on the same model, one result per layout; `detail`
 * says what the ranks' traffic shows.
 */
async function compareLayouts(
  modelDir: string,
  vocab: number,
  what: string,
  layouts: [string, Layout, number][],
  detail: (ranks: RankTiming[], one: RankTiming | undefined) => string,
  workload: Workload = defaultWorkload,
): Promise<BenchResult[]> {
  const [one] = await timeLayout(modelDir, vocab, {}, 1, workload);
  const base = one?.stepSeconds ?? Number.NaN;
  const out: BenchResult[] = [];
  for (const [name, layout, world] of layouts) {
    const ranks = await timeLayout(modelDir, vocab, layout, world, workload);
    const slowest = Math.max(...ranks.map((r) => r.stepSeconds));
    out.push({
      name: `parallel/${name} train step (cpu, gloo, ${what})`,
      value: slowest,
      unit: "s",
      baseline: base,
      baselineName: "one rank",
      ratio: base / slowest,
      detail: detail(ranks, one),
    });
  }
  return out;
}

export async function benchParallel(): Promise<BenchResult[]> {
  const dir = mkdtempSync(join(tmpdir(), "tiller-bench-parallel-"));
  try {
    const modelDir = join(dir, "model");
    const config = await writeTinyDense(modelDir, {
      family: "qwen3",
      heads: 8,
      kvHeads: 4,
      hidden: 128,
      layers: 4,
      vocab: 2048,
    });
    const dense = await compareLayouts(
      modelDir,
      config.vocab_size as number,
      "8 x 128 tokens",
      [
        ["TP2", { tensor: 2 }, 2],
        ["TP2+SP", { tensor: 2, sequenceParallel: true }, 2],
        ["DP2 (ZeRO-1)", { data: 2 }, 2],
      ],
      (ranks) => `per step on rank 0: ${describeTraffic(ranks[0]?.traffic ?? {})}`,
    );
    return [...dense, ...(await benchExpertLayouts(dir))];
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * A Qwen3-MoE shape (4 layers, hidden 128, 8 experts, top-2) at EP2 and at TP2 × EP2 against one
 * rank: the step time, the expert all-to-all bytes per step and the share of the step spent in
 * them (gloo wall time, waiting for the slower peer included).
 */
async function benchExpertLayouts(dir: string): Promise<BenchResult[]> {
  const modelDir = join(dir, "moe");
  const config = await writeTinyMoe(modelDir, {
    family: "qwen3_moe",
    hidden: 128,
    layers: 4,
    experts: 8,
    topK: 2,
    vocab: 2048,
    heads: 8,
    kvHeads: 4,
  });
  return compareLayouts(
    modelDir,
    config.vocab_size as number,
    "8 x 128 tokens, 8 experts top-2",
    [
      ["MoE EP2 (attention DP2)", { expert: 2, data: 2 }, 2],
      ["MoE TP2 x EP2", { tensor: 2, expert: 2, data: 2 }, 4],
    ],
    (ranks) => {
      const dispatch = ranks.map((r) => r.traffic.expert?.allToAll ?? { calls: 0, bytes: 0, seconds: 0 });
      const share = Math.max(...dispatch.map((d, i) => d.seconds / (ranks[i]?.stepSeconds ?? Number.NaN)));
      return (
        `expert all-to-all per step on rank 0: ${((dispatch[0]?.bytes ?? 0) / 2 ** 20).toFixed(2)} MiB in ` +
        `${dispatch[0]?.calls ?? 0} calls; dispatch share of the step (max over ranks) ${(100 * share).toFixed(1)}%; ` +
        describeTraffic(ranks[0]?.traffic ?? {})
      );
    },
  );
}

/**
 * A Qwen3 shape of 8 layers split over 2 and 4 pipeline stages, 16 sequences of 128 tokens in 8
 * micro-batches run 1F1B, against one rank: the step time; per stage the measured bubble (seconds
 * waiting in point-to-point transfers over the rest of the schedule) beside the formula (p − 1)/m;
 * the peak memory above the resident level of each stage against one rank's; the bytes each stage
 * sends per step.
 */
export async function benchPipeline(): Promise<BenchResult[]> {
  const dir = mkdtempSync(join(tmpdir(), "tiller-bench-pipeline-"));
  try {
    return [...(await pipelineLayouts(dir)), ...(await contextLayouts(dir))];
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

async function pipelineLayouts(dir: string): Promise<BenchResult[]> {
  const modelDir = join(dir, "pipeline");
  const config = await writeTinyDense(modelDir, {
    family: "qwen3",
    heads: 8,
    kvHeads: 4,
    hidden: 128,
    layers: 8,
    vocab: 2048,
  });
  const workload: Workload = { sequences: 16, length: 128, perMicroBatch: 2 };
  const mib = (b: number) => (b / 2 ** 20).toFixed(1);
  return compareLayouts(
    modelDir,
    config.vocab_size as number,
    "16 x 128 tokens in 8 micro-batches",
    [
      ["PP2 (1F1B)", { pipeline: 2 }, 2],
      // The last stage also runs the lm-head and the loss: one layer fewer there evens the stages.
      ["PP2 (1F1B, stages 5 + 3)", { pipeline: 2, firstStageLayers: 5, lastStageLayers: 3 }, 2],
      ["PP4 (1F1B)", { pipeline: 4 }, 4],
    ],
    (ranks, one) => {
      const p = ranks.length;
      const m = ranks[0]?.schedule.microBatches ?? 0;
      const bubbles = ranks.map(
        (r) => r.schedule.waitSeconds / (r.schedule.seconds - r.schedule.waitSeconds),
      );
      return (
        `bubble per stage ${bubbles.map((b) => b.toFixed(2)).join(" / ")} vs (p-1)/m = ${((p - 1) / m).toFixed(2)}; ` +
        `peak step memory per stage ${ranks.map((r) => mib(r.peakStepBytes)).join(" / ")} MiB vs one rank ${mib(one?.peakStepBytes ?? Number.NaN)} MiB; ` +
        `sent per step per stage ${ranks.map((r) => mib(r.schedule.bytesSent)).join(" / ")} MiB`
      );
    },
    workload,
  );
}

/**
 * The same Qwen3 shape on 4 sequences of 1,024 tokens at CP2 and CP4 against one rank: the step
 * time, the peak step memory per rank against one rank's, and the K/V all-gather bytes per step.
 */
async function contextLayouts(dir: string): Promise<BenchResult[]> {
  const modelDir = join(dir, "pipeline");
  const mib = (b: number) => (b / 2 ** 20).toFixed(1);
  return compareLayouts(
    modelDir,
    2048,
    "4 x 1024 tokens",
    [
      ["CP2", { context: 2 }, 2],
      ["CP4", { context: 4 }, 4],
    ],
    (ranks, one) => {
      const gather = ranks[0]?.traffic.context?.allGather ?? { calls: 0, bytes: 0, seconds: 0 };
      return (
        `peak step memory per rank ${ranks.map((r) => mib(r.peakStepBytes)).join(" / ")} MiB vs one rank ${mib(one?.peakStepBytes ?? Number.NaN)} MiB; ` +
        `context all-gather per step on rank 0 ${mib(gather.bytes)} MiB in ${gather.calls} calls (${((100 * gather.seconds) / (ranks[0]?.stepSeconds ?? Number.NaN)).toFixed(1)}% of the step)`
      );
    },
    { sequences: 4, length: 1024, perMicroBatch: 1 },
  );
}

/**
 * Activation recomputation on one rank: the Qwen3 shape of the pipeline bench (8 layers, hidden 128)
 * on 4 sequences of 1,024 tokens, full and selective against none in the same run: the step time
 * ratio (recomputation costs time) and the peak step memory (what it saves).
 */
export async function benchRecompute(): Promise<BenchResult[]> {
  const dir = mkdtempSync(join(tmpdir(), "tiller-bench-recompute-"));
  try {
    const modelDir = join(dir, "model");
    const config = await writeTinyDense(modelDir, {
      family: "qwen3",
      heads: 8,
      kvHeads: 4,
      hidden: 128,
      layers: 8,
      vocab: 2048,
    });
    const vocab = config.vocab_size as number;
    const workload: Workload = { sequences: 4, length: 1024, perMicroBatch: 1 };
    const [plain] = await timeLayout(modelDir, vocab, {}, 1, workload);
    const mib = (b: number) => (b / 2 ** 20).toFixed(1);
    const out: BenchResult[] = [];
    for (const granularity of ["full", "selective"] as const) {
      const [r] = await timeLayout(modelDir, vocab, {}, 1, { ...workload, recompute: { granularity } });
      out.push({
        name: `recompute/${granularity} train step (cpu, one rank, 4 x 1024 tokens, 8 layers)`,
        value: r?.stepSeconds ?? Number.NaN,
        unit: "s",
        baseline: plain?.stepSeconds ?? Number.NaN,
        baselineName: "no recomputation",
        ratio: (plain?.stepSeconds ?? Number.NaN) / (r?.stepSeconds ?? Number.NaN),
        detail: `peak step memory ${mib(r?.peakStepBytes ?? Number.NaN)} MiB vs ${mib(plain?.peakStepBytes ?? Number.NaN)} MiB without (${(100 * (1 - (r?.peakStepBytes ?? 0) / (plain?.peakStepBytes ?? 1))).toFixed(0)}% less)`,
      });
    }
    return out;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
