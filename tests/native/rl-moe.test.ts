// The RL loop on a tiny Qwen3-MoE (fp32 CPU): router metrics in every step's row, routing
// recorded by generation, and with replay on, the training forward uses exactly the recorded
// experts — reported as the rollout-vs-training logprob difference with replay off and on.
import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { ExperimentRun } from "../../src/controller/experiment.js";
import { resolveConfig } from "../../src/rl/config.js";
import { prepareNextDigit } from "../../src/rl/tasks/next-digit.js";
import { localRank } from "../../src/worker/local.js";
import { tempDir } from "../helpers/python.js";

const dir = tempDir("rl-moe");
let base: Awaited<ReturnType<typeof prepareNextDigit>>;
before(async () => {
  base = await prepareNextDigit(dir.path, {}, { seed: 4, moe: { experts: 8, topK: 2 } });
});
after(() => dir.cleanup());

async function runWith(replay: "off" | "record" | "replay") {
  const local = localRank();
  const config = resolveConfig({
    ...base.config,
    name: `moe-${replay}`,
    runDir: join(dir.path, `run-${replay}`),
    rollout: { samplesPerPrompt: 4, maxResponseTokens: 3, routingReplay: replay },
    promptsPerStep: 8,
    // Recompute old logprobs so that rollout and training logprobs are compared every step.
    algorithm: { recomputeOldLogprobs: true },
  });
  const run = await ExperimentRun.create(config, local.call);
  try {
    const rows = await run.run(3);
    return { rows, samples: run.batch?.samples ?? [] };
  } finally {
    await run.close();
    local.dispose();
  }
}

test("router metrics in the step metrics; replay makes training use the rollout's experts", {
  timeout: 120_000,
}, async () => {
  const off = await runWith("off");
  const replay = await runWith("replay");
  const row = off.rows.at(-1) as Record<string, number>;
  for (const key of [
    "router/load_imbalance/max",
    "router/load_imbalance/mean",
    "router/entropy/mean",
    "router/layer_0/load_imbalance",
    "router/layer_1/entropy",
  ]) {
    assert.ok(Number.isFinite(row[key]), `${key} = ${row[key]}`);
  }
  // Dropless routing drops nothing by construction: a metric that could only read 0 is not written.
  assert.equal(Object.hasOwn(row, "router/dropped_tokens"), false);
  assert.ok(
    (row["router/load_imbalance/max"] as number) >= 1 && (row["router/load_imbalance/max"] as number) <= 4,
  );
  // Every generated sample carries [prompt + response, 2 layers, top-2] experts when recording.
  for (const s of replay.samples)
    assert.equal(s.experts?.length, (s.prompt.length + s.response.length) * 2 * 2);
  assert.equal(off.samples[0]?.experts, undefined);
  const diff = (rows: Record<string, number>[]) =>
    Math.max(...rows.map((r) => r["training/rollout_probs_diff_max"] as number));
  console.log(
    `MoE rollout vs training probs, max |diff|: replay off ${diff(off.rows).toExponential(2)}, replay on ${diff(replay.rows).toExponential(2)}`,
  );
  assert.ok(diff(replay.rows) < 1e-5);
  assert.ok(diff(off.rows) < 1e-5);
});

test("routing replay reaches the update: forced experts change the policy gradient, rows of -1 route as the router does", {
  timeout: 60_000,
}, async () => {
  const local = localRank();
  try {
    const model = base.config.model.path;
    const tokens = Int32Array.from([2, 3, 4, 5, 6, 7, 8, 9]);
    const cuSeqlens = Int32Array.from([0, 4, 8]);
    const predicted = tokens.length - 2;
    const layers = 2;
    const topK = 2;
    const forced = (experts: number[]) =>
      Int32Array.from({ length: tokens.length * layers * topK }, (_, i) => experts[i % topK] as number);
    const update = async (name: string, routedExperts?: Int32Array) => {
      await local.call(0, "model.load", { name, dir: model });
      await local.call(0, "model.initOptimizer", { name, options: { lr: 1e-3 } });
      const r = await local.call(0, "model.policyUpdate", {
        name,
        microBatches: [
          {
            tokens,
            cuSeqlens,
            oldLogprobs: new Float32Array(predicted).fill(-2),
            advantages: Float32Array.from({ length: predicted }, (_, i) => (i % 2 ? 1 : -0.5)),
            mask: new Float32Array(predicted).fill(1),
            ...(routedExperts ? { routedExperts } : {}),
          },
        ],
        counts: { tokens: predicted, sequences: 2 },
        config: {},
      });
      await local.call(0, "model.free", { name });
      return r.gradNorm;
    };
    const plain = await update("plain");
    const normal = await update("normal", new Int32Array(tokens.length * layers * topK).fill(-1));
    const low = await update("low", forced([0, 1]));
    const high = await update("high", forced([6, 7]));
    assert.equal(normal, plain);
    assert.notEqual(low, plain);
    assert.notEqual(low, high);
  } finally {
    local.dispose();
  }
});
