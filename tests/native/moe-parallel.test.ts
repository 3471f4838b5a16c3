// The mixture-of-experts families across ranks against the single-device model, on CPU worker
// processes over gloo, in fp32: expert parallelism folded over attention's data parallelism (the
// DeepSeek-V3 recipe's shape), attention tensor parallelism with the experts whole on their expert
// rank (expert tensor parallelism 1; the Qwen3-235B shape TP2 × EP2 scaled down), sequence
// parallelism, and multi-head latent attention under TP (q/kv up-projections split by heads, o_proj
// row-parallel, latents replicated). Logprobs and entropy within 1e-5, gathered gradients within
// 1e-5 relative, parameters after 3 ZeRO-1 AdamW updates within 1e-5, greedy generation identical
// (every replica's in lockstep, one with no prompts).
import assert from "node:assert/strict";
import { join } from "node:path";
import { test } from "node:test";
import { type Layout, Model } from "../../src/index.js";
import { assertLockstepGeneration, compareScenario, runLayout } from "../helpers/parallel-layout.js";
import { runScenario, type ScenarioOptions, type ScenarioResult } from "../helpers/parallel-scenario.js";
import { maxAbsDiff, relativeDiff } from "../helpers/parity.js";
import { tempDir } from "../helpers/python.js";
import { type TinyMoeShape, writeTinyMoe } from "../helpers/tiny-models.js";

// Four micro-batches: every data rank runs as many forwards as the others (the dispatch is collective).
// AdamW epsilon 1e-5: these models have enough parameters with near-zero gradients that, at 1e-8,
// summation-order noise flips some of their first updates (see ScenarioOptions.adamEps).
const scenario: ScenarioOptions = { microBatches: 4, adamEps: 1e-5 };
const prompts = [
  [3, 5, 7, 2],
  [4, 4, 9],
  [6, 2, 8, 8, 3],
];

interface Case {
  label: string;
  shape: TinyMoeShape;
  layouts: [string, Layout, number][];
}

const cases: Case[] = [
  {
    label: "Qwen3-MoE (mlp_only_layers [1], 3 layers)",
    shape: { family: "qwen3_moe", layers: 3, mlpOnlyLayers: [1], experts: 4, topK: 2, seed: 7 },
    layouts: [
      ["TP2 x EP2", { tensor: 2, expert: 2, data: 2 }, 4],
      ["TP2+SP (experts whole on each rank)", { tensor: 2, sequenceParallel: true }, 2],
    ],
  },
  {
    label: "Qwen3-MoE (decoder_sparse_step 2)",
    shape: { family: "qwen3_moe", layers: 2, sparseStep: 2, experts: 4, topK: 2, seed: 8 },
    layouts: [["EP4", { expert: 4, data: 4 }, 4]],
  },
  {
    label: "Mixtral",
    shape: { family: "mixtral", experts: 4, topK: 2, seed: 9 },
    layouts: [
      ["EP2", { expert: 2, data: 2 }, 2],
      ["EP4", { expert: 4, data: 4 }, 4],
      ["TP2 x EP2", { tensor: 2, expert: 2, data: 2 }, 4],
    ],
  },
  {
    label: "DeepSeek-V3 (q_lora_rank, n_group 4 / topk_group 2, a dense first layer)",
    shape: {
      family: "deepseek_v3",
      layers: 3,
      firstDense: 1,
      experts: 8,
      topK: 3,
      groups: 4,
      topGroups: 2,
      seed: 10,
    },
    layouts: [
      ["EP2", { expert: 2, data: 2 }, 2],
      ["TP2 (MLA heads split)", { tensor: 2 }, 2],
      ["TP2 x EP2", { tensor: 2, expert: 2, data: 2 }, 4],
    ],
  },
  {
    label: "DeepSeek-V3 as Moonlight (no q_lora_rank, one group, two shared experts, MoE from layer 0)",
    shape: {
      family: "deepseek_v3",
      qLoraRank: 0,
      groups: 1,
      topGroups: 1,
      firstDense: 0,
      sharedExperts: 2,
      experts: 4,
      topK: 2,
      seed: 11,
    },
    layouts: [
      ["attention DP4 x EP2 (EDP2)", { expert: 2, data: 4 }, 4],
      ["TP2+SP", { tensor: 2, sequenceParallel: true }, 2],
    ],
  },
];

for (const { label, shape, layouts } of cases) {
  for (const [name, layout, world] of layouts) {
    test(`${label} at ${name} equals one device: logprobs, entropy, gradients, 3 ZeRO-1 updates, greedy tokens, lockstep generation`, {
      timeout: 240_000,
    }, async () => {
      const dir = tempDir("moe-parallel");
      try {
        const modelDir = join(dir.path, "model");
        const config = await writeTinyMoe(modelDir, shape);
        const vocab = config.vocab_size as number;
        const single = await Model.load(modelDir);
        try {
          const ref = await runScenario(single, vocab, 0, 1, scenario);
          const { result, ranks } = await runLayout(dir.path, vocab, layout, world, "run", {
            scenario,
            unevenGenerate: prompts,
          });
          compareScenario(result, ref, `${label} at ${name}`);
          await assertLockstepGeneration(single, prompts, ranks);
          if ((layout.expert ?? 1) > 1) {
            const bytes = ranks.map(
              (r) =>
                (r.traffic as Record<string, Record<string, { bytes: number }>>).expert?.allToAll?.bytes ?? 0,
            );
            assert.ok(
              bytes.every((b) => b > 0),
              `every rank sent tokens to the other experts: ${bytes}`,
            );
          }
        } finally {
          single.dispose();
        }
      } finally {
        dir.cleanup();
      }
    });
  }
}

test("routing replay at EP2 and at TP2 × EP2 trains on exactly the replayed experts: one device's logprobs, gradients and updates under the same forced routing, and not the router's", {
  timeout: 240_000,
}, async () => {
  const dir = tempDir("moe-replay");
  try {
    const modelDir = join(dir.path, "model");
    const config = await writeTinyMoe(modelDir, {
      family: "qwen3_moe",
      layers: 2,
      experts: 4,
      topK: 2,
      seed: 12,
    });
    const vocab = config.vocab_size as number;
    const forced: ScenarioOptions = { ...scenario, forcedRouting: true, generate: false };
    const single = await Model.load(modelDir);
    let ref: ScenarioResult;
    let routed: ScenarioResult;
    try {
      ref = await runScenario(single, vocab, 0, 1, forced);
    } finally {
      single.dispose();
    }
    const fresh = await Model.load(modelDir);
    try {
      routed = await runScenario(fresh, vocab, 0, 1, { ...forced, forcedRouting: false });
    } finally {
      fresh.dispose();
    }
    // The forced experts are not the router's: the logprobs and the router's gradient move.
    assert.ok(maxAbsDiff(ref.logprobs, routed.logprobs) > 1e-3, "forced routing changes the logprobs");
    const router = "model.layers.0.mlp.gate.weight";
    assert.ok(relativeDiff(ref.gradients[router] ?? [], routed.gradients[router] ?? []) > 1e-2);
    for (const [name, layout, world] of [
      ["EP2", { expert: 2, data: 2 }, 2],
      ["TP2 x EP2", { tensor: 2, expert: 2, data: 2 }, 4],
    ] as [string, Layout, number][]) {
      const { result } = await runLayout(dir.path, vocab, layout, world, `replay-${world}`, {
        scenario: forced,
      });
      compareScenario(result, ref, `replay at ${name}`);
    }
  } finally {
    dir.cleanup();
  }
});
