// CPU generation computes each step's logits with its own lm-head product (rollout/cpu_logits.h:
// the weight streamed once per group of 8 rows, 16 lanes at a time), not the sgemm the training
// forward uses. Checked here on a hidden size that is not a multiple of 16 (the lanes' tail) and on
// batch sizes around the row groups.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Model } from "../../src/index.js";
import { writeTinyModel } from "../../src/rl/tasks/next-digit.js";
import { maxAbsDiff } from "../helpers/parity.js";
import { tempDir } from "../helpers/python.js";

const dir = tempDir("cpu-lm-head");
let model: Model;
const vocab = 1000;

before(async () => {
  // hidden 72: four 16-lane blocks and a tail of 8.
  await writeTinyModel(dir.path, { hiddenSize: 72, layers: 2, vocabSize: vocab, seed: 3 });
  model = await Model.load(dir.path, { device: "cpu", dtype: "float32" });
});

after(() => {
  model?.dispose();
  dir.cleanup();
});

const prompt = (i: number) =>
  Int32Array.from({ length: 5 + (i % 4) }, (_, t) => (i * 131 + t * 17 + 7) % vocab);

for (const n of [1, 5, 8, 9, 13]) {
  test(`${n} prompts, greedy on the CPU: each token's logprob equals the training forward's to 1e-5, and each prompt alone gives the tokens it gave in the batch`, async () => {
    const prompts = Array.from({ length: n }, (_, i) => prompt(i));
    const out = await model.generate(prompts, { maxNewTokens: 6 });
    const full = out.map((g, i) => [...(prompts[i] ?? []), ...g.tokens]);
    const cu = [0];
    for (const f of full) cu.push((cu[cu.length - 1] ?? 0) + f.length);
    const { logprobs } = await model.logprobs(new Int32Array(full.flat()), new Int32Array(cu), 1);
    for (const [i, g] of out.entries()) {
      assert.equal(g.tokens.length, 6);
      const start = (cu[i] ?? 0) - i + (prompts[i]?.length ?? 0) - 1;
      const training = logprobs.subarray(start, start + g.tokens.length);
      const diff = maxAbsDiff(g.logprobs, training);
      assert.ok(diff <= 1e-5, `prompt ${i}: rollout vs training logprobs differ by ${diff}`);
      // Greedy: the chosen token is the most likely one, so its logprob is at least log(1/vocab).
      for (const lp of g.logprobs) assert.ok(lp >= -Math.log(vocab) - 1e-4, `prompt ${i}: logprob ${lp}`);
    }
    for (const i of [0, n - 1]) {
      const [alone] = await model.generate([prompts[i] as Int32Array], { maxNewTokens: 6 });
      assert.deepEqual(Array.from(alone?.tokens ?? []), Array.from(out[i]?.tokens ?? []), `prompt ${i}`);
    }
  });
}
