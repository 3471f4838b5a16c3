// Context parallelism against the single-device model, on CPU worker processes over gloo, in fp32:
// packed batches of uneven sequence lengths (7, 5, 9, 6, 4, 8 tokens: none a multiple of 2·CP),
// each padded and cut into 2·CP chunks with rank r keeping chunks r and 2·CP − 1 − r, K and V
// all-gathered over the context group for attention, logprobs gathered back into one-device order.
// Alone, with data parallelism (gradients summed over data × context), and with tensor parallelism
// (with sequence parallelism: sequences padded to a multiple of 2·CP·TP). Logprobs and entropy
// within 1e-5, gathered gradients within 1e-5 relative, parameters after 3 ZeRO-1 AdamW updates
// within 1e-5, greedy generation identical.
import assert from "node:assert/strict";
import { join } from "node:path";
import { test } from "node:test";
import { type Layout, Model } from "../../src/index.js";
import { compareScenario, runLayout } from "../helpers/parallel-layout.js";
import { runScenario, type ScenarioOptions } from "../helpers/parallel-scenario.js";
import { tempDir } from "../helpers/python.js";
import { writeTinyDense, writeTinyMoe } from "../helpers/tiny-models.js";

const layouts: [string, Layout, number, ScenarioOptions][] = [
  ["CP2", { context: 2 }, 2, {}],
  ["CP2 x DP2", { context: 2, data: 2 }, 4, {}],
  ["CP2 x TP2", { context: 2, tensor: 2 }, 4, {}],
  // AdamW epsilon 1e-5 as for the other sequence-parallel layouts (see ScenarioOptions.adamEps).
  ["CP2 x TP2+SP", { context: 2, tensor: 2, sequenceParallel: true }, 4, { adamEps: 1e-5 }],
];

for (const [name, layout, world, scenario] of layouts) {
  test(`Qwen3 at ${name} on packed uneven sequences equals one device: logprobs, entropy, gradients, 3 ZeRO-1 updates, greedy tokens`, {
    timeout: 240_000,
  }, async () => {
    const dir = tempDir("context-parallel");
    try {
      const modelDir = join(dir.path, "model");
      const config = await writeTinyDense(modelDir, {
        family: "qwen3",
        heads: 4,
        kvHeads: 2,
        layers: 2,
        seed: 31,
      });
      const vocab = config.vocab_size as number;
      const single = await Model.load(modelDir);
      try {
        const ref = await runScenario(single, vocab, 0, 1, scenario);
        const { result, ranks } = await runLayout(dir.path, vocab, layout, world, "run", {
          scenario: { ...scenario, batched: true },
        });
        compareScenario(result, ref, `Qwen3 at ${name}`);
        // K and V crossed the context group.
        for (const r of ranks) {
          const gathered =
            (r.traffic as Record<string, Record<string, { bytes: number }>>).context?.allGather?.bytes ?? 0;
          assert.ok(gathered > 0, `rank ${r.rank} gathered keys and values over the context group`);
        }
      } finally {
        single.dispose();
      }
    } finally {
      dir.cleanup();
    }
  });
}

test("context parallelism refuses what it does not run yet, naming the field", {
  timeout: 120_000,
}, async () => {
  const dir = tempDir("context-refused");
  try {
    const modelDir = join(dir.path, "model");
    const config = await writeTinyMoe(modelDir, {
      family: "qwen3_moe",
      layers: 2,
      experts: 4,
      topK: 2,
      seed: 32,
    });
    await assert.rejects(
      runLayout(dir.path, config.vocab_size as number, { context: 2 }, 2, "moe"),
      /layout\.context: 2: context parallelism of MoE models is not in the engine yet/,
    );
  } finally {
    dir.cleanup();
  }
});
