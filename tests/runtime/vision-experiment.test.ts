// Images through the real processes: a controller and a CPU worker, the colour-square experiment
// (tiny Qwen2.5-VL, prompts with PNGs) built by the client, two steps run, the rollouts table back
// over the wire with each prompt's image. The pixels travel in the worker commands' frames.
import assert from "node:assert/strict";
import { join } from "node:path";
import { after, test } from "node:test";
import { connect } from "../../src/index.js";
import { prepareColourSquare } from "../../src/rl/tasks/colour-square.js";
import { tempDir } from "../helpers/python.js";
import { killAll, tiller } from "../helpers/runtime.js";

const dir = tempDir("vision-experiment");
after(() => {
  killAll();
  dir.cleanup();
});

test("a vision-language experiment runs through the controller and its worker", {
  timeout: 120_000,
}, async () => {
  const setup = await prepareColourSquare(dir.path, { runDir: join(dir.path, "run"), totalSteps: 2 }, 64);
  const address = `ipc://${dir.path}/c.sock`;
  tiller(["controller", "--bind", address, "--cpu", "1"]);
  const cluster = await connect(address, { timeoutMs: 20_000 });
  try {
    await cluster.waitForWorkers(1, 30_000);
    const exp = await cluster.experiment(setup.config);
    const metrics = await exp.run(2);
    assert.equal(metrics.length, 2);
    for (const m of metrics) {
      assert.ok(Number.isFinite(m["actor/pg_loss"]), "a policy update ran");
      // The CPU decode loop's lm-head streams its weight (rollout/cpu_logits) where the training
      // forward runs sgemm: the same probabilities to fp32 rounding, not the same bits.
      assert.ok(m["training/rollout_probs_diff_max"] <= 1e-6, `${m["training/rollout_probs_diff_max"]}`);
    }
    const rollouts = await exp.rollouts();
    assert.equal(rollouts.numRows, 16 * 8);
    const cell = rollouts.getChild("images")?.get(0) as { toArray(): ArrayLike<unknown> } | null;
    assert.match(String(cell?.toArray()[0]), /^data:image\/png;base64,/);
    await exp.close();
  } finally {
    await cluster.close();
  }
});
