// The RL loop on CUDA (bf16), run by scripts/gpu/run.sh: the next-digit task learns, rollout
// logprobs equal the training forward's bit for bit (so old logprobs need no recomputation),
// checkpoints save and resume, activations come back from the GPU.
import assert from "node:assert/strict";
import { join } from "node:path";
import { after, test } from "node:test";
import { ExperimentRun, findCheckpoint } from "../../src/controller/experiment.js";
import { resolveConfig } from "../../src/rl/config.js";
import { prepareNextDigit } from "../../src/rl/tasks/next-digit.js";
import { localRank } from "../../src/worker/local.js";
import { tempDir } from "../helpers/python.js";

const dir = tempDir("gpu-rl");
after(() => dir.cleanup());

test("GRPO on CUDA bf16: reward rises, rollout logprobs are exact, checkpoint and resume", {
  timeout: 600_000,
}, async () => {
  const { config } = await prepareNextDigit(dir.path, {
    name: "gpu-rl",
    runDir: join(dir.path, "run"),
    model: { path: join(dir.path, "model"), dtype: "bfloat16" },
    // Recompute old logprobs anyway, to measure the rollout/training difference.
    algorithm: { advantage: "grpo", recomputeOldLogprobs: true },
    totalSteps: 80,
    checkpoint: { everySteps: 40, keep: 1 },
  });
  const local = localRank();
  const run = await ExperimentRun.create(resolveConfig(config), local.call, { device: "cuda:0" });
  try {
    assert.equal(run.device, "cuda:0");
    const rows = await run.run(80);
    const mean = (rs: typeof rows, k: string) => rs.reduce((s, r) => s + (r[k] as number), 0) / rs.length;
    const first = mean(rows.slice(0, 10), "critic/score/mean");
    const last = mean(rows.slice(-10), "critic/score/mean");
    const diff = Math.max(...rows.map((r) => r["training/rollout_probs_diff_max"] as number));
    console.log(
      `CUDA bf16 GRPO: reward ${first.toFixed(3)} → ${last.toFixed(3)}; rollout vs training probs max |diff| ${diff.toExponential(2)}; ` +
        `step ${(mean(rows.slice(-10), "timing_s/step") * 1000).toFixed(1)} ms`,
    );
    assert.ok(last > first + 0.3, `reward ${first} → ${last}`);
    assert.equal(diff, 0, "rollout logprobs equal the training forward's");
    const acts = await run.activations("model.layers.1", undefined, [0, 1]);
    assert.ok(acts.numRows > 0);
  } finally {
    await run.close();
    local.dispose();
  }
  const again = localRank();
  const resumed = await ExperimentRun.resume((await findCheckpoint(join(dir.path, "run"))).dir, again.call, {
    device: "cuda:0",
    totalSteps: 82,
  });
  try {
    assert.equal(resumed.step, 80);
    await resumed.run();
    assert.equal(resumed.step, 82);
  } finally {
    await resumed.close();
    again.dispose();
  }
});
