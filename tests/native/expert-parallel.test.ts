// Expert parallelism against the single-device model, on CPU worker processes over gloo, in fp32:
// a tiny Qwen3-MoE (4 experts, top-2) whose experts are split over the expert group while attention,
// router and embeddings run data-parallel (the DeepSeek-V3 recipe's shape: TP 1, experts over every
// rank of a stage), and with expert-data replicas (EP2 × EDP2). Tokens reach their experts by
// all-to-all dispatch and come back by its inverse. Logprobs and entropy within 1e-5, gathered
// gradients within 1e-5 relative, parameters after 3 ZeRO-1 AdamW updates within 1e-5; greedy
// generation in lockstep (ranks with different prompt counts and lengths, one with none) equal to
// one device's; the folder saved at EP2 reloads on one device with identical tensors.
import assert from "node:assert/strict";
import { join } from "node:path";
import { test } from "node:test";
import { type Layout, Model } from "../../src/index.js";
import { writeTinyModel } from "../../src/rl/tasks/next-digit.js";
import { assertLockstepGeneration, compareScenario, runLayout } from "../helpers/parallel-layout.js";
import { runScenario, type ScenarioOptions, type ScenarioResult } from "../helpers/parallel-scenario.js";
import { maxAbsDiff } from "../helpers/parity.js";
import { tempDir } from "../helpers/python.js";
import type { RankResult } from "../helpers/ranks.js";

const VOCAB = 15;
// Four micro-batches: every data rank runs as many forwards as the others (the dispatch is collective).
const scenario: ScenarioOptions = { microBatches: 4, generate: false };

let rankLines: RankResult[] = [];
const prompts = [
  [3, 5, 7, 2],
  [4, 4, 9],
  [6, 2, 8, 8, 3],
];
let expertTraffic: { calls: number; bytes: number }[] = [];

async function runEp(dir: string, layout: Layout, world: number, saveDir?: string): Promise<ScenarioResult> {
  const { result, ranks } = await runLayout(dir, VOCAB, layout, world, `ep-${world}`, {
    scenario,
    unevenGenerate: prompts,
    ...(saveDir ? { saveDir } : {}),
  });
  rankLines = ranks;
  expertTraffic = ranks.map(
    (r) =>
      (r.traffic as Record<string, Record<string, { calls: number; bytes: number }>>).expert?.allToAll ?? {
        calls: 0,
        bytes: 0,
      },
  );
  return result;
}

/** The scenario on one device; the trained model stays loaded for the generation check (dispose it). */
async function reference(dir: string): Promise<{ ref: ScenarioResult; single: Model }> {
  const single = await Model.load(join(dir, "model"));
  return { ref: await runScenario(single, VOCAB, 0, 1, scenario), single };
}

test("Qwen3-MoE at EP2 (experts over the 2 data ranks) equals one device: logprobs, entropy, gradients, 3 ZeRO-1 updates, lockstep greedy generation; saved, it reloads on one device", {
  timeout: 240_000,
}, async () => {
  const dir = tempDir("expert-parallel");
  try {
    await writeTinyModel(join(dir.path, "model"), { seed: 4, moe: { experts: 4, topK: 2 }, hiddenSize: 32 });
    const { ref, single: trained } = await reference(dir.path);
    const saved = join(dir.path, "saved");
    const got = await runEp(dir.path, { expert: 2, data: 2 }, 2, saved);
    compareScenario(got, ref, "EP2");
    // The tokens really went to the other rank's experts: all-to-alls on the expert group.
    for (const t of expertTraffic)
      assert.ok(t.calls > 0 && t.bytes > 0, `expert all-to-all traffic ${JSON.stringify(t)}`);
    console.log(`EP2: ${expertTraffic[0]?.calls} all-to-alls, ${expertTraffic[0]?.bytes} bytes on rank 0`);
    try {
      await assertLockstepGeneration(trained, prompts, rankLines);
    } finally {
      trained.dispose();
    }
    // The saved folder holds every expert under the checkpoint's per-expert names.
    const single = await Model.load(saved);
    try {
      for (const t of single.parameters()) {
        assert.equal(
          maxAbsDiff(t.data as Float32Array, got.parameters[t.name] ?? []),
          0,
          `${t.name} after reload`,
        );
      }
    } finally {
      single.dispose();
    }
  } finally {
    dir.cleanup();
  }
});

test("Qwen3-MoE at EP2 × EDP2 (4 ranks: expert gradients summed over the expert-data replicas) equals one device, generation included", {
  timeout: 240_000,
}, async () => {
  const dir = tempDir("expert-parallel-4");
  try {
    await writeTinyModel(join(dir.path, "model"), { seed: 6, moe: { experts: 4, topK: 2 }, hiddenSize: 32 });
    const { ref, single } = await reference(dir.path);
    try {
      compareScenario(await runEp(dir.path, { expert: 2, data: 4 }, 4), ref, "EP2 x EDP2");
      await assertLockstepGeneration(single, prompts, rankLines);
    } finally {
      single.dispose();
    }
  } finally {
    dir.cleanup();
  }
});
