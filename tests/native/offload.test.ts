// Optimizer offload (model.offloadOptimizer / onloadOptimizer, the experiment's offload.optimizer):
// the fp32 masters and Adam moments go to host memory after each update and come back for the next.
// The parameters after 3 updates must be identical to a run that never offloads (one device, and
// ZeRO-1 over two data ranks), and memory() must show the state on the host between updates and
// the bytes moved.
import assert from "node:assert/strict";
import { join } from "node:path";
import { test } from "node:test";
import { Model } from "../../src/index.js";
import { compareScenario, runLayout } from "../helpers/parallel-layout.js";
import { runScenario } from "../helpers/parallel-scenario.js";
import { tempDir } from "../helpers/python.js";
import { writeTinyDense } from "../helpers/tiny-models.js";

test("offloading the optimizer between updates leaves the parameters exactly as without, on one device and at DP2 (ZeRO-1), and memory() sees the state on the host", {
  timeout: 180_000,
}, async () => {
  const dir = tempDir("offload");
  try {
    const modelDir = join(dir.path, "model");
    const config = await writeTinyDense(modelDir, {
      family: "qwen3",
      heads: 4,
      kvHeads: 2,
      layers: 2,
      seed: 51,
    });
    const vocab = config.vocab_size as number;
    const load = () => Model.load(modelDir);
    const plain = await load();
    const offloaded = await load();
    try {
      const a = await runScenario(plain, vocab, 0, 1, { generate: false });
      const b = await runScenario(offloaded, vocab, 0, 1, { generate: false, offloadOptimizer: true });
      assert.deepEqual(b.parameters, a.parameters, "parameters after 3 updates");
      assert.deepEqual(b.gradNorms, a.gradNorms);
      for (const o of b.offloaded ?? []) {
        assert.ok(
          o.moved > 0 && o.host === o.moved && o.device === 0,
          `state on the host: ${JSON.stringify(o)}`,
        );
      }
      assert.equal(b.offloaded?.length, 3);
      assert.equal((await offloaded.offloadOptimizer()).bytes, 0, "already on the host: nothing moves");
      assert.ok((await offloaded.onloadOptimizer()).bytes > 0);
      assert.equal(offloaded.memory().optimizerHost, 0);
    } finally {
      plain.dispose();
      offloaded.dispose();
    }
    // ZeRO-1 over two data ranks with the state offloaded between updates equals one device.
    const single = await load();
    try {
      const ref = await runScenario(single, vocab, 0, 1, { generate: false });
      const { result } = await runLayout(dir.path, vocab, { data: 2 }, 2, "dp2", {
        scenario: { generate: false, offloadOptimizer: true },
      });
      compareScenario(result, ref, "DP2 with offload");
      assert.ok((result.offloaded ?? []).every((o) => o.moved > 0 && o.device === 0));
    } finally {
      single.dispose();
    }
  } finally {
    dir.cleanup();
  }
});
