// Multi-rank training steps on CPU worker processes (gloo, one thread each): TP2, TP2+SP and DP2
// (ZeRO-1) against one rank on the same model in the same run, with the bytes each group's
// collectives moved per step; a Qwen3-MoE shape at EP2 and TP2 × EP2 with its all-to-all bytes and
// the dispatch's share of the step. No target on CPU (the GPU issue has them): the ratio is one rank's
// step time over the layout's, and the traffic is what the layout costs.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Layout, MeshTraffic } from "../src/index.js";
import { freePort, runRanks } from "../tests/helpers/ranks.js";
import { writeTinyDense, writeTinyMoe } from "../tests/helpers/tiny-models.js";
import type { BenchResult } from "./common.js";

interface RankTiming {
  ok: boolean;
  error?: string;
  stepSeconds: number;
  traffic: MeshTraffic;
}

async function timeLayout(
  modelDir: string,
  vocab: number,
  layout: Layout,
  world: number,
): Promise<RankTiming[]> {
  const port = await freePort();
  const configs = Array.from({ length: world }, (_, rank) => ({
    port,
    rank,
    worldSize: world,
    layout,
    modelDir,
    vocab,
    sequences: 8,
    length: 128,
    steps: 3,
  }));
  const results = (await runRanks(
    configs,
    600_000,
    {},
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
  detail: (ranks: RankTiming[]) => string,
): Promise<BenchResult[]> {
  const [one] = await timeLayout(modelDir, vocab, {}, 1);
  const base = one?.stepSeconds ?? Number.NaN;
  const out: BenchResult[] = [];
  for (const [name, layout, world] of layouts) {
    const ranks = await timeLayout(modelDir, vocab, layout, world);
    const slowest = Math.max(...ranks.map((r) => r.stepSeconds));
    out.push({
      name: `parallel/${name} train step (cpu, gloo, ${what})`,
      value: slowest,
      unit: "s",
      baseline: base,
      baselineName: "one rank",
      ratio: base / slowest,
      detail: detail(ranks),
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
