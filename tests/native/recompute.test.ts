// Activation recomputation (setTraining({ recompute })): whole decoder layers ("full", all or the
// first n) or the attention core and the MoE experts ("selective") run again in backward instead of
// keeping their activations. The gradients must be those of the plain forward — on one device
// exactly as computed without recomputation (fp32: the same operations run again), and across ranks
// (tensor parallelism with sequence parallelism, expert parallelism: the recomputation re-runs the
// collectives and the token dispatch in backward) against one device at the parallel tests'
// tolerances.
import assert from "node:assert/strict";
import { join } from "node:path";
import { test } from "node:test";
import { Model, type RecomputeOptions } from "../../src/index.js";
import { writeTinyVisionModel } from "../../src/rl/tasks/colour-square.js";
import { compareScenario, runLayout } from "../helpers/parallel-layout.js";
import { runScenario, scenarioSequences } from "../helpers/parallel-scenario.js";
import { maxAbsDiff } from "../helpers/parity.js";
import { tempDir } from "../helpers/python.js";
import { writeTinyDense, writeTinyMoe } from "../helpers/tiny-models.js";

async function gradients(model: Model, vocab: number): Promise<Map<string, Float32Array>> {
  const sequences = scenarioSequences(vocab);
  const tokens = Int32Array.from(sequences.flat());
  const cu = Int32Array.from([0, ...sequences.map((_, i) => sequences.slice(0, i + 1).flat().length)]);
  const weights = Float32Array.from({ length: tokens.length - sequences.length }, (_, i) => 0.5 + (i % 3));
  const { gradients } = await model.lossBackward(tokens, cu, weights);
  return new Map(gradients.map((g) => [g.name, g.data as Float32Array]));
}

const settings: RecomputeOptions[] = [
  { granularity: "full" },
  { granularity: "full", layers: 1 },
  { granularity: "selective" },
];

for (const family of ["qwen3", "qwen3_moe", "deepseek_v3"] as const) {
  test(`${family}: gradients with full, first-layer and selective recomputation equal the plain forward's`, {
    timeout: 120_000,
  }, async () => {
    const dir = tempDir("recompute");
    try {
      const config =
        family === "qwen3"
          ? await writeTinyDense(dir.path, {
              family: "qwen3",
              heads: 4,
              kvHeads: 2,
              layers: 3,
              tied: true,
              seed: 41,
            })
          : family === "qwen3_moe"
            ? await writeTinyMoe(dir.path, {
                family: "qwen3_moe",
                layers: 3,
                mlpOnlyLayers: [1],
                experts: 4,
                topK: 2,
                seed: 42,
              })
            : // MLA, group-limited sigmoid routing, a shared expert and a dense first layer.
              await writeTinyMoe(dir.path, {
                family: "deepseek_v3",
                layers: 3,
                firstDense: 1,
                experts: 4,
                topK: 2,
                groups: 2,
                topGroups: 1,
                seed: 45,
              });
      const vocab = config.vocab_size as number;
      const model = await Model.load(dir.path);
      try {
        const plain = await gradients(model, vocab);
        for (const recompute of settings) {
          model.setTraining({ recompute });
          const got = await gradients(model, vocab);
          assert.deepEqual([...got.keys()], [...plain.keys()]);
          for (const [name, g] of plain) {
            const d = maxAbsDiff(Array.from(got.get(name) ?? []), Array.from(g));
            assert.ok(d <= 1e-6, `${JSON.stringify(recompute)}: gradient of ${name} differs by ${d}`);
          }
        }
        model.setTraining({ recompute: { granularity: "none" } });
        assert.throws(
          () => model.setTraining({ recompute: { granularity: "most" as "full" } }),
          /options\.recompute\.granularity/,
        );
      } finally {
        model.dispose();
      }
    } finally {
      dir.cleanup();
    }
  });
}

test("full recomputation at TP2+SP, selective at EP2 (Qwen3-MoE) and full at EP2 (DeepSeek-V3) equal one device: logprobs, gradients, 3 ZeRO-1 updates", {
  timeout: 240_000,
}, async () => {
  const dir = tempDir("recompute-parallel");
  try {
    for (const [what, write, layout, world, recompute, scenario] of [
      [
        "TP2+SP, full",
        (d: string) => writeTinyDense(d, { family: "qwen3", heads: 4, kvHeads: 2, layers: 2, seed: 43 }),
        { tensor: 2, sequenceParallel: true },
        2,
        { granularity: "full" },
        { batched: true, adamEps: 1e-5 },
      ],
      [
        "EP2, selective",
        (d: string) => writeTinyMoe(d, { family: "qwen3_moe", layers: 2, experts: 4, topK: 2, seed: 44 }),
        { expert: 2, data: 2 },
        2,
        { granularity: "selective" },
        { batched: true, microBatches: 4, adamEps: 1e-5, generate: false },
      ],
      [
        "DeepSeek-V3 EP2, full",
        (d: string) =>
          writeTinyMoe(d, { family: "deepseek_v3", layers: 2, firstDense: 1, experts: 4, topK: 2, seed: 46 }),
        { expert: 2, data: 2 },
        2,
        { granularity: "full" },
        { batched: true, microBatches: 4, adamEps: 1e-5, generate: false },
      ],
    ] as const) {
      const sub = join(dir.path, what.replace(/[^a-z0-9]+/gi, "-"));
      const modelDir = join(sub, "model");
      const config = await write(modelDir);
      const vocab = config.vocab_size as number;
      const single = await Model.load(modelDir);
      try {
        const ref = await runScenario(single, vocab, 0, 1, { ...scenario, batched: false });
        const { result } = await runLayout(sub, vocab, layout, world, "run", { scenario, recompute });
        compareScenario(result, ref, `recompute at ${what}`);
      } finally {
        single.dispose();
      }
    }
  } finally {
    dir.cleanup();
  }
});

test("a family without recomputation (Qwen2.5-VL) refuses it, naming the field", {
  timeout: 60_000,
}, async () => {
  const dir = tempDir("recompute-refused");
  try {
    await writeTinyVisionModel(dir.path, 45);
    const model = await Model.load(dir.path);
    try {
      assert.throws(
        () => model.setTraining({ recompute: { granularity: "full" } }),
        /recompute: not for this model family yet/,
      );
    } finally {
      model.dispose();
    }
  } finally {
    dir.cleanup();
  }
});
