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

test("offloading the parameters (tied embedding too) empties their storages and refills them in place: updates, logprobs and greedy tokens are those of a model never offloaded; a pending update refuses it", {
  timeout: 120_000,
}, async () => {
  const dir = tempDir("offload-params");
  try {
    const config = await writeTinyDense(dir.path, {
      family: "qwen3",
      heads: 4,
      kvHeads: 2,
      layers: 2,
      tied: true,
      seed: 52,
    });
    const vocab = config.vocab_size as number;
    const plain = await Model.load(dir.path);
    const parked = await Model.load(dir.path);
    try {
      for (const m of [plain, parked]) m.initOptimizer({ lr: 1e-2 });
      const tokens = Int32Array.from({ length: 12 }, (_, i) => (i * 5 + 1) % vocab);
      const cu = Int32Array.from([0, 5, 12]);
      const rows = tokens.length - 2;
      const perToken = {
        oldLogprobs: new Float32Array(rows).fill(-2),
        advantages: Float32Array.from({ length: rows }, (_, i) => (i % 3) - 1),
        mask: new Float32Array(rows).fill(1),
      };
      const update = (m: Model) =>
        m.policySteps([{ tokens, cuSeqlens: cu, perToken }], { tokens: rows, sequences: 2 });
      const whole = plain.memory().parameters;
      for (let step = 0; step < 3; step++) {
        for (const m of [plain, parked]) {
          await update(m);
          const { gradNorm } = await m.optimizerStep();
          assert.ok(gradNorm > 0, "a real update");
        }
        const moved = await parked.offloadParameters();
        // The tied lm-head is the embedding's tensor: its storage moves once.
        assert.equal(moved.bytes, whole, "every parameter's bytes, once");
        const m = parked.memory();
        assert.deepEqual([m.parameters, m.parametersHost], [0, whole], "on the host while offloaded");
        assert.equal((await parked.offloadParameters()).bytes, 0, "already on the host: nothing moves");
        // Step 1 brings them back explicitly; the others by the next call that reads the weights.
        if (step === 1) assert.equal((await parked.onloadParameters()).bytes, whole);
      }
      const [a, b] = [await plain.logprobs(tokens, cu), await parked.logprobs(tokens, cu)];
      assert.deepEqual(Array.from(b.logprobs), Array.from(a.logprobs), "logprobs after 3 offloaded updates");
      assert.deepEqual(
        parked.parameters().map((t) => Array.from(t.data as Float32Array)),
        plain.parameters().map((t) => Array.from(t.data as Float32Array)),
        "parameters",
      );
      await parked.offloadParameters();
      const prompts = [Int32Array.from([3, 4, 5])];
      const [ga] = await plain.generate(prompts, { maxNewTokens: 5 });
      const [gb] = await parked.generate(prompts, { maxNewTokens: 5 });
      assert.deepEqual(Array.from(gb?.tokens ?? []), Array.from(ga?.tokens ?? []), "greedy tokens");
      assert.equal(parked.memory().parametersHost, 0, "generation brought them back");
      await update(parked);
      await assert.rejects(parked.offloadParameters(), /offload parameters: gradients are pending/);
    } finally {
      plain.dispose();
      parked.dispose();
    }
  } finally {
    dir.cleanup();
  }
});
