// Pipeline parallelism against the single-device model, on CPU worker processes over gloo, in fp32:
// the decoder layers split over stages (evenly, and unevenly with firstStageLayers /
// lastStageLayers), activations and their gradients sent between stages, training micro-batches
// run 1F1B in one policySteps call, the tied embedding's two copies (first and last stage) summed
// before each update, the gradient norm over every stage. Composed with tensor parallelism (and
// sequence parallelism: the stages exchange token shards) and with expert parallelism (tiny
// Qwen3-MoE). Logprobs and entropy within 1e-5, gathered gradients within 1e-5 relative,
// parameters after 3 ZeRO-1 AdamW updates within 1e-5, greedy generation identical.
import assert from "node:assert/strict";
import { join } from "node:path";
import { test } from "node:test";
import { type Layout, Model } from "../../src/index.js";
import { compareScenario, runLayout } from "../helpers/parallel-layout.js";
import { runScenario, type ScenarioOptions } from "../helpers/parallel-scenario.js";
import { tempDir } from "../helpers/python.js";
import { writeTinyDense, writeTinyMoe } from "../helpers/tiny-models.js";

interface Case {
  label: string;
  write: (dir: string) => Promise<Record<string, unknown>>;
  layout: Layout;
  world: number;
  scenario: ScenarioOptions;
}

const cases: Case[] = [
  {
    label: "tied Qwen3 (4 layers) at PP2",
    write: (d) =>
      writeTinyDense(d, { family: "qwen3", heads: 4, kvHeads: 2, layers: 4, tied: true, seed: 21 }),
    layout: { pipeline: 2 },
    world: 2,
    scenario: { batched: true },
  },
  {
    label: "Qwen2 (5 layers) at PP4 with uneven stages (1, 1, 1, 2)",
    write: (d) => writeTinyDense(d, { family: "qwen2", heads: 4, kvHeads: 2, layers: 5, seed: 22 }),
    layout: { pipeline: 4, firstStageLayers: 1, lastStageLayers: 2 },
    world: 4,
    scenario: { batched: true },
  },
  {
    label: "tied Qwen3 (4 layers) at PP2 x TP2 with sequence parallelism",
    write: (d) =>
      writeTinyDense(d, { family: "qwen3", heads: 4, kvHeads: 2, layers: 4, tied: true, seed: 23 }),
    layout: { pipeline: 2, tensor: 2, sequenceParallel: true },
    world: 4,
    // AdamW epsilon 1e-5: a few elements with near-zero gradients take ±lr first steps from
    // summation-order noise at 1e-8 (see ScenarioOptions.adamEps); the gradients match at 1e-5.
    scenario: { batched: true, adamEps: 1e-5 },
  },
  {
    label: "Qwen3-MoE (4 layers, mlp_only_layers [0]) at PP2 x EP2",
    write: (d) =>
      writeTinyMoe(d, { family: "qwen3_moe", layers: 4, mlpOnlyLayers: [0], experts: 4, topK: 2, seed: 24 }),
    layout: { pipeline: 2, expert: 2, data: 2 },
    world: 4,
    // Every data rank runs as many forwards as the others (the dispatch is collective); see moe-parallel.
    scenario: { batched: true, microBatches: 4, adamEps: 1e-5 },
  },
  {
    label: "DeepSeek-V3 (4 layers, a dense first layer, MLA with q_lora_rank) at PP2",
    write: (d) =>
      writeTinyMoe(d, {
        family: "deepseek_v3",
        layers: 4,
        firstDense: 1,
        experts: 4,
        topK: 2,
        groups: 2,
        topGroups: 1,
        seed: 26,
      }),
    layout: { pipeline: 2 },
    world: 2,
    scenario: { batched: true, adamEps: 1e-5 },
  },
];

for (const { label, write, layout, world, scenario } of cases) {
  test(`${label} equals one device: logprobs, entropy, gradients of every stage, 3 ZeRO-1 updates, greedy tokens`, {
    timeout: 240_000,
  }, async () => {
    const dir = tempDir("pipeline-parallel");
    try {
      const modelDir = join(dir.path, "model");
      const config = await write(modelDir);
      const vocab = config.vocab_size as number;
      const single = await Model.load(modelDir);
      try {
        const ref = await runScenario(single, vocab, 0, 1, { ...scenario, batched: false });
        const { result, ranks } = await runLayout(dir.path, vocab, layout, world, "run", { scenario });
        compareScenario(result, ref, label);
        // Activations went forward and gradients back between every pair of neighbouring stages.
        for (const r of ranks) {
          const sent =
            (r.traffic as Record<string, Record<string, { bytes: number }>>).pipeline?.sendRecv?.bytes ?? 0;
          assert.ok(sent > 0, `rank ${r.rank} exchanged activations with its neighbours: ${sent} bytes`);
        }
      } finally {
        single.dispose();
      }
    } finally {
      dir.cleanup();
    }
  });
}

test("a stage split that does not cover the layers is refused at load, naming the field and the numbers", {
  timeout: 120_000,
}, async () => {
  const dir = tempDir("pipeline-split");
  try {
    const modelDir = join(dir.path, "model");
    const config = await writeTinyDense(modelDir, {
      family: "qwen3",
      heads: 4,
      kvHeads: 2,
      layers: 5,
      seed: 25,
    });
    await assert.rejects(
      runLayout(dir.path, config.vocab_size as number, { pipeline: 2 }, 2, "uneven"),
      /layout\.pipeline: 2 stages do not split the 5 decoder layers evenly; set firstStageLayers and lastStageLayers/,
    );
    await assert.rejects(
      runLayout(
        dir.path,
        config.vocab_size as number,
        { pipeline: 4, firstStageLayers: 2, lastStageLayers: 2 },
        4,
        "gap",
      ),
      /layout\.firstStageLayers: first 2 \+ last 2 layers leave 1 for 2 middle stages/,
    );
  } finally {
    dir.cleanup();
  }
});
