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
