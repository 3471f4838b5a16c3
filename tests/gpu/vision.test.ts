// Qwen2.5-VL on CUDA (the tiny random case of tests/python/vl_reference.py, HF on the CPU as the
// reference): fp32 and bf16 logprobs with images (flash attention over the vision tower's windows
// in bf16), greedy generation, rollout vs training logprobs, and a training step.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { Model } from "../../src/index.js";
import { readTensors } from "../helpers/parity.js";
import { runPython, tempDir } from "../helpers/python.js";

interface Reference {
  tokens: number[];
  cuSeqlens: number[];
  pixels: number[];
  grids: number[];
  prompts: number[][];
  promptPixels: number[];
  promptGrids: number[];
  logprobs: number[];
  greedy: number[][];
}

const dir = tempDir("gpu-vision");
let ref: Reference;
let config: Record<string, unknown>;
before(() => {
  runPython("vl_reference.py", [dir.path]);
  ref = JSON.parse(readFileSync(join(dir.path, "reference.json"), "utf8")) as Reference;
  config = JSON.parse(readFileSync(join(dir.path, "config.json"), "utf8")) as Record<string, unknown>;
});
after(() => dir.cleanup());

const images = () => ({ pixels: new Float32Array(ref.pixels), grids: new Int32Array(ref.grids) });

function stats(a: ArrayLike<number>, b: ArrayLike<number>) {
  let max = 0;
  let sum = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs((a[i] ?? 0) - (b[i] ?? 0));
    max = Math.max(max, d);
    sum += d;
  }
  return { max, mean: sum / a.length };
}

for (const dtype of ["float32", "bfloat16"] as const) {
  test(`CUDA ${dtype}: logprobs with images near HF's, generation and training run`, async () => {
    const model = Model.create(config, readTensors(dir.path, "weights"), { device: "cuda:0", dtype });
    try {
      const tokens = new Int32Array(ref.tokens);
      const cu = new Int32Array(ref.cuSeqlens);
      const { logprobs } = await model.logprobs(tokens, cu, 1, 1024, undefined, images());
      const d = stats(logprobs, ref.logprobs);
      console.log(
        `${dtype}: logprobs |ours - HF (CPU fp32)| max ${d.max.toExponential(2)}, mean ${d.mean.toExponential(2)}`,
      );
      assert.ok(d.max <= (dtype === "float32" ? 1e-3 : 0.25), `logprobs off by ${d.max}`);
      const prompts = ref.prompts.map((p) => new Int32Array(p));
      const promptImages = {
        pixels: new Float32Array(ref.promptPixels),
        grids: new Int32Array(ref.promptGrids),
      };
      const greedy = await model.generate(prompts, { maxNewTokens: 32, images: promptImages });
      const same = greedy.map((g, i) => {
        let n = 0;
        while (n < 32 && g.tokens[n] === ref.greedy[i]?.[n]) n++;
        return n;
      });
      console.log(
        `${dtype}: greedy tokens equal to HF's before the first difference: ${same.join(", ")} of 32`,
      );
      if (dtype === "float32")
        assert.ok(
          same.every((n) => n >= 8),
          `greedy tokens diverge early: ${same}`,
        );
      const sampled = await model.generate(prompts, {
        maxNewTokens: 16,
        temperature: 1,
        seed: 3,
        images: promptImages,
      });
      const full = sampled.map((g, i) => [...(ref.prompts[i] ?? []), ...g.tokens]);
      const cuFull = [0];
      for (const f of full) cuFull.push((cuFull[cuFull.length - 1] ?? 0) + f.length);
      const training = await model.logprobs(
        new Int32Array(full.flat()),
        new Int32Array(cuFull),
        1,
        1024,
        undefined,
        promptImages,
      );
      let worst = 0;
      sampled.forEach((g, i) => {
        const start = (cuFull[i] ?? 0) - i + (ref.prompts[i]?.length ?? 0) - 1;
        worst = Math.max(
          worst,
          stats(g.logprobs, training.logprobs.subarray(start, start + g.tokens.length)).max,
        );
      });
      console.log(`${dtype}: rollout vs training logprobs max diff ${worst.toExponential(2)}`);
      model.initOptimizer({ lr: 1e-3 });
      const mask = new Float32Array(tokens.length - (cu.length - 1)).fill(1);
      const step = await model.trainStep(tokens, cu, mask, mask.length, 1, 1024, undefined, images());
      const update = await model.optimizerStep();
      assert.ok(Number.isFinite(step.loss) && Number.isFinite(update.gradNorm) && !update.skipped);
      console.log(
        `${dtype}: train step loss ${step.loss.toFixed(4)}, grad norm ${update.gradNorm.toFixed(4)}`,
      );
    } finally {
      model.dispose();
    }
  });
}
